"""Payload bodies on the wire: `pull_x(buf)` / `push_x(buf, v)` pairs and a registry by wire type.

Each `pull_x` receives a `Buffer` that covers exactly one payload *body* (the octets after the 4-octet
generic payload header) and must consume all of it; each `push_x` appends a body. The generic header
and payload chains are handled by `pull_chain` / `push_chain` (RFC 7296 3.2). SK and SKF are not in the
registry: they need the whole datagram (their ICV covers the IKE header) and live in `codec.message`.

Every length inconsistency raises `DecodeError` with the offending numbers in the message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..buffer import Buffer
from ..constants import (
    IdType,
    NotifyType,
    PayloadType,
    TsType,
)
from ..errors import DecodeError, LocalError, ProtocolError
from .fields import (
    _CFG_TYPES,
    _GENERIC,
    _ID_TYPES,
    _NOTIFY,
    _NOTIFY_TYPES,
    _PAYLOAD_TYPES,
    _PROTOCOLS,
    CRITICAL,
    GENERIC_HEADER_LEN,
    _need_body,
    _rest,
)
from .payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CfgAttribute,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)
from .sawire import _fast_pull_sa, _fast_push_sa, pull_sa, push_sa

# --- KE, ID, CERT, CERTREQ, AUTH, Nonce, V, EAP (RFC 7296 3.4-3.9, 3.12, 3.16) ----------------


def pull_ke(buf: Buffer) -> KePayload:
    _need_body(buf, 4, "KE")  # RFC 7296 3.4: Group(2) RESERVED(2) data
    group = buf.pull_u16()
    buf.pull_u16()
    return KePayload(group, _rest(buf))


def push_ke(buf: Buffer, v: KePayload) -> None:
    buf.push_u16(v.group)
    buf.push_u16(0)
    buf.push_bytes(v.data)


_ID_ADDR_LEN: dict[int, int] = {IdType.IPV4_ADDR: 4, IdType.IPV6_ADDR: 16}  # RFC 7296 3.5


def pull_id(buf: Buffer, ptype: int = PayloadType.IDi) -> IdPayload:
    """IDi/IDr (RFC 7296 3.5) and ID_PEER (ME draft 4.3): IDType(1) RESERVED(3) data."""
    _need_body(buf, 4, "ID")
    raw_body = buf.pull_bytes(buf.remaining)
    id_type = raw_body[0]
    data = raw_body[4:]
    want = _ID_ADDR_LEN.get(id_type)
    if want is not None and len(data) != want:
        raise DecodeError(f"ID type {id_type}: address of {len(data)} octets, expected {want}")
    pt = _PAYLOAD_TYPES.get(ptype, PayloadType.IDi)
    return IdPayload(pt, _ID_TYPES.get(id_type, id_type), data, raw_body)


def push_id(buf: Buffer, v: IdPayload) -> None:
    buf.push_bytes(v.body)  # as received when re-sent (RFC 7296 2.15 signs these octets)


def pull_cert(buf: Buffer) -> CertPayload:
    _need_body(buf, 1, "CERT")  # RFC 7296 3.6: Encoding(1) data
    enc = buf.pull_u8()
    return CertPayload(enc, _rest(buf))


def pull_certreq(buf: Buffer) -> CertReqPayload:
    _need_body(buf, 1, "CERTREQ")  # RFC 7296 3.7: Encoding(1) CA hashes
    enc = buf.pull_u8()
    return CertReqPayload(enc, _rest(buf))


def push_cert(buf: Buffer, v: CertPayload | CertReqPayload) -> None:
    buf.push_bytes(_fast_push_cert(v))  # RFC 7296 3.6 / 3.7: Encoding(1) data


def pull_auth(buf: Buffer) -> AuthPayload:
    _need_body(buf, 4, "AUTH")  # RFC 7296 3.8: Method(1) RESERVED(3) data
    method = buf.pull_u8()
    buf.pull_bytes(3)
    return AuthPayload(method, _rest(buf))


def push_auth(buf: Buffer, v: AuthPayload) -> None:
    buf.push_u8(v.method)
    buf.push_bytes(b"\x00\x00\x00")
    buf.push_bytes(v.data)


NONCE_MIN, NONCE_MAX = 16, 256  # RFC 7296 3.9


def pull_nonce(buf: Buffer) -> NoncePayload:
    n = buf.remaining
    if not NONCE_MIN <= n <= NONCE_MAX:  # RFC 7296 3.9: 16..256 octets
        raise DecodeError(f"nonce of {n} octets outside {NONCE_MIN}..{NONCE_MAX}")
    return NoncePayload(_rest(buf))


def push_nonce(buf: Buffer, v: NoncePayload) -> None:
    buf.push_bytes(v.data)


def pull_vendor_id(buf: Buffer) -> VendorIdPayload:
    return VendorIdPayload(_rest(buf))  # RFC 7296 3.12: opaque


def push_vendor_id(buf: Buffer, v: VendorIdPayload) -> None:
    buf.push_bytes(v.data)


def pull_eap(buf: Buffer) -> EapPayload:
    return EapPayload(_rest(buf))  # RFC 7296 3.16: the EAP message, opaque here


def push_eap(buf: Buffer, v: EapPayload) -> None:
    buf.push_bytes(v.data)


# --- Notify, Delete (RFC 7296 3.10, 3.11) ----------------------------------------------------------


def pull_notify(buf: Buffer) -> NotifyPayload:
    _need_body(buf, 4, "Notify")  # ProtocolID(1) SPISize(1) Type(2) SPI data
    proto, spi_size, ntype = _NOTIFY.unpack(buf.pull_bytes(4))
    if spi_size > buf.remaining:
        raise DecodeError(f"Notify {ntype}: SPI size {spi_size} exceeds {buf.remaining} remaining octets")
    spi = buf.pull_bytes(spi_size)
    return NotifyPayload(
        _NOTIFY_TYPES.get(ntype, ntype), _rest(buf), _PROTOCOLS.get(proto, proto), spi
    )


def push_notify(buf: Buffer, v: NotifyPayload) -> None:
    buf.push_u8(int(v.protocol))
    buf.push_u8(len(v.spi))
    buf.push_u16(int(v.type))
    buf.push_bytes(v.spi)
    buf.push_bytes(v.data)


def pull_delete(buf: Buffer) -> DeletePayload:
    _need_body(buf, 4, "Delete")  # ProtocolID(1) SPISize(1) NumSPIs(2) SPIs
    proto = buf.pull_u8()
    spi_size = buf.pull_u8()
    count = buf.pull_u16()
    if spi_size * count != buf.remaining:
        raise DecodeError(
            f"Delete: {count} SPIs of {spi_size} octets need {spi_size * count}, have {buf.remaining}"
        )
    spis = [buf.pull_bytes(spi_size) for _ in range(count)]
    return DeletePayload(_PROTOCOLS.get(proto, proto), spis)


def push_delete(buf: Buffer, v: DeletePayload) -> None:
    sizes = {len(s) for s in v.spis}
    if len(sizes) > 1:
        raise LocalError(f"Delete payload with SPIs of different sizes {sorted(sizes)}")
    buf.push_u8(int(v.protocol))
    buf.push_u8(sizes.pop() if sizes else 0)
    buf.push_u16(len(v.spis))
    for s in v.spis:
        buf.push_bytes(s)


# --- Traffic selectors (RFC 7296 3.13) -------------------------------------------------------------

_TS_LEN: dict[int, tuple[int, int]] = {TsType.IPV4_ADDR_RANGE: (16, 4), TsType.IPV6_ADDR_RANGE: (40, 16)}


def pull_ts(buf: Buffer, ptype: int = PayloadType.TSi) -> TsPayload:
    _need_body(buf, 4, "TS")  # NumTS(1) RESERVED(3) selectors
    count = buf.pull_u8()
    buf.pull_bytes(3)
    selectors: list[TrafficSelector] = []
    for i in range(count):
        _need_body(buf, 4, f"traffic selector {i + 1}/{count}")
        ts_type = buf.pull_u8()
        proto = buf.pull_u8()
        length = buf.pull_u16()
        if length < 4 or length - 4 > buf.remaining:
            raise DecodeError(f"traffic selector {i + 1}: length {length}, {buf.remaining + 4} left")
        body = buf.sub(length - 4)
        known = _TS_LEN.get(ts_type)
        if known is None:
            continue  # RFC 7296 3.13.1: other TS types (e.g. FC) are not ours; skip by length
        if length != known[0]:
            raise DecodeError(f"traffic selector type {ts_type}: length {length}, expected {known[0]}")
        sport = body.pull_u16()
        eport = body.pull_u16()
        a = body.pull_bytes(known[1])
        b = body.pull_bytes(known[1])
        selectors.append(TrafficSelector(TsType(ts_type), proto, sport, eport, a, b))
    if not buf.eof():
        raise DecodeError(f"TS payload: {buf.remaining} octets after {count} selectors")
    return TsPayload(_PAYLOAD_TYPES.get(ptype, PayloadType.TSi), selectors)


def push_ts(buf: Buffer, v: TsPayload) -> None:
    buf.push_u8(len(v.selectors))
    buf.push_bytes(b"\x00\x00\x00")
    for s in v.selectors:
        want = _TS_LEN[s.ts_type][1]
        if len(s.start_addr) != want or len(s.end_addr) != want:
            raise LocalError(f"traffic selector {s.ts_type.name} needs {want}-octet addresses")
        buf.push_u8(int(s.ts_type))
        buf.push_u8(s.ip_proto)
        buf.push_u16(8 + 2 * want)
        buf.push_u16(s.start_port)
        buf.push_u16(s.end_port)
        buf.push_bytes(s.start_addr)
        buf.push_bytes(s.end_addr)


# --- Configuration payload (RFC 7296 3.15) ---------------------------------------------------------


def pull_cp(buf: Buffer) -> CpPayload:
    _need_body(buf, 4, "CP")  # CFGType(1) RESERVED(3) attributes
    cfg_type = buf.pull_u8()
    buf.pull_bytes(3)
    attrs: list[CfgAttribute] = []
    while not buf.eof():
        _need_body(buf, 4, "configuration attribute")
        atype = buf.pull_u16() & 0x7FFF  # RFC 7296 3.15.1: R bit ignored
        length = buf.pull_u16()
        if length > buf.remaining:
            raise DecodeError(f"configuration attribute {atype}: length {length} > {buf.remaining} left")
        attrs.append(CfgAttribute(atype, buf.pull_bytes(length)))
    return CpPayload(_CFG_TYPES.get(cfg_type, cfg_type), attrs)


def push_cp(buf: Buffer, v: CpPayload) -> None:
    buf.push_u8(int(v.cfg_type))
    buf.push_bytes(b"\x00\x00\x00")
    for a in v.attributes:
        buf.push_u16(a.type & 0x7FFF)
        buf.push_u16(len(a.value))
        buf.push_bytes(a.value)


# --- registry and chains ---------------------------------------------------------------------------


class PayloadCodec(NamedTuple):
    pull: Callable[[Buffer, int], Payload]
    push: Callable[[Buffer, Any], None]


def _fixed(f: Callable[[Buffer], Payload]) -> Callable[[Buffer, int], Payload]:
    return lambda buf, _ptype: f(buf)  # a body whose layout does not depend on the payload type


REGISTRY: dict[int, PayloadCodec] = {
    PayloadType.SA: PayloadCodec(_fixed(pull_sa), push_sa),
    PayloadType.KE: PayloadCodec(_fixed(pull_ke), push_ke),
    PayloadType.IDi: PayloadCodec(pull_id, push_id),
    PayloadType.IDr: PayloadCodec(pull_id, push_id),
    PayloadType.ID_PEER: PayloadCodec(pull_id, push_id),
    PayloadType.CERT: PayloadCodec(_fixed(pull_cert), push_cert),
    PayloadType.CERTREQ: PayloadCodec(_fixed(pull_certreq), push_cert),
    PayloadType.AUTH: PayloadCodec(_fixed(pull_auth), push_auth),
    PayloadType.NONCE: PayloadCodec(_fixed(pull_nonce), push_nonce),
    PayloadType.NOTIFY: PayloadCodec(_fixed(pull_notify), push_notify),
    PayloadType.DELETE: PayloadCodec(_fixed(pull_delete), push_delete),
    PayloadType.VENDOR_ID: PayloadCodec(_fixed(pull_vendor_id), push_vendor_id),
    PayloadType.TSi: PayloadCodec(pull_ts, push_ts),
    PayloadType.TSr: PayloadCodec(pull_ts, push_ts),
    PayloadType.CP: PayloadCodec(_fixed(pull_cp), push_cp),
    PayloadType.EAP: PayloadCodec(_fixed(pull_eap), push_eap),
}
"""Wire type -> body codec. SK (46) and SKF (53) are framed by `codec.message`."""

ENCRYPTED_TYPES = frozenset((PayloadType.SK, PayloadType.SKF))


def pull_header(buf: Buffer) -> tuple[int, bool, int]:
    """RFC 7296 3.2 generic payload header -> (next payload, critical, body length)."""
    if buf.remaining < GENERIC_HEADER_LEN:
        raise DecodeError(f"payload header truncated: {buf.remaining} octets at offset {buf.pos}")
    nxt, flags, length = _GENERIC.unpack(buf.pull_bytes(GENERIC_HEADER_LEN))
    crit = flags & CRITICAL != 0
    if length < GENERIC_HEADER_LEN:
        raise DecodeError(f"payload length {length} < {GENERIC_HEADER_LEN} at offset {buf.pos - 4}")
    if length - GENERIC_HEADER_LEN > buf.remaining:
        raise DecodeError(
            f"payload length {length} at offset {buf.pos - 4} exceeds the "
            f"{buf.remaining + GENERIC_HEADER_LEN} octets left in the message"
        )
    return nxt, crit, length - GENERIC_HEADER_LEN


def pull_body(buf: Buffer, ptype: int, critical: bool, body_len: int) -> Payload:
    """Decode one body of `ptype`; unknown types per RFC 7296 2.5 (skip, or reject if critical)."""
    codec = REGISTRY.get(ptype)
    body = buf.sub(body_len)
    if codec is None:
        if critical:
            raise ProtocolError(
                f"unsupported critical payload type {ptype}",
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                data=bytes([ptype]),
            )
        return UnknownPayload(_PAYLOAD_TYPES.get(ptype, ptype), critical, body.pull_bytes(body_len))
    payload = codec.pull(body, ptype)
    if not body.eof():
        raise DecodeError(f"payload {ptype}: {body.remaining} unparsed octets in the body")
    return payload


def pull_chain(buf: Buffer, first: int, stop: frozenset[int] = frozenset()) -> tuple[list[Payload], int]:
    """Parse a payload chain starting with type `first` until Next Payload 0 or a type in `stop`.

    Returns (payloads, type where it stopped): 0 when the chain ended, else the stop type (the buffer
    is left at that payload's generic header). With no stop type the chain must fill the buffer.
    """
    payloads: list[Payload] = []
    append = payloads.append
    ptype = first
    data, end = buf._data, buf._end
    unpack_from = _GENERIC.unpack_from
    registry = REGISTRY
    # the common bodies straight from the underlying bytes (one copy per field, no Buffer)
    raw = data.obj
    fast = _FAST_PULL if type(raw) is bytes and len(raw) == end else {}
    while ptype:
        if ptype in stop:
            return payloads, ptype
        pos = buf.pos
        if end - pos < GENERIC_HEADER_LEN:
            pull_header(buf)  # raises with the details
        nxt, flags, length = unpack_from(data, pos)
        body_end = pos + length
        if length < GENERIC_HEADER_LEN or body_end > end:
            pull_header(buf)  # raises with the details
        f = fast.get(ptype)
        if f is not None:
            got = f(raw, pos + GENERIC_HEADER_LEN, body_end)  # type: ignore[arg-type]
            if got is not None:
                buf.pos = body_end
                append(got)
                ptype = nxt
                continue
        codec = registry.get(ptype)
        if codec is None:
            buf.pos = pos + GENERIC_HEADER_LEN
            append(pull_body(buf, ptype, flags & CRITICAL != 0, length - GENERIC_HEADER_LEN))
        else:
            body = Buffer(data[pos + GENERIC_HEADER_LEN : body_end])
            buf.pos = body_end
            append(codec.pull(body, ptype))
            if body.pos < body._end:
                raise DecodeError(f"payload {ptype}: {body.remaining} unparsed octets in the body")
        ptype = nxt
    if not buf.eof():
        raise DecodeError(f"{buf.remaining} octets after the last payload (Next Payload 0)")
    return payloads, PayloadType.NONE


def push_chain(buf: Buffer, payloads: Sequence[Payload], next_after: int = PayloadType.NONE) -> None:
    """Append generic header + body for each payload; the last one's Next Payload is `next_after`."""
    n = len(payloads)
    out = buf._out
    pack = _GENERIC.pack
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].ptype if i + 1 < n else next_after
        f = _FAST_PUSH.get(type(p))
        if f is not None:
            body = f(p)
            if len(body) > 0xFFFF - GENERIC_HEADER_LEN:
                raise LocalError(f"payload type {int(p.ptype)} of {len(body) + 4} octets exceeds 65535")
            out += pack(nxt, 0, GENERIC_HEADER_LEN + len(body))
            out += body
            continue
        ptype = int(p.ptype)
        start = buf.tell
        buf.push_u8(nxt)
        if isinstance(p, UnknownPayload):
            buf.push_u8(CRITICAL if p.critical else 0)
            buf.push_u16(GENERIC_HEADER_LEN + len(p.data))
            buf.push_bytes(p.data)
            continue
        codec = REGISTRY.get(ptype)
        if codec is None:
            raise LocalError(f"cannot encode payload type {ptype} ({type(p).__name__}) in a chain")
        buf.push_u8(0)  # RFC 7296 3.2: C = 0 for all payloads defined there
        buf.push_u16(0)
        codec.push(buf, p)
        length = buf.tell - start
        if length > 0xFFFF:
            raise LocalError(f"payload type {ptype} of {length} octets exceeds 65535")
        buf.patch_u16(start + 2, length)


