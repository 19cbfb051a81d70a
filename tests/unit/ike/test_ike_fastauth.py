"""The responder's direct answer to the common IKE_AUTH request (core_ike/ike/fastauth.py): the same
octets on the wire, the same IKE_SA, CHILD_SA, events and info lines as the general path, for each
request shape it takes (childless, or with one CHILD_SA: SA, TSi, TSr), and every other request left to
the general path."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from ike_pair import A_IP, B_IP, make_pair
from test_ike_certreq import _cas
from test_ike_engine import _ca_and_cert
from test_ike_fastinit import _deterministic_keys

from core_ike.codec.payloads import NotifyPayload
from core_ike.constants import NotifyType
from core_ike.ike import events as ev
from core_ike.ike import fastauth
from core_ike.ike.config import AuthConfig
from core_ike.ike.extension import Extension
from core_ike.ike.identity import ANY, Identity
from core_ike.ike.tasks import ike_auth

SECRET = "a-very-secret-shared-key"
# the status notifies strongSwan's charon sends in its IKE_AUTH request (RFC 4555 4, RFC 5998 3) and one
# no one defined (a status type is ignored when unknown, RFC 7296 3.10.1)
CHARON_NOTIFIES = (NotifyType.MOBIKE_SUPPORTED, NotifyType.NO_ADDITIONAL_ADDRESSES,
                   NotifyType.EAP_ONLY_AUTHENTICATION, 16420)


# and those it may add to a CHILD_SA in IKE_AUTH (RFC 7296 3.10.1), which both paths leave unanswered
CHILD_NOTIFIES = (*CHARON_NOTIFIES, NotifyType.USE_TRANSPORT_MODE, NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED,
                  NotifyType.NON_FIRST_FRAGMENTS_ALSO)


_BUILD_I = ike_auth.IkeAuth.build_i


def _with_notifies(monkeypatch: pytest.MonkeyPatch, types: tuple[int, ...]) -> None:
    """Our initiator's IKE_AUTH request with these notifies after its own payloads, and N(INITIAL_CONTACT)
    right after IDi, as charon orders them."""
    def build_i(self: Any, sa: Any, msg: Any, now: float) -> None:
        _BUILD_I(self, sa, msg, now)
        first = [p for p in msg.payloads if getattr(p, "type", None) == NotifyType.INITIAL_CONTACT]
        rest = [p for p in msg.payloads[1:] if p not in first]
        msg.payloads[:] = [msg.payloads[0], *first, *rest, *[NotifyPayload(t) for t in types]]

    monkeypatch.setattr(ike_auth.IkeAuth, "build_i", build_i)


def _run(monkeypatch: pytest.MonkeyPatch, fast: bool, rounds: int = 2, notifies: tuple[int, ...] = (),
         no_idr: bool = False, with_child: bool = False, setup: Any = None, **kw: Any) -> tuple[Any, int]:
    """`rounds` IKE_SAs from a to b (the first with N(INITIAL_CONTACT), the others without); the pair and
    how many of b's IKE_AUTH requests the direct answer took."""
    taken = [0]
    orig, orig_reassembled = fastauth.answer, fastauth.answer_reassembled

    def counting(*a: Any) -> bool:
        r = orig(*a)
        taken[0] += r and a[0] is p.b
        return r

    def counting_reassembled(*a: Any) -> bool:  # a request in fragments (RFC 7383), once reassembled
        r = orig_reassembled(*a)
        taken[0] += r and a[0].engine is p.b
        return r

    monkeypatch.setattr(fastauth, "answer", counting if fast else (lambda *a: False))
    monkeypatch.setattr(fastauth, "answer_reassembled", counting_reassembled if fast else (lambda *a: False))
    if notifies:
        _with_notifies(monkeypatch, notifies)
    p = make_pair(seed=11, **kw)
    change: dict[str, Any] = {} if with_child else {"children": []}  # childless, as commonly (RFC 6023)
    if no_idr:  # the initiator names no responder identity: no IDr in the request
        change["remote"] = AuthConfig("psk", ANY)
        p.a.creds.add_psk(SECRET, "alice@test")  # a's key for (alice, %any)
    p.a.configs[0] = dataclasses.replace(p.a.configs[0], **change)
    if setup is not None:
        setup(p)
    _deterministic_keys(monkeypatch, p)
    for _ in range(rounds):
        p.a.initiate("home", now=p.now, remote=(B_IP, 500))
        p.pump()
        p.now += 1.0
    return p, taken[0]


