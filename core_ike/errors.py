"""Errors typed by consequence (design principle 8).

- DecodeError: the octets cannot be parsed; drop the datagram and log one line.
- ProtocolError: the peer broke a rule (or refused ours); carries the notify to answer with (if any).
- AuthenticationFailed: a ProtocolError whose cause is credentials: the peer's did not verify, ours
  are missing, or the peer answered AUTHENTICATION_FAILED (RFC 7296 2.21.2). Callers that report
  failures (the mediation client) tell it from other failures by type, never by message text.
- LocalUsageError: our own caller misused the API or the configuration is inconsistent; nothing goes
  to the peer. `LocalError` is the same class (the configuration loaders raise it by that name).
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


class AuthenticationFailed(ProtocolError):
    """Credentials refused or missing; the peer learns AUTHENTICATION_FAILED (RFC 7296 2.21.2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, NotifyType.AUTHENTICATION_FAILED)


class CredentialsPending(IkeError):
    """A credential lookup is under way in the adapter (e.g. a database query in a worker thread): the
    request is left unanswered and its retransmission (RFC 7296 2.1) is processed again, by when the
    answer is there. Raised by a `Credentials.resolver`, caught by the task manager."""


class LocalUsageError(IkeError):
    """Local misuse of the API or bad configuration."""


LocalError = LocalUsageError


class IntegrityError(DecodeError):
    """ICV / AEAD tag verification failed: drop silently (RFC 7296 2.21.2), log one line."""
