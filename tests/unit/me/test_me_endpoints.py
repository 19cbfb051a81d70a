"""ME endpoints: priorities ([ME] §3.3.5.1), ME_ENDPOINT codec (docs/protocol.md §2.3, §4.2), gathering."""

from __future__ import annotations

import pytest

from core_ike.constants import MeEndpointFamily, MeEndpointType, NotifyType
from core_ike.errors import ProtocolError
from core_ike.me.endpoints import (
    Endpoint,
    HostAddress,
    addressless_endpoint,
    decode_endpoint,
    encode_endpoint,
    endpoint_priority,
    host_candidates,
    host_endpoints,
    limit_endpoints,
    make_endpoint,
    remove_redundant,
    srflx_endpoint,
    with_base,
)


@pytest.mark.parametrize(("ep_type", "prio"), [
    (MeEndpointType.HOST, 0x00FFFFFF),
    (MeEndpointType.PEER_REFLEXIVE, 0x0080FFFF),
    (MeEndpointType.SERVER_REFLEXIVE, 0x0040FFFF),
    (MeEndpointType.RELAYED, 0x0000FFFF),
])
def test_priorities_table(ep_type: MeEndpointType, prio: int) -> None:
    assert endpoint_priority(ep_type) == prio


def test_priority_formula_and_bounds() -> None:
    assert endpoint_priority(MeEndpointType.HOST, 0) == 255 << 16
    assert endpoint_priority(MeEndpointType.PEER_REFLEXIVE, 1) > endpoint_priority(
        MeEndpointType.SERVER_REFLEXIVE)  # prflx MUST rank above srflx
    with pytest.raises(ValueError):
        endpoint_priority(MeEndpointType.HOST, 65536)


V4 = make_endpoint(MeEndpointType.PEER_REFLEXIVE, "203.0.113.1", 4500, priority=0x0080FFFF)
V6 = make_endpoint(MeEndpointType.HOST, "2001:db8::1", 4500)


@pytest.mark.parametrize(("ep", "hexdata"), [
    (addressless_endpoint(MeEndpointType.PEER_REFLEXIVE), "0080ffff00020000"),
    (addressless_endpoint(MeEndpointType.SERVER_REFLEXIVE, priority=0), "0000000000030000"),
    (V4, "0080ffff01021194cb007101"),
    (V6, "00ffffff02011194" + "20010db8000000000000000000000001"),
])
def test_codec_roundtrip(ep: Endpoint, hexdata: str) -> None:
    assert encode_endpoint(ep).hex() == hexdata
    back = decode_endpoint(bytes.fromhex(hexdata))
    assert back == ep


