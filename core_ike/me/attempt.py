"""One mediated connection being brought up (`MediationClient.connect`) and its state machine.

docs/protocol.md §4 (ME_CONNECT), §5 (callbacks), §7-§9 (checks, selection, the mediated IKE_SA); the
§ numbers below are its sections.
The state changes in exactly one method, which logs the transition (design principle 6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from ..crypto.dh import KeyExchange
from ..ike.identity import Identity
from .checklist import PairInfo
from .clienttypes import pairs_text

log = logging.getLogger("core_ike.me")


class AttemptState(StrEnum):
    MEDIATION = "mediation"  # waiting for the mediation IKE_SA (§3)
    CONNECTING = "connecting"  # our ME_CONNECT is queued or in flight (§4.1 step 1-2)
    RELAYED = "relayed"  # the server accepted it; waiting for the target's ME_RESPONSE (§4.1 step 7)
    CALLBACK = "callback"  # the target was offline; waiting for ME_CALLBACK (§5)
    # the server refused our ME_CONNECT for its rate limit (TEMPORARY_FAILURE, RFC 7296 3.10.1 "try again
    # later"): asked again at the deadline, with a growing backoff (client.rate_limit_backoff)
    RATE_LIMITED = "rate limited"
    CHECKING = "checking"  # connectivity checks run (§7)
    INITIATING = "initiating"  # the mediated IKE_SA_INIT went out on the selected pair (§9)
    YIELDED = "yielded"  # the peer's simultaneous attempt won the tie-break (tiebreak.py); we follow it
    ESTABLISHED = "established"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self not in (AttemptState.ESTABLISHED, AttemptState.FAILED)


@dataclass
class Attempt:
    """One mediated connection being brought up (per mediated config name)."""

    name: str
    mediation: str
    peer: Identity
    started: float
    # YIELDED: connect_id is then the peer's
    state: AttemptState = AttemptState.MEDIATION
    deadline: float | None = None
    connect_id: bytes | None = None
    sa_id: int | None = None
    pair: PairInfo | None = None
    reason: str = ""
    tried: tuple[PairInfo, ...] = ()
    # the server's ME_CALLBACK for the peer came while our ME_CONNECT was in flight: its answer may still
    # say "offline" (a retransmission answered from the server's cache, under loss), then ask again at once
    called_back: bool = False
    rate_limited: int = 0  # TEMPORARY_FAILURE answers to this attempt's ME_CONNECTs in a row
    # the mediated IKE_SA_INIT's key pair, made while waiting for the peer's answer (RFC 7296 1.2: KEi),
    # for this connect ID only; handed to that one IKE_SA, never kept for another
    key_share: tuple[bytes, KeyExchange] | None = None

    @property
    def active(self) -> bool:
        return self.state.active

    def set_state(self, new: AttemptState, deadline: float | None) -> None:
        """The one mutation point of the attempt's state; every state has its own deadline (or none)."""
        if new is not self.state:
            if log.isEnabledFor(logging.DEBUG):  # no state names read for a line not written
                log.debug("mediated connection '%s' state change: %s => %s", self.name, self.state.value, new.value)
            self.state = new
        self.deadline = deadline


def timeout_reason(att: Attempt, now: float, callback_timeout: float, ike_timeout: float,
                   tried: tuple[PairInfo, ...]) -> str | None:
    """Why an attempt whose state's deadline passed fails (§11.4: every attempt ends with a reason); None
    for a state whose deadline is no failure (RATE_LIMITED asks again, the final states have none)."""
    t = now - att.started
    st = att.state
    if st is AttemptState.MEDIATION:
        return f"mediation server unreachable: no mediation connection after {t:.1f} s"
    if st is AttemptState.CONNECTING:
        return f"mediation server unreachable: no answer to ME_CONNECT after {t:.1f} s"
    if st is AttemptState.CALLBACK:
        return f"peer offline: no ME_CALLBACK within {callback_timeout:g} s"
    if st in (AttemptState.RELAYED, AttemptState.CHECKING):
        return f"checks failed: no result after {t:.1f} s; tried {pairs_text(tried)}"
    if st is AttemptState.INITIATING:
        return f"mediated IKE_SA failed: not established within {ike_timeout:g} s (ike_timeout)"
    if st is AttemptState.YIELDED:
        return f"mediated IKE_SA failed: the peer's (tie-break winner) not established after {t:.1f} s"
    return None
