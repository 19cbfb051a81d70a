"""Errors typed by consequence (design principle 8).

- DecodeError: the octets cannot be parsed; drop the datagram and log one line.
- ProtocolError: the peer broke a rule; carries the notify to answer with (if any).
- LocalError: our own caller misused the API or the configuration is inconsistent.
Raised deep, caught once at the receive boundary.
"""

from __future__ import annotations

from .constants import NotifyType


class IkeError(Exception):
    """Base of all core errors."""


class DecodeError(IkeError):
    """Malformed octets: the message is dropped, nothing is answered."""


class ProtocolError(IkeError):
    """A protocol rule was broken; `notify` is what we answer (None = drop silently)."""

    def __init__(self, message: str, notify: NotifyType | int | None = None, data: bytes = b"") -> None:
        super().__init__(message)
        self.notify = notify
        self.data = data


class AuthenticationError(ProtocolError):
    def __init__(self, message: str) -> None:
        super().__init__(message, NotifyType.AUTHENTICATION_FAILED)


class LocalError(IkeError):
    """Local misuse or bad configuration."""


class IntegrityError(DecodeError):
    """ICV / AEAD tag verification failed: drop silently (RFC 7296 2.21.2), log one line."""
