"""Payload values (RFC 7296 3.2-3.16, RFC 7383, ME draft 4).

Plain dataclasses; the wire format lives in `codec.wire` (pull_*/push_* pairs). Every payload class
has a `ptype` so a message is just an ordered list of payloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..constants import (
    CfgType,
    EncrId,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)


@dataclass(frozen=True, slots=True)
class Transform:
    type: TransformType | int  # unknown types kept as int (RFC 7296 3.3.6: reject that proposal)
    id: int
    key_length: int | None = None  # bits, RFC 7296 3.3.5 attribute 14


@dataclass(slots=True)
class Proposal:
    num: int
    protocol: ProtocolId | int  # unknown protocol ids kept as int
    spi: bytes = b""
    transforms: list[Transform] = field(default_factory=list)

    def of_type(self, t: TransformType | int) -> list[Transform]:
        return [x for x in self.transforms if x.type == t]

    def first(self, t: TransformType | int) -> Transform | None:
        for x in self.transforms:
            if x.type == t:
                return x
        return None

    @property
    def is_aead(self) -> bool:
        e = self.first(TransformType.ENCR)
        return e is not None and e.id in (
            EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16,
            EncrId.AES_CCM_8, EncrId.AES_CCM_12, EncrId.AES_CCM_16, EncrId.CHACHA20_POLY1305,
        )


@dataclass(slots=True)
class SaPayload:
    ptype: ClassVar[PayloadType] = PayloadType.SA
    proposals: list[Proposal] = field(default_factory=list)
    # the body octets it stands for: as received, or a cached encoding of `proposals`; encoders send
    # them as they are, so code that changes `proposals` of such a payload sets `raw` to None
    raw: bytes | None = field(default=None, compare=False, repr=False)
    # as received: the body without its proposals' SPIs (RFC 7296 3.3.1), what a choice among the
    # proposals depends on (a CHILD_SA's offer differs from the last one in its SPIs alone)
    shape: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class KePayload:
    ptype: ClassVar[PayloadType] = PayloadType.KE
    group: int
    data: bytes


@dataclass(slots=True)
class IdPayload:
    """IDi (35), IDr (36) and the ME ID_PEER (128) share one body: IDType | RESERVED(3) | data."""

    ptype: PayloadType
    id_type: IdType | int
    data: bytes
    raw_body: bytes | None = None  # body octets as received (RFC 7296 2.15: AUTH uses them)

    @property
    def body(self) -> bytes:
        """RestOfIDPayload: `IDType | RESERVED | data`, as received when available."""
        if self.raw_body is not None:
            return self.raw_body
        return bytes([int(self.id_type), 0, 0, 0]) + self.data


@dataclass(slots=True)
class CertPayload:
    ptype: ClassVar[PayloadType] = PayloadType.CERT
    encoding: int
    data: bytes


@dataclass(slots=True)
class CertReqPayload:
    ptype: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: int
    data: bytes  # concatenated 20-octet SHA-1 hashes of trusted CA SPKIs


@dataclass(slots=True)
class AuthPayload:
    ptype: ClassVar[PayloadType] = PayloadType.AUTH
    method: int
    data: bytes


@dataclass(slots=True)
class NoncePayload:
    ptype: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes


@dataclass(slots=True)
class NotifyPayload:
    ptype: ClassVar[PayloadType] = PayloadType.NOTIFY
    type: NotifyType | int
    data: bytes = b""
    protocol: ProtocolId | int = ProtocolId.NONE
    spi: bytes = b""

    @property
    def is_error(self) -> bool:
        return int(self.type) < 16384


@dataclass(slots=True)
class DeletePayload:
    ptype: ClassVar[PayloadType] = PayloadType.DELETE
    protocol: ProtocolId | int
    spis: list[bytes] = field(default_factory=list)  # empty for IKE; 4-octet SPIs for ESP/AH


@dataclass(slots=True)
class VendorIdPayload:
    ptype: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(frozen=True, slots=True, init=False)
class TrafficSelector:
    ts_type: TsType
    ip_proto: int  # 0 = any
    start_port: int
    end_port: int
    start_addr: bytes  # 4 or 16 octets
    end_addr: bytes

    def __init__(self, ts_type: TsType, ip_proto: int, start_port: int, end_port: int, start_addr: bytes,
                 end_addr: bytes) -> None:
        # each field through its slot's setter: the frozen dataclass's generated __init__ calls
        # object.__setattr__ per field, which binds a method wrapper and walks the MRO each time (made for
        # every CHILD_SA's selectors, kept for its life)
        _ts_type(self, ts_type)
        _ts_ip_proto(self, ip_proto)
        _ts_start_port(self, start_port)
        _ts_end_port(self, end_port)
        _ts_start_addr(self, start_addr)
        _ts_end_addr(self, end_addr)


_ts_type, _ts_ip_proto, _ts_start_port, _ts_end_port, _ts_start_addr, _ts_end_addr = (
    TrafficSelector.__dict__[f].__set__ for f in TrafficSelector.__slots__)


@dataclass(slots=True)
class TsPayload:
    """TSi (44) or TSr (45)."""

    ptype: PayloadType
    selectors: list[TrafficSelector] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CfgAttribute:
    type: int
    value: bytes = b""


@dataclass(slots=True)
class CpPayload:
    ptype: ClassVar[PayloadType] = PayloadType.CP
    cfg_type: CfgType | int
    attributes: list[CfgAttribute] = field(default_factory=list)


@dataclass(slots=True)
class EapPayload:
    ptype: ClassVar[PayloadType] = PayloadType.EAP
    data: bytes


@dataclass(slots=True)
class UnknownPayload:
    """A payload type we do not understand, kept only when not critical (RFC 7296 2.5)."""

    ptype: PayloadType | int
    critical: bool
    data: bytes


@dataclass(slots=True)
class SkPayload:
    """Encrypted payload (46) as received: the octets needed to verify and decrypt it.

    `prefix` = IKE header + SK generic header (the AEAD AAD; the start of the HMAC input),
    `body` = IV | ciphertext | ICV, `first_inner` = the SK's Next Payload field.
    """

    ptype: ClassVar[PayloadType] = PayloadType.SK
    first_inner: int
    prefix: bytes
    body: bytes


@dataclass(slots=True)
class SkfPayload:
    """Encrypted fragment (53, RFC 7383 2.5) as received."""

    ptype: ClassVar[PayloadType] = PayloadType.SKF
    first_inner: int  # non-zero only in fragment 1
    number: int
    total: int
    prefix: bytes  # IKE header + SKF generic header + Fragment Number + Total Fragments
    body: bytes


Payload = (
    SaPayload | KePayload | IdPayload | CertPayload | CertReqPayload | AuthPayload | NoncePayload
    | NotifyPayload | DeletePayload | VendorIdPayload | TsPayload | CpPayload | EapPayload
    | UnknownPayload | SkPayload | SkfPayload
)