# --- fast paths for the frequent payloads (same octets as the pull_x/push_x pairs; on any
# irregularity the fast pull returns None and the general codec produces the error) ---------------
_KE_HEAD = struct.Struct("!HH")


def _fast_pull_notify(raw: bytes, start: int, end: int) -> NotifyPayload | None:
    if end - start < 4:
        return None
    proto, spi_size, ntype = _NOTIFY.unpack_from(raw, start)
    spi_end = start + 4 + spi_size
    if spi_end > end:
        return None
    return NotifyPayload(_NOTIFY_TYPES.get(ntype, ntype), raw[spi_end:end], _PROTOCOLS.get(proto, proto),
                         raw[start + 4 : spi_end] if spi_size else b"")


def _fast_pull_nonce(raw: bytes, start: int, end: int) -> NoncePayload | None:
    if not NONCE_MIN <= end - start <= NONCE_MAX:
        return None
    return NoncePayload(raw[start:end])


def _fast_pull_ke(raw: bytes, start: int, end: int) -> KePayload | None:
    if end - start < 4:
        return None
    return KePayload(_KE_HEAD.unpack_from(raw, start)[0], raw[start + 4 : end])


def _fast_pull_auth(raw: bytes, start: int, end: int) -> AuthPayload | None:
    if end - start < 4:
        return None
    return AuthPayload(raw[start], raw[start + 4 : end])


