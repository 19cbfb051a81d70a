"""RFC 7383 SKF fragmentation and reassembly with a fake protector."""

from __future__ import annotations

import random
from dataclasses import fields
from typing import Any

import pytest

from core_ike.codec.message import Message, Reassembler, decode_message, decrypt_message, encode_message
from core_ike.codec.payloads import CertPayload, IdPayload, NotifyPayload, SkfPayload, VendorIdPayload
from core_ike.constants import ExchangeType, HeaderFlag, IdType, NotifyType, PayloadType
from core_ike.errors import DecodeError, IntegrityError, LocalError

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


def _big(mid: int = 1, flags: HeaderFlag = HeaderFlag.INITIATOR, cert_len: int = 3000) -> Message:
    return Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, flags, mid, [
        IdPayload(PayloadType.IDi, IdType.FQDN, b"alice"),
        CertPayload(4, bytes(i % 251 for i in range(cert_len))),
        NotifyPayload(NotifyType.INITIAL_CONTACT),
        VendorIdPayload(b"end"),
    ], encrypted=True)


def _strip_raw(msg: Message) -> list[Any]:
    out = []
    for p in msg.payloads:
        if isinstance(p, IdPayload):
            p.raw_body = None
        out.append(p)
    return out


def test_small_message_not_fragmented(protector: Any) -> None:
    msg = _big(cert_len=10)
    [wire] = encode_message(msg, protector, fragment_size=1280)
    assert wire[16] == PayloadType.SK


def test_fragments_respect_size_and_layout(protector: Any) -> None:
    frags = encode_message(_big(), protector, fragment_size=576)
    assert len(frags) > 1
    total = len(frags)
    for i, f in enumerate(frags, 1):
        assert len(f) <= 576
        m = decode_message(f)
        assert isinstance(m.sk, SkfPayload)
        assert (m.sk.number, m.sk.total) == (i, total)
        assert m.sk.first_inner == (PayloadType.IDi if i == 1 else 0)
        assert m.message_id == 1 and f[16] == PayloadType.SKF
        assert m.summary() == f"[ EF({i}/{total}) ]"


@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled"])
def test_reassembly_round_trip(protector: Any, order: str) -> None:
    msg = _big()
    frags = encode_message(msg, protector, fragment_size=500)
    if order == "reversed":
        frags = frags[::-1]
    elif order == "shuffled":
        random.Random(7).shuffle(frags)
    r = Reassembler()
    result = None
    for i, f in enumerate(frags):
        result = r.add(decode_message(f), protector, now=0.0)
        if i + 1 < len(frags):
            assert result is None and len(r) == 1
    assert result is not None and len(r) == 0
    assert result.decrypted and result.encrypted
    assert _strip_raw(result) == msg.payloads
    assert (result.exchange, result.message_id, result.is_initiator) == (ExchangeType.IKE_AUTH, 1, True)
    assert result.summary() == "[ IDi CERT N(INIT_CONTACT) V ]"
    assert protector.opened == len(frags)


def test_reassembled_message_equals_an_unfragmented_decode_field_by_field(protector: Any) -> None:
    """RFC 7383 2.6: the reassembled message is the one sent unfragmented; `raw` and `sk` are fragment
    1's (its ciphertext left out). Every field of Message is compared, new ones included."""
    msg = _big(flags=HeaderFlag.INITIATOR | HeaderFlag.RESPONSE)
    frags = encode_message(msg, protector, fragment_size=800)
    [whole] = encode_message(msg, protector)
    plain = decrypt_message(decode_message(whole), protector)
    r = Reassembler()
    results = [r.add(decode_message(f), protector, 0.0) for f in frags]
    result = results[-1]
    assert results[:-1] == [None] * (len(frags) - 1) and result is not None
    first_sk = SkfPayload(PayloadType.IDi, 1, len(frags), frags[0][:36], b"")
    for f in fields(Message):
        got = getattr(result, f.name)
        want = {"raw": frags[0], "sk": first_sk}.get(f.name, getattr(plain, f.name))
        assert got == want and type(got) is type(want), f.name


