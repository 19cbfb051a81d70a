"""Fields and checks every payload codec of `codec.wire` and `codec.sawire` shares (RFC 7296 3.2-3.3)."""

from __future__ import annotations

import struct

from ..buffer import Buffer
from ..constants import CfgType, IdType, NotifyType, PayloadType, ProtocolId, TransformType
from ..errors import DecodeError

GENERIC_HEADER_LEN = 4  # RFC 7296 3.2
# Fixed-size leading fields, unpacked in one call on the hot path
_GENERIC = struct.Struct("!BBH")  # RFC 7296 3.2: Next Payload, C|RESERVED, Payload Length
_SUBSTRUC = struct.Struct("!BBHBBBB")  # RFC 7296 3.3.1/3.3.2: Last, RESERVED, Length, 4 octets
_NOTIFY = struct.Struct("!BBH")  # RFC 7296 3.10: Protocol ID, SPI Size, Notify Message Type
CRITICAL = 0x80  # RFC 7296 3.2: C bit

# Value -> enum member lookups (faster than calling the enum on the hot path); unknown stay int.
_PAYLOAD_TYPES: dict[int, PayloadType] = {m.value: m for m in PayloadType}
_NOTIFY_TYPES: dict[int, NotifyType] = {m.value: m for m in NotifyType}
_PROTOCOLS: dict[int, ProtocolId] = {m.value: m for m in ProtocolId}
_TRANSFORM_TYPES: dict[int, TransformType] = {m.value: m for m in TransformType}
_ID_TYPES: dict[int, IdType] = {m.value: m for m in IdType}
_CFG_TYPES: dict[int, CfgType] = {m.value: m for m in CfgType}


def _rest(buf: Buffer) -> bytes:
    return buf.pull_bytes(buf.remaining)


def _need_body(buf: Buffer, n: int, what: str) -> None:
    if buf.remaining < n:
        raise DecodeError(f"{what} body too short: {buf.remaining} octets, need at least {n}")
