"""Simultaneous rekeying and rekey/delete collisions (RFC 7296 2.8.1, 2.8.2, 2.25).

Both peers may start a rekey of the same SA at once (each answers the other's request, so each ends up
with two new SAs), or one peer may rekey what the other is deleting. The rules here decide which SA
survives so that both peers end with the same single SA; the tasks call them at the points where a
collision becomes visible (answering the peer's request while ours is in flight, processing our response).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from ...codec.message import Message
from ...constants import ExchangeType, NotifyType
from ...errors import ProtocolError
from ..context import IkeSaView, Task
from ..state import ChildSa, ChildState, IkeState
from .informational import ChildDelete, IkeDelete, defer_outbound, drop_outbound, hand_over

if TYPE_CHECKING:  # these two import this module; at run time tasks are told apart by `Task.name`
    from .child_create import ChildCreate
    from .ike_rekey import IkeRekey

log = logging.getLogger("core_ike.ike")


def ours_is_redundant(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """RFC 7296 2.8.1: of two colliding rekeys, the SA created with the lowest of the four nonces is
    redundant and is closed by the peer that created it (the initiator of that exchange). "Lowest" is an
    octet-by-octet comparison where a nonce that is a prefix of the other is the lower one: exactly
    Python's ordering of bytes. Both peers compute this on the same four nonces and so agree."""
    return min(ours) < min(theirs)


def own_task(sa: IkeSaView, name: str, pred: object = None) -> tuple[Task | None, bool]:
    """Our task named `name` (and with `rekey is pred` when given) for this IKE_SA:
    (task, True) if its request is in flight, (task, False) if only queued, (None, False) otherwise."""
    def hit(t: Task) -> bool:
        return t.name == name and (pred is None or getattr(t, "rekey", None) is pred)

    if sa.outstanding is not None:
        for t in sa.outstanding.tasks:
            if hit(t):
                return t, True
    for t in sa.queue:
        if hit(t):
            return t, False
    return None, False


def check_create_child(sa: IkeSaView, msg: Message, ike_rekey: bool, old: ChildSa | None) -> None:
    """Refusals of a CREATE_CHILD_SA request before any task sees it (RFC 7296 2.25)."""
    if sa.state is IkeState.DELETING or (sa.state is not IkeState.ESTABLISHED and not ike_rekey) or \
            (ike_rekey and sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING)):
        # RFC 7296 2.25 / 2.25.2: no new CHILD_SAs on an IKE_SA that is being rekeyed or closed, and a
        # request to rekey an IKE_SA we are closing is answered with TEMPORARY_FAILURE
        raise ProtocolError(f"IKE_SA is {sa.state.value}", NotifyType.TEMPORARY_FAILURE)
    out = sa.outstanding
    if ike_rekey and out is not None and sa.state is not IkeState.REKEYING and \
            (out.exchange == ExchangeType.CREATE_CHILD_SA or own_task(sa, "CHILD_DELETE")[1]):
        # RFC 7296 2.25: our own CHILD_SA exchange (a CREATE_CHILD_SA, a DELETE of a CHILD_SA) is still open
        # on this IKE_SA, and its answer would come here after the CHILD_SAs moved to the new IKE_SA (2.18);
        # the peer retries later (strongSwan's IKE rekey responder refuses likewise)
        raise ProtocolError("CHILD_SA exchange in progress", NotifyType.TEMPORARY_FAILURE)
    if old is not None and old.state is ChildState.DELETING:
        # RFC 7296 2.25.1: a request to rekey a CHILD_SA we are closing gets TEMPORARY_FAILURE
        raise ProtocolError("CHILD_SA to rekey is being deleted", NotifyType.TEMPORARY_FAILURE)


def child_rekey_answered(sa: IkeSaView, responder: ChildCreate, old: ChildSa) -> None:
    """We answered the peer's rekey of `old`. RFC 7296 2.25.1: if we are rekeying it too, our exchange
    collided (decided when our response arrives, 2.8.1); if our rekey was only queued, drop it."""
    mine, in_flight = own_task(sa, "CHILD_CREATE", old)
    if mine is None:
        return
    if in_flight:
        log.info("CHILD_SA %s{%d} rekey collision: the peer rekeys it too", old.name, old.unique_id)
        cast("ChildCreate", mine).collision = responder
    else:
        sa.queue.remove(mine)


def _redundant(mine: ChildCreate) -> bool:
    """RFC 7296 2.8.1: our rekey collided with the peer's and our new SA has the lowest nonce."""
    theirs = mine.collision
    return theirs is not None and mine.child is not None and \
        ours_is_redundant((mine.nonce, mine.peer_nonce), (theirs.nonce, theirs.peer_nonce))


