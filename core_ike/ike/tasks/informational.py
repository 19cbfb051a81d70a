"""INFORMATIONAL exchanges: DELETE of CHILD_SAs and IKE_SAs, liveness checks (RFC 7296 1.4, 1.5, 2.4).

A CHILD_SA ends here (our DELETE answered or failed, the peer's DELETE): `end_child` first has the
outbound SA of a rekey responder's replacement installed (RFC 7296 2.8, `OutboundWaits`), then removes it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator

from ...codec.message import Message
from ...codec.payloads import DeletePayload, NotifyPayload
from ...constants import ExchangeType, NotifyType, PayloadType, ProtocolId, name_of
from ..context import IkeSaView, Status, Task
from ..context import events as ev
from ..state import ChildSa, ChildState, IkeState

log = logging.getLogger("core_ike.ike")
_OUTBOUND_DUE = frozenset({ChildState.INSTALLED, ChildState.REKEYING})


class OutboundWaits:
    """Per IKE_SA (RFC 7296 2.8): the CHILD_SAs we created as rekey responder whose outbound SA is not
    installed yet, by the unique id of the CHILD_SA each replaces. The initiator installs its inbound SA
    only when our response arrives, so we go on sending on the old CHILD_SA until it ends: normally at
    the initiator's DELETE, else when we delete it (expiry, a user's `down`). The IKE_SA's rekeyed
    successor takes its CHILD_SAs (RFC 7296 2.18) and this same record (CHILD_SA ids are engine-wide)."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting: dict[int, ChildSa] = {}

    def for_successor(self) -> OutboundWaits:
        return self


def defer_outbound(sa: IkeSaView, old: ChildSa, new: ChildSa) -> None:
    """`new`, our answer to the peer's rekey of `old`, sends on `old` until `old` ends."""
    sa.extension(OutboundWaits).waiting[old.unique_id] = new


def drop_outbound(sa: IkeSaView, old: ChildSa, new: ChildSa) -> None:
    """`new`, waiting for the end of `old`, never gets an outbound SA (the redundant SA of a rekey
    collision, RFC 7296 2.8.1: its creator deletes it)."""
    waits = sa.find_extension(OutboundWaits)
    if waits is not None and waits.waiting.get(old.unique_id) is new:
        del waits.waiting[old.unique_id]


class Successor:
    """Per rekeyed IKE_SA: the IKE_SA that took its CHILD_SAs (RFC 7296 2.18, `hand_over`). Until it is
    deleted, the old IKE_SA still carries exchanges about them that began before the move: the peer's
    DELETE of one of them, sent before the rekey (RFC 7296 1.4: under the IKE_SA that made the CHILD_SA
    or its successor), and the answer to ours. Not inherited: each rekey makes its own."""

    __slots__ = ("sa",)

    def __init__(self) -> None:
        self.sa: IkeSaView | None = None

    def for_successor(self) -> None:
        return None


def hand_over(old: IkeSaView, new: IkeSaView) -> None:
    """`new` takes every CHILD_SA of `old` (RFC 7296 2.18: the rekeyed IKE_SA; 2.8.2: the surviving one
    of a collision), and `old` remembers where they went."""
    new.children.update(old.children)
    old.children = {}
    old.extension(Successor).sa = new


def _lineage(sa: IkeSaView) -> Iterator[IkeSaView]:
    """`sa`, then each IKE_SA its CHILD_SAs moved to since (`hand_over`), in order."""
    nxt: IkeSaView | None = sa
    while nxt is not None:
        yield nxt
        succ = nxt.find_extension(Successor)
        nxt = succ.sa if succ is not None else None


def _holder(sa: IkeSaView, child: ChildSa) -> IkeSaView:
    """The IKE_SA `child` is on: `sa`, or the successor it moved to meanwhile."""
    return next((s for s in _lineage(sa) if child.unique_id in s.children), sa)


def _peer_child(sa: IkeSaView, spi: int) -> ChildSa | None:
    """The CHILD_SA whose outbound SPI is `spi`, on `sa` or the successor it moved to."""
    return next((c for s in _lineage(sa) if (c := s.child_by_spi(spi, inbound=False)) is not None), None)


def end_child(sa: IkeSaView, child: ChildSa, reason: str) -> None:
    """`child` is gone: the replacement waiting for it gets its outbound SA first (make-before-break:
    the data plane never lacks an outbound SA for the CHILD_SA's reqid), then `child` is removed. A
    replacement that is itself being replaced or deleted meanwhile gets none (its own successor sends).
    `sa` is the IKE_SA the exchange ran on: if it was rekeyed meanwhile, `child` ends on its successor."""
    sa = _holder(sa, child)
    waits = sa.find_extension(OutboundWaits)
    new = waits.waiting.pop(child.unique_id, None) if waits is not None else None
    if new is not None and new.state in _OUTBOUND_DUE and sa.children.get(new.unique_id) is new:
        log.info("CHILD_SA %s{%d} now sends with SPI %08x_o (replaced %s{%d})", new.name, new.unique_id,
                 new.spi_out, child.name, child.unique_id)
        sa.ctx.emit(ev.ChildSaOutbound(sa.name, sa.unique_id, new.name, new.unique_id, new.spi_out,
                                       child.unique_id))
    sa.remove_child(child, reason)


