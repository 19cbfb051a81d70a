"""The responder's direct answer to the common IKE_SA_INIT request (core_ike/ike/fastinit.py): the same
octets on the wire and the same IKE_SA as the general path, taken only for the common shape, and every
other request left to the general path."""

from __future__ import annotations

import hashlib
import logging
import struct
from typing import Any

import pytest
from ike_pair import B_IP, make_pair

from core_ike.constants import DhId, NotifyType
from core_ike.crypto.dh import key_exchange_from_private
from core_ike.ike import events as ev
from core_ike.ike import fastinit
from core_ike.ike.sa import IkeState
from core_ike.ike.tasks import ike_init


def _deterministic_keys(monkeypatch: pytest.MonkeyPatch, p: Any) -> None:
    """Both sides' key pairs from a counter (the curves' private keys otherwise come from OpenSSL)."""
    n = [0]

    def det(group: int, rng: Any = None) -> Any:
        n[0] += 1
        size = {DhId.CURVE25519: 32, DhId.CURVE448: 56}.get(DhId(group))
        if size is None:  # ECP: a scalar below the order of every curve we offer
            return key_exchange_from_private(group, hashlib.sha256(b"k%d" % n[0]).digest()[:16])
        return key_exchange_from_private(group, hashlib.sha512(b"k%d" % n[0]).digest()[:size])

    monkeypatch.setattr(ike_init, "new_key_exchange", det)
    monkeypatch.setattr(p.b, "key_exchange", lambda group: det(group))


def _run(monkeypatch: pytest.MonkeyPatch, fast: bool, **kw: Any) -> tuple[Any, list[Any], int]:
    taken = [0]
    orig = fastinit.answer

    def counting(*a: Any) -> bool:
        r = orig(*a)
        taken[0] += r and a[0] is p.b
        return r

    monkeypatch.setattr(fastinit, "answer", counting if fast else (lambda *a: False))
    p = make_pair(seed=7, **kw)
    _deterministic_keys(monkeypatch, p)
    for _ in range(2):  # the second IKE_SA_INIT finds the first one's negotiation kept
        p.a.initiate("home", now=p.now, remote=(B_IP, 500))
        p.pump()
    return p, p.wire, taken[0]


def _state(p: Any) -> list[tuple[Any, ...]]:
    return [(sa.spi_i, sa.spi_r, sa.state, sa.nat_here, sa.nat_there, sa.frag_supported, sa.peer_hash_algs,
             sa.sk_d, sa.sk_pi, sa.sk_pr, sa.proposal, sa.proposal_text, sa.ni, sa.nr, sa.init_request,
             sa.init_response, sa.peer_mid, sa.cached_response, sa.local, sa.remote, sa.half_open, sa.timer_at)
            for sa in p.b.ike_sas()]


@pytest.mark.parametrize("kw", [
    {},
    {"auth": "pubkey"},  # a CERTREQ in the response
    {"b_conf": {"encap": True, "fragmentation": False}},  # a random NAT-D source hash, no N(FRAG_SUP)
    {"proposals": "aes256gcm16-prfsha384-ecp256"},
])
def test_the_same_octets_and_ike_sa_as_the_general_path(monkeypatch: pytest.MonkeyPatch, kw: dict[str, Any]) -> None:
    ike_init._NEGOTIATED.clear()
    fast, wire_fast, taken = _run(monkeypatch, True, **kw)
    general, wire_general, _ = _run(monkeypatch, False, **kw)
    assert taken == 1  # the first offer is negotiated by the general path, the second answered directly
    assert len(fast.of("b", ev.IkeSaEstablished)) == 2
    assert wire_fast == wire_general
    assert _state(fast) == _state(general)
    assert fast.b.half_open == general.b.half_open == 0


def test_nat_detected_as_the_general_path_detects_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, wire_fast, taken = _run(monkeypatch, True, a_conf={"encap": True})
    general, wire_general, _ = _run(monkeypatch, False, a_conf={"encap": True})
    assert taken >= 1 and wire_fast == wire_general
    assert [sa.nat_there for sa in fast.b.ike_sas()] == [True]  # the second replaced the first (same peer)
    assert _state(fast) == _state(general)


Records = list[tuple[str, int, str]]


