"""The direct answer to the common IKE_AUTH request when it arrives in RFC 7383 fragments
(core_ike/ike/fastauth.py `answer_reassembled`), as strongSwan's charon sends one with an RSA certificate:
the same octets on the wire, the same IKE_SA, CHILD_SA, events and info lines as the general path, for
fragments in order, out of order and duplicated, the retransmitted fragments answered as the general path
answers them, and every other request left to the general path."""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Callable
from typing import Any

import pytest
from ike_pair import B_IP, make_pair
from test_ike_fastauth import (
    CHARON_NOTIFIES,
    CHILD_NOTIFIES,
    _certified,
    _child,
    _ike,
    _same,
    _untrusted,
    _with_notifies,
    _wrong_secret,
)
from test_ike_fastinit import _deterministic_keys

from core_ike.ike import events as ev
from core_ike.ike import fastauth
from core_ike.ike.config import AuthConfig
from core_ike.ike.identity import Identity

FRAGMENT = 100  # the initiator's fragment_size: every IKE_AUTH request of these tests takes several (RFC 7383 2.5)
Order = Callable[[int], list[int]]  # fragment numbers 1..total -> the order they are delivered in

ORDERS: dict[str, Order] = {
    "in order": lambda n: list(range(1, n + 1)),
    "reversed": lambda n: list(range(n, 0, -1)),
    "the last first": lambda n: [n, *range(1, n)],
    "one twice": lambda n: [1, 1, *range(2, n + 1)],  # RFC 7383 2.6.1: a duplicate is dropped
    "a later one twice": lambda n: [2, *range(1, n + 1)],
}


def _fragment(d: bytes) -> tuple[int, int] | None:
    """Fragment number and total of an IKE_AUTH request in an SKF payload (RFC 7383 2.5), else None."""
    if len(d) < 36 or d[16] != 53 or d[18] != 35 or d[19] & 0x20:
        return None
    number, total = struct.unpack_from("!HH", d, 32)
    return number, total


def _reorder(p: Any, order: Order) -> None:
    """b gets each IKE_AUTH request's fragments in `order` once it has been sent all of them."""
    receive = p.b.receive
    held: list[tuple[int, bytes, Any, Any]] = []

    def deliver(data: bytes, local: Any, remote: Any, now: float) -> None:
        frag = _fragment(data)
        if frag is None:
            receive(data, local, remote, now)
            return
        held.append((frag[0], data, local, remote))
        if len(held) == frag[1]:
            by_number = {n: (d, lo, re) for n, d, lo, re in held}
            held.clear()
            for n in order(frag[1]):
                receive(*by_number[n], now)

    p.b.receive = deliver


def _run(monkeypatch: pytest.MonkeyPatch, fast: bool, order: str = "in order", rounds: int = 2,
         notifies: tuple[int, ...] = (), with_child: bool = False, setup: Any = None,
         a_conf: dict[str, Any] | None = None, **kw: Any) -> tuple[Any, int]:
    """`rounds` IKE_SAs from a to b, a's IKE_AUTH requests in fragments delivered in `order`; the pair
    and how many of b's reassembled requests the direct answer took."""
    taken = [0]
    orig = fastauth.answer_reassembled

    def counting(*a: Any) -> bool:
        r = orig(*a)
        taken[0] += r
        return r

    monkeypatch.setattr(fastauth, "answer_reassembled", counting if fast else (lambda *a: False))
    monkeypatch.setattr(fastauth, "answer", fastauth.answer if fast else (lambda *a: False))
    if notifies:
        _with_notifies(monkeypatch, notifies)
    p = make_pair(seed=11, a_conf={"fragment_size": FRAGMENT, **(a_conf or {})}, **kw)
    if not with_child:
        p.a.configs[0] = dataclasses.replace(p.a.configs[0], children=[])  # RFC 6023
    if setup is not None:
        setup(p)
    _deterministic_keys(monkeypatch, p)
    _reorder(p, ORDERS[order])
    for _ in range(rounds):
        p.a.initiate("home", now=p.now, remote=(B_IP, 500))
        p.pump()
        p.now += 1.0
    return p, taken[0]


SHAPES = [
    {},  # IDi N(INITIAL_CONTACT) IDr AUTH, then IDi IDr AUTH
    {"notifies": CHARON_NOTIFIES},
    {"a_conf": {"encap": True}},  # NAT seen: the float to 4500, the non-ESP marker
    {"auth": "pubkey"},  # RFC 7427 signatures with raw public keys (no CERT)
    {"auth": "pubkey", "setup": lambda p: _certified(p)},  # IDi CERT CERTREQ IDr AUTH / IDr CERT AUTH
    {"auth": "pubkey", "setup": lambda p: _certified(p, "rsa"), "notifies": CHARON_NOTIFIES},  # as charon with RSA
    {"with_child": True},  # one CHILD_SA (RFC 7296 1.2)
    {"with_child": True, "notifies": CHILD_NOTIFIES},
    {"with_child": True, "auth": "pubkey"},
    {"with_child": True, "auth": "pubkey", "setup": lambda p: _certified(p, "rsa")},
    {"with_child": True, "setup": lambda p: _child(p, remote_ts=["10.9.0.0/24"])},  # N(TS_UNACCEPT)
]


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("shape", SHAPES)
def test_the_same_octets_ike_sa_and_events_as_the_general_path(monkeypatch: pytest.MonkeyPatch,
                                                               shape: dict[str, Any], order: str) -> None:
    fast, taken = _run(monkeypatch, True, order, **shape)
    general, _ = _run(monkeypatch, False, order, **shape)
    assert taken == 2
    assert len(fast.of("b", ev.IkeSaEstablished)) == 2
    assert all(sa.tm.fragments is not None and not list(sa.tm.fragments.reassembler) for sa in fast.b.ike_sas())
    _same(fast, general)


