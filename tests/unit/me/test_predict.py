"""Predicted candidates for APDM NATs with sequential ports (core_ike/me/predict.py): the ports, the
endpoints and their ranks, how a peer recognises them, and the mediated connection they make direct
through a simulated sequential symmetric NAT (three sans-IO engines, fake clock)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from core_ike.constants import MeEndpointType
from core_ike.me import events as mev
from core_ike.me.endpoints import (
    MAPPED_PRIORITY,
    decode_endpoint,
    encode_endpoint,
    make_endpoint,
    mapped_endpoint,
    srflx_endpoint,
)
from core_ike.me.predict import (
    PORT_MAX,
    PORT_MIN,
    Allocation,
    predicted_among,
    predicted_endpoints,
    predicted_ports,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "me_ext"))
from mex_net import B_PUB, client_config, make_net, register

BASE = ("10.2.0.2", 4500)


def test_predicted_ports_follow_the_newest_mapping_by_the_step() -> None:
    assert predicted_ports(Allocation(20005, 1), 4) == [20006, 20007, 20008, 20009]
    assert predicted_ports(Allocation(30000, 3), 3) == [30003, 30006, 30009]
    # past the top of the range the NAT starts again at its bottom
    assert predicted_ports(Allocation(PORT_MAX - 1, 2), 3) == [PORT_MIN, PORT_MIN + 2, PORT_MIN + 4]


@pytest.mark.parametrize("alloc", [Allocation(20000, 0), Allocation(20000, 11), Allocation(80, 1),
                                   Allocation(70000, 1)])
def test_predicted_ports_refuse_what_is_no_sequential_allocation(alloc: Allocation) -> None:
    with pytest.raises(ValueError, match="outside"):
        predicted_ports(alloc)


def test_predicted_endpoints_rank_just_below_the_srflx_and_leave_from_its_base() -> None:
    srflx = srflx_endpoint("203.0.113.2", 20000, base=BASE)
    eps = predicted_endpoints(srflx, Allocation(20002, 1), BASE, 4)
    assert [e.port for e in eps] == [20003, 20004, 20005, 20006]
    assert all(e.type == MeEndpointType.SERVER_REFLEXIVE and e.address == "203.0.113.2" for e in eps)
    assert [e.priority for e in eps] == [srflx.priority - 1 - i for i in range(4)]
    assert all(e.local_base == BASE for e in eps)
    # the srflx port itself is not predicted again (a NAT that wrapped to it)
    assert 20000 not in [e.port for e in predicted_endpoints(srflx, Allocation(19999, 1), BASE, 2)]
    assert predicted_endpoints(srflx, Allocation(20002, 1), BASE, 0) == []


def test_a_peer_recognises_predictions_and_nothing_else() -> None:
    srflx = srflx_endpoint("203.0.113.2", 20000, base=BASE)
    host = make_endpoint(MeEndpointType.HOST, *BASE)
    guesses = predicted_endpoints(srflx, Allocation(20002, 1), BASE, 5)
    on_wire = [decode_endpoint(encode_endpoint(e)) for e in [host, srflx, *guesses]]
    found = predicted_among(on_wire)
    assert [e.port for e in found] == [20003, 20004, 20005, 20006, 20007]  # best (nearest) first
    # strongSwan's list: one srflx; a port mapping beside the srflx (2^16 apart): no predictions
    assert predicted_among([host, srflx]) == []
    mapped = mapped_endpoint("203.0.113.2", 4500, base=BASE)
    assert mapped.priority == MAPPED_PRIORITY and predicted_among([host, srflx, mapped]) == []


def _connect(symmetric: tuple[bool, bool], predict: tuple[bool, bool]) -> tuple[object, list[str]]:
    """alice connects to bob through the simulated NATs (sequential APDM: ports 50000, 50001, ... per
    new destination, APDF filtering); each side whose `predict` is set offers predictions after the
    mapping of its mediation SA (its srflx, the newest mapping it knows: 50000 carried IKE_SA_INIT to
    port 500, 50001 the rest after the NAT-T port change, RFC 7296 §2.23)."""
    net = make_net(ccfg=client_config(), symmetric=symmetric)
    for name, on in zip(("alice", "bob"), predict, strict=True):
        node = net.nodes[name]
        if on:
            node.ext.config = dataclasses.replace(node.ext.config, port_allocation=lambda: Allocation(50001, 1))
    register(net)
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(30.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    pairs = [p for c in alice.ext.status().connections for p in c.pairs]
    return (alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed))[0], pairs


def test_port_restricted_to_sequential_symmetric_goes_direct_to_a_predicted_port() -> None:
    ev, pairs = _connect((False, True), (False, True))
    assert isinstance(ev, mev.MediatedEstablished), (ev, pairs)
    # bob's checks went to alice's host address (50002), then to her srflx (50003), the one that works
    assert ev.remote == (B_PUB, 50003), (ev, pairs)
    assert any(p.endswith(f"- {B_PUB}[50003] (HOST->SERVER_REFLEXIVE) SUCCEEDED") for p in pairs), pairs


def test_without_predictions_the_same_nats_fail() -> None:
    ev, pairs = _connect((False, True), (False, False))
    assert isinstance(ev, mev.MediationFailed), (ev, pairs)


def test_sequential_symmetric_on_both_sides_goes_direct_by_the_ladder() -> None:
    """Each side's k-th new mapping carries its k-th check to the peer's k-th prediction: the two
    sides' k-th checks run one five-tuple and both NATs let them in."""
    ev, pairs = _connect((True, True), (True, True))
    assert isinstance(ev, mev.MediatedEstablished), (ev, pairs)
    # the first rung: each side's first new mapping, 50002, toward the other's first prediction
    assert ev.remote == (B_PUB, 50002), (ev, pairs)