def outbound_deferred(sa: IkeSaView, new: ChildCreate, initiator: bool) -> bool:
    """RFC 7296 2.8: whether our outbound SA of `new.child`, the replacement of `new.rekey`, is installed
    later rather than now. As responder it waits for the end of the old CHILD_SA: the initiator installs
    its inbound SA only when our response arrives, ESP we sent on the new SA before that would be dropped,
    while it accepts the old SA until its DELETE is answered. As the initiator that lost a collision
    (2.8.1) never: the SA is redundant, we delete it at once, and the peer's replacement, waiting as
    above, takes over when the peer deletes the old CHILD_SA."""
    assert new.rekey is not None and new.child is not None
    if not initiator:
        defer_outbound(sa, new.rekey, new.child)
        return True
    return _redundant(new)


def child_rekey_done(sa: IkeSaView, mine: ChildCreate, old: ChildSa) -> list[Task]:
    """Our rekey of `old` completed; returns the deletes to queue (RFC 7296 2.8.1)."""
    theirs = mine.collision
    if theirs is None or mine.child is None:
        # RFC 7296 1.3.3 / 2.8: the rekey initiator deletes the old CHILD_SA
        return [ChildDelete(child=old, reason="rekeyed")]
    if _redundant(mine):
        # RFC 7296 2.8.1: our new SA has the lowest nonce: we close it; the peer closes the old one
        log.info("CHILD_SA rekey collision lost: closing redundant CHILD_SA %s{%d}", mine.child.name,
                 mine.child.unique_id)
        return [ChildDelete(child=mine.child, reason="rekey collision (redundant)")]
    log.info("CHILD_SA rekey collision won: the peer closes its redundant CHILD_SA")
    if theirs.child is not None:
        # the peer's replacement, which we answered, never sends: ours does, from now on
        drop_outbound(sa, old, theirs.child)
    return [ChildDelete(child=old, reason="rekeyed")]


def child_rekey_refused(sa: IkeSaView, old: ChildSa, notify: int, now: float) -> None:
    """The peer refused our rekey of `old`: not a failure of the IKE_SA (RFC 7296 2.25)."""
    if old.state is not ChildState.REKEYING:
        return  # meanwhile deleted (e.g. by the peer's DELETE that crossed our request)
    old.set_state(ChildState.INSTALLED)
    if notify == NotifyType.TEMPORARY_FAILURE:
        old.rekey_at = now + sa.config.rekey_retry  # RFC 7296 2.25: try again a bit later
    # CHILD_SA_NOT_FOUND (2.25.1): the peer is deleting it; its DELETE removes ours


def ike_rekey_answered(sa: IkeSaView, responder: IkeRekey) -> bool:
    """We answered the peer's rekey of this IKE_SA. RFC 7296 2.25.2: if our own IKE rekey is in flight,
    the exchanges collided (decided when our response arrives, 2.8.2); True then."""
    mine, in_flight = own_task(sa, "IKE_REKEY")
    if mine is None or not in_flight:
        return False
    log.info("IKE_SA %s rekey collision: the peer rekeys it too", sa.label)
    cast("IkeRekey", mine).collision = responder
    return True


def ike_rekey_done(old: IkeSaView, mine: IkeRekey, new: IkeSaView, now: float) -> bool:
    """Our rekey of `old` produced `new`; after a collision (RFC 7296 2.8.2) keep one of the two new
    IKE_SAs. Returns True if we are to delete the old IKE_SA (we initiated the surviving rekey)."""
    theirs = mine.collision.new_sa if mine.collision is not None else None
    if mine.collision is None or theirs is None:
        move_queue(old, new)
        return True
    if ours_is_redundant((mine.nonce, mine.peer_nonce), (mine.collision.nonce, mine.collision.peer_nonce)):
        # RFC 7296 2.8.2: our new IKE_SA has the lowest nonce: we delete it; the CHILD_SAs stay on the
        # peer's new IKE_SA and the peer, which initiated the surviving rekey, deletes the old IKE_SA
        log.info("IKE_SA rekey collision lost: deleting redundant IKE_SA %s", new.label)
        hand_over(new, theirs)
        new.queue.append(IkeDelete(reason="rekey collision (redundant)"))
        move_queue(old, theirs)
        theirs.initiate_next(now)
        return False
    # RFC 7296 2.8.2: our new IKE_SA survives and carries the CHILD_SAs; the peer deletes its redundant
    # one (its children moved here before its DELETE arrives) and we delete the old IKE_SA
    log.info("IKE_SA rekey collision won: %s survives, the peer deletes %s", new.label, theirs.label)
    hand_over(theirs, new)
    move_queue(old, new)
    return True


def move_queue(old: IkeSaView, new: IkeSaView) -> None:
    """RFC 7296 2.18: once the IKE_SA is rekeyed, our pending requests (CHILD_SA rekeys, a user's
    terminate) continue on the new one; a queued IKE rekey of the old SA has become pointless."""
    new.queue.extend(t for t in old.queue if t.name != "IKE_REKEY")
    old.queue.clear()
