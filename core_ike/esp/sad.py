"""Inbound SA database keyed by SPI (RFC 4303 3.4.2), with the unknown-SPI drop counter.

Several inbound SAs may be live at once: during a make-before-break CHILD_SA rekey (RFC 7296 2.8)
the old and the new SA are both accepted until the old one is deleted.
"""

from __future__ import annotations

import struct

from .errors import EspError, EspTruncatedError, EspUnknownSpiError
from .sa import EspSa

_SPI = struct.Struct(">I")


class InboundSad:
    """SPI -> EspSa for inbound packets; `open` demultiplexes and decapsulates."""

    __slots__ = ("_sas", "drop_truncated", "drop_unknown_spi")

    def __init__(self) -> None:
        self._sas: dict[int, EspSa] = {}
        self.drop_unknown_spi = 0
        self.drop_truncated = 0  # shorter than SPI | Seq: no SA to charge it to

    def add(self, sa: EspSa) -> None:
        self._sas[sa.spi] = sa

    def remove(self, spi: int) -> EspSa | None:
        return self._sas.pop(spi, None)

    def get(self, spi: int) -> EspSa | None:
        return self._sas.get(spi)

    def __len__(self) -> int:
        return len(self._sas)

    def __contains__(self, spi: int) -> bool:
        return spi in self._sas

    def values(self) -> list[EspSa]:
        return list(self._sas.values())

    def open(self, packet: bytes, now: float = 0.0) -> tuple[EspSa, int, bytes]:
        """(SA, next header, inner) or raises `EspError` (already counted)."""
        if len(packet) < 8:
            self.drop_truncated += 1
            raise EspTruncatedError(f"ESP packet of {len(packet)} octets")
        spi = _SPI.unpack_from(packet)[0]
        sa = self._sas.get(spi)
        if sa is None:
            self.drop_unknown_spi += 1  # RFC 4303 3.4.2: discard, auditable event
            raise EspUnknownSpiError(f"no inbound ESP SA for SPI {spi:08x}", spi)
        nh, inner = sa.open(packet, now)
        return sa, nh, inner

    def open_batch(self, packets: list[bytes], now: float = 0.0) -> list[tuple[EspSa, int, bytes] | EspError]:
        """`open` for many packets: runs of one SPI go to `EspSa.open_many` together."""
        out: list[tuple[EspSa, int, bytes] | EspError] = []
        i, n = 0, len(packets)
        while i < n:
            head = packets[i]
            if len(head) < 8:
                self.drop_truncated += 1
                out.append(EspTruncatedError(f"ESP packet of {len(head)} octets"))
                i += 1
                continue
            spi_b = head[:4]
            j = i + 1
            while j < n and packets[j][:4] == spi_b:
                j += 1
            spi = _SPI.unpack_from(head)[0]
            sa = self._sas.get(spi)
            if sa is None:
                self.drop_unknown_spi += j - i  # RFC 4303 3.4.2: discard, auditable event
                out += [EspUnknownSpiError(f"no inbound ESP SA for SPI {spi:08x}", spi)] * (j - i)
            else:
                out += [r if isinstance(r, EspError) else (sa, r[0], r[1]) for r in sa.open_many(packets[i:j], now)]
            i = j
        return out


__all__ = ["EspError", "InboundSad"]