def test_the_requests_are_fragmented() -> None:
    """The premise of these tests: each IKE_AUTH request takes several fragments."""
    p = make_pair(auth="pubkey", a_conf={"fragment_size": FRAGMENT})
    _certified(p, "rsa")
    p.a.initiate("home", now=p.now, remote=(B_IP, 500))
    p.pump()
    totals = [f[1] for f in (_fragment(_ike(d)) for side, d in p.wire if side == "a->b") if f is not None]
    assert totals and min(totals) >= 2 and len(p.of("b", ev.IkeSaEstablished)) == 1


@pytest.mark.parametrize("shape", [{}, {"with_child": True, "auth": "pubkey", "setup": lambda p: _certified(p, "rsa"),
                                        "notifies": CHILD_NOTIFIES}])
@pytest.mark.parametrize("order", ["in order", "reversed", "one twice"])
def test_info_lines_the_same_as_the_general_path(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                 shape: dict[str, Any], order: str) -> None:
    """The whole transcript at info level (our users' default), both sides: the "received packet" and
    "received fragment" lines of each fragment, the drop of a duplicate, then the request's."""
    logged: list[list[tuple[str, int, str]]] = []
    for fast in (True, False):
        caplog.set_level(logging.INFO)
        caplog.clear()
        _, taken = _run(monkeypatch, fast, order, **shape)
        assert taken == (2 if fast else 0)
        logged.append([(r.name, r.levelno, r.getMessage()) for r in caplog.records])
    assert logged[0] == logged[1]
    messages = [m for _, _, m in logged[0]]
    assert any(m.endswith("reassembled fragmented IKE message") for m in messages)
    assert any(m.startswith("IKE_SA gw[") and "established" in m for m in messages)


@pytest.mark.parametrize("case", [
    {"setup": _wrong_secret},  # AUTHENTICATION_FAILED
    {"with_child": True, "setup": _wrong_secret},
    {"auth": "pubkey", "setup": _untrusted},  # AUTHENTICATION_FAILED: no trusted issuer
    {"with_child": True, "setup": lambda p: p.a.configs[0].__setattr__("vips", ["0.0.0.0"])},  # CP(CFG_REQUEST)
    {"auth": "pubkey", "setup": lambda p: _certified(p), "b_conf": {"fragment_size": 300}},  # a fragmented response
    {"auth": "pubkey", "setup": lambda p: setattr(p.b.creds, "resolver", lambda ident: None)},  # may be asked
])
@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_other_requests_go_the_general_way(monkeypatch: pytest.MonkeyPatch, case: dict[str, Any], order: str) -> None:
    fast, taken = _run(monkeypatch, True, order, **case)
    general, _ = _run(monkeypatch, False, order, **case)
    assert taken == 0 and any(_fragment(_ike(d)) for side, d in fast.wire if side == "a->b")
    _same(fast, general)


def test_eap_goes_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """An IKE_AUTH request without AUTH (RFC 7296 2.16, EAP) in fragments is the general path's."""
    def setup(p: Any) -> None:  # as tests/unit/ike/test_ike_eap.py: a EAP-MD5 peer, b its server
        p.a.configs[0].local = AuthConfig("eap-md5", Identity.parse("alice@test"))
        p.b.configs[0].remote = AuthConfig("eap-md5", Identity.parse("%any"))
        for eng in (p.a, p.b):
            eng.creds.add_eap_secret("carol-pw", "alice@test")

    small = {"fragment_size": 80}  # the request without AUTH is short
    fast, taken = _run(monkeypatch, True, "reversed", rounds=1, setup=setup, a_conf=small)
    general, _ = _run(monkeypatch, False, "reversed", rounds=1, setup=setup, a_conf=small)
    assert taken == 0 and any(_fragment(_ike(d)) for side, d in fast.wire if side == "a->b")
    assert len(fast.of("b", ev.IkeSaEstablished)) == 1
    _same(fast, general)


@pytest.mark.parametrize("number", [1, 2])
def test_a_retransmitted_fragment_gets_what_the_general_path_gives(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   number: int) -> None:
    """RFC 7383 2.6.1: fragment 1 of the answered request again brings the kept response again; another
    fragment is dropped. Both as the general path does, with the same lines."""
    results = []
    for fast in (True, False):
        caplog.set_level(logging.INFO)
        p, taken = _run(monkeypatch, fast, rounds=1, auth="pubkey", setup=lambda p: _certified(p, "rsa"))
        assert taken == (1 if fast else 0)
        frags = [_ike(d) for side, d in p.wire if side == "a->b" and _fragment(_ike(d)) is not None]
        again = next(d for d in frags if _fragment(d) == (number, _fragment(d)[1]))  # type: ignore[index]
        ((sa,),) = [p.b.ike_sas()]
        caplog.clear()
        type(p.b).receive(p.b, again, sa.local, sa.remote, p.now)  # not held back by _reorder
        sent = [d for d, _, _ in p.b.datagrams_to_send()]
        results.append((sent, [r.getMessage() for r in caplog.records], p.wire[-1][1], dict(p.b.counters)))
    assert results[0] == results[1]
    sent, lines, response, _ = results[0]
    assert sent == ([response] if number == 1 else [])
    assert any("retransmit" in m for m in lines)
