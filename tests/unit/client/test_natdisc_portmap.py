"""Port mapping codecs and fallbacks (mediation_client/portmap.py) and the mapped candidate's priority:
PCP (RFC 6887) and NAT-PMP (RFC 6886) messages byte by byte, their errors, a NAT-PMP-only gateway on
loopback answering a PCP request with UNSUPP_VERSION (RFC 6887 §9), and the default gateway lookup."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from core_ike.constants import MeEndpointType
from core_ike.me.endpoints import host_endpoints, mapped_endpoint, srflx_endpoint
from mediation_client import portmap as pm


def test_natpmp_request_and_responses() -> None:
    assert pm.natpmp_map_request(4500, 4500, 7200) == bytes.fromhex("0001000011941194") + (7200).to_bytes(4, "big")
    assert pm.natpmp_address_request() == b"\x00\x00"
    resp = struct.pack("!BBHIHHI", 0, 129, 0, 99, 4500, 40000, 3600)
    m = pm.natpmp_parse_map(resp)
    assert (m.internal_port, m.external_port, m.lifetime, m.epoch) == (4500, 40000, 3600, 99)
    assert pm.natpmp_parse_address(struct.pack("!BBHI", 0, 128, 0, 5) + bytes([198, 20, 0, 2])) == "198.20.0.2"
    with pytest.raises(pm.PortMapError, match="not authorized"):
        pm.natpmp_parse_map(struct.pack("!BBHIHHI", 0, 129, 2, 0, 4500, 0, 0))
    with pytest.raises(pm.PortMapError, match="short"):
        pm.natpmp_parse_map(resp[:10])
    with pytest.raises(pm.PortMapError, match="opcode"):
        pm.natpmp_parse_map(struct.pack("!BBHIHHI", 0, 130, 0, 0, 1, 1, 1))


def _pcp_response(nonce: bytes, result: int = 0, ext: tuple[str, int] = ("198.20.0.2", 4500),
                  lifetime: int = 7200) -> bytes:
    head = struct.pack("!BBBBII", 2, 0x81, 0, result, lifetime, 1234) + bytes(12)
    ext_ip = ipaddress.IPv6Address(f"::ffff:{ext[0]}").packed
    return head + nonce + struct.pack("!B3xHH", 17, 4500, ext[1]) + ext_ip


def test_pcp_map_request_layout_and_response() -> None:
    nonce = bytes(range(12))
    req = pm.pcp_map_request(nonce, "10.2.0.2", 4500, 7200)
    assert len(req) == 60 and req[:2] == b"\x02\x01" and req[4:8] == (7200).to_bytes(4, "big")
    assert req[8:24] == ipaddress.IPv6Address("::ffff:10.2.0.2").packed
    assert req[24:36] == nonce and req[36] == 17 and req[40:42] == (4500).to_bytes(2, "big")
    assert req[44:60] == ipaddress.IPv6Address("::ffff:0.0.0.0").packed  # no suggested address (RFC 6887 §11.1)
    m = pm.pcp_parse_map(_pcp_response(nonce))
    assert (m.external, m.lifetime, m.nonce, m.internal_port) == (("198.20.0.2", 4500), 7200, nonce, 4500)
    with pytest.raises(pm.PortMapError, match="NOT_AUTHORIZED"):
        pm.pcp_parse_map(_pcp_response(nonce, result=2))
    with pytest.raises(pm.PortMapError, match="short"):
        pm.pcp_parse_map(_pcp_response(nonce)[:40])
    with pytest.raises(ValueError):
        pm.pcp_map_request(b"short", "10.2.0.2", 4500, 1)
    unsupp = struct.pack("!BBH", 0, 0x81, 1)
    assert pm.is_unsupported_version(unsupp) and not pm.is_unsupported_version(_pcp_response(nonce))


class NatPmpOnlyGateway(asyncio.DatagramProtocol):
    """NAT-PMP on loopback: UNSUPP_VERSION to PCP (RFC 6887 §9), mappings to NAT-PMP."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.seen.append(data)
        if data[0] == 2:
            self.transport.sendto(struct.pack("!BBHI", 0, 0x80 | data[1], 1, 0), addr)
        elif data[1] == 1:
            iport, _sugg, life = struct.unpack("!HHI", data[4:12])
            self.transport.sendto(struct.pack("!BBHIHHI", 0, 129, 0, 7, iport, 40000 if life else 0, life), addr)
        elif data[1] == 0:
            self.transport.sendto(struct.pack("!BBHI", 0, 128, 0, 7) + bytes([198, 20, 0, 2]), addr)


