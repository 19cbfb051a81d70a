"""Bad input: each malformed message is dropped with one log line and the engine keeps serving."""

from __future__ import annotations

import logging
import struct

import pytest
from ike_pair import A_IP, B_IP, make_pair

from core_ike.codec.message import decode_message
from core_ike.constants import NotifyType
from core_ike.ike import events as ev
from core_ike.ike.sa import IkeState

A, B = (A_IP, 500), (B_IP, 500)


def _init_request() -> bytes:
    p = make_pair()
    p.a.initiate("home", now=p.now)
    ((pkt, _, _),) = p.a.datagrams_to_send()
    return pkt


def _set_len(pkt: bytes, n: int) -> bytes:
    return pkt[:24] + struct.pack("!I", n) + pkt[28:]


def _critical_unknown(pkt: bytes) -> bytes:
    # append an unknown payload type 200 with the critical bit after the last payload
    body = bytearray(pkt)
    # walk the chain to the last payload header
    pos, nxt = 28, body[16]
    last = 16
    while nxt != 0:
        last = pos
        nxt, length = body[pos], struct.unpack("!H", body[pos + 2 : pos + 4])[0]
        pos += length
    body[last] = 200
    extra = bytes([0, 0x80]) + struct.pack("!H", 8) + b"\x00" * 4
    out = bytes(body) + extra
    return _set_len(out, len(out))