def _fast_pull_id_of(ptype: PayloadType) -> Callable[[bytes, int, int], IdPayload | None]:
    def pull(raw: bytes, start: int, end: int) -> IdPayload | None:  # as pull_id (RFC 7296 3.5)
        if end - start < 4:
            return None
        id_type = raw[start]
        body = raw[start:end]
        data = body[4:]
        want = _ID_ADDR_LEN.get(id_type)
        if want is not None and len(data) != want:
            return None
        return IdPayload(ptype, _ID_TYPES.get(id_type, id_type), data, body)

    return pull


_FAST_PULL: dict[int, Callable[[bytes, int, int], Payload | None]] = {
    PayloadType.SA: _fast_pull_sa,
    PayloadType.NOTIFY: _fast_pull_notify,
    PayloadType.NONCE: _fast_pull_nonce,
    PayloadType.KE: _fast_pull_ke,
    PayloadType.AUTH: _fast_pull_auth,
    PayloadType.VENDOR_ID: lambda raw, start, end: VendorIdPayload(raw[start:end]),
    PayloadType.CERT: lambda raw, s, e: CertPayload(raw[s], raw[s + 1 : e]) if e > s else None,
    PayloadType.CERTREQ: lambda raw, s, e: CertReqPayload(raw[s], raw[s + 1 : e]) if e > s else None,
    PayloadType.IDi: _fast_pull_id_of(PayloadType.IDi),
    PayloadType.IDr: _fast_pull_id_of(PayloadType.IDr),
}


