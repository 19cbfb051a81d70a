"""The mediation server's STUN responder (mediation_server/stun.py): RFC 5389 Binding, RFC 5780
RESPONSE-ORIGIN / OTHER-ADDRESS / CHANGE-REQUEST, bad input dropped; and the socket side on loopback."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aioice import stun

from mediation_client.natdisc import DiscoveryConfig, UdpIO, discover
from mediation_server.stun import CHANGE_IP, CHANGE_PORT, StunResponder, StunServer, StunSettings

A1, A2 = "198.51.100.1", "198.51.100.2"
CLIENT = ("203.0.113.7", 40001)


def request(change: int = 0, method: stun.Method = stun.Method.BINDING,
            cls: stun.Class = stun.Class.REQUEST) -> stun.Message:
    m = stun.Message(message_method=method, message_class=cls, transaction_id=os.urandom(12))
    if change:
        m.attributes["CHANGE-REQUEST"] = change
    return m


def test_binding_response_attributes() -> None:
    r = StunResponder(StunSettings(A1, 3478, alt_port=3479, alt_address=A2))
    req = request()
    out = r.receive(bytes(req), CLIENT, (A1, 3478), 0.0)
    assert out is not None
    data, origin, dst = out
    resp = stun.parse_message(data)
    assert (origin, dst) == ((A1, 3478), CLIENT)
    assert resp.message_class == stun.Class.RESPONSE and resp.transaction_id == req.transaction_id
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert "MAPPED-ADDRESS" not in resp.attributes and "SOFTWARE" not in resp.attributes
    assert len(data) == 64  # what discovery needs and no more (RFC 5780 §9.1: no amplification)
    assert resp.attributes["RESPONSE-ORIGIN"] == (A1, 3478)
    assert resp.attributes["OTHER-ADDRESS"] == (A2, 3479)
    assert "FINGERPRINT" in resp.attributes


@pytest.mark.parametrize(("local", "change", "origin"), [
    ((A1, 3478), CHANGE_IP | CHANGE_PORT, (A2, 3479)),
    ((A1, 3478), CHANGE_PORT, (A1, 3479)),
    ((A1, 3478), CHANGE_IP, (A2, 3478)),
    ((A2, 3479), CHANGE_IP | CHANGE_PORT, (A1, 3478)),
    ((A2, 3478), CHANGE_PORT, (A2, 3479)),
])
def test_change_request(local: tuple[str, int], change: int, origin: tuple[str, int]) -> None:
    r = StunResponder(StunSettings(A1, 3478, alt_port=3479, alt_address=A2))
    out = r.receive(bytes(request(change)), CLIENT, local, 0.0)
    assert out is not None
    assert out[1] == origin
    assert stun.parse_message(out[0]).attributes["RESPONSE-ORIGIN"] == origin
    assert r.stats.changed == 1


def test_answers_are_rate_limited() -> None:
    r = StunResponder(StunSettings(A1, rate=10.0, burst=5))
    got = [r.receive(bytes(request()), CLIENT, (A1, 3478), 100.0) for _ in range(8)]
    assert sum(g is not None for g in got) == 5 and r.stats.limited == 3
    assert r.receive(bytes(request()), CLIENT, (A1, 3478), 100.05) is None  # half a token
    assert r.receive(bytes(request()), CLIENT, (A1, 3478), 100.2) is not None  # refilled at 10/s


def test_change_the_server_cannot_make_is_420() -> None:
    r = StunResponder(StunSettings(A1, 3478, alt_port=3479))
    out = r.receive(bytes(request(CHANGE_IP)), CLIENT, (A1, 3478), 0.0)
    assert out is not None
    resp = stun.parse_message(out[0])
    assert resp.message_class == stun.Class.ERROR and resp.attributes["ERROR-CODE"][0] == 420
    assert out[1] == (A1, 3478)  # the error leaves from where the request came in
    plain = StunResponder(StunSettings(A1, 3478))
    out = plain.receive(bytes(request()), CLIENT, (A1, 3478), 0.0)
    assert out is not None and "OTHER-ADDRESS" not in stun.parse_message(out[0]).attributes


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 19, b"\x16\x03\x01" + b"\x00" * 40, os.urandom(600),
    bytes(request(cls=stun.Class.RESPONSE)), bytes(request(cls=stun.Class.INDICATION)),
    bytes(request(method=stun.Method.ALLOCATE)),
], ids=["empty", "short", "tls", "random", "response", "indication", "allocate"])  # fixed: xdist workers collect alike
def test_other_input_is_dropped(data: bytes) -> None:
    r = StunResponder(StunSettings(A1))
    assert r.receive(data, CLIENT, (A1, 3478), 0.0) is None
    assert r.stats.dropped == 1 and r.stats.responses == 0


def test_server_on_loopback_answers_discovery() -> None:
    """The socket side: four sockets on 127.0.0.1/127.0.0.2 x two ports; discovery without a NAT."""
    async def main() -> None:
        srv = StunServer(StunSettings("127.0.0.1", _free_port(), alt_port=_free_port(),
                                      alt_address="127.0.0.2"))
        bound = srv.start()
        try:
            assert len(bound) == 4
            io = UdpIO(("127.0.0.1", 0))
            try:
                res = await discover(io, bound[0], DiscoveryConfig(rto=0.5))
            finally:
                io.close()
            assert (res.mapping, res.filtering, res.rfc5780) == ("none", "none", "full"), res
            assert srv.status()["changed"] == 2  # both filtering tests answered from elsewhere
        finally:
            srv.close()
    asyncio.run(main())


def test_unbindable_addresses_degrade_truthfully() -> None:
    """An alternate that cannot be bound: no OTHER-ADDRESS (clients say "unknown", never a wrong
    filtering); a primary that cannot be bound: no responder at all."""
    async def main() -> None:
        port = _free_port()
        srv = StunServer(StunSettings("127.0.0.1", port, alt_port=_free_port(), alt_address="192.0.2.123"))
        assert srv.start() == [("127.0.0.1", port)]
        out = srv.responder.receive(bytes(request()), CLIENT, ("127.0.0.1", port), 0.0)
        assert out is not None and "OTHER-ADDRESS" not in stun.parse_message(out[0]).attributes
        srv.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
            busy.bind(("127.0.0.1", 0))
            taken = busy.getsockname()[1]
            srv = StunServer(StunSettings("127.0.0.1", taken))
            assert srv.start() == [] and not srv.sockets
    asyncio.run(main())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ikectl_status_shows_stun_nat_and_port_mapping() -> None:
    from core_ike.daemon.ctl import format_status

    server = format_status({"peers": [{"identity": "alice@med", "endpoint": "203.0.113.1[4500]", "since": 5,
                                       "idle": 1, "ike": 3, "nat": "mapping EIM, filtering APDF"}],
                            "callbacks": [], "relays": [],
                            "stun": {"addresses": ["203.0.113.10[3478]", "203.0.113.10[3479]"], "requests": 12,
                                     "changed": 4}})
    assert "alice@med @ 203.0.113.1[4500]" in server and "NAT: mapping EIM, filtering APDF" in server
    assert "STUN responder on 203.0.113.10[3478], 203.0.113.10[3479]: 12 requests, 4 answered" in server
    client = format_status({"status": {"mediation": [], "connections": [], "target_lists": [],
                                       "nat": {"server": "203.0.113.10[3478]", "summary": "mapping APDM"},
                                       "port_mapping": {"protocol": "pcp", "internal": "10.2.0.2[4500]",
                                                        "external": "198.20.0.2[4500]", "lifetime": 120}}})
    assert "NAT behaviour (RFC 5780, via STUN 203.0.113.10[3478]): mapping APDM" in client
    assert "port mapping: pcp 10.2.0.2[4500] -> 198.20.0.2[4500], lifetime 120s" in client
    none = format_status({"status": {"port_mapping": {"error": "no answer from 10.2.0.1[5351]"}}})
    assert "port mapping: none (no answer from 10.2.0.1[5351])" in none
