"""Memoryview slices of the batch buffers, cut once per layout and reused.

The batch steps (`EspSa.seal_into`, `EspSa.open_into`) make one AEAD ``*_into`` call per packet with
four buffers: nonce, input, AAD and output, each a slice of a long-lived buffer at a fixed stride.
Cutting those slices per packet costs about as much Python as the call itself; cut once and kept
here, the calls run as ``map(encrypt_into, nonces, inputs, aads, outputs)`` with no Python per packet.

A kept slice pins its buffer's size (a bytearray with live memoryviews cannot be resized), so a
buffer grows only through `grow`, which drops the slices of it first. A kept slice also keeps its
buffer alive: the data plane's buffers live as long as it does anyway, and at most `_MAX_LAYOUTS`
layouts are kept. The data plane runs in one thread (its event loop), as every user of this module.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

_MAX_LAYOUTS = 256  # past it every kept slice list is dropped (bounded memory with many buffers)

Buffer = bytearray | memoryview | bytes


class BufferViews:
    """Slice lists of buffers: ``rows(buf, start, step, length, count)`` = the `count` slices
    ``buf[start + i * step : start + i * step + length]``."""

    def __init__(self) -> None:
        self._rows: dict[tuple[int, int, int, int], tuple[Any, list[memoryview]]] = {}
        self._columns: dict[tuple[int, int, int, int, Any], tuple[Any, Any]] = {}
        self.scratch = bytearray(12 * 256)  # nonces of one batch (`EspSa`), grown by `grow`

    def rows(self, buf: Buffer, start: int, step: int, length: int, count: int) -> list[memoryview]:
        """At least `count` slices (a longer list when more were cut before: `map` stops at its
        shortest argument, so one exact list among the arguments sets the count)."""
        key = (id(buf), start, step, length)
        hit = self._rows.get(key)
        if hit is not None and hit[0] is buf and len(hit[1]) >= count:
            return hit[1]
        if start + (count - 1) * step + length > len(buf):
            raise ValueError(f"{count} slices of {length} octets every {step} do not fit a buffer of {len(buf)}")
        if len(self._rows) >= _MAX_LAYOUTS:
            self._rows.clear()
        view = memoryview(buf)
        out = [view[o : o + length] for o in range(start, start + count * step, step)]
        self._rows[key] = (buf, out)  # the buffer itself is kept: its id stays unique while cached
        return out

    def fields(self, buf: Buffer, start: int, step: int, length: int, count: int) -> tuple[bytes, ...]:
        """The `count` fields ``buf[start + i * step : start + i * step + length]`` as bytes objects, copied
        in one struct call: for an AEAD call's short arguments (nonce, AAD), which `cryptography` reads
        straight from a bytes object but from a memoryview through the buffer protocol (about 400
        instructions more per argument, bench/esp_batch_cost.py). Values, not views: nothing is kept."""
        return _fields(start, step, length, count).unpack_from(buf)

    def column(self, buf: bytearray, at: int, stride: int, n: int, dtype: Any) -> Any:
        """The field of numpy `dtype` at octet `at` of each of `n` rows `stride` octets apart, as a writable
        numpy array over `buf` (a strided view, made once per layout: numpy builds an array in about the
        time it takes to fill one of a few dozen rows)."""
        key = (id(buf), at, stride, n, dtype)
        hit = self._columns.get(key)
        if hit is not None and hit[0] is buf:
            return hit[1]
        import numpy as np  # only the batch steps come here (numpy stays out of the mediation server)

        if len(self._columns) >= _MAX_LAYOUTS:
            self._columns.clear()
        col = np.ndarray((n,), dtype, buf, at, (stride,))
        self._columns[key] = (buf, col)
        return col

    def forget(self, buf: Buffer) -> None:
        """Drop the slices and columns of `buf` (before it is resized or replaced)."""
        for key in [k for k, v in self._rows.items() if v[0] is buf]:
            del self._rows[key]
        for ckey in [k for k, v in self._columns.items() if v[0] is buf]:
            del self._columns[ckey]

    def grow(self, buf: bytearray, size: int) -> None:
        """Make `buf` at least `size` octets long."""
        if len(buf) < size:
            self.forget(buf)
            buf.extend(bytes(size - len(buf)))

    def nonces(self, count: int) -> bytearray:
        """The scratch buffer, with room for `count` 12-octet nonces."""
        self.grow(self.scratch, 12 * count)
        return self.scratch


@functools.lru_cache(maxsize=256)
def _fields(start: int, step: int, length: int, count: int) -> struct.Struct:
    if count < 1 or step < length:
        raise ValueError(f"{count} fields of {length} octets every {step}")
    return struct.Struct(f"{start}x" + f"{length}s{step - length}x" * (count - 1) + f"{length}s")


VIEWS = BufferViews()
"""The one cache the data plane's buffers use (`core_ike.io.batchsteps`, `core_ike.io.offload`)."""