def test_duplicates_ignored(protector: Any) -> None:
    frags = encode_message(_big(), protector, fragment_size=800)
    r = Reassembler()
    assert r.add(decode_message(frags[0]), protector, 0.0) is None
    assert r.add(decode_message(frags[0]), protector, 0.0) is None
    for f in frags[1:-1]:
        assert r.add(decode_message(f), protector, 0.0) is None
    assert r.add(decode_message(frags[-1]), protector, 0.0) is not None


def test_separate_messages_do_not_mix(protector: Any) -> None:
    a = encode_message(_big(mid=1), protector, fragment_size=800)
    b = encode_message(_big(mid=1, flags=HeaderFlag.RESPONSE), protector, fragment_size=800)
    c = encode_message(_big(mid=2), protector, fragment_size=800)
    r = Reassembler()
    done = []
    for trio in zip(a, b, c, strict=True):
        for f in trio:
            m = r.add(decode_message(f), protector, 0.0)
            if m is not None:
                done.append((m.message_id, m.is_response))
    assert sorted(done) == [(1, False), (1, True), (2, False)]


def test_forged_fragment_rejected_without_poisoning(protector: Any, make_protector: Any) -> None:
    frags = encode_message(_big(), protector, fragment_size=800)
    forged = encode_message(_big(), make_protector(b"evil"), fragment_size=800)
    r = Reassembler()
    with pytest.raises(IntegrityError):
        r.add(decode_message(forged[1]), protector, 0.0)
    result = None
    for f in frags:
        result = r.add(decode_message(f), protector, 0.0)
    assert result is not None


def test_larger_total_restarts_smaller_total_discarded(protector: Any) -> None:
    msg = _big()
    coarse = encode_message(msg, protector, fragment_size=1200)
    fine = encode_message(msg, protector, fragment_size=600)
    assert len(fine) > len(coarse)
    r = Reassembler()
    assert r.add(decode_message(coarse[0]), protector, 0.0) is None
    assert r.add(decode_message(fine[0]), protector, 0.0) is None  # RFC 7383 2.6: start over
    assert r.add(decode_message(coarse[1]), protector, 0.0) is None  # smaller total: discarded
    result = None
    for f in fine[1:]:
        result = r.add(decode_message(f), protector, 0.0)
    assert result is not None and _strip_raw(result) == msg.payloads


def test_fragment_count_limit(protector: Any) -> None:
    frags = encode_message(_big(), protector, fragment_size=200)
    assert len(frags) > 4
    r = Reassembler(max_fragments=4)
    with pytest.raises(DecodeError):
        r.add(decode_message(frags[0]), protector, 0.0)
    assert len(r) == 0


def test_total_size_limit(protector: Any) -> None:
    frags = encode_message(_big(cert_len=5000), protector, fragment_size=1000)
    r = Reassembler(max_size=3000)
    with pytest.raises(DecodeError):
        for f in frags:
            r.add(decode_message(f), protector, 0.0)
    assert len(r) == 0


def test_incomplete_reassembly_expires(protector: Any) -> None:
    frags = encode_message(_big(), protector, fragment_size=800)
    r = Reassembler(timeout=5.0)
    r.add(decode_message(frags[0]), protector, now=100.0)
    assert r.next_deadline() == 105.0
    assert r.expire(104.9) == [] and len(r) == 1
    assert r.expire(105.0) == [(SPI_I, SPI_R, 1, False)] and len(r) == 0
    assert r.next_deadline() is None
    # late fragments start a new reassembly that never completes without fragment 1
    for f in frags[1:]:
        assert r.add(decode_message(f), protector, now=106.0) is None
    r.add(decode_message(frags[1]), protector, now=200.0)  # expires the stale one first
    assert len(r) == 1