def _logged_run(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast: bool,
                **kw: Any) -> tuple[Records, int]:
    """`_run` with info lines logged (our users' default log_level): the records of both sides, in order."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    _, _, taken = _run(monkeypatch, fast, **kw)
    return [(r.name, r.levelno, r.getMessage()) for r in caplog.records], taken


@pytest.mark.parametrize("kw", [
    {},
    {"auth": "pubkey"},
    {"b_conf": {"encap": True, "fragmentation": False}},
    {"proposals": "aes256gcm16-prfsha384-ecp256"},
    {"a_conf": {"encap": True}},  # "remote host is behind NAT"
])
def test_info_lines_the_same_as_the_general_path(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                 kw: dict[str, Any]) -> None:
    """At info level the direct answer is taken and logs the general path's lines: the same text, level,
    logger and order (the whole exchange's transcript, both sides)."""
    ike_init._NEGOTIATED.clear()
    fast, taken = _logged_run(monkeypatch, caplog, True, **kw)
    general, _ = _logged_run(monkeypatch, caplog, False, **kw)
    assert taken >= 1
    assert fast == general
    messages = [m for _, _, m in fast]
    assert any(m.startswith("parsed IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP)") for m in messages)
    assert any(m.startswith("generating IKE_SA_INIT response 0 [ SA KE No") for m in messages)


def _request(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, bytes]:
    """A pair whose responder negotiated the offer once, and the initiator's next IKE_SA_INIT request."""
    p = make_pair(seed=3)
    p.a.initiate("home", now=p.now)
    p.pump()
    p.a.initiate("home", now=p.now, remote=(B_IP, 500))
    ((data, _, _),) = p.a.datagrams_to_send()
    return p, data


def _chain(data: bytes) -> list[tuple[int, bytes]]:
    """(type, generic header + body) of each payload of a plaintext message."""
    out, ptype, pos = [], data[16], 28
    while ptype:
        nxt, _, length = struct.unpack_from("!BBH", data, pos)
        out.append((ptype, data[pos:pos + length]))
        ptype, pos = nxt, pos + length
    return out


def _message(data: bytes, payloads: list[tuple[int, bytes]]) -> bytes:
    """`data`'s header with `payloads` chained (Next Payload and lengths rewritten)."""
    body = b""
    for i, (_, p) in enumerate(payloads):
        nxt = payloads[i + 1][0] if i + 1 < len(payloads) else 0
        body += bytes((nxt,)) + p[1:]
    first = payloads[0][0] if payloads else 0
    return data[:16] + bytes((first,)) + data[17:24] + struct.pack("!I", 28 + len(body)) + body


def _notify(ntype: int, data: bytes = b"") -> tuple[int, bytes]:
    return 41, struct.pack("!BBHBBH", 0, 0, 8 + len(data), 0, 0, ntype) + data


def test_parse_reads_the_common_request(monkeypatch: pytest.MonkeyPatch) -> None:
    _, data = _request(monkeypatch)
    req = fastinit.parse(data)
    assert req is not None and req.group == DhId.CURVE25519 and len(req.ke) == 32 and len(req.nonce) == 32
    assert len(req.natd_src) == len(req.natd_dst) == 1 and req.frag and req.hashes
    with_redirect = _message(data, [*_chain(data), _notify(NotifyType.REDIRECT_SUPPORTED)])
    assert fastinit.parse(with_redirect) is not None


@pytest.mark.parametrize("change", [
    "vendor-id", "me-connectid", "two-sa", "no-nonce", "critical", "flags", "spi-r", "message-id",
    "short-nonce", "trailing", "notify-spi", "truncated",
])
def test_other_shapes_go_the_general_way(monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """parse gives None, and the engine's answer is the general path's (it decides each in full)."""
    p, data = _request(monkeypatch)
    chain = _chain(data)
    if change == "vendor-id":
        bad = _message(data, [*chain, (43, b"\x00\x00\x00\x08abcd")])
    elif change == "me-connectid":
        bad = _message(data, [*chain, _notify(NotifyType.ME_CONNECTID, b"\x01" * 8)])
    elif change == "two-sa":
        bad = _message(data, [chain[0], *chain])
    elif change == "no-nonce":
        bad = _message(data, [c for c in chain if c[0] != 40])
    elif change == "critical":
        bad = _message(data, [(t, p[:1] + b"\x80" + p[2:]) if t == 40 else (t, p) for t, p in chain])
    elif change == "flags":
        bad = data[:19] + b"\x18" + data[20:]
    elif change == "spi-r":
        bad = data[:8] + b"\x01" * 8 + data[16:]
    elif change == "message-id":
        bad = data[:20] + b"\x00\x00\x00\x01" + data[24:]
    elif change == "short-nonce":
        bad = _message(data, [(t, struct.pack("!BBH", 0, 0, 12) + b"n" * 8) if t == 40 else (t, p) for t, p in chain])
    elif change == "trailing":
        bad = data[:24] + struct.pack("!I", len(data) + 4) + data[28:] + b"\x00\x00\x00\x00"
    elif change == "notify-spi":
        bad = _message(data, [*chain, (41, struct.pack("!BBHBBH", 0, 0, 12, 1, 4, 16406) + b"spi!")])
    else:
        bad = data[:-3]
        bad = bad[:24] + struct.pack("!I", len(bad)) + bad[28:]
    assert fastinit.parse(bad) is None
    taken = []
    orig = fastinit.answer
    monkeypatch.setattr(fastinit, "answer", lambda *a: taken.append(orig(*a)) or taken[-1])
    p.b.receive(bad, ("192.0.2.2", 500), ("192.0.2.1", 500), p.now)
    assert taken in ([], [False])


def test_an_unknown_offer_and_another_group_go_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first offer (not negotiated yet) and INVALID_KE_PAYLOAD (RFC 7296 1.2) are the general path's."""
    ike_init._NEGOTIATED.clear()
    p = make_pair("aes128gcm16-prfsha256-ecp256-x25519", b_proposals="aes128gcm16-prfsha256-x25519", seed=5)
    taken: list[bool] = []
    orig = fastinit.answer

    def answer(eng: Any, data: bytes, *a: Any) -> bool:
        r = orig(eng, data, *a)
        if eng is p.b:
            taken.append(r)
        return r

    monkeypatch.setattr(fastinit, "answer", answer)
    for _ in range(2):
        p.a.initiate("home", now=p.now, remote=(B_IP, 500))
        p.pump()
    # each IKE_SA: the first request (ECP-256 KE) gets INVALID_KE_PAYLOAD, the second (x25519) is answered
    assert taken == [False, False, False, True]
    assert len(p.of("b", ev.IkeSaEstablished)) == 2


def test_a_retransmitted_request_gets_the_kept_response(monkeypatch: pytest.MonkeyPatch) -> None:
    p, data = _request(monkeypatch)
    local, remote = ("192.0.2.2", 500), ("192.0.2.1", 500)
    p.b.receive(data, local, remote, p.now)
    (first,) = p.b.datagrams_to_send()
    p.b.receive(data, local, remote, p.now + 1)  # RFC 7296 2.1: the same response again, no new IKE_SA
    assert p.b.datagrams_to_send() == [first]
    assert len([sa for sa in p.b.ike_sas() if sa.state is IkeState.CREATED]) == 1


def test_info_lines_for_another_request_shape(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A request with N(REDIRECT_SUPPORTED) (RFC 5685 3) and the NAT-D notifies after it: the "parsed"
    line names the payloads in the request's order, as the general path's does."""
    local, remote = ("192.0.2.2", 500), ("192.0.2.1", 500)
    logged = []
    for fast in (True, False):
        p, data = _request(monkeypatch)
        chain = _chain(data)
        natd = [c for c in chain if c[0] == 41 and c[1][6:8] in (b"\x40\x04", b"\x40\x05")]
        shaped = _message(data, [_notify(NotifyType.REDIRECT_SUPPORTED), *[c for c in chain if c not in natd], *natd])
        caplog.set_level(logging.INFO)
        caplog.clear()
        if fast:
            assert fastinit.answer(p.b, shaped, local, remote, p.now)
        else:
            monkeypatch.setattr(fastinit, "answer", lambda *a: False)
            p.b.receive(shaped, local, remote, p.now)
        (sa,) = [sa for sa in p.b.ike_sas() if sa.state is IkeState.CREATED]
        assert sa.init_response is not None
        logged.append([(r.name, r.levelno, r.getMessage()) for r in caplog.records])
    assert logged[0] == logged[1]
    assert "parsed IKE_SA_INIT request 0 [ N(REDIR_SUP) SA KE No N(FRAG_SUP) N(HASH_ALG) N(NATD_S_IP) " \
        "N(NATD_D_IP) ]" in [m for _, _, m in logged[0]]


def test_not_taken_while_debug_lines_are_logged(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    p, data = _request(monkeypatch)
    caplog.set_level(logging.DEBUG, "core_ike.ike")
    assert not fastinit.answer(p.b, data, ("192.0.2.2", 500), ("192.0.2.1", 500), p.now)
    caplog.set_level(logging.INFO, "core_ike.ike")
    assert fastinit.answer(p.b, data, ("192.0.2.2", 500), ("192.0.2.1", 500), p.now)


def test_limits_and_cookies_go_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    p, data = _request(monkeypatch)
    local, remote = ("192.0.2.2", 500), ("192.0.2.1", 500)
    p.b.cfg.max_half_open = p.b.half_open
    assert not fastinit.answer(p.b, data, local, remote, p.now)
    p.b.cfg.max_half_open = 10000
    p.b.accepting = False
    assert not fastinit.answer(p.b, data, local, remote, p.now)
    p.b.accepting = True
    assert not fastinit.answer(p.b, data, ("198.51.100.9", 500), remote, p.now)  # no configuration there
    assert fastinit.answer(p.b, data, local, remote, p.now)


def test_cookies_go_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 7296 2.6 while COOKIEs are demanded: the pre-filter answers the request with a COOKIE, and the
    request that returns it is one fastinit declines (its first payload is N(COOKIE)): the general path
    makes the IKE_SA."""
    p, data = _request(monkeypatch)
    local, remote = ("192.0.2.2", 500), ("192.0.2.1", 500)
    p.b.cfg.force_cookies = True
    held = len(list(p.b.ike_sas()))
    p.b.receive(data, local, remote, p.now)
    ((reply, _, _),) = p.b.datagrams_to_send()
    cookie = _chain(reply)[0]
    assert cookie[0] == 41 and struct.unpack_from("!H", cookie[1], 6)[0] == NotifyType.COOKIE
    assert len(list(p.b.ike_sas())) == held  # nothing kept for a request without its COOKIE
    again = _message(data, [cookie, *_chain(data)])
    assert not fastinit.answer(p.b, again, local, remote, p.now)
    p.b.receive(again, local, remote, p.now)
    assert len(list(p.b.ike_sas())) == held + 1
    ((response, _, _),) = p.b.datagrams_to_send()
    assert [t for t, _ in _chain(response)][:3] == [33, 34, 40]  # SA KE Nonce: the IKE_SA_INIT response


def test_the_next_key_pairs_are_made_after_the_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine.prepare (the transport calls it after a wake-up's datagrams left) refills the KEr pool, so
    the next IKE_SA_INIT takes a pair made before it arrived (RFC 7296 1.2: each IKE_SA its own)."""
    p, data = _request(monkeypatch)
    pool = p.b.key_pool
    while len(pool):
        pool.take(DhId.CURVE25519, p.b.rng)
    p.b.prepare()
    assert len(pool) == pool.batch
    assert fastinit.answer(p.b, data, ("192.0.2.2", 500), ("192.0.2.1", 500), p.now)
    assert len(pool) == pool.batch - 1


def test_request_summaries_kept_for_a_few_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer can vary the shape (notifies repeated, reordered): past the bound, summaries are written
    each time, not kept, and still read as Message.summary's."""
    monkeypatch.setattr(fastinit, "_SUMMARIES", {})
    natd = int(NotifyType.NAT_DETECTION_SOURCE_IP)
    for k in range(fastinit._MAX_SUMMARIES + 10):
        shape = [33, 34, 40] + [natd] * k
        assert fastinit.request_summary(shape) == "[ " + " ".join(["SA", "KE", "No"] + ["N(NATD_S_IP)"] * k) + " ]"
    assert len(fastinit._SUMMARIES) == fastinit._MAX_SUMMARIES
