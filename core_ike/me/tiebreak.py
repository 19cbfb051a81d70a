"""Tie-break for simultaneous mediation (docs/protocol.md §11.9), our client only.

When both peers start a mediated connection to each other at about the same time, each sends an
ME_CONNECT ([ME] §4) and each receives the other's relayed request while its own attempt is in progress.
Without a rule both run check lists and both send an IKE_SA_INIT (docs/protocol.md §8, §9), and the
IKE_SA collision rule later deletes one of the two tunnels. No wire change is needed to pick one: each
side holds both connect IDs (its own, drawn when it sent ME_CONNECT, and the peer's, in the relayed
request), so both compute the same answer.

Rule: compare the two connect IDs as unsigned big-endian integers; the attempt with the higher value
wins. If they are equal (a 2^-32 event with 4-octet IDs), the attempt of the peer whose mediation
identity has the higher canonical text (str(Identity)) wins. The winner answers the loser's request with
an empty response and starts no check list for it; the loser abandons its own attempt and serves the
winner's request as an ordinary target (docs/protocol.md §4.1 step 5), its connect() being satisfied by
the winner's mediated IKE_SA.

An attempt the peer cannot know about (its ME_CONNECT not sent yet, or refused as "peer offline" and
waiting for a callback, docs/protocol.md §5) always yields; one that has already sent its IKE_SA_INIT
(the nomination, docs/protocol.md §8) is always kept. A peer that does not apply the rule (charon) is
unaffected: it either receives an empty answer (we keep ours and it is our target too) or our
ME_RESPONSE.
"""

from __future__ import annotations

from typing import Literal

from .attempt import AttemptState

Decision = Literal["keep", "yield", "none"]

# attempt states ([ME] §4 / §7): the peer may know our connect ID, compare
_COMPARED = frozenset({AttemptState.CONNECTING, AttemptState.RELAYED, AttemptState.CHECKING})
_YIELD = frozenset({AttemptState.MEDIATION, AttemptState.CALLBACK})  # the peer cannot know about our attempt


def own_attempt_wins(own_cid: bytes, peer_cid: bytes, own_id: str, peer_id: str) -> bool:
    """True if our attempt (connect ID `own_cid`) beats the peer's (`peer_cid`)."""
    a, b = int.from_bytes(own_cid, "big"), int.from_bytes(peer_cid, "big")
    if a != b:
        return a > b
    return own_id > peer_id


def decide(state: AttemptState, own_cid: bytes | None, sent: bool, peer_cid: bytes, own_id: str,
           peer_id: str) -> Decision:
    """What to do with our attempt in `state` when the peer's fresh ME_CONNECT `peer_cid` arrives.

    `sent`: our ME_CONNECT carrying `own_cid` has been built (the peer may have it)."""
    if state is AttemptState.INITIATING:
        return "keep"
    if state in _YIELD or (state in _COMPARED and (own_cid is None or not sent)):
        return "yield"
    if state in _COMPARED and own_cid is not None:
        return "keep" if own_attempt_wins(own_cid, peer_cid, own_id, peer_id) else "yield"
    return "none"