def test_reassembler_needs_skf(protector: Any) -> None:
    [wire] = encode_message(_big(cert_len=10), protector)
    with pytest.raises(LocalError):
        Reassembler().add(decode_message(wire), protector, 0.0)


def test_decrypt_message_refuses_fragments(protector: Any) -> None:
    from core_ike.codec.message import decrypt_message

    frags = encode_message(_big(), protector, fragment_size=800)
    with pytest.raises(LocalError):
        decrypt_message(decode_message(frags[0]), protector)


def test_decode_accepts_memoryview(protector: Any) -> None:
    frags = encode_message(_big(), protector, fragment_size=800)
    m = decode_message(memoryview(b"\x00" + frags[0])[1:])  # type: ignore[arg-type]
    assert m.raw == frags[0] and isinstance(m.raw, bytes)


def test_fragment_size_too_small(protector: Any) -> None:
    with pytest.raises(LocalError):
        encode_message(_big(), protector, fragment_size=60)


def _incomplete(protector: Any, mid: int, cert_len: int = 3000) -> list[bytes]:
    """All fragments of a message but fragment 1: it never completes."""
    return encode_message(_big(mid=mid, cert_len=cert_len), protector, fragment_size=800)[1:]


def test_per_reassembler_cap_drops_the_oldest_message_first(protector: Any) -> None:
    r = Reassembler(max_bytes=8000)
    for mid in (1, 2, 3):
        for f in _incomplete(protector, mid):
            r.add(decode_message(f), protector, 0.0)
            assert r.used <= 8000
    assert [k[2] for k in r] == [2, 3] and r.peak <= 8000
    drops = r.take_drops()
    assert [(d.key[2], d.reason) for d in drops] == [(1, "memory")] and drops[0].fragments == 4
    assert r.take_drops() == []


def test_a_message_larger_than_the_cap_is_dropped_whole(protector: Any) -> None:
    r = Reassembler(max_bytes=3000)
    with pytest.raises(DecodeError, match="exceed 3000 octets"):
        for f in _incomplete(protector, 1, cert_len=6000):
            r.add(decode_message(f), protector, 0.0)
    assert len(r) == 0 and r.used == 0
    (d,) = r.take_drops()
    assert d.reason == "memory" and d.fragments >= 2


def test_budget_shared_by_reassemblers_drops_the_oldest_anywhere(protector: Any) -> None:
    from core_ike.codec.message import ReassemblyBudget

    budget = ReassemblyBudget(8000)
    r1, r2 = Reassembler(budget=budget), Reassembler(budget=budget)
    for r, mid in ((r1, 1), (r2, 2), (r1, 3)):
        for f in _incomplete(protector, mid):
            r.add(decode_message(f), protector, 0.0)
            assert budget.used <= 8000
    assert r1.keys() == [(SPI_I, SPI_R, 3, False)] and [k[2] for k in r2] == [2]
    assert budget.used == r1.used + r2.used and budget.peak <= 8000
    assert [(d.key[2], d.reason) for d in r1.take_drops()] == [(1, "memory")]  # reported by who needed room
    r1.clear()
    r2.expire(100.0)
    assert budget.used == 0 and len(budget) == 0
    assert [d.reason for d in r1.take_drops() + r2.take_drops()] == ["closed", "expired"]


def test_an_unauthenticated_over_limit_fragment_leaves_the_reassembly_alone(protector: Any) -> None:
    frags = encode_message(_big(), protector, fragment_size=800)
    r = Reassembler(max_fragments=len(frags))
    r.add(decode_message(frags[0]), protector, 0.0)
    bogus = bytearray(frags[1])
    bogus[34:36] = (len(frags) + 1).to_bytes(2, "big")  # Total Fragments (not authenticated yet)
    with pytest.raises(DecodeError):
        r.add(decode_message(bytes(bogus)), protector, 0.0)
    result = None
    for f in frags[1:]:
        result = r.add(decode_message(f), protector, 0.0)
    assert result is not None and r.used == 0