class ChildDelete(Task):
    exchange = ExchangeType.INFORMATIONAL
    name = "CHILD_DELETE"

    def __init__(self, child: ChildSa | None = None, spi_in: int | None = None, reason: str = "deleted") -> None:
        self.child = child
        self.spi_in = spi_in if spi_in is not None else (child.spi_in if child else 0)
        self.reason = reason

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        if self.child is not None:
            log.info("closing CHILD_SA %s{%d} with SPIs %08x_i %08x_o", self.child.name, self.child.unique_id,
                     self.child.spi_in, self.child.spi_out)
            self.child.set_state(ChildState.DELETING)
        msg.payloads.append(DeletePayload(ProtocolId.ESP, [struct.pack("!I", self.spi_in)]))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        # RFC 7296 1.4.1: the response carries the peer's half; either way our half is gone. Until now
        # we accepted ESP on our inbound SA: the peer may have sent on its outbound one until our DELETE
        # reached it (RFC 7296 2.8)
        if self.child is not None:
            end_child(sa, self.child, self.reason)
        return Status.DONE

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        """Unanswered (the exchange failed or `sa` ended): the CHILD_SA ends, unless it has moved to a
        rekeyed successor of `sa` meanwhile (a peer that answered that rekey; we refuse such a rekey,
        collisions.check_create_child): then the DELETE goes again on the successor, which carries the
        CHILD_SA's control messages (RFC 7296 2.8, 2.18). A peer that had ended it answers as for an
        unknown CHILD_SA, and it ends there. A successor's end ends its CHILD_SAs (not live then)."""
        child = self.child
        if child is None:
            return
        holder = _holder(sa, child)
        if holder is not sa and child.state.live:
            holder.queue_task(ChildDelete(child, reason=self.reason), now)
        else:
            end_child(sa, child, self.reason)


class IkeDelete(Task):
    exchange = ExchangeType.INFORMATIONAL
    name = "IKE_DELETE"
    is_delete = True

    def __init__(self, reason: str = "deleted") -> None:
        self.reason = reason

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        log.info("deleting IKE_SA %s between %s[%s]...%s[%s]", sa.label, sa.local[0], sa.my_id,
                 sa.remote[0], sa.peer_id)
        sa.set_state(IkeState.DELETING)
        msg.payloads.append(DeletePayload(ProtocolId.IKE, []))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        log.info("IKE_SA deleted")
        sa.destroy(self.reason, now)
        return Status.DONE

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        sa.destroy(self.reason, now)


class Dpd(Task):
    """RFC 7296 1.4: an empty INFORMATIONAL request is a liveness check."""

    exchange = ExchangeType.INFORMATIONAL
    name = "IKE_DPD"

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        sa.dpd_pending = True

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        return Status.DONE


class Informational(Task):
    """Responder side of every INFORMATIONAL request."""

    exchange = ExchangeType.INFORMATIONAL
    name = "INFORMATIONAL"

    def __init__(self) -> None:
        self.delete_ike = False
        self.deleted: list[ChildSa] = []

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        for p in msg.get_all(PayloadType.DELETE):
            assert isinstance(p, DeletePayload)
            if p.protocol == ProtocolId.IKE:
                log.info("received DELETE for IKE_SA %s", sa.label)
                self.delete_ike = True
            elif p.protocol in (ProtocolId.ESP, ProtocolId.AH):
                for spi in p.spis:
                    c = _peer_child(sa, int.from_bytes(spi, "big"))
                    if c is None:
                        log.info("received DELETE for unknown ESP CHILD_SA with SPI %s", spi.hex())
                        continue
                    log.info("received DELETE for ESP CHILD_SA with SPI %08x", c.spi_out)
                    self.deleted.append(c)
        for n in msg.get_all(PayloadType.NOTIFY):
            assert isinstance(n, NotifyPayload)
            if n.is_error:
                log.info("received %s error notify", name_of(NotifyType, int(n.type)))

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        if self.delete_ike:
            return  # the IKE_SA's end tells our request in flight (ChildDelete.failed)
        spis: list[bytes] = []
        for c in self.deleted:
            # RFC 7296 1.4.1: answer with our inbound SPI unless we already deleted it ourselves
            if c.state is not ChildState.DELETING:
                spis.append(struct.pack("!I", c.spi_in))
            log.info("closing CHILD_SA %s{%d} with SPIs %08x_i %08x_o", c.name, c.unique_id, c.spi_in, c.spi_out)
            end_child(sa, c, "deleted by peer")
        if spis:
            msg.payloads.append(DeletePayload(ProtocolId.ESP, spis))

    @property
    def closes_ike(self) -> bool:
        return self.delete_ike

