"""Property-based fuzzing (hypothesis) of the decoder, the pre-filter and Engine.receive.

Inputs are IKE-shaped (a header, a payload chain with consistent generic headers so the bodies reach the
payload codecs, bodies taken from a real exchange or random) or real messages of a full exchange mutated;
the properties: decode_message raises only DecodeError / ProtocolError; the pre-filter's payload walk
finds the same COOKIE and Nonce the decoder finds; an engine fed any of it never raises, and afterwards
still sets up an IKE_SA. Bounded and derandomized here (a few seconds, the same examples each run);
bench/fuzz_ike.py runs the same targets coverage-guided under atheris for as long as you like.
"""

from __future__ import annotations

import struct
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ike_pair import B_IP, make_pair

from core_ike.codec.message import decode_message
from core_ike.codec.payloads import NoncePayload, NotifyPayload
from core_ike.constants import NotifyType, PayloadType
from core_ike.errors import DecodeError, ProtocolError
from core_ike.ike.prefilter import SCAN_MAX, scan_init
from core_ike.ike.sa import IkeState

BOUNDED = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENGINE_BOUNDED = settings(BOUNDED, max_examples=60)
PAYLOAD_TYPES = [*range(33, 49), 53, 0, 1, 32, 49, 128, 255]
AGREED: list[int] = []  # examples where both found a Nonce (the property is not vacuous)


@cache
def corpus() -> tuple[tuple[str, bytes], ...]:
    """Every datagram of a real exchange: IKE_SA_INIT (with a COOKIE round), IKE_AUTH, CHILD rekey, DELETE."""
    from core_ike.ike.engine import EngineConfig

    p = make_pair(auth="pubkey", engine_b=EngineConfig(force_cookies=True))
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    p.a.rekey_child(sa, next(iter(sa.children)), now=p.now)
    p.pump()
    p.a.terminate(sa, now=p.now)
    p.pump()
    return tuple((side, d[4:] if d[:4] == bytes(4) else d) for side, d in p.wire if d != b"\xff")


@cache
def bodies() -> dict[int, list[bytes]]:
    """Real payload bodies by type, from the plaintext payloads of the corpus."""
    out: dict[int, list[bytes]] = {}
    for _, d in corpus():
        pos, ptype = 28, d[16]
        while ptype and ptype not in (46, 53) and pos + 4 <= len(d):
            nxt, _, length = struct.unpack_from("!BBH", d, pos)
            out.setdefault(ptype, []).append(d[pos + 4 : pos + length])
            pos, ptype = pos + length, nxt
    return out


@st.composite
def ike_messages(draw: st.DrawFn) -> bytes:
    spi_i = draw(st.sampled_from([bytes(8), b"\x11" * 8])) if draw(st.booleans()) else draw(st.binary(min_size=8, max_size=8))
    spi_r = bytes(8) if draw(st.booleans()) else draw(st.binary(min_size=8, max_size=8))
    exchange = draw(st.sampled_from([34, 35, 36, 37, 43, 240, 0, 33, 255]))
    flags = draw(st.sampled_from([0x08, 0x00, 0x20, 0x28, 0x10, 0xFF]))
    version = draw(st.sampled_from([0x20, 0x20, 0x21, 0x10, 0x30]))
    mid = draw(st.sampled_from([0, 0, 1, 2, 0xFFFFFFFF]))
    chain: list[tuple[int, bytes]] = []
    if draw(st.booleans()):  # shaped like an IKE_SA_INIT request: [N(COOKIE)] SA KE Nonce, then anything
        chain = [(t, draw(st.sampled_from(bodies()[t]))) for t in (PayloadType.SA, PayloadType.KE)
                 if draw(st.integers(0, 5))]
        size = draw(st.one_of(st.integers(16, 256), st.integers(0, 300)))  # RFC 7296 3.9: 16..256
        chain.append((PayloadType.NONCE, draw(st.binary(min_size=size, max_size=size))))
        if draw(st.booleans()):
            chain.insert(0, (PayloadType.NOTIFY, struct.pack("!BBH", 0, 0, NotifyType.COOKIE)
                             + draw(st.binary(max_size=40))))
    for _ in range(draw(st.integers(0, 7 - len(chain)))):
        ptype = draw(st.sampled_from(PAYLOAD_TYPES))
        real = bodies().get(ptype)
        body = draw(st.sampled_from(real)) if real and draw(st.integers(0, 3)) else draw(st.binary(max_size=80))
        if ptype == PayloadType.NOTIFY and draw(st.booleans()):  # a COOKIE, as a retried request has first
            body = struct.pack("!BBH", 0, 0, NotifyType.COOKIE) + draw(st.binary(max_size=40))
        chain.insert(draw(st.integers(0, len(chain))), (ptype, body))
    payloads = b""
    for i, (_ptype, body) in enumerate(chain):
        nxt = chain[i + 1][0] if i + 1 < len(chain) else 0
        crit = draw(st.sampled_from([0, 0, 0x80, 0x01]))
        payloads += struct.pack("!BBH", nxt, crit, 4 + len(body)) + body
    first = chain[0][0] if chain else 0
    data = bytearray(spi_i + spi_r + bytes([first, version, exchange, flags]) + struct.pack("!II", mid, 28 + len(payloads))
                     + payloads)
    if data and draw(st.integers(0, 3)) == 0:  # break one octet somewhere (a length, a type, a body)
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    side, d = draw(st.sampled_from(corpus()))
    b = bytearray(d)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(b)))
        if op == 0 and pos < len(b):
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del b[pos:]
        elif op == 2:
            b[pos:pos] = draw(st.binary(min_size=1, max_size=24))
        elif len(b) >= 28:
            struct.pack_into("!I", b, 24, len(b))  # keep the header length consistent: payloads get parsed
    return side, bytes(b)


