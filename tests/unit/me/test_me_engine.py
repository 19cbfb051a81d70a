"""CheckEngine: several check lists keyed by connect ID."""

from __future__ import annotations

import pytest

from core_ike.constants import MeEndpointType
from core_ike.errors import LocalError
from core_ike.me.checklist import CheckListStopped, PairState, PairStateChanged
from core_ike.me.checks import decode_check, encode_check, make_check, request_endpoint
from core_ike.me.endpoints import make_endpoint
from core_ike.me.engine import CheckEngine

KEY_A, KEY_B = bytes(range(16)), bytes(range(16, 32))
A, B = ("10.1.0.2", 4500), ("203.0.113.2", 4500)


def test_demux_duplicates_stop() -> None:
    eng = CheckEngine()
    eng.create_initiator(b"cid1", KEY_A, [make_endpoint(MeEndpointType.HOST, *A)], 0.0)
    with pytest.raises(LocalError):
        eng.create_initiator(b"cid1", KEY_A, [], 0.0)
    eng.create_responder(b"cid2", KEY_B, [make_endpoint(MeEndpointType.HOST, *B)], 0.0)
    eng.set_responder_data(b"cid2", KEY_A, [make_endpoint(MeEndpointType.HOST, *A)], 0.0)
    assert eng.get_timer() == 0.0
    eng.handle_timer(0.0)
    out = eng.datagrams_to_send()
    assert [(s, d) for _, s, d in out] == [(A, B)]
    req = encode_check(make_check(False, 1, b"cid2", request_endpoint(), KEY_B))
    assert eng.receive_check(req, B, A, 0.01) is None
    resp = decode_check(eng.datagrams_to_send()[0][0])
    assert resp.is_response and resp.verify(KEY_A)
    assert eng.receive_check(encode_check(make_check(False, 1, b"nope", request_endpoint(), KEY_B)),
                             B, A, 0.01) == "unknown connect ID"
    cl = eng.get(b"cid2")
    assert cl is not None and cl.pairs[0].heard and cl.pairs[0].state == PairState.IN_PROGRESS  # triggered
    assert eng.stop(b"cid2", 0.02) and len(eng) == 1
    events = []
    while (ev := eng.next_event()) is not None:
        events.append(ev)
    assert isinstance(events[-1], CheckListStopped) and events[-1].connect_id == b"cid2"
    assert not eng.stop(b"cid2", 0.03)



def test_a_pairs_success_is_its_only_event() -> None:
    """Two engines, alice's initiator list and bob's responder list, checks until alice's pair succeeds:
    of its changes (added, in progress, succeeded) only the success is queued, the one her client acts on."""
    a, b = CheckEngine(), CheckEngine()
    a.create_initiator(b"cid", KEY_A, [make_endpoint(MeEndpointType.HOST, *A)], 0.0)
    b.create_responder(b"cid", KEY_A, [make_endpoint(MeEndpointType.HOST, *A)], 0.0)
    b.set_responder_data(b"cid", KEY_B, [make_endpoint(MeEndpointType.HOST, *B)], 0.0)
    a.set_responder_data(b"cid", KEY_B, [make_endpoint(MeEndpointType.HOST, *B)], 0.0)
    a.handle_timer(0.0)
    for data, src, dst in a.datagrams_to_send():  # alice's check reaches bob, bob's answer alice
        assert b.receive_check(data, src, dst, 0.001) is None
    for data, src, dst in b.datagrams_to_send():
        a.receive_check(data, src, dst, 0.002)
    events = []
    while (ev := a.next_event()) is not None:
        events.append(ev)
    assert [(e.old, e.new) for e in events if isinstance(e, PairStateChanged)] == [
        (PairState.IN_PROGRESS, PairState.SUCCEEDED)]