def _state(p: Any) -> list[tuple[Any, ...]]:
    return [(sa.unique_id, sa.spi_i, sa.spi_r, sa.state, sa.established_at, sa.local, sa.remote, sa.my_id,
             sa.peer_id, sa.config.name, sa.name, sa.mediation, sa.last_in, sa.last_out, sa.dpd_pending,
             sa.tm.peer_mid, sa.tm.my_mid, sa.tm.cached_response, sa.init_request, sa.init_response, sa.half_open,
             sa.timer_at, sa.rekey_at, sa.indexed, sa.nat_here, sa.nat_there, sorted(sa.children),
             [_fields(sa.children[k]) for k in sorted(sa.children)])
            for sa in p.b.ike_sas()]


def _fields(child: Any) -> tuple[Any, ...]:
    """Every field of a CHILD_SA (its keys included); ChildSa compares by identity."""
    return tuple(getattr(child, f.name) for f in dataclasses.fields(child))


def _same(fast: Any, general: Any) -> None:
    assert fast.wire == general.wire
    assert _state(fast) == _state(general)
    assert fast.events_a == general.events_a and fast.events_b == general.events_b
    assert fast.b.half_open == general.b.half_open
    assert dict(fast.b.counters) == dict(general.b.counters)
    assert fast.b._spis == general.b._spis  # the CHILD_SAs' inbound SPIs, drawn in the same order
    assert (next(fast.b._child_ids), next(fast.b._reqids)) == (next(general.b._child_ids), next(general.b._reqids))


@pytest.mark.parametrize("shape", [
    {},  # IDi N(INITIAL_CONTACT) IDr AUTH, then IDi IDr AUTH
    {"notifies": CHARON_NOTIFIES},  # as charon sends it
    {"no_idr": True},  # IDi [N(INITIAL_CONTACT)] AUTH
    {"a_conf": {"encap": True}},  # NAT seen: the float to 4500, the non-ESP marker
    {"b_conf": {"fragmentation": False}},
    {"auth": "pubkey"},  # RFC 7427 signatures with raw public keys (no CERT)
    {"auth": "pubkey", "setup": lambda p: _certified(p)},  # IDi CERT CERTREQ [IDr] AUTH / IDr CERT AUTH
    {"auth": "pubkey", "setup": lambda p: _certified(p, "rsa")},  # AUTH method 1 (RFC 7296 3.8)
    # one CHILD_SA in IKE_AUTH (RFC 7296 1.2): IDi [N(INITIAL_CONTACT)] IDr AUTH SA TSi TSr / IDr AUTH SA TSi TSr
    {"with_child": True},
    {"with_child": True, "notifies": CHILD_NOTIFIES},  # as charon sends it, and the child's status notifies
    {"with_child": True, "a_conf": {"encap": True}},  # NAT seen: narrowing for a peer behind a NAT
    {"with_child": True, "auth": "pubkey", "setup": lambda p: _certified(p)},
    {"with_child": True, "setup": lambda p: _child(p, remote_ts=["10.1.0.0/16", "10.3.0.0/24"])},  # narrowed
    {"with_child": True, "setup": lambda p: _child(p, esp_proposals="aes256gcm16,aes128gcm16")},  # the 2nd chosen
    {"with_child": True, "setup": lambda p: _child(p, remote_ts=["10.9.0.0/24"])},  # N(TS_UNACCEPT) in the response
    {"with_child": True, "setup": lambda p: _child(p, esp_proposals="aes256-sha256")},  # N(NO_PROP)
    {"with_child": True, "setup": lambda p: _esp_of_a(p, "aes128gcm16-x25519")},  # the peer's DH left out (no KE)
])
def test_the_same_octets_ike_sa_and_events_as_the_general_path(monkeypatch: pytest.MonkeyPatch,
                                                               shape: dict[str, Any]) -> None:
    fast, taken = _run(monkeypatch, True, **shape)
    general, _ = _run(monkeypatch, False, **shape)
    assert taken == 2
    assert len(fast.of("b", ev.IkeSaEstablished)) == 2
    _same(fast, general)


def test_the_initial_contact_shape_is_the_one_answered(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "core_ike.ike")
    _run(monkeypatch, True, notifies=CHARON_NOTIFIES)
    parsed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("parsed IKE_AUTH request")]
    assert parsed == [
        "parsed IKE_AUTH request 1 [ IDi N(INIT_CONTACT) IDr AUTH N(MOBIKE_SUP) N(NO_ADD_ADDR) N(EAP_ONLY) N(16420) ]",
        "parsed IKE_AUTH request 1 [ IDi IDr AUTH N(MOBIKE_SUP) N(NO_ADD_ADDR) N(EAP_ONLY) N(16420) ]"]


