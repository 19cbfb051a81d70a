"""ME_CONNECT notify sets (docs/protocol.md §2.5, §4.1, §4.2)."""

from __future__ import annotations

import pytest

from core_ike.codec.payloads import IdPayload, NotifyPayload
from core_ike.constants import IdType, MeEndpointType, NotifyType, PayloadType
from core_ike.errors import ProtocolError
from core_ike.me.connect import (
    ConnectKind,
    build_callback,
    build_connect,
    build_connect_failed,
    build_relay,
    new_connect_id,
    new_connect_key,
    parse_connect,
    parse_connect_response,
)
from core_ike.me.endpoints import make_endpoint, srflx_endpoint
from core_ike.rng import SeededRng

ALICE = IdPayload(PayloadType.ID_PEER, IdType.RFC822_ADDR, b"alice@example.org")
BOB = IdPayload(PayloadType.IDi, IdType.RFC822_ADDR, b"bob@example.org")
EPS = [make_endpoint(MeEndpointType.HOST, "10.1.0.2", 4500),
       srflx_endpoint("203.0.113.1", 4500, base=("10.1.0.2", 4500))]

RNG = SeededRng("connect")


def _types(payloads: list[object]) -> list[object]:
    return [p.type if isinstance(p, NotifyPayload) else p.ptype for p in payloads]  # type: ignore[attr-defined]


def test_generation_lengths() -> None:
    assert len(new_connect_id(RNG)) == 4 and len(new_connect_id(RNG, 16)) == 16
    assert len(new_connect_key(RNG)) == 16
    with pytest.raises(ValueError):
        new_connect_id(RNG, 3)
    with pytest.raises(ValueError):
        new_connect_key(RNG, 33)


def test_four_relay_messages_in_strongswan_order() -> None:
    cid, key_a, key_b = new_connect_id(RNG), new_connect_key(RNG), new_connect_key(RNG)
    a_ms = build_connect(cid, key_a, EPS, BOB, callback=True)
    assert _types(a_ms) == [NotifyType.ME_CONNECTID, NotifyType.ME_CONNECTKEY, NotifyType.ME_CALLBACK,
                            NotifyType.ME_ENDPOINT, NotifyType.ME_ENDPOINT, PayloadType.ID_PEER]
    req = parse_connect(a_ms)
    assert req.kind is ConnectKind.REQUEST and req.callback and req.peer.data == b"bob@example.org"
    assert [e.addr for e in req.endpoints] == [("10.1.0.2", 4500), ("203.0.113.1", 4500)]
    ms_b = build_relay(req, ALICE)  # ID_PEER rewritten, no ME_CALLBACK, endpoints unchanged
    assert _types(ms_b) == [NotifyType.ME_CONNECTID, NotifyType.ME_CONNECTKEY, NotifyType.ME_ENDPOINT,
                            NotifyType.ME_ENDPOINT, PayloadType.ID_PEER]
    relayed = parse_connect(ms_b)
    assert relayed.endpoint_data == req.endpoint_data and relayed.key == key_a
    b_ms = build_connect(cid, key_b, EPS[:1], ALICE, response=True)
    resp = parse_connect(b_ms)
    assert resp.kind is ConnectKind.RESPONSE
    ms_a = build_relay(resp, BOB)
    assert NotifyType.ME_RESPONSE in _types(ms_a)
    assert parse_connect(ms_a).kind is ConnectKind.RESPONSE


def test_any_order_accepted() -> None:
    payloads = build_connect(new_connect_id(RNG), new_connect_key(RNG), EPS, BOB)
    assert parse_connect(list(reversed(payloads))).kind is ConnectKind.REQUEST


def test_callback_message() -> None:
    msg = build_callback(BOB)
    assert _types(msg) == [NotifyType.ME_CALLBACK, PayloadType.ID_PEER]
    assert parse_connect(msg).kind is ConnectKind.CALLBACK


def _with(payloads: list[object], ntype: int, data: bytes) -> list[object]:
    return [NotifyPayload(ntype, data) if isinstance(p, NotifyPayload) and p.type == ntype else p
            for p in payloads]


@pytest.mark.parametrize("mutate", [
    lambda ps: [p for p in ps if not isinstance(p, IdPayload)],
    lambda ps: [p for p in ps if not (isinstance(p, NotifyPayload) and p.type == NotifyType.ME_ENDPOINT)],
    lambda ps: [p for p in ps if not (isinstance(p, NotifyPayload) and p.type == NotifyType.ME_CONNECTKEY)],
    lambda ps: _with(ps, NotifyType.ME_CONNECTID, b"abc"),
    lambda ps: _with(ps, NotifyType.ME_CONNECTID, b"a" * 17),
    lambda ps: _with(ps, NotifyType.ME_CONNECTKEY, b"k" * 15),
    lambda ps: _with(ps, NotifyType.ME_CONNECTKEY, b"k" * 33),
    lambda ps: _with(ps, NotifyType.ME_ENDPOINT, b"\x00" * 10),
    lambda ps: [*ps, ALICE],
])
def test_invalid_syntax(mutate) -> None:  # type: ignore[no-untyped-def]
    payloads = build_connect(new_connect_id(RNG), new_connect_key(RNG), EPS[:1], BOB)
    with pytest.raises(ProtocolError) as ei:
        parse_connect(mutate(payloads))
    assert ei.value.notify == NotifyType.INVALID_SYNTAX


def test_responses() -> None:
    assert parse_connect_response([]).ok
    failed = parse_connect_response(build_connect_failed())
    assert not failed.ok and failed.error == NotifyType.ME_CONNECT_FAILED


def test_first_of_repeated_notifies_counts_and_the_nat_behaviour_is_read() -> None:
    from core_ike.me.natinfo import IKEME_NAT_BEHAVIOUR

    cid, key = new_connect_id(RNG), new_connect_key(RNG)
    payloads = build_connect(cid, key, EPS, BOB, callback=True)
    extra = [NotifyPayload(int(NotifyType.ME_CONNECTID), b"\x09" * 4), NotifyPayload(NotifyType.ME_CONNECTKEY, b"\x08" * 16),
             NotifyPayload(IKEME_NAT_BEHAVIOUR, b"mapping EIM"), NotifyPayload(IKEME_NAT_BEHAVIOUR, b"second"),
             IdPayload(PayloadType.IDi, IdType.RFC822_ADDR, b"not-a-peer@example.org")]  # only ID_PEER names the peer
    req = parse_connect([*payloads[:-1], *extra, payloads[-1]])
    assert (req.connect_id, req.key, req.nat) == (cid, key, b"mapping EIM")
    assert req.kind is ConnectKind.REQUEST and req.callback and req.peer.data == b"bob@example.org"
    assert [e.addr for e in req.endpoints] == [e.addr for e in EPS]
    assert parse_connect(payloads).nat is None
