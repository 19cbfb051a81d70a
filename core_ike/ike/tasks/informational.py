"""INFORMATIONAL exchanges: DELETE of CHILD_SAs and IKE_SAs, liveness checks (RFC 7296 1.4, 1.5, 2.4)."""

from __future__ import annotations

import logging
import struct

from ...codec.message import Message
from ...codec.payloads import DeletePayload, NotifyPayload
from ...constants import ExchangeType, NotifyType, PayloadType, ProtocolId, name_of
from ..context import IkeSaView, Status, Task
from ..state import ChildSa, ChildState, IkeState

log = logging.getLogger("core_ike.ike")


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
        # RFC 7296 1.4.1: the response carries the peer's half; either way our half is gone
        if self.child is not None:
            sa.remove_child(self.child, self.reason)
        return Status.DONE

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        if self.child is not None:
            sa.remove_child(self.child, self.reason)


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
                    c = sa.child_by_spi(int.from_bytes(spi, "big"), inbound=False)
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
            return
        spis: list[bytes] = []
        for c in self.deleted:
            # RFC 7296 1.4.1: answer with our inbound SPI unless we already deleted it ourselves
            if c.state is not ChildState.DELETING:
                spis.append(struct.pack("!I", c.spi_in))
            log.info("closing CHILD_SA %s{%d} with SPIs %08x_i %08x_o", c.name, c.unique_id, c.spi_in, c.spi_out)
            sa.remove_child(c, "deleted by peer")
        if spis:
            msg.payloads.append(DeletePayload(ProtocolId.ESP, spis))

    @property
    def closes_ike(self) -> bool:
        return self.delete_ike
