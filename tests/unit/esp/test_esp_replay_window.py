"""Anti-replay window table (RFC 4303 3.4.3, Appendix A)."""

from __future__ import annotations

import pytest

from core_ike.esp import ReplayWindow

# (window size, sequence of arrivals, expected accept/reject per arrival)
TABLE = [
    (4, [1, 2, 3, 4], [True] * 4),
    (4, [1, 1], [True, False]),
    (4, [0], [False]),  # RFC 4303 3.3.3: seq 0 is never sent
    (4, [5, 2], [True, True]),  # 2 = 5 - 3: right edge of a 4-wide window
    (4, [5, 1], [True, False]),  # 1 = 5 - 4: left of the window
    (4, [5, 3, 3, 4, 5], [True, True, False, True, False]),
    (4, [10, 100, 97, 96, 10], [True, True, True, False, False]),
    (128, [200, 73, 72, 199, 200], [True, True, False, True, False]),
    (64, [1, 3, 2, 70, 7, 6, 5], [True, True, True, True, True, False, False]),  # 7 = 70 - 63
    (0, [5, 5, 1], [True, True, True]),  # window 0: anti-replay off, still no seq 0
]


@pytest.mark.parametrize("size,seqs,expected", TABLE)
def test_window_table(size: int, seqs: list[int], expected: list[bool]) -> None:
    w = ReplayWindow(size)
    assert [w.check_and_update(s) for s in seqs] == expected


def test_check_does_not_update() -> None:
    w = ReplayWindow(8)
    assert w.check(3) and w.check(3)
    w.update(3)
    assert not w.check(3) and w.top == 3 and w.bitmap == 1


def test_large_jump_clears_bitmap() -> None:
    w = ReplayWindow(16)
    for s in range(1, 17):
        w.update(s)
    w.update(1000)
    assert w.bitmap == 1 and w.check(999) and not w.check(1000) and not w.check(984)


def test_esn_infer_high() -> None:
    """RFC 4303 Appendix A2.2: both cases."""
    w = ReplayWindow(64, esn=True)
    w.update((3 << 32) | 1000)
    assert w.infer_high(1001) == (3 << 32) | 1001  # case A, ahead
    assert w.infer_high(950) == (3 << 32) | 950  # case A, inside the window
    assert w.infer_high(5) == (4 << 32) | 5  # case A, below the window: next subspace
    w2 = ReplayWindow(64, esn=True)
    w2.update((3 << 32) | 10)
    assert w2.infer_high(0xFFFFFFF0) == (2 << 32) | 0xFFFFFFF0  # case B, previous subspace
    assert w2.infer_high(20) == (3 << 32) | 20