Records = list[tuple[str, int, str]]


@pytest.mark.parametrize("shape", [{}, {"notifies": CHARON_NOTIFIES}, {"no_idr": True},
                                   {"a_conf": {"encap": True}}, {"with_child": True, "notifies": CHILD_NOTIFIES},
                                   {"with_child": True, "setup": lambda p: _child(p, remote_ts=["10.9.0.0/24"])},
                                   {"auth": "pubkey", "setup": lambda p: _certified(p), "notifies": CHARON_NOTIFIES}])
def test_info_lines_the_same_as_the_general_path(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                 shape: dict[str, Any]) -> None:
    """At info level (our users' default) the direct answer is taken and logs the general path's lines:
    the same text, level, logger and order (the whole transcript, both sides)."""
    logged = info_transcripts(monkeypatch, caplog, shape)
    assert any(m.startswith("IKE_SA gw[") and "established" in m for _, _, m in logged)


def info_transcripts(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                     shape: dict[str, Any]) -> Records:
    """The info lines of `_run` with the direct answer (taking both IKE_AUTH requests) and without it,
    checked equal; returns them."""
    logged: list[Records] = []
    for fast in (True, False):
        caplog.set_level(logging.INFO)
        caplog.clear()
        _, taken = _run(monkeypatch, fast, **shape)
        assert taken == (2 if fast else 0)
        logged.append([(r.name, r.levelno, r.getMessage()) for r in caplog.records])
    assert logged[0] == logged[1]
    return logged[0]


_CAS: list[Any] = []
_CERTS: dict[str, Any] = {}  # the same certificates in both runs of a comparison


def _certified(p: Any, signature: str = "rfc7427") -> None:
    """Both sides with a certificate from one CA they trust (tests/unit/ike/test_ike_certreq.py)."""
    if not _CAS:
        _CAS.extend(_cas(1))
    (ca_key, ca_name, ca), = _CAS
    for eng, me, peer in ((p.a, "alice@test", "bob@test"), (p.b, "bob@test", "alice@test")):
        cert = _CERTS.get(me)
        if cert is None:
            cert = _CERTS[me] = _ca_and_cert(me, ca_key, ca_name, eng.creds.private_keys[0])
        eng.creds.raw_keys.clear()
        eng.creds.public_keys.clear()
        eng.creds.cas.append(ca)
        cfg = eng.configs[0]
        cfg.local = AuthConfig("pubkey", Identity.parse(me), certs=[cert], signature=signature)  # type: ignore[arg-type]
        cfg.remote = AuthConfig("pubkey", Identity.parse(peer))


def _child(p: Any, **change: Any) -> None:
    """b's CHILD_SA configuration changed."""
    cfg = p.b.configs[0]
    cfg.children = [dataclasses.replace(cfg.children[0], **change)]


def _esp_of_a(p: Any, esp: str) -> None:
    cfg = p.a.configs[0]
    p.a.configs[0] = dataclasses.replace(cfg, children=[dataclasses.replace(cfg.children[0], esp_proposals=esp)])


def _mixed(p: Any) -> None:
    cfg = p.b.configs[0]
    cfg.local = AuthConfig("psk", cfg.local.id)
    p.b.creds.add_psk(SECRET, "bob@test")
    p.a.configs[0] = dataclasses.replace(p.a.configs[0], remote=AuthConfig("pubkey", cfg.local.id))


def _untrusted(p: Any) -> None:
    _certified(p)
    p.b.creds.cas.clear()  # b trusts no CA: a's certificate does not verify


def _wrong_secret(p: Any) -> None:
    p.a.creds.shared.clear()
    p.a.creds.add_psk("another-secret-altogether", "alice@test", "bob@test")


class _Ext(Extension):
    """An extension with tasks of its own (it may act on the request's notifies)."""

    def tasks(self, sa: Any, exchange: int, initiator: bool, msg: Any) -> list[Any]:
        return []


class _Scoring(Extension):
    def config_score(self, cfg: Any, sa: Any) -> int:
        return 0


class _Neutral(Extension):
    """As the data plane's glue: it acts on events only."""

    def __init__(self) -> None:
        self.established: list[int] = []

    def on_established(self, sa: Any, now: float) -> None:
        self.established.append(sa.unique_id)


