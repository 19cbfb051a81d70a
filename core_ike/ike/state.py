"""The states of an IKE_SA and of a CHILD_SA, and the CHILD_SA itself (design principle 6).

A leaf module (it imports only the value modules `config` and `events`): tasks and the task manager
share these without importing each other. Each state is
changed in exactly one method, which logs the transition (old => new); orthogonal facts (NAT here,
NAT there, original initiator) are flags on the SA, not states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from ..codec.payloads import Proposal, TrafficSelector
from .config import ChildConfig
from .events import ChildKeys

log = logging.getLogger("core_ike.ike")


class IkeState(Enum):
    """RFC 7296 1.2-1.4 life of an IKE_SA (the names strongSwan's `list-sas` shows)."""

    CREATED = "CREATED"
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    REKEYING = "REKEYING"
    REKEYED = "REKEYED"
    DELETING = "DELETING"
    DESTROYED = "DESTROYED"


class ChildState(StrEnum):
    """Life of a CHILD_SA (RFC 7296 1.3, 2.8): a str, so status output and comparisons read as text."""

    CREATED = "CREATED"
    INSTALLED = "INSTALLED"
    REKEYING = "REKEYING"  # our CREATE_CHILD_SA with N(REKEY_SA) is queued or in flight
    REKEYED = "REKEYED"  # replaced; its DELETE is pending (RFC 7296 2.8)
    DELETING = "DELETING"  # our DELETE is in flight (RFC 7296 1.4.1)
    DELETED = "DELETED"

    @property
    def live(self) -> bool:
        """Installed in the data plane at some point and not yet removed: its removal is reported."""
        return self in _LIVE


_LIVE = frozenset({ChildState.INSTALLED, ChildState.REKEYING, ChildState.REKEYED, ChildState.DELETING})


@dataclass(eq=False)
class ChildSa:
    name: str
    unique_id: int
    reqid: int
    config: ChildConfig
    spi_in: int
    spi_out: int = 0
    proposal: Proposal | None = None
    proposal_text: str = ""
    keys: ChildKeys | None = None
    local_ts: list[TrafficSelector] = field(default_factory=list)
    remote_ts: list[TrafficSelector] = field(default_factory=list)
    state: ChildState = ChildState.CREATED
    established_at: float = 0.0
    rekey_at: float | None = None
    expire_at: float | None = None
    rekeyed_from: int | None = None

    def set_state(self, new: ChildState) -> None:
        """The one mutation point of the CHILD_SA state."""
        if new is not self.state:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("CHILD_SA %s{%d} state change: %s => %s", self.name, self.unique_id, self.state.value,
                          new.value)
            self.state = new