def _fast_push_cert(v: CertPayload | CertReqPayload) -> bytes:
    return bytes((v.encoding,)) + v.data


def _fast_push_notify(v: NotifyPayload) -> bytes:
    return _NOTIFY.pack(v.protocol, len(v.spi), v.type) + v.spi + v.data


def _fast_push_ke(v: KePayload) -> bytes:
    return _KE_HEAD.pack(v.group, 0) + v.data


def _fast_push_auth(v: AuthPayload) -> bytes:
    return bytes((v.method, 0, 0, 0)) + v.data


_FAST_PUSH: dict[type, Callable[[Any], bytes]] = {
    SaPayload: _fast_push_sa,
    NotifyPayload: _fast_push_notify,
    NoncePayload: lambda v: v.data,
    KePayload: _fast_push_ke,
    AuthPayload: _fast_push_auth,
    IdPayload: lambda v: v.body,
    CertPayload: _fast_push_cert,
    CertReqPayload: _fast_push_cert,
    VendorIdPayload: lambda v: v.data,
}


def encode_payloads(payloads: Sequence[Payload]) -> bytes:
    buf = Buffer()
    push_chain(buf, payloads)
    return buf.getvalue()


def decode_payloads(data: bytes, first: int) -> list[Payload]:
    payloads, _ = pull_chain(Buffer(data), first)
    return payloads
