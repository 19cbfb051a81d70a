"""A cursor over bytes for pull/push codecs (model: aioquic's Buffer)."""

from __future__ import annotations

import struct

from .errors import DecodeError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Buffer:
    """Read from `data` or append to an internal bytearray; `pos` is the read cursor."""

    __slots__ = ("_data", "_end", "_out", "pos")

    def __init__(self, data: bytes | memoryview | None = None) -> None:
        self._data = data if type(data) is memoryview else memoryview(data if data is not None else b"")
        self._end = len(self._data)
        self.pos = 0
        self._out = bytearray()

    # --- reading -----------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def eof(self) -> bool:
        return self.pos >= self._end

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self._end:
            raise DecodeError(f"truncated: need {n} octets at offset {self.pos}, have {self.remaining}")

    def pull_bytes(self, n: int) -> bytes:
        pos = self.pos
        end = pos + n
        if n < 0 or end > self._end:
            self._need(n)
        self.pos = end
        return bytes(self._data[pos:end])

    def pull_u8(self) -> int:
        self._need(1)
        v = self._data[self.pos]
        self.pos += 1
        return v

    def pull_u16(self) -> int:
        self._need(2)
        (v,) = _U16.unpack_from(self._data, self.pos)
        self.pos += 2
        return int(v)

    def pull_u32(self) -> int:
        self._need(4)
        (v,) = _U32.unpack_from(self._data, self.pos)
        self.pos += 4
        return int(v)

    def pull_u64(self) -> int:
        self._need(8)
        (v,) = _U64.unpack_from(self._data, self.pos)
        self.pos += 8
        return int(v)

    def sub(self, n: int) -> Buffer:
        """A buffer over the next `n` octets; advances this one past them."""
        pos = self.pos
        end = pos + n
        if n < 0 or end > self._end:
            self._need(n)
        self.pos = end
        return Buffer(self._data[pos:end])

    # --- writing -----------------------------------------------------------------
    def push_bytes(self, v: bytes | bytearray | memoryview) -> None:
        self._out += v

    def push_u8(self, v: int) -> None:
        self._out.append(v & 0xFF)

    def push_u16(self, v: int) -> None:
        self._out += _U16.pack(v)

    def push_u32(self, v: int) -> None:
        self._out += _U32.pack(v)

    def push_u64(self, v: int) -> None:
        self._out += _U64.pack(v)

    @property
    def tell(self) -> int:
        return len(self._out)

    def patch_u16(self, offset: int, v: int) -> None:
        _U16.pack_into(self._out, offset, v)

    def patch_u32(self, offset: int, v: int) -> None:
        _U32.pack_into(self._out, offset, v)

    def patch_u8(self, offset: int, v: int) -> None:
        self._out[offset] = v & 0xFF

    def getvalue(self) -> bytes:
        return bytes(self._out)
