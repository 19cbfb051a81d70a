"""RFC 5780 behaviour discovery (mediation_client/natdisc.py) against an in-memory NAT of each kind in
front of the server's STUN responder: every exchange is real STUN (aioice's codec), time is a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from natdisc_sim import A1, P1, P2, PUBLIC, FakeClock, SimIO, SimNat

from mediation_client.natdisc import DiscoveryConfig, NatBehaviour, Observations, classify, discover
from mediation_server.stun import StunResponder, StunSettings

LOCAL = ("10.1.0.2", 4500)


def run(nat: SimNat, hairpin: bool = True) -> NatBehaviour:
    clock = FakeClock()
    io = SimIO(nat, LOCAL, clock)
    other = SimIO(nat, ("10.1.0.2", 4501), clock) if hairpin else None
    return asyncio.run(discover(io, (A1, P1), DiscoveryConfig(), other, clock=clock))


@pytest.mark.parametrize(("mapping", "filtering"), [
    ("EIM", "EIF"), ("EIM", "ADF"), ("EIM", "APDF"), ("ADM", "ADF"), ("ADM", "APDF"),
    ("APDM", "APDF"), ("APDM", "ADF"),
])
def test_classifies_each_kind(mapping: str, filtering: str) -> None:
    r = run(SimNat(mapping=mapping, filtering=filtering,
                   allocation="preserving" if mapping == "EIM" else "random"))
    assert (r.mapping, r.filtering) == (mapping, filtering), r
    assert r.rfc5780 == "full" and not r.error
    assert r.mapped.startswith(PUBLIC)


def test_port_preservation_and_sequential_allocation() -> None:
    r = run(SimNat(mapping="EIM", filtering="APDF"))
    assert r.port_preservation is True and r.allocation == "preserving"
    assert r.mapped == f"{PUBLIC}[4500]"
    s = run(SimNat(mapping="APDM", filtering="APDF", allocation="sequential"))
    assert s.mapping == "APDM" and s.port_preservation is False
    assert (s.allocation, s.port_step) == ("sequential", 1)
    rnd = run(SimNat(mapping="APDM", filtering="APDF", allocation="random"))
    assert rnd.allocation == "random" and rnd.port_step is None
    assert "random ports" in rnd.summary() and "sequential ports (step 1)" in s.summary()


def test_hairpinning() -> None:
    assert run(SimNat(hairpin=True)).hairpinning is True
    assert run(SimNat(hairpin=False)).hairpinning is False
    assert run(SimNat(), hairpin=False).hairpinning is None


def test_no_nat() -> None:
    r = run(SimNat(mapping="none"))
    assert r.mapping == "none" and r.filtering == "none" and r.port_preservation
    assert r.hairpinning is None  # our mapped address is our own: nothing to hairpin


def test_filtered_tests_cost_bounded_packets() -> None:
    """A filtered test is retransmitted `retries` times, not forever: APDF loses both filtering tests."""
    r = run(SimNat(mapping="EIM", filtering="APDF"), hairpin=False)
    # test I, mapping II + III + the allocation probe answer at once; filtering II and III 3 sends each
    assert r.packets == 4 + 2 * DiscoveryConfig().retries


def test_server_with_only_a_second_port() -> None:
    nat = SimNat(mapping="EIM", filtering="ADF")
    nat.server = StunResponder(StunSettings(A1, P1, alt_port=P2))
    r = run(nat)
    assert (r.mapping, r.filtering, r.rfc5780) == ("EIM|ADM", "EIF|ADF", "port")
    nat = SimNat(mapping="APDM", filtering="APDF", allocation="random")
    nat.server = StunResponder(StunSettings(A1, P1, alt_port=P2))
    assert (run(nat).mapping, run(nat).filtering) == ("APDM", "APDF")


def test_server_without_rfc5780_and_unreachable_server() -> None:
    nat = SimNat()
    nat.server = StunResponder(StunSettings(A1, P1))
    r = run(nat)
    assert (r.mapping, r.filtering, r.rfc5780) == ("unknown", "unknown", "none") and r.notes
    assert r.port_preservation is True
    nat = SimNat()
    nat.server = StunResponder(StunSettings("192.0.2.99", P1))  # answers nothing sent to A1 ... below
    clock = FakeClock()
    io = SimIO(nat, LOCAL, clock)
    io.send = lambda data, dst: None  # type: ignore[method-assign]  # the server never answers
    r = asyncio.run(discover(io, (A1, P1), DiscoveryConfig(), clock=clock))
    assert r.error == f"no STUN answer from {A1}[{P1}]" and "unknown" in r.summary()
    assert r.packets == DiscoveryConfig().retries


def test_classify_partial_observations() -> None:
    """A lost answer in the mapping tests leaves the mapping unknown rather than guessing."""
    obs = Observations(local=LOCAL, primary=(A1, P1), other=("198.51.100.2", P2),
                       mapped={(A1, P1): (PUBLIC, 4500), ("198.51.100.2", P1): None})
    r = classify(obs)
    assert r.mapping == "unknown" and r.filtering == "unknown"


def test_server_on_the_wildcard_address() -> None:
    """OTHER-ADDRESS 0.0.0.0[P2] (a server listening on every address): the other port on the same address."""
    nat = SimNat(mapping="APDM", filtering="APDF", allocation="random")
    nat.server = StunResponder(StunSettings("0.0.0.0", P1, alt_port=P2))
    orig = nat.server.receive

    def on_wildcard(data: bytes, src: tuple[str, int], local: tuple[str, int], now: float):  # type: ignore[no-untyped-def]
        out = orig(data, src, ("0.0.0.0", local[1]), now)
        # the kernel sends from the address the request came to: the NAT sees A1
        return None if out is None else (out[0], (A1, out[1][1]), out[2])

    nat.server.receive = on_wildcard  # type: ignore[method-assign]
    r = run(nat)
    assert (r.mapping, r.filtering, r.rfc5780) == ("APDM", "APDF", "port"), r