CASES = {
    "truncated header": lambda p: p[:20],
    "truncated payload": lambda p: _set_len(p[:-10], len(p) - 10),
    "length field too long": lambda p: _set_len(p, len(p) + 4),
    "length field too short": lambda p: _set_len(p, len(p) - 4),
    "trailing junk": lambda p: p + b"\x00" * 7,
    "oversized": lambda p: _set_len(p + b"\x00" * 70000, len(p) + 70000),
    "payload length below 4": lambda p: p[:30] + b"\x00\x02" + p[32:],
    "wrong major version": lambda p: p[:17] + b"\x30" + p[18:],
    "unknown critical payload": _critical_unknown,
    "empty datagram": lambda p: b"",
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_dropped_with_one_line_then_serves(case: str, caplog: pytest.LogCaptureFixture) -> None:
    bad = CASES[case](_init_request())
    p = make_pair()
    with caplog.at_level(logging.INFO, logger="core_ike"):
        p.b.receive(bad, B, A, p.now)
    drops = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(drops) == 1, [r.getMessage() for r in caplog.records]
    assert not p.b.sas
    out = p.b.datagrams_to_send()
    expected = {"wrong major version": NotifyType.INVALID_MAJOR_VERSION,
                "unknown critical payload": NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD}
    if case in expected:
        # RFC 7296 2.5 / 3.1: IKE_SA_INIT requests get the error notify, nothing else
        ((data, _, _),) = out
        resp = decode_message(data)
        assert resp.is_response and [n.type for n in resp.notifies()] == [expected[case]]
    else:
        assert out == []
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED


def test_bad_icv_and_replay_dropped(caplog: pytest.LogCaptureFixture) -> None:
    p = make_pair()
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    child = next(iter(sa.children))
    p.a.rekey_child(sa, child, now=p.now)
    ((pkt, local, remote),) = p.a.datagrams_to_send()
    with caplog.at_level(logging.INFO, logger="core_ike"):
        p.b.receive(pkt[:-1] + bytes([pkt[-1] ^ 0x55]), remote, local, p.now)
    assert [r for r in caplog.records if "integrity check failed" in r.getMessage()]
    assert p.b.datagrams_to_send() == []
    p.b.receive(pkt, remote, local, p.now)
    (resp,) = p.b.datagrams_to_send()
    # a replay of an old, already answered request gets the cached answer, never a second processing
    p.b.receive(pkt, remote, local, p.now)
    (again,) = p.b.datagrams_to_send()
    assert again[0] == resp[0]
    assert len(p.b.ike_sas()[0].children) == 2  # processed once: old + new CHILD_SA
    # an even older message ID is ignored silently
    old = pkt[:20] + struct.pack("!I", 0) + pkt[24:]
    p.b.receive(old, remote, local, p.now)
    assert p.b.datagrams_to_send() == []
    p.a.receive(resp[0], local, remote, p.now)
    p.pump()
    assert len(p.of("a", ev.ChildSaEstablished)) == 2


def test_malformed_packet_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """120 malformed packets in one second give 10 warnings, then one line counting the rest."""
    import logging

    from core_ike.ike.creds import Credentials
    from core_ike.ike.engine import Engine

    eng = Engine([], Credentials())
    with caplog.at_level(logging.WARNING, logger="core_ike.ike"):
        for i in range(120):
            eng.receive(b"\x01" * 10, ("192.0.2.1", 500), ("198.51.100.7", 500), 100.0 + i / 200)
        eng.receive(b"\x01" * 10, ("192.0.2.1", 500), ("198.51.100.7", 500), 101.5)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("dropping malformed packet" in ln for ln in lines) == 11  # 10 in the first second, 1 after
    assert "110 more malformed-packet message(s) suppressed in 2 s" in lines
    assert eng.counters["drop-malformed"] == 121


@pytest.mark.parametrize("exchange", [240, 37])  # ME_CONNECT, INFORMATIONAL
def test_requests_before_ike_auth_are_refused(exchange: int) -> None:
    """After IKE_SA_INIT (keys exist) but before IKE_AUTH, a well-formed request of another exchange
    is answered with INVALID_SYNTAX and never processed (RFC 7296 1.2)."""
    from core_ike.codec.message import decrypt_message
    from core_ike.codec.payloads import IdPayload, NotifyPayload
    from core_ike.constants import IdType, PayloadType

    p = make_pair()
    p.drop = lambda side, data: side == "a->b" and len(p.wire) > 2  # IKE_SA_INIT passes, IKE_AUTH is lost
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    (bob_sa,) = p.b.ike_sas()
    assert not bob_sa.established and bob_sa.in_prot is not None
    req = sa.new_message(exchange, False, 1)
    if exchange == 240:  # a well-formed ME_CONNECT: IDp and the ME notifies ([ME] 4.2)
        req.payloads += [IdPayload(PayloadType.ID_PEER, IdType.FQDN, b"bob@med"),
                         NotifyPayload(NotifyType.ME_CONNECTID, b"\x01" * 4)]
    before = len(p.wire)
    for pkt in sa.tm._encode(req):
        p.b.receive(pkt[4:] if pkt.startswith(b"\x00" * 4) else pkt, bob_sa.local, bob_sa.remote, p.now)
    answers = p.b.datagrams_to_send()
    assert len(answers) == 1
    raw = answers[0][0]
    resp = decrypt_message(decode_message(raw[4:] if raw.startswith(b"\x00" * 4) else raw), sa.in_prot)
    assert resp.is_response and resp.exchange == exchange
    assert resp.notify(NotifyType.INVALID_SYNTAX) is not None
    assert not any(s.established for s in p.b.ike_sas()) and not p.of("b", ev.ChildSaEstablished)
    assert len(p.wire) == before


def test_a_forged_message_from_elsewhere_does_not_move_the_sa() -> None:
    """RFC 7296 2.23: the peer's address is updated only by an authenticated message. A copy of a real
    request with a broken ICV, sent from another address, leaves the SA (and its ESP) where it was."""
    p = make_pair(a_conf={"dpd_delay": 5.0})
    p.a.configs[0].encap = True  # b sees a NAT in front of a: b follows a's moves
    p.a.initiate("home", now=p.now)
    p.pump()
    (bob_sa,) = p.b.ike_sas()
    assert bob_sa.nat_there
    home = bob_sa.remote
    p.drop = lambda side, data: True  # catch a's next request (its DPD) instead of delivering it
    p.advance(5.5)
    (req,) = [d for side, d in p.wire if side == "a->b"][-1:]
    forged = req[:-1] + bytes([req[-1] ^ 1])
    p.b.receive(forged[4:], bob_sa.local, ("198.51.100.66", 4500), p.now)
    p.pump()
    assert bob_sa.remote == home and not p.of("b", ev.PeerAddressChanged)
    p.b.receive(req[4:], bob_sa.local, ("198.51.100.66", 4500), p.now)  # the real one, moved
    p.pump()
    assert bob_sa.remote == ("198.51.100.66", 4500)
    (moved,) = p.of("b", ev.PeerAddressChanged)
    assert moved.remote == ("198.51.100.66", 4500)
