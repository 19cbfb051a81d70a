"""`BufferViews.column`: strided numpy fields over a batch buffer, made once per layout."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from core_ike.esp.views import BufferViews


def test_column_writes_every_row_and_is_reused() -> None:
    views = BufferViews()
    buf = bytearray(4 * 10)
    col = views.column(buf, 2, 10, 4, ">u4")
    col[:] = np.arange(1, 5, dtype=np.uint64)
    assert [int.from_bytes(buf[i * 10 + 2 : i * 10 + 6], "big") for i in range(4)] == [1, 2, 3, 4]
    assert bytes(buf[:2]) == b"\0\0" and bytes(buf[6:12]) == bytes(6)  # nothing outside the field
    assert views.column(buf, 2, 10, 4, ">u4") is col  # the same layout: the same array
    assert views.column(buf, 2, 10, 3, ">u4") is not col  # another row count: another array
    assert views.column(bytearray(40), 2, 10, 4, ">u4") is not col  # another buffer


def test_grow_drops_the_columns_so_the_buffer_can_resize() -> None:
    views = BufferViews()
    buf = bytearray(20)
    views.column(buf, 0, 10, 2, "u1")[:] = 7
    views.grow(buf, 100)  # would raise BufferError if a kept column still exported the buffer
    assert len(buf) == 100 and buf[0] == 7 and buf[10] == 7
    col = views.column(buf, 0, 10, 10, "u1")
    col[:] = 9
    assert buf[90] == 9


def test_fields_are_copies_of_each_row_field() -> None:
    """`BufferViews.fields`: the AEAD calls' nonces and AADs as bytes, one per row, copied (not views)."""
    views = BufferViews()
    buf = bytearray(range(50))
    got = views.fields(buf, 3, 10, 4, 5)
    assert got == tuple(bytes(buf[3 + i * 10 : 7 + i * 10]) for i in range(5))
    assert all(type(f) is bytes for f in got)
    buf[3] = 0xFF
    views.grow(buf, 100)  # no view of it kept: the buffer resizes
    assert got[0][0] == 3 and views.fields(buf, 3, 10, 4, 1) == (b"\xff\x04\x05\x06",)
    with pytest.raises(ValueError):
        views.fields(buf, 0, 4, 8, 2)  # fields longer than their step would overlap
    with pytest.raises(struct.error):
        views.fields(buf, 0, 10, 8, 11)  # past the buffer's end
