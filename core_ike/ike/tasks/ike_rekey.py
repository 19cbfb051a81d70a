"""IKE_SA rekeying with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.8, 2.18)."""

from __future__ import annotations

import logging
import struct
from dataclasses import replace

from ...codec.message import Message
from ...codec.payloads import KePayload, NoncePayload, Proposal, SaPayload
from ...constants import ExchangeType, NotifyType, PayloadType, ProtocolId
from ...crypto.dh import KeyExchange, new_key_exchange
from ...crypto.keys import IkeSuite, derive_ike_rekey_keys, ike_protectors
from ...crypto.prf import Prf
from ...crypto.proposals import describe, parse_proposals, select_proposal
from ...errors import ProtocolError
from ..context import IkeSaView, Status, Task
from ..state import IkeState
from . import collisions
from .ike_auth import established
from .ike_init import NONCE_LEN, algorithms, first_group
from .informational import IkeDelete, hand_over

log = logging.getLogger("core_ike.ike")


def _with_spi(props: list[Proposal], spi: bytes) -> list[Proposal]:
    return [replace(p, spi=spi) for p in props]


class IkeRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA
    name = "IKE_REKEY"

    def __init__(self) -> None:
        self.spi = b""  # ours, drawn when the request or response is built
        self.nonce = b""
        self.ke: KeyExchange | None = None
        self.proposals: list[Proposal] = []
        self.chosen: Proposal | None = None
        self.peer_nonce = b""
        self.peer_spi = b""
        self.shared = b""
        self.new_sa: IkeSaView | None = None
        self.collision: IkeRekey | None = None  # the peer's rekey of the same IKE_SA (RFC 7296 2.8.2)
        self.colliding = False  # responder: our own IKE rekey is in flight (RFC 7296 2.25.2)

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        sa.set_state(IkeState.REKEYING)
        if not self.nonce:
            self.nonce = sa.ctx.rng.bytes(NONCE_LEN)
        self.spi = sa.ctx.new_spi()  # tagged for the worker that owns the IKE_SA (EngineConfig.spi_tag)
        self.proposals = _with_spi(parse_proposals(sa.config.proposals, ProtocolId.IKE), self.spi)
        if self.ke is None:
            self.ke = new_key_exchange(first_group(self.proposals), sa.ctx.rng)
        msg.payloads += [SaPayload(self.proposals), NoncePayload(self.nonce), KePayload(self.ke.group, self.ke.public)]

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        bad = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if bad is not None and len(bad.data) == 2:
            self.ke = new_key_exchange(int.from_bytes(bad.data, "big"), sa.ctx.rng)
            return Status.RESTART
        for n in msg.notifies(NotifyType.NO_PROPOSAL_CHOSEN) + msg.notifies(NotifyType.TEMPORARY_FAILURE):
            log.warning("IKE_SA %s rekeying failed: peer sent %s", sa.label, NotifyType(int(n.type)).name)
            if sa.state is IkeState.REKEYING:
                sa.set_state(IkeState.ESTABLISHED)
                sa.rekey_at = now + sa.config.ike_rekey_retry  # RFC 7296 2.25: retry later
            return Status.DONE
        sa_pl, ke, nonce = msg.get(PayloadType.SA), msg.get(PayloadType.KE), msg.get(PayloadType.NONCE)
        if not isinstance(sa_pl, SaPayload) or not isinstance(ke, KePayload) or not isinstance(nonce, NoncePayload):
            raise ProtocolError("IKE rekey response lacks SA, KE or Nonce", NotifyType.INVALID_SYNTAX)
        if len(sa_pl.proposals) != 1 or select_proposal(self.proposals, sa_pl.proposals) is None:
            raise ProtocolError("peer chose an IKE proposal we did not offer", NotifyType.NO_PROPOSAL_CHOSEN)
        assert self.ke is not None
        if ke.group != self.ke.group:
            raise ProtocolError("KE group mismatch in IKE rekey", NotifyType.INVALID_SYNTAX)
        self.chosen = sa_pl.proposals[0]
        self.peer_spi = self.chosen.spi
        self.peer_nonce = nonce.data
        self.shared = self.ke.compute(ke.data)
        new = self._make_sa(sa, now, initiator=True)
        sa.set_state(IkeState.REKEYED)
        if collisions.ike_rekey_done(sa, self, new, now):
            # RFC 7296 2.18 (2.8.2 after a collision): the initiator of the surviving rekey deletes the old
            sa.queue.insert(0, IkeDelete(reason="rekeyed"))
        new.initiate_next(now)
        return Status.DONE

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        sa_pl, ke, nonce = msg.get(PayloadType.SA), msg.get(PayloadType.KE), msg.get(PayloadType.NONCE)
        if not isinstance(sa_pl, SaPayload) or not isinstance(ke, KePayload) or not isinstance(nonce, NoncePayload):
            raise ProtocolError("IKE rekey request lacks SA, KE or Nonce", NotifyType.INVALID_SYNTAX)
        ours = parse_proposals(sa.config.proposals, ProtocolId.IKE)
        chosen = select_proposal(ours, sa_pl.proposals)
        if chosen is None or len(chosen.spi) != 8:
            raise ProtocolError("no acceptable IKE proposal for rekeying", NotifyType.NO_PROPOSAL_CHOSEN)
        group = algorithms(chosen)[4]
        if ke.group != group:
            raise ProtocolError("KE group unacceptable", NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", group))
        self.ke = new_key_exchange(group, sa.ctx.rng)
        self.nonce = sa.ctx.rng.bytes(NONCE_LEN)
        self.chosen = chosen
        self.peer_spi = chosen.spi
        self.peer_nonce = nonce.data
        self.shared = self.ke.compute(ke.data)

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        assert self.chosen is not None and self.ke is not None
        self.spi = sa.ctx.new_spi()  # tagged for the worker that owns the IKE_SA (EngineConfig.spi_tag)
        msg.payloads += [SaPayload([replace(self.chosen, spi=self.spi)]), NoncePayload(self.nonce),
                         KePayload(self.ke.group, self.ke.public)]
        self.colliding = collisions.ike_rekey_answered(sa, self)
        self._make_sa(sa, now, initiator=False)
        sa.set_state(IkeState.REKEYED)

    def responded(self, sa: IkeSaView, now: float) -> None:
        # RFC 7296 2.18: our pending requests continue on the new IKE_SA; after a collision they wait
        # until it is known which new IKE_SA survives (RFC 7296 2.8.2)
        if self.new_sa is not None and not self.colliding:
            collisions.move_queue(sa, self.new_sa)
            self.new_sa.initiate_next(now)

    def _make_sa(self, old: IkeSaView, now: float, initiator: bool) -> IkeSaView:
        """The new IKE_SA inherits identities, config and every CHILD_SA (RFC 7296 2.18)."""
        assert self.chosen is not None
        spi_i, spi_r = (self.spi, self.peer_spi) if initiator else (self.peer_spi, self.spi)
        ni, nr = (self.nonce, self.peer_nonce) if initiator else (self.peer_nonce, self.nonce)
        encr, bits, integ, prf_id, _ = algorithms(self.chosen)
        suite = IkeSuite(prf_id, encr, bits, integ)
        keys = derive_ike_rekey_keys(old.prf_id, old.sk_d, suite, self.shared, ni, nr, spi_i, spi_r)
        new = old.ctx.create_rekeyed_sa(old, initiator, spi_i, spi_r, now)
        new.prf, new.prf_id = Prf(prf_id), prf_id
        new.sk_d, new.sk_pi, new.sk_pr = keys.sk_d, keys.sk_pi, keys.sk_pr
        new.out_prot, new.in_prot = ike_protectors(keys, suite, initiator, old.ctx.rng)
        new.proposal, new.proposal_text = self.chosen, describe(self.chosen)
        new.ni, new.nr = ni, nr
        hand_over(old, new)
        new.set_state(IkeState.CONNECTING)
        new.rekeyed_from = old.unique_id
        log.info("IKE_SA %s rekeyed to %s, %s", old.label, new.label, new.proposal_text)
        established(new, now)
        self.new_sa = new
        return new

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        if sa.state is IkeState.REKEYING:
            sa.set_state(IkeState.ESTABLISHED)
