"""The data plane's traffic selector (core_ike/io/dataplane.py): made from text, from a network object or
from its parts, the same value (equality, hash, the ipaddress network it gives), with host bits cleared as
ipaddress's strict=False does (RFC 7296 3.13.1: a selector is an address range)."""

from __future__ import annotations

import ipaddress
import pickle

import pytest

from core_ike.io.dataplane import Direction, PolicyParams, TrafficSelector, network

TEXTS = ["10.201.0.7/32", "10.201.0.7", "10.201.0.0/16", "10.201.3.9/16", "0.0.0.0/0", "192.0.2.255/31",
         "2001:db8::1/128", "2001:db8::1/64", "::/0"]


@pytest.mark.parametrize("text", TEXTS)
def test_parsed_equals_made_from_the_network(text: str) -> None:
    net = ipaddress.ip_network(text, strict=False)
    parsed, made = TrafficSelector.parse(text), TrafficSelector(net)
    assert parsed == made and hash(parsed) == hash(made)
    assert parsed.subnet == net and type(parsed.subnet) is type(net)
    assert parsed.net == (net.version, net.prefixlen, int(net.network_address))
    assert network(text) == net
    assert repr(parsed) == repr(made) == f"TrafficSelector(subnet={net!r}, protocol=0, port_start=0, port_end=65535)"


def test_from_parts_without_a_network_until_asked() -> None:
    ts = TrafficSelector.of(4, 24, int(ipaddress.IPv4Address("10.1.2.0")), 6, 80, 80)
    assert ts._subnet is None  # made when first asked for
    assert ts.subnet == ipaddress.ip_network("10.1.2.0/24") and ts.subnet is ts.subnet
    assert ts == TrafficSelector.parse("10.1.2.0/24", 6, (80, 80))
    assert not ts.any_port


def test_protocol_and_ports_tell_selectors_apart() -> None:
    a = TrafficSelector.parse("10.1.0.0/16")
    assert a != TrafficSelector.parse("10.1.0.0/16", 17)
    assert a != TrafficSelector.parse("10.1.0.0/16", 0, (0, 1023))
    assert a != TrafficSelector.parse("10.1.0.0/24")
    assert a != TrafficSelector.parse("::/0") and a != "10.1.0.0/16"
    assert len({a, TrafficSelector.parse("10.1.3.3/16"), TrafficSelector(ipaddress.ip_network("10.1.0.0/16"))}) == 1


def test_bad_text_is_ipaddress_error() -> None:
    for bad in ("10.1.0.0/33", "10.1.0.256/32", "010.1.0.1/32", "dynamic"):
        with pytest.raises(ValueError):
            TrafficSelector.parse(bad)


def test_policies_of_equal_selectors_are_equal_and_survive_pickling() -> None:
    p = PolicyParams(TrafficSelector.parse("10.200.0.1/32"), TrafficSelector.parse("10.201.0.9"), Direction.OUT, 3)
    q = PolicyParams(TrafficSelector(ipaddress.ip_network("10.200.0.1/32")),
                     TrafficSelector.of(4, 32, int(ipaddress.IPv4Address("10.201.0.9"))), Direction.OUT, 3)
    assert p == q and hash(p) == hash(q)
    back = pickle.loads(pickle.dumps(p))
    assert back == p and hash(back) == hash(p) and back.remote.subnet == ipaddress.ip_network("10.201.0.9/32")
