"""The SA payload (RFC 7296 3.3) on the wire: `pull_sa` / `push_sa`, and the caches of the SA payloads a
peer and we repeat (`pull_sa_body`, used by `codec.wire`'s fast paths and the IKE_AUTH fast path)."""

from __future__ import annotations

import struct

from ..buffer import Buffer
from ..constants import TransformAttr
from ..errors import DecodeError
from .fields import _PROTOCOLS, _SUBSTRUC, _TRANSFORM_TYPES, _need_body
from .payloads import Proposal, SaPayload, Transform

# --- SA (RFC 7296 3.3) ---------------------------------------------------------------------------

_LAST_PROPOSAL, _MORE_PROPOSALS = 0, 2  # RFC 7296 3.3.1
_LAST_TRANSFORM, _MORE_TRANSFORMS = 0, 3  # RFC 7296 3.3.2
_AF_TV = 0x8000  # RFC 7296 3.3.5: attribute format bit (1 = TV)


def _pull_attributes(buf: Buffer) -> int | None:
    """RFC 7296 3.3.5: only Key Length (TV, type 14) is defined; unknown attributes are skipped."""
    key_length: int | None = None
    while not buf.eof():
        _need_body(buf, 4, "transform attribute")
        af_type = buf.pull_u16()
        if af_type & _AF_TV:
            value = buf.pull_u16()
            if af_type & 0x7FFF == TransformAttr.KEY_LENGTH:
                key_length = value
        else:
            length = buf.pull_u16()
            if length > buf.remaining:
                raise DecodeError(
                    f"transform attribute {af_type} length {length} exceeds {buf.remaining} remaining"
                )
            buf.pull_bytes(length)  # TLV attribute: skipped (none defined for IKEv2)
    return key_length


_TRANSFORMS: dict[tuple[int, int, int | None], Transform] = {}


def _pull_transform(buf: Buffer) -> tuple[bool, Transform]:
    _need_body(buf, 8, "transform")
    more, _, length, ttype, _, tid_hi, tid_lo = _SUBSTRUC.unpack(buf.pull_bytes(8))
    if more not in (_LAST_TRANSFORM, _MORE_TRANSFORMS):
        raise DecodeError(f"transform Last Substruc {more} is neither 0 nor 3")
    if length < 8 or length - 8 > buf.remaining:
        raise DecodeError(f"transform length {length} invalid ({buf.remaining + 8} octets left)")
    tid = tid_hi << 8 | tid_lo
    key_length = _pull_attributes(buf.sub(length - 8)) if length > 8 else None
    key = (ttype, tid, key_length)
    t = _TRANSFORMS.get(key)
    if t is None:
        t = Transform(_TRANSFORM_TYPES.get(ttype, ttype), tid, key_length)  # unknown types kept (3.3.6)
        if len(_TRANSFORMS) < 4096:
            _TRANSFORMS[key] = t  # frozen: shared by every SA that negotiates it (memory per SA)
    return more == _MORE_TRANSFORMS, t


def _pull_proposal(buf: Buffer) -> tuple[bool, Proposal]:
    _need_body(buf, 8, "proposal")
    more, _, length, num, proto, spi_size, n_transforms = _SUBSTRUC.unpack(buf.pull_bytes(8))
    if more not in (_LAST_PROPOSAL, _MORE_PROPOSALS):
        raise DecodeError(f"proposal Last Substruc {more} is neither 0 nor 2")
    if length < 8 or length - 8 > buf.remaining:
        raise DecodeError(f"proposal length {length} invalid ({buf.remaining + 8} octets left)")
    body = buf.sub(length - 8)
    if spi_size > body.remaining:
        raise DecodeError(f"proposal SPI size {spi_size} exceeds proposal length {length}")
    spi = body.pull_bytes(spi_size)
    transforms: list[Transform] = []
    more_t = n_transforms > 0
    while more_t:
        more_t, t = _pull_transform(body)
        transforms.append(t)
    if len(transforms) != n_transforms or not body.eof():
        raise DecodeError(
            f"proposal {num}: {n_transforms} transforms announced, {len(transforms)} found, "
            f"{body.remaining} octets left over"
        )
    # RFC 7296 3.3.1: numbering (1, 2, ...) is not enforced: a response echoes the chosen number
    p = Proposal(num, _PROTOCOLS.get(proto, proto), spi, transforms)
    return more == _MORE_PROPOSALS, p


def pull_sa(buf: Buffer) -> SaPayload:
    proposals: list[Proposal] = []
    more = not buf.eof()
    while more:
        if buf.eof():
            raise DecodeError("SA payload: Last Substruc announces another proposal, none present")
        more, p = _pull_proposal(buf)
        proposals.append(p)
    if not buf.eof():
        raise DecodeError(f"SA payload: {buf.remaining} octets after the last proposal")
    return SaPayload(proposals)


