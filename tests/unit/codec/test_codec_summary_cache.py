"""Summaries kept by their payload sequence (core_ike/codec/summary.py) read as the ones computed
payload by payload: a kept summary is never given to a sequence whose names differ (CP, EAP and SKF
names show their content; a Notify's name is its Notify type, not a payload type), and the store is
bounded."""

from __future__ import annotations

from core_ike.codec import summary
from core_ike.codec.payloads import (
    AuthPayload,
    CfgAttribute,
    CpPayload,
    EapPayload,
    IdPayload,
    NotifyPayload,
    Payload,
    SkfPayload,
    SkPayload,
    UnknownPayload,
    VendorIdPayload,
)
from core_ike.constants import CfgType, NotifyType, PayloadType


def _computed(payloads: list[Payload], sk: SkPayload | SkfPayload | None = None, decrypted: bool = False) -> str:
    names = [summary.payload_name(p) for p in payloads]
    if sk is not None and not decrypted:
        names.append(summary.payload_name(sk))
    return summary.bracket(names)


def test_a_kept_summary_reads_as_the_computed_one() -> None:
    summary._SUMMARIES.clear()
    auth = [IdPayload(PayloadType.IDi, 3, b"c1@bench"), NotifyPayload(NotifyType.INITIAL_CONTACT),
            IdPayload(PayloadType.IDr, 3, b"r"), AuthPayload(2, b"x" * 32), NotifyPayload(16420)]
    first = summary.summarize(auth, None, True)
    assert first == "[ IDi N(INIT_CONTACT) IDr AUTH N(16420) ]" == _computed(auth)
    assert summary.summarize(auth, None, True) == first and len(summary._SUMMARIES) == 1
    # the same Notify type as an int or as the enum: one name
    assert summary.summarize([NotifyPayload(int(NotifyType.INITIAL_CONTACT))], None, True) == "[ N(INIT_CONTACT) ]"
    assert summary.summarize([NotifyPayload(NotifyType.INITIAL_CONTACT)], None, True) == "[ N(INIT_CONTACT) ]"


def test_notify_types_and_payload_types_do_not_meet() -> None:
    summary._SUMMARIES.clear()
    assert summary.summarize([UnknownPayload(99, False, b"")], None, True) == "[ UNKNOWN(99) ]"
    assert summary.summarize([NotifyPayload(99)], None, True) == "[ N(99) ]"
    assert summary.summarize([UnknownPayload(99, False, b"")], None, True) == "[ UNKNOWN(99) ]"
    assert summary.summarize([], None, True) == "[ ]"


def test_the_encrypted_payload_is_named_until_decrypted() -> None:
    summary._SUMMARIES.clear()
    v, sk = [VendorIdPayload(b"A")], SkPayload(PayloadType.NOTIFY, b"", b"")
    assert summary.summarize(v, sk, False) == "[ V SK ]"
    assert summary.summarize(v, sk, True) == "[ V ]"
    assert summary.summarize(v, None, False) == "[ V ]"
    assert summary.summarize(v, sk, False) == "[ V SK ]"


def test_names_that_show_content_are_computed_each_time() -> None:
    summary._SUMMARIES.clear()
    cp_addr = [CpPayload(CfgType.CFG_REQUEST, [CfgAttribute(1)])]
    cp_dns = [CpPayload(CfgType.CFG_REQUEST, [CfgAttribute(3)])]
    assert summary.summarize(cp_addr, None, True) == "[ CPRQ(ADDR) ]"
    assert summary.summarize(cp_dns, None, True) == "[ CPRQ(DNS) ]"
    assert summary.summarize([EapPayload(b"\x02\x01\x00\x05\x01")], None, True) == "[ EAP/RES/ID ]"
    assert summary.summarize([EapPayload(b"\x03\x01\x00\x04")], None, True) == "[ EAP/SUCC ]"
    one, two = SkfPayload(PayloadType.IDi, 1, 3, b"", b""), SkfPayload(0, 2, 3, b"", b"")
    assert summary.summarize([], one, False) == "[ EF(1/3) ]"
    assert summary.summarize([], two, False) == "[ EF(2/3) ]"
    assert summary._SUMMARIES == {}


def test_the_store_is_bounded() -> None:
    summary._SUMMARIES.clear()
    for t in range(summary._SUMMARIES_MAX + 20):
        assert summary.summarize([NotifyPayload(40000 + t)], None, True) == f"[ N({40000 + t}) ]"
    assert len(summary._SUMMARIES) == summary._SUMMARIES_MAX
    summary._SUMMARIES.clear()