def test_falls_back_from_pcp_to_natpmp_and_deletes() -> None:
    gw_ip = "127.0.0.53"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, gw = await loop.create_datagram_endpoint(NatPmpOnlyGateway, local_addr=(gw_ip, pm.PCP_PORT))
        except OSError as e:
            pytest.skip(f"cannot bind {gw_ip}[{pm.PCP_PORT}] here: {e}")
        try:
            mapper = pm.PortMapper(("127.0.0.1", 4500), pm.PortMapConfig(protocols=("pcp", "nat-pmp")), gateway=gw_ip)
            m = await mapper.map_once()
            assert (m.protocol, m.external, m.lifetime) == ("nat-pmp", ("198.20.0.2", 40000), 7200)
            mapper.mapping = m
            await mapper.close()
            assert gw.seen[0][0] == 2  # PCP first
            assert gw.seen[-1] == pm.natpmp_map_request(4500, 0, 0)  # RFC 6886 §3.4 deletion
        finally:
            transport.close()
    asyncio.run(main())


def test_nothing_listening_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.54", 0))  # a loopback address with nothing on 5351
    mapper = pm.PortMapper(("127.0.0.1", 4500), pm.PortMapConfig(protocols=("pcp", "nat-pmp")), gateway="127.0.0.54")
    with pytest.raises(pm.PortMapError, match=r"PCP|5351"):
        asyncio.run(mapper.map_once())


def test_default_gateway(tmp_path: Path) -> None:
    f = tmp_path / "route"
    f.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                 "eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                 "eth0\t00000000\t0100020A\t0003\t0\t0\t0\t00000000\n")
    assert pm.default_gateway(str(f)) == "10.2.0.1"
    assert pm.default_gateway(str(tmp_path / "missing")) is None


def test_mapped_candidate_ranks_between_srflx_and_host() -> None:
    mapped = mapped_endpoint("198.20.0.2", 4500, base=("10.2.0.2", 4500))
    srflx = srflx_endpoint("198.20.0.2", 61000, base=("10.2.0.2", 4500))
    (host,) = host_endpoints(["10.2.0.2"], 4500)
    assert mapped.type == MeEndpointType.SERVER_REFLEXIVE  # on the wire an ordinary ME_ENDPOINT type
    assert srflx.priority < mapped.priority < host.priority
    assert mapped.local_base == ("10.2.0.2", 4500)


def test_mapped_endpoint_reaches_the_peer_in_me_connect() -> None:
    """The candidate hook (MediationClientConfig.extra_endpoints): each side's mapping is sent in its
    ME_ENDPOINTs and the other side checks it (three sans-IO engines, fake clock)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "me_ext"))
    from mex_net import client_config, make_net, register

    from core_ike.me import events as mev

    seen: list[tuple[str, int]] = []

    def mapped(local: tuple[str, int]) -> list:  # type: ignore[type-arg]
        seen.append(local)
        return [mapped_endpoint("198.20.0.9", 4500, base=local)]

    net = make_net(ccfg=client_config(extra_endpoints=mapped))
    register(net)
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    assert seen and all(port == 4500 for _, port in seen)
    pairs = " ".join(p for c in alice.ext.status().connections for p in c.pairs)
    # bob's mapping is a remote candidate of alice's, checked before bob's server-reflexive one
    assert "- 198.20.0.9[4500] (HOST->SERVER_REFLEXIVE)" in pairs, pairs
    assert pairs.index("- 198.20.0.9[4500]") < pairs.index("- 203.0.113.2[4500]"), pairs