@pytest.mark.parametrize("case", [
    {"with_child": True, "setup": lambda p: p.a.configs[0].__setattr__("vips", ["0.0.0.0"])},  # CP(CFG_REQUEST)
    {"with_child": True, "setup": _wrong_secret},  # AUTHENTICATION_FAILED before the CHILD_SA
    {"with_child": True, "b_conf": {"fragment_size": 160}},  # the response is fragmented (RFC 7383)
    {"auth": "pubkey", "setup": lambda p: setattr(p.b.creds, "resolver", lambda ident: None)},  # may be asked
    {"auth": "pubkey", "setup": lambda p: _mixed(p)},  # a PSK of ours for a peer's signature
    {"notifies": (NotifyType.INVALID_SYNTAX,)},  # an error notify
    {"setup": _wrong_secret},  # AUTHENTICATION_FAILED
    {"auth": "pubkey", "setup": _untrusted},  # AUTHENTICATION_FAILED: no trusted issuer
    {"setup": lambda p: p.b.extensions.append(_Ext())},  # an extension may act on the request
    {"setup": lambda p: p.b.extensions.append(_Scoring())},  # an extension has a say in the configuration
    {"b_conf": {"fragment_size": 100}},  # the response would be fragmented (RFC 7383)
])
def test_other_requests_go_the_general_way(monkeypatch: pytest.MonkeyPatch, case: dict[str, Any]) -> None:
    fast, taken = _run(monkeypatch, True, **case)
    general, _ = _run(monkeypatch, False, **case)
    assert taken == 0
    _same(fast, general)


def _ike(d: bytes) -> bytes:
    """The IKE message of a datagram (RFC 3948 2.2: without the non-ESP marker on port 4500)."""
    return d[4:] if d[:4] == bytes(4) else d


