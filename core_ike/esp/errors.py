"""Typed ESP errors (design principle 8): every inbound failure is a drop with a reason.

Inbound errors derive from `DecodeError` (drop + count + log), the ICV failure also from
`IntegrityError`; running out of sequence numbers is a local condition (`LocalError`): the SA must be
rekeyed (RFC 4303 3.3.3).
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import DecodeError, IntegrityError, LocalError


class DropReason(StrEnum):
    UNKNOWN_SPI = "unknown_spi"
    BAD_ICV = "bad_icv"
    REPLAY = "replay"
    BAD_PADDING = "bad_padding"
    TRUNCATED = "truncated"


class EspError(DecodeError):
    """An inbound ESP packet is dropped; `reason` says which counter it went to."""

    reason: DropReason = DropReason.TRUNCATED

    def __init__(self, message: str, spi: int = 0, seq: int = 0) -> None:
        super().__init__(message)
        self.spi = spi
        self.seq = seq


class EspTruncatedError(EspError):
    """Shorter than the fixed ESP fields, or ciphertext not aligned (RFC 4303 2.4)."""

    reason = DropReason.TRUNCATED


class EspUnknownSpiError(EspError):
    """No inbound SA for the SPI (RFC 4303 3.4.2: discard, auditable event)."""

    reason = DropReason.UNKNOWN_SPI


class EspReplayError(EspError):
    """Duplicate or left of the window (RFC 4303 3.4.3)."""

    reason = DropReason.REPLAY


class EspIntegrityError(EspError, IntegrityError):
    """ICV / AEAD tag mismatch (RFC 4303 3.4.4)."""

    reason = DropReason.BAD_ICV


class EspPaddingError(EspError):
    """Pad Length beyond the payload or pad bytes not 1, 2, 3... (RFC 4303 2.4)."""

    reason = DropReason.BAD_PADDING


class SequenceExhaustedError(LocalError):
    """The outbound counter would cycle: the SA must be rekeyed (RFC 4303 3.3.3)."""
