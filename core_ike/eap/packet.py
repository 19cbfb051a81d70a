"""EAP packets (RFC 3748 4): Code, Identifier, Length, and for Request/Response a Type and its data."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import DecodeError


class EapCode(IntEnum):
    """RFC 3748 4."""

    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EapType(IntEnum):
    """RFC 3748 5 and the IANA EAP method types used here."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3  # Response only (RFC 3748 5.3.1)
    MD5 = 4  # MD5-Challenge (RFC 3748 5.4)
    MSCHAPV2 = 26  # draft-kamath-pppext-eap-mschapv2


METHOD_NAMES = {EapType.MD5: "EAP-MD5", EapType.MSCHAPV2: "EAP-MSCHAPv2", EapType.IDENTITY: "EAP-Identity"}


@dataclass(frozen=True)
class EapPacket:
    code: int
    identifier: int
    type: int | None = None  # Request and Response only
    data: bytes = b""

    def encode(self) -> bytes:
        if self.code in (EapCode.SUCCESS, EapCode.FAILURE):
            return struct.pack("!BBH", self.code, self.identifier, 4)  # RFC 3748 4.2: no data
        if self.type is None:
            raise ValueError("an EAP Request/Response needs a Type")
        return struct.pack("!BBHB", self.code, self.identifier, 5 + len(self.data), self.type) + self.data

    @classmethod
    def decode(cls, raw: bytes) -> EapPacket:
        """RFC 3748 4: octets beyond Length are padding and ignored; a shorter packet is malformed."""
        if len(raw) < 4:
            raise DecodeError(f"EAP packet of {len(raw)} octets is shorter than its header")
        code, ident, length = struct.unpack_from("!BBH", raw)
        if length < 4 or length > len(raw):
            raise DecodeError(f"EAP Length {length} does not fit the {len(raw)} octets received")
        if code in (EapCode.SUCCESS, EapCode.FAILURE):
            return cls(code, ident)
        if code not in (EapCode.REQUEST, EapCode.RESPONSE):
            raise DecodeError(f"unknown EAP Code {code}")
        if length < 5:
            raise DecodeError("EAP Request/Response without a Type")
        return cls(code, ident, raw[4], bytes(raw[5:length]))

    @property
    def summary(self) -> str:
        if self.type is None:
            return EapCode(self.code).name
        t = METHOD_NAMES.get(EapType(self.type), str(self.type)) if self.type in EapType._value2member_map_ \
            else str(self.type)
        return f"{EapCode(self.code).name}/{t}"