@pytest.mark.parametrize(("hexdata", "why"), [
    ("", "0 octets"),
    ("0080ffff000200", "7 octets"),
    ("0080ffff0102119400", "9 octets"),
    ("0080ffff03021194cb007101", "family 3"),
    ("0080ffff01001194cb007101", "type 0"),
    ("0080ffff01051194cb007101", "type 5"),
    ("0080ffff00021194cb007101", "family NONE with 12"),
    ("0080ffff01020000", "IPv4 with 8"),
    ("0080ffff02021194cb007101", "IPv6 with 12"),
    ("0080ffff01021194" + "00" * 16, "IPv4 with 24"),
])
def test_codec_malformed(hexdata: str, why: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_endpoint(bytes.fromhex(hexdata))
    assert ei.value.notify == NotifyType.INVALID_SYNTAX, why


def test_decoded_endpoints_are_kept_per_octets() -> None:
    """The same octets give the same (immutable) Endpoint, from bytes or a memoryview; other octets another;
    invalid octets raise each time (nothing cached for them)."""
    data = bytes.fromhex("00ffffff01011194cb007101")  # HOST 203.0.113.1[4500]
    ep = decode_endpoint(data)
    assert ep == make_endpoint(MeEndpointType.HOST, "203.0.113.1", 4500)
    assert decode_endpoint(bytearray(data)) is ep and decode_endpoint(memoryview(data)) is ep
    assert decode_endpoint(bytes.fromhex("00ffffff01011195cb007101")).port == 4501
    for _ in range(2):
        with pytest.raises(ProtocolError):
            decode_endpoint(bytes.fromhex("0080ffff03021194cb007101"))


def test_addressless_ignores_port() -> None:
    ep = decode_endpoint(bytes.fromhex("0040ffff00031194"))
    assert ep.family == MeEndpointFamily.NONE and ep.address is None and ep.port == 0


def test_addr_and_base_follow_the_endpoint_made() -> None:
    """An endpoint made from another (with_base: the base of a learnt or mapped one) has its own addr and
    local_base, the original keeps its, and an address-less one raises at every read."""
    host = make_endpoint(MeEndpointType.HOST, "192.0.2.1", 4500)
    assert host.addr == ("192.0.2.1", 4500) and host.local_base == ("192.0.2.1", 4500)
    based = with_base(host, ("10.0.0.1", 4500))
    assert based.local_base == ("10.0.0.1", 4500) and host.local_base == ("192.0.2.1", 4500)
    assert based == Endpoint(host.type, host.family, host.address, host.port, host.priority, ("10.0.0.1", 4500))
    srflx = srflx_endpoint("198.51.100.7", 61000, base=("10.0.0.1", 4500))
    assert srflx.addr == ("198.51.100.7", 61000) and srflx.local_base == ("10.0.0.1", 4500)
    bare = addressless_endpoint(MeEndpointType.SERVER_REFLEXIVE)
    for _ in range(2):
        with pytest.raises(ValueError, match="no transport address"):
            _ = bare.addr
    assert hash(host) == hash(make_endpoint(MeEndpointType.HOST, "192.0.2.1", 4500))


def test_remove_redundant_same_address_and_base() -> None:
    host = make_endpoint(MeEndpointType.HOST, "10.1.0.2", 4500)
    prflx = make_endpoint(MeEndpointType.PEER_REFLEXIVE, "10.1.0.2", 4500, base=("10.1.0.2", 4500))
    srflx = srflx_endpoint("203.0.113.1", 4500, base=("10.1.0.2", 4500))
    other_base = make_endpoint(MeEndpointType.PEER_REFLEXIVE, "203.0.113.1", 4500, base=("10.1.0.3", 4500))
    out = remove_redundant([prflx, srflx, host, other_base])
    assert out == [host, srflx, other_base]


def test_limit_endpoints_drops_lowest_first() -> None:
    eps = [make_endpoint(MeEndpointType.SERVER_REFLEXIVE, "192.0.2.1", 1, ip_pref=1),
           make_endpoint(MeEndpointType.HOST, "192.0.2.2", 1),
           make_endpoint(MeEndpointType.SERVER_REFLEXIVE, "192.0.2.3", 1)]
    assert [e.address for e in limit_endpoints(eps, 2)] == ["192.0.2.2", "192.0.2.3"]
    assert limit_endpoints(eps, 0) == [] and limit_endpoints(eps, 3) == eps


def test_limit_endpoints_keeps_one_relayed_endpoint() -> None:
    """The RELAYED endpoint ranks last (type preference 0) but is exempt: others are trimmed instead."""
    hosts = [make_endpoint(MeEndpointType.HOST, f"192.0.2.{i}", 4500, ip_pref=100 + i) for i in range(1, 20)]
    relayed = make_endpoint(MeEndpointType.RELAYED, "198.51.100.1", 50001)
    out = limit_endpoints([*hosts[:8], relayed, *hosts[8:]], 16)
    assert len(out) == 16 and relayed in out
    # the trimmed ones are the lowest-priority hosts (4 dropped: 19 hosts + 1 relayed -> 16)
    assert {e.address for e in out if e.type == MeEndpointType.HOST} == {f"192.0.2.{i}" for i in range(5, 20)}
    assert out.index(relayed) == 4  # original order kept
    # at most one RELAYED endpoint is exempt: the best one; further RELAYED ones rank as usual
    worse = make_endpoint(MeEndpointType.RELAYED, "198.51.100.1", 50003, ip_pref=1)
    out = limit_endpoints([worse, relayed, *hosts[:4]], 3)
    assert out == [relayed, hosts[2], hosts[3]]
    assert limit_endpoints([*hosts[:3], relayed], 1) == [relayed]


def test_host_endpoints_pure_part() -> None:
    eps = host_endpoints(["127.0.0.1", "10.1.0.2", "::1", "fe80::1", "2001:db8::2", "0.0.0.0",
                          "10.1.0.2"], 4500)
    assert [(e.address, e.port, e.type) for e in eps] == [
        ("10.1.0.2", 4500, MeEndpointType.HOST), ("2001:db8::2", 4500, MeEndpointType.HOST)]
    # RFC 8421 spirit: the global IPv6 HOST ranks above the IPv4 HOST (strongSwan: 0x00FFFFFF for both)
    assert [e.priority for e in eps] == [0x00FFFFFE, 0x00FFFFFF]
    assert all(e.priority == 0x00FFFFFF for e in host_endpoints(["10.1.0.2", "2001:db8::2"], 4500, ip_pref=65535))


# an address list as a host with a tunnel /32 on lo, a container bridge, a VPN device and our own TUN has it
FOUND = [
    HostAddress("127.0.0.1", "lo", loopback=True), HostAddress("10.10.1.1", "lo", loopback=True),
    HostAddress("10.1.0.2", "eth0"), HostAddress("2001:db8::2", "eth0"), HostAddress("fe80::1%eth0", "eth0"),
    HostAddress("172.17.0.1", "docker0"), HostAddress("10.8.0.6", "tun0"), HostAddress("10.99.0.1", "ipsec0"),
    HostAddress("192.0.2.9", "eth1", usable=False), HostAddress("2001:db8::3", "eth0", usable=False),
]


def test_host_candidates_only_where_a_socket_is_bound() -> None:
    # the daemon's sockets on 10.1.0.2 only (listen = ["10.1.0.2"]): nothing else can be a check's source
    assert host_candidates(FOUND, ["10.1.0.2"]) == ["10.1.0.2"]
    # sockets on every address the host had at start (the default listen): still no loopback-interface
    # address (the /32 on lo), no down interface, no tentative IPv6 address, not our TUN device
    everything = [h.address.split("%")[0] for h in FOUND]
    assert host_candidates(FOUND, everything, exclude_interfaces=["ipsec0"]) == [
        "10.1.0.2", "2001:db8::2", "172.17.0.1", "10.8.0.6"]
    # a virtual IP we installed is excluded by address, wherever it sits
    assert host_candidates(FOUND, everything, exclude_interfaces=["ipsec0"], exclude_addresses=["10.8.0.6"]) == [
        "10.1.0.2", "2001:db8::2", "172.17.0.1"]


def test_host_candidates_wildcard_bind_covers_its_family_only() -> None:
    assert host_candidates(FOUND, ["0.0.0.0"], exclude_interfaces=["ipsec0"]) == ["10.1.0.2", "172.17.0.1", "10.8.0.6"]
    assert host_candidates(FOUND, ["::"]) == ["2001:db8::2"]
    assert host_candidates(FOUND, []) == []


def test_host_candidates_canonical_and_deduplicated() -> None:
    found = [HostAddress("2001:DB8:0:0::2", "eth0"), HostAddress("2001:db8::2", "eth1"), HostAddress("bogus", "x")]
    assert host_candidates(found, ["2001:db8::2", "not an address"]) == ["2001:db8::2"]
    eps = host_endpoints(host_candidates(FOUND, ["10.1.0.2"]), 4500)
    assert [(e.address, e.port, e.type) for e in eps] == [("10.1.0.2", 4500, MeEndpointType.HOST)]
