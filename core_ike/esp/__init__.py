"""Sans-IO ESP (RFC 4303) tunnel-mode SAs, anti-replay window and inbound SAD."""

from __future__ import annotations

from .algorithms import USERSPACE, EspTransforms, fixed_key_bits, key_lengths
from .errors import (
    DropReason,
    EspError,
    EspIntegrityError,
    EspPaddingError,
    EspReplayError,
    EspTruncatedError,
    EspUnknownSpiError,
    SequenceExhaustedError,
)
from .replay import ReplayWindow
from .sa import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    NEXT_HEADER_NO_NEXT,
    EspCounters,
    EspSa,
)
from .sad import InboundSad

__all__ = [
    "NEXT_HEADER_IPV4",
    "NEXT_HEADER_IPV6",
    "NEXT_HEADER_NO_NEXT",
    "USERSPACE",
    "DropReason",
    "EspCounters",
    "EspError",
    "EspIntegrityError",
    "EspPaddingError",
    "EspReplayError",
    "EspSa",
    "EspTransforms",
    "EspTruncatedError",
    "EspUnknownSpiError",
    "InboundSad",
    "ReplayWindow",
    "SequenceExhaustedError",
    "fixed_key_bits",
    "key_lengths",
]