def _decode(data: bytes) -> object:
    try:
        return decode_message(data)
    except (DecodeError, ProtocolError) as e:
        return e


@BOUNDED
@given(st.one_of(ike_messages(), mutated().map(lambda x: x[1]), st.binary(max_size=300)))
def test_decoder_raises_only_typed_errors(data: bytes) -> None:
    _decode(data)


@BOUNDED
@given(ike_messages())
def test_prefilter_walk_agrees_with_the_decoder(data: bytes) -> None:
    """Whenever the decoder accepts a message whose Nonce is among its first SCAN_MAX payloads, the
    pre-filter's walk over generic headers finds the same Nonce and the same leading COOKIE."""
    msg = _decode(data)
    if isinstance(msg, Exception) or len(data) != int.from_bytes(data[24:28], "big"):
        return
    plain = msg.payloads  # the ones before SK, if any: the walk stops there too
    idx = next((i for i, p in enumerate(plain) if isinstance(p, NoncePayload)), None)
    found = scan_init(data, data[16])
    if idx is None or idx >= SCAN_MAX:
        assert found is None
        return
    AGREED.append(idx)
    assert found is not None
    cookie, ni = found
    nonce = plain[idx]
    assert isinstance(nonce, NoncePayload) and ni == nonce.data
    first = plain[0]
    is_cookie = isinstance(first, NotifyPayload) and int(first.type) == NotifyType.COOKIE
    assert cookie == (first.data if is_cookie else b"")  # type: ignore[union-attr]


def test_the_agreement_was_tested() -> None:
    if not AGREED:
        test_prefilter_walk_agrees_with_the_decoder()
    assert len(AGREED) >= 10


@ENGINE_BOUNDED
@given(st.lists(st.one_of(mutated(), ike_messages().map(lambda d: ("a->b", d))), min_size=1, max_size=12),
       st.booleans())
def test_engine_receive_never_raises_and_keeps_serving(datagrams: list[tuple[str, bytes]], cookies: bool) -> None:
    _feed_then_set_up(datagrams, cookies)


def test_engine_fed_the_corpus_requests_still_sets_up_its_own() -> None:
    """Each real IKE_SA_INIT request of the corpus, fed as is, leaves the responder able to set up the
    fresh pair's IKE_SA: the fresh initiator's SPIi is not the corpus's."""
    inits = [(side, d) for side, d in corpus() if side == "a->b" and d[18] == 34]
    assert len(inits) == 2  # without and with the COOKIE
    for cookies in (False, True):
        for one in inits:
            _feed_then_set_up([one], cookies)


def _feed_then_set_up(datagrams: list[tuple[str, bytes]], cookies: bool) -> None:
    from core_ike.ike.engine import EngineConfig

    # Another seed than corpus(): its IKE_SA_INIT must not share SPIi (and Ni) with the corpus's, or a fed
    # copy of one makes the responder answer the real one as a retransmission (RFC 7296 §2.1), which a
    # real peer's random SPIi rules out.
    p = make_pair(engine_b=EngineConfig(force_cookies=cookies), seed=1)
    for side, data in datagrams:
        if side == "a->b":
            p.b.receive(data, (B_IP, 500), ("192.0.2.1", 500), p.now)
        else:
            p.a.receive(data, ("192.0.2.1", 500), (B_IP, 500), p.now)
        p.a.datagrams_to_send()
        p.b.datagrams_to_send()
    p.now += 1.0  # the per-source IKE_SA_INIT limit refills
    sa = p.a.initiate("home", now=p.now, remote=(B_IP, 500))
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
