"""Mutation fuzzing of the receive path: real messages of a full exchange (IKE_SA_INIT, IKE_AUTH,
CREATE_CHILD_SA, INFORMATIONAL, ME connectivity checks), mutated thousands of ways (bit flips,
truncation, insertion, length and type fields), must only ever raise the codec's typed errors, and
an engine fed all of them must not raise at all and must keep working afterwards.

Deterministic (fixed seed) so a failure reproduces; bounded in count so it stays fast.
"""

from __future__ import annotations

import random
import struct

from ike_pair import A_IP, B_IP, make_pair

from core_ike.codec.message import decode_message
from core_ike.errors import DecodeError, ProtocolError
from core_ike.ike.sa import IkeState
from core_ike.me.checks import encode_check, make_check, request_endpoint

A, B = (A_IP, 500), (B_IP, 500)
ROUNDS = 2500


def _corpus() -> list[bytes]:
    p = make_pair(auth="pubkey")
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    p.a.rekey_child(sa, next(iter(sa.children)), now=p.now)
    p.pump()
    p.a.terminate(p.a.ike_sas()[0], now=p.now)
    p.pump()
    msgs = [d[4:] if d[:4] == b"\x00\x00\x00\x00" else d for _, d in p.wire if d != b"\xff"]
    msgs.append(encode_check(make_check(False, 1, b"\xde\xad\xbe\xef", request_endpoint(), b"k" * 16)))
    return msgs


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(7)
    if op == 0 and b:  # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif op == 2:  # insert junk
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randint(1, 40))
    elif op == 3 and len(b) >= 28:  # IKE length field
        struct.pack_into("!I", b, 24, rng.choice([0, 27, 28, len(b) - 1, len(b) + 1, 0xFFFFFFFF]))
    elif op == 4 and len(b) >= 32:  # a payload length field somewhere
        pos = rng.randrange(28, len(b) - 3)
        struct.pack_into("!H", b, pos, rng.choice([0, 1, 3, 4, 5, 0xFFFF, rng.randrange(65536)]))
    elif op == 5 and len(b) >= 28:  # next payload / exchange / flags
        b[rng.choice([16, 18, 19, 28 if len(b) > 28 else 16])] = rng.randrange(256)
    else:  # duplicate a slice
        i, j = sorted(rng.randrange(len(b) + 1) for _ in range(2))
        b[j:j] = b[i:j]
    if op != 3 and len(b) >= 28 and rng.random() < 0.7:
        struct.pack_into("!I", b, 24, len(b))  # keep the header consistent so the payloads get parsed
    return bytes(b)


def test_decoder_raises_only_typed_errors() -> None:
    rng = random.Random(7296)
    corpus = _corpus()
    kinds: dict[str, int] = {}
    for _ in range(ROUNDS):
        data = _mutate(rng, rng.choice(corpus))
        try:
            decode_message(data)
            kinds["ok"] = kinds.get("ok", 0) + 1
        except (DecodeError, ProtocolError) as e:
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
    assert kinds.get("DecodeError", 0) > ROUNDS // 10  # the mutations really do break things
    assert kinds.get("ok", 0) > 0  # ... and some still parse and reach deeper code


def test_engine_survives_mutated_traffic_and_keeps_serving() -> None:
    """The corpus comes from this very pair, so mutated messages carry live SPIs and message IDs and
    reach the SA's decryption and task code, not just the unknown-SPI drop."""
    rng = random.Random(4306)
    p = make_pair(auth="pubkey")
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    p.a.rekey_child(sa, next(iter(sa.children)), now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    corpus = [(side, d[4:] if d[:4] == b"\x00\x00\x00\x00" else d) for side, d in p.wire if d != b"\xff"]
    for _ in range(ROUNDS):
        side, data = rng.choice(corpus)
        data = _mutate(rng, data)
        if side == "a->b":
            p.b.receive(data, (B_IP, 4500), (A_IP, 4500), p.now)
        else:
            p.a.receive(data, (A_IP, 4500), (B_IP, 4500), p.now)
        p.a.datagrams_to_send()
        p.b.datagrams_to_send()
    # still serving: the established SA rekeys its CHILD_SA, and a new IKE_SA comes up
    p.wire.clear()
    p.a.rekey_child(sa, next(iter(sa.children)), now=p.now)
    p.pump()
    assert len(sa.children) == 1 and next(iter(sa.children.values())).rekeyed_from is not None
    # the mutated IKE_SA_INITs left half-open SAs: COOKIEs are demanded from A, and with them A's
    # IKE_SA_INIT requests are limited per second (init_rate_ip); a second later A is served again
    p.now += 1.0
    sa2 = p.a.initiate("home", now=p.now, remote=B)
    p.pump()
    assert sa2.state is IkeState.ESTABLISHED


def _seal(sa, exchange: int, mid: int, first: int, inner: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """An SK-protected request with arbitrary (mutated) inner payload octets, sealed with `sa`'s keys."""
    sk_len = 4 + sa.out_prot.sealed_length(len(inner))
    total = 28 + sk_len
    hdr = sa.spi_i + sa.spi_r + bytes([46, 0x20, exchange, 0x08 if sa.is_original_initiator else 0]) + \
        struct.pack("!II", mid, total)
    prefix = hdr + bytes([first, 0]) + struct.pack("!H", sk_len)
    return prefix + sa.out_prot.seal(prefix, inner)


def test_tasks_survive_mutated_inner_payloads() -> None:
    """Authenticated but nonsensical requests (mutated inner payloads of CREATE_CHILD_SA, INFORMATIONAL
    and ME_CONNECT) reach the responder's tasks: they must answer with an error or nothing, never raise."""
    from core_ike.codec.wire import encode_payloads
    from core_ike.constants import ExchangeType

    rng = random.Random(2023)
    p = make_pair()
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    # capture a real CREATE_CHILD_SA request's inner payloads (a CHILD rekey)
    p.a.rekey_child(sa, next(iter(sa.children)), now=p.now)
    ((pkt, _, _),) = p.a.datagrams_to_send()
    bsa = p.b.ike_sas()[0]
    from core_ike.codec.message import decode_message, decrypt_message

    req = decrypt_message(decode_message(pkt), bsa.in_prot)
    inner = encode_payloads(req.payloads)
    first = int(req.payloads[0].ptype)
    answered = 0
    for _ in range(600):
        mid = bsa.peer_mid
        exchange = rng.choice([ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL, ExchangeType.ME_CONNECT,
                               ExchangeType.IKE_AUTH])
        data = _seal(sa, int(exchange), mid, first if rng.random() < 0.8 else rng.randrange(256),
                     _mutate(rng, inner))
        p.b.receive(data, B, A, p.now)
        answered += len(p.b.datagrams_to_send())
        if bsa.state is IkeState.DESTROYED:
            break
    assert answered > 100  # most of them were processed and answered (errors included)
    sa2 = p.a.initiate("home", now=p.now, remote=B)
    p.pump()
    assert sa2.state is IkeState.ESTABLISHED
