"""`BufferViews.column`: strided numpy fields over a batch buffer, made once per layout."""

from __future__ import annotations

import numpy as np

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