def test_an_extension_that_acts_on_events_only_does_not_keep_it_general(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, taken = _run(monkeypatch, True, setup=lambda p: p.b.extensions.append(_Neutral()))
    general, _ = _run(monkeypatch, False, setup=lambda p: p.b.extensions.append(_Neutral()))
    assert taken == 2
    _same(fast, general)
    assert fast.b.extensions[0].established == general.b.extensions[0].established == [1, 2]


def test_a_retransmitted_request_gets_the_kept_response(monkeypatch: pytest.MonkeyPatch) -> None:
    p, taken = _run(monkeypatch, True, rounds=1)
    assert taken == 1
    request = next(_ike(d) for side, d in p.wire if side == "a->b" and _ike(d)[18] == 35)
    response = [d for side, d in p.wire if side == "b->a"][-1]
    ((sa,),) = [p.b.ike_sas()]
    p.b.receive(request, sa.local, sa.remote, p.now)
    ((again, _, _),) = p.b.datagrams_to_send()
    assert again == response and taken == 1 and len(p.of("b", ev.IkeSaEstablished)) == 1


def test_a_tampered_request_is_dropped_by_the_general_path(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    def setup(p: Any) -> None:
        p.tamper = lambda side, d: d[:-1] + bytes([d[-1] ^ 1]) if side == "a->b" and _ike(d)[18] == 35 else d

    caplog.set_level(logging.WARNING)
    p, taken = _run(monkeypatch, True, rounds=1, setup=setup)
    assert taken == 0 and not p.of("b", ev.IkeSaEstablished)
    assert any("integrity check failed" in r.getMessage() for r in caplog.records)


def test_not_taken_while_debug_lines_are_logged(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "core_ike.ike")
    _, taken = _run(monkeypatch, True)
    caplog.set_level(logging.INFO, "core_ike.ike")
    assert taken == 0


def test_parse_inner_reads_the_common_shape_only() -> None:
    def chain(*items: tuple[int, bytes]) -> tuple[bytes, int]:
        out = b""
        for i, (_, body) in enumerate(items):
            nxt = items[i + 1][0] if i + 1 < len(items) else 0
            out += bytes((nxt, 0)) + (4 + len(body)).to_bytes(2, "big") + body
        return out, items[0][0]

    idi = (35, bytes((3, 0, 0, 0)) + b"alice@test")
    auth = (39, bytes((2, 0, 0, 0)) + bytes(32))
    note = (41, bytes((0, 0)) + int(NotifyType.MOBIKE_SUPPORTED).to_bytes(2, "big"))
    req = fastauth.parse_inner(*chain(idi, note, auth))
    assert req is not None and req.idi == idi[1] and req.idr is None and req.auth == bytes(32)
    assert req.shape == [35, 0x10000 + NotifyType.MOBIKE_SUPPORTED, 39]
    assert fastauth.parse_inner(*chain(idi, auth, idi)) is None  # two IDi
    assert fastauth.parse_inner(*chain(idi)) is None  # no AUTH
    signed = fastauth.parse_inner(*chain(idi, (37, b"\x04cert"), (38, b"\x04" + bytes(20)), (39, bytes((14, 0, 0, 0)) + b"s")))
    assert signed is not None and signed.method == 14 and signed.auth == b"s" and signed.cert == b"cert"
    assert signed.shape == [35, 37, 38, 39]
    assert fastauth.parse_inner(*chain(idi, auth, *[(37, b"\x04cert")] * 17)) is None  # over the rule's 16 CERTs
    assert fastauth.parse_inner(*chain(idi, auth, (33, bytes(8)))) is None  # SA: a CHILD_SA
    assert fastauth.parse_inner(*chain(idi, auth, (41, bytes((0, 0, 0, 7))))) is None  # an error notify
    assert fastauth.parse_inner(*chain((35, bytes((1, 0, 0, 0)) + bytes(5)), auth)) is None  # IPv4 ID of 5 octets
    plain, first = chain(idi, auth)
    assert fastauth.parse_inner(plain + b"\x00", first) is None  # octets after the chain


def test_identities_in_events_as_the_general_path_gives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    p, taken = _run(monkeypatch, True, rounds=1)
    (e,) = p.of("b", ev.IkeSaEstablished)
    assert taken == 1 and (e.local_id, e.remote_id) == ("bob@test", "alice@test")
    ((sa,),) = [p.b.ike_sas()]
    assert sa.peer_id == Identity.parse("alice@test") and sa.local[0] == B_IP and sa.remote[0] == A_IP


def test_traffic_selectors_read_and_written_as_the_codec_does() -> None:
    """fastauth's TS payloads (RFC 7296 3.13): the codec's payload for each body it reads, None (the codec
    decides) for the rest, and the codec's octets for each payload it writes."""
    from core_ike.buffer import Buffer
    from core_ike.codec.payloads import TrafficSelector, TsPayload
    from core_ike.codec.wire import encode_payloads, pull_ts
    from core_ike.constants import PayloadType, TsType

    v4 = TrafficSelector(TsType.IPV4_ADDR_RANGE, 6, 80, 80, bytes((10, 1, 0, 0)), bytes((10, 1, 0, 255)))
    v6 = TrafficSelector(TsType.IPV6_ADDR_RANGE, 0, 0, 65535, bytes(15) + b"\x01", bytes(16 * [0xFF]))
    for ptype in (PayloadType.TSi, PayloadType.TSr):
        for sels in ([], [v4], [v6], [v4, v6, v4]):
            payload = TsPayload(ptype, sels)
            body = encode_payloads([payload])[4:]
            assert fastauth._push(payload) == body
            assert fastauth._pull_ts(body, int(ptype)) == pull_ts(Buffer(body), ptype) == payload
    good = fastauth._push(TsPayload(PayloadType.TSi, [v4]))
    assert fastauth._pull_ts(good[:-1], 44) is None  # truncated
    assert fastauth._pull_ts(good + b"\x00", 44) is None  # octets after the selectors
    assert fastauth._pull_ts(good[:4] + b"\x09" + good[5:], 44) is None  # another TS type: the codec skips it
    assert fastauth._pull_ts(good[:6] + b"\x00\x0f" + good[8:], 44) is None  # a wrong selector length
    assert fastauth._pull_ts(b"\x02\x00\x00\x00" + good[4:], 44) is None  # two announced, one there


_SIGNED_CHILD = {"with_child": True, "auth": "pubkey", "setup": lambda p: _certified(p)}


def _auth_response_size(monkeypatch: pytest.MonkeyPatch) -> int:
    """The length of b's IKE_AUTH response with certificates, an RFC 7427 signature and a CHILD_SA."""
    p, taken = _run(monkeypatch, True, rounds=1, b_conf={"fragment_size": 3000}, **_SIGNED_CHILD)
    assert taken == 1
    return len(_ike([d for side, d in p.wire if side == "b->a"][-1]))


@pytest.mark.parametrize("room", [0, -1])
def test_a_signed_response_is_measured_as_signed(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """RFC 7383 2.5: a response that fits exactly into the fragment size is answered directly; one octet
    less and the general path fragments it (the signature's length is known once it is made)."""
    size = _auth_response_size(monkeypatch) + room
    fast, taken = _run(monkeypatch, True, b_conf={"fragment_size": size}, **_SIGNED_CHILD)
    general, _ = _run(monkeypatch, False, b_conf={"fragment_size": size}, **_SIGNED_CHILD)
    assert taken == (2 if room == 0 else 0)
    fragments = [d for side, d in general.wire if side == "b->a" and _ike(d)[16] == 53]  # SKF first (RFC 7383)
    assert bool(fragments) == (room < 0)
    _same(fast, general)
