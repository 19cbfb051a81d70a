"""Anti-replay sliding window (RFC 4303 3.4.3 and Appendix A).

The window is a Python int used as a bitmap: bit ``i`` set means sequence number ``top - i`` has
been received (and authenticated).  ``check`` runs *before* the ICV is verified (cheap rejection,
RFC 4303 3.4.3), ``update`` only *after* a successful integrity check, so a forged packet can
never advance the window.

With Extended Sequence Numbers the high 32 bits are not on the wire; ``infer_high`` implements
RFC 4303 Appendix A2.2 to reconstruct them from the low half and the window position.
"""

from __future__ import annotations

_MASK32 = 0xFFFFFFFF


class ReplayWindow:
    """Sliding window over 32-bit (or 64-bit ESN) sequence numbers."""

    __slots__ = ("_bitmap", "_mask", "esn", "size", "top")

    def __init__(self, size: int = 128, esn: bool = False) -> None:
        if size < 0:
            raise ValueError("replay window size must be >= 0")
        self.size = size
        self.esn = esn
        self.top = 0  # highest authenticated sequence number seen (full 64-bit with ESN)
        self._bitmap = 0
        self._mask = (1 << size) - 1 if size else 0

    def infer_high(self, seq_low: int) -> int:
        """Full 64-bit sequence number for a received low half (RFC 4303 Appendix A2.2)."""
        if not self.esn:
            return seq_low
        w = self.size or 1
        tl = self.top & _MASK32
        th = self.top >> 32
        if tl >= w - 1:  # Case A: window within one subspace
            high = th + 1 if seq_low < tl - w + 1 else th
        else:  # Case B: window spans two subspaces
            high = th - 1 if seq_low >= tl - w + 1 + (1 << 32) and th > 0 else th
        return (high << 32) | seq_low

    def check(self, seq: int) -> bool:
        """True when ``seq`` (full value) is acceptable: new and not left of the window."""
        if seq == 0:
            return False  # RFC 4303 3.3.3: the first packet has sequence number 1
        if seq > self.top:
            return True
        if self.size == 0:
            return True  # anti-replay disabled (RFC 4303 3.4.3: receiver may opt out)
        diff = self.top - seq
        if diff >= self.size:
            return False
        return not (self._bitmap >> diff) & 1

    def update(self, seq: int) -> None:
        """Mark ``seq`` received; call only after the ICV verified (RFC 4303 3.4.3)."""
        if seq > self.top:
            shift = seq - self.top
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        elif self.size:
            self._bitmap |= 1 << (self.top - seq)

    def update_run(self, first: int, n: int) -> None:
        """`update` for the `n` consecutive sequence numbers from `first`, all above `top`."""
        if first <= self.top or n <= 0:
            raise ValueError("update_run: a run above the window's top")
        last = first + n - 1
        shift = last - self.top
        run = (1 << min(n, self.size)) - 1
        self._bitmap = ((self._bitmap << shift) | run) & self._mask if shift < self.size else run & self._mask
        self.top = last

    def check_and_update(self, seq: int) -> bool:
        if not self.check(seq):
            return False
        self.update(seq)
        return True

    @property
    def bitmap(self) -> int:
        return self._bitmap