_TRANSFORM_HEAD = struct.Struct("!BBHBBH")  # RFC 7296 3.3.2: Last, RESERVED, Length, Type, RESERVED, ID
_KEY_LENGTH_ATTR = struct.Struct("!HH")  # RFC 7296 3.3.5: TV attribute 14


def push_sa(buf: Buffer, v: SaPayload) -> None:
    out = buf._out
    n_props = len(v.proposals)
    for i, p in enumerate(v.proposals):
        parts = [b"", p.spi]
        last_t = len(p.transforms) - 1
        for j, t in enumerate(p.transforms):
            more = _MORE_TRANSFORMS if j < last_t else _LAST_TRANSFORM
            if t.key_length is None:
                parts.append(_TRANSFORM_HEAD.pack(more, 0, 8, t.type, 0, t.id))
            else:
                parts.append(_TRANSFORM_HEAD.pack(more, 0, 12, t.type, 0, t.id)
                             + _KEY_LENGTH_ATTR.pack(_AF_TV | TransformAttr.KEY_LENGTH, t.key_length))  # 0x800E
        body_len = 8 + sum(len(x) for x in parts)
        parts[0] = _SUBSTRUC.pack(_MORE_PROPOSALS if i + 1 < n_props else _LAST_PROPOSAL, 0, body_len,
                                  p.num, p.protocol, len(p.spi), len(p.transforms))
        out += b"".join(parts)


# An initiator sends the same SA payload in every IKE_SA_INIT (its configured proposals), and the same
# ESP proposals with another SPI for each CHILD_SA: the parsed proposals are kept by the payload's octets
# without the SPIs, bounded (a flood of varied ones only empties it), and each message gets a fresh
# SaPayload over them with its own SPIs. Transforms are not changed after parsing (a selected proposal is
# a new Proposal).
_SA_CACHE: dict[bytes, tuple[Proposal, ...]] = {}
SA_CACHE_MAX = 64


def _without_spis(body: bytes) -> tuple[bytes, list[bytes]] | None:
    """An SA body's octets without each proposal's SPI, which follows the proposal's 8-octet header
    (RFC 7296 3.3.1), and the SPIs; None when the proposal headers do not chain to the body's end (the
    general codec says why)."""
    n, pos, cut = len(body), 0, 0
    parts: list[bytes] = []
    spis: list[bytes] = []
    while True:
        if n - pos < 8:
            return None
        end = pos + ((body[pos + 2] << 8) | body[pos + 3])
        spi_end = pos + 8 + body[pos + 6]
        if spi_end > end or end > n:
            return None
        parts += (body[pos:pos + 8], body[spi_end:end])
        spis.append(body[pos + 8:spi_end])
        cut += spi_end - pos - 8
        if body[pos] != _MORE_PROPOSALS:
            if end != n or body[pos] != _LAST_PROPOSAL:
                return None
            return (b"".join(parts) if cut else body), spis
        pos = end


def _fast_pull_sa(raw: bytes, start: int, end: int) -> SaPayload | None:
    body = raw[start:end]
    cut = _without_spis(body)
    if cut is None:
        return None
    shape, spis = cut
    hit = _SA_CACHE.get(shape)
    if hit is None:
        sa = pull_sa(Buffer(body))  # errors: the general path raises them again with the details
        if len(_SA_CACHE) >= SA_CACHE_MAX:
            _SA_CACHE.clear()
        hit = _SA_CACHE[shape] = tuple(sa.proposals)
    if shape is body:  # no SPIs (an IKE SA's offer, RFC 7296 3.3.1)
        return SaPayload(list(hit), body, shape)
    return SaPayload([Proposal(p.num, p.protocol, spi, p.transforms) for p, spi in zip(hit, spis, strict=True)],
                     body, shape)


def pull_sa_body(body: bytes) -> SaPayload:
    """An SA payload's body (RFC 7296 3.3) as pull_chain decodes it, from the cache when its shape was
    seen; DecodeError as there."""
    return _fast_pull_sa(body, 0, len(body)) or pull_sa(Buffer(body))


# The SA payloads we send repeat (our configured offer as initiator, the chosen proposal of the same kind
# of peer as responder): their bodies are kept by the encoded fields, bounded.
_SA_BODIES: dict[tuple[object, ...], bytes] = {}


def _fast_push_sa(v: SaPayload) -> bytes:
    if v.raw is not None:
        return v.raw
    key = tuple([(p.num, int(p.protocol), p.spi, tuple(p.transforms)) for p in v.proposals])
    body = _SA_BODIES.get(key)
    if body is None:
        buf = Buffer()
        push_sa(buf, v)
        body = buf.getvalue()
        if len(_SA_BODIES) >= SA_CACHE_MAX:
            _SA_BODIES.clear()
        _SA_BODIES[key] = body
    return body
