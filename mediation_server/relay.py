"""The mediation server role of the ME extension: `MediationServer`, an engine Extension.

[ME] = draft-brunner-ikev2-mediation-00; § numbers are docs/protocol.md sections. It
- echoes N(ME_MEDIATION) (§3.2), prefers mediation configs for peers that asked for mediation and
  refuses mediation configs to peers that did not (§11.7);
- answers the srflx request in IKE_AUTH with the observed source address/port (§3.4) and refuses
  SA/TS in that IKE_AUTH with NO_ADDITIONAL_SAS without failing the IKE_SA (§3.5);
- registers the peer in the Registry when its mediation SA is up, removes it when the SA goes (§5);
- relays ME_CONNECT in both directions (§4, the four exchanges), answers ME_CONNECT_FAILED for
  offline targets, registers and fires callbacks (§5), forwards a target's failure to the initiator
  (§4.5), and enforces the registry's limits and authorization (one log line each);
- optionally (§11.1, our negotiated extension) offers a data relay: when both peers of an
  ME_CONNECT announced RELAY_VENDOR_ID, a `DataRelay` pair of ports is allocated and one RELAYED
  ME_ENDPOINT appended to each side's endpoint list (datarelay.py); unused relays expire early, and a
  peer going offline frees its relays that carry no traffic (datarelay.py "Lifetime"). In a cluster the
  requester's server relays (docs/architecture.md, "Cluster"): it allocates the ports before forwarding
  the request, and adds the requester's RELAYED endpoint to the answer coming back.

It lives here and not in core_ike because the Registry is the server's (architecture.md); the core
only provides the hooks and the tasks (`core_ike.me.tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from core_ike.codec.message import Message
from core_ike.codec.payloads import IdPayload, NotifyPayload, Payload
from core_ike.constants import ExchangeType, MeEndpointType, NotifyType, PayloadType
from core_ike.errors import ProtocolError
from core_ike.ike.config import IkeConfig
from core_ike.ike.context import IkeSaView, Task
from core_ike.ike.engine import Engine
from core_ike.ike.extension import Extension
from core_ike.ike.identity import Identity
from core_ike.ike.sa import IkeSa
from core_ike.ike.state import IkeState
from core_ike.me import events as mev
from core_ike.me.connect import (
    ConnectKind,
    ConnectResult,
    MeConnect,
    build_callback,
    build_relay,
    id_peer,
    parse_connect,
)
from core_ike.me.endpoints import encode_endpoint, make_endpoint, relayed_endpoint
from core_ike.me.natinfo import NatReportResponder, decode_nat, nat_notify
from core_ike.me.tasks import (
    MeConnectRequest,
    MeConnectResponder,
    MediationEcho,
    MeOutbox,
    MeSaState,
    ServerAuth,
    send_queued,
)

from .cluster.core import (
    CallbackElsewhere,
    CallbackFiredElsewhere,
    Cluster,
    ClusterMessageError,
    ForwardedConnect,
    ForwardedFailure,
    PeerElsewhere,
    PeerGoneElsewhere,
    RemotePeer,
    SyncAsked,
    SyncChunk,
)
from .datarelay import DataRelay, Relay, RelayRefused
from .registry import (
    CallbackRegistration,
    PeerRecord,
    Refused,
    Registry,
    SendCallback,
    TargetElsewhere,
    TargetOffline,
    TargetOnline,
)

log = logging.getLogger("mediation_server")
Addr = tuple[str, int]
# docs/protocol.md §4.4: strongSwan peers may handle the relayed answer before our response to their own
# ME_CONNECT (its threads reorder them) and then never check; give such peers this head start
ANSWER_GRACE = 0.1

# payloads of a CHILD_SA in IKE_AUTH, and the errors ChildCreate answers when it has no config
_CHILD_PAYLOADS = {PayloadType.SA, PayloadType.TSi, PayloadType.TSr, PayloadType.CP}
_CHILD_ERRORS = {NotifyType.TS_UNACCEPTABLE, NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.SINGLE_PAIR_REQUIRED,
                 NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED, NotifyType.INVALID_SELECTORS}


@dataclass(frozen=True)
class OnlinePeer:
    identity: str
    endpoint: Addr | None
    since: float
    last_activity: float
    unique_id: int
    nat: str | None = None  # the NAT behaviour the peer reported (core_ike/me/natinfo.py)


def _uid(sa_id: Hashable) -> int:
    """The registry's SaId is the mediation SA's unique id."""
    assert isinstance(sa_id, int)
    return sa_id


def _fixed(payloads: list[Payload]) -> Callable[[IkeSaView, float], list[Payload]]:
    return lambda sa, now: payloads


class MediationServer(Extension):
    def __init__(self, engine: Engine, registry: Registry | None = None,
                 clock: Callable[[float], float] | None = None, relay: DataRelay | None = None,
                 cluster: Cluster | None = None, send_now: Callable[[bytes, Addr, Addr], None] | None = None) -> None:
        """`clock(now)` maps the engine's monotonic time to the registry's (wall clock when the
        registry persists callbacks, see registry.py); default: the same time. `relay`: the data
        relay table (None or disabled: no relay offered, the Vendor ID is not echoed). `cluster`: the
        other servers of the service (cluster/core.py; None: a single server). `send_now`: the adapter's
        immediate send, through which a relayed ME_CONNECT leaves when it is made, before the response to
        the request it relays (docs/protocol.md §4.1; None: with the engine's other datagrams)."""
        self.cluster = cluster
        self.engine = engine
        self.relay = relay if relay is not None and relay.config.enabled else None
        self.registry = registry if registry is not None else Registry()
        self.clock = clock or (lambda now: now)
        self.send_now = send_now
        self.outbox = MeOutbox()
        self._deferred: list[tuple[float, Callable[[float], None]]] = []
        engine.extensions.append(self)

    # ================================================================== status
    def status(self) -> list[OnlinePeer]:
        """Online peers with identity, public endpoint, since when, last activity."""
        return [OnlinePeer(r.identity, r.endpoint, r.since, r.last_activity, _uid(r.sa_id), r.nat)
                for r in self.registry.online_peers()]

    def lookup(self, identity: str) -> PeerRecord | None:
        return self.registry.lookup(identity)

    # ================================================================== Extension hooks
    def tasks(self, sa: IkeSaView, exchange: int, initiator: bool, msg: Message | None) -> list[Task]:
        if initiator or msg is None:
            return []
        if exchange == ExchangeType.IKE_SA_INIT:
            if msg.notify(NotifyType.ME_MEDIATION) is not None:
                sa.extension(MeSaState).requested = True
                return [MediationEcho(relay=self.relay is not None)]
            return []
        me = sa.find_extension(MeSaState)
        if me is None or me.role != "server":
            return []
        if exchange == ExchangeType.IKE_AUTH:
            return [ServerAuth(self._auth_answer)]
        rec = self.registry.lookup(sa.peer_id.canonical()) if sa.peer_id is not None else None
        if rec is not None and rec.sa_id == sa.unique_id:  # the peer's registered mediation SA
            rec.last_activity = self.clock(self.engine.now)
            if exchange == ExchangeType.ME_CONNECT:
                return [MeConnectResponder(self._on_connect, self.outbox)]
            if exchange == ExchangeType.INFORMATIONAL and me.ours and nat_notify(msg) is not None:
                return [NatReportResponder(self._on_nat_report)]
        return []

    def _on_nat_report(self, sa: IkeSaView, text: str) -> None:
        if sa.peer_id is not None:
            self.registry.set_nat(sa.peer_id.canonical(), text)
            log.info("peer '%s' reports its NAT: %s", sa.peer_id, text)

    def config_score(self, cfg: IkeConfig, sa: IkeSaView) -> int:
        if sa.is_original_initiator:
            return 0
        me = sa.find_extension(MeSaState)
        if me is not None and me.requested:
            return 10 if cfg.mediation else 0
        return -1 if cfg.mediation else 0  # no mediation config for peers that did not ask for it

    def on_established(self, sa: IkeSa, now: float) -> None:
        me = sa.find_extension(MeSaState)
        if me is None or me.role != "server" or not sa.mediation or sa.peer_id is None:
            return
        identity = sa.peer_id.canonical()
        reg = self.registry.update_sa_id(identity, sa.unique_id, self.clock(now), endpoint=sa.remote)
        log.info("peer '%s' online at %s[%d] (mediation SA %s)", identity, sa.remote[0], sa.remote[1], sa.label)
        if self.cluster is not None:
            # a new registration: the engine gives it its number ("newest wins", on_sequenced)
            self.cluster.register(identity, sa.remote, relay=bool(me.relay))
        replaced = reg.replaced_sa_id
        self.engine.emit(mev.PeerOnline(identity, sa.unique_id, sa.remote,
                                        _uid(replaced) if replaced is not None else None))
        old = self.engine.find_sa(_uid(replaced)) if replaced is not None else None
        if old is not None and replaced != sa.rekeyed_from and old.state is IkeState.ESTABLISHED:
            log.info("deleting mediation SA %s of '%s': replaced by %s", old.label, identity, sa.label)
            self.engine.terminate(old, now)
        self._callbacks(reg.callbacks, sa.peer_id, now)

    def _callbacks(self, callbacks: tuple[SendCallback, ...], online: Identity, now: float) -> None:
        """docs/protocol.md §5: ME_CONNECT{N(ME_CALLBACK), ID_PEER(online)} to each waiter."""
        for cb in callbacks:
            if self.cluster is not None:
                self.cluster.callback_fired(online.canonical(), cb.requester)
            waiter = self.engine.find_sa(_uid(cb.requester_sa))
            if waiter is None or not waiter.established:
                continue
            log.info("sending ME_CALLBACK for '%s' to '%s'", online.canonical(), cb.requester)
            self.outbox.send(waiter, MeConnectRequest(_fixed(build_callback(id_peer(online)))), now)
            self.engine.emit(mev.CallbackSent(cb.requester, online.canonical()))

    def on_destroyed(self, sa: IkeSaView, now: float) -> None:
        for task in self.outbox.drop(sa):
            task.failed(sa, "mediation SA gone", now)
        me = sa.find_extension(MeSaState)
        if me is None or me.role != "server" or sa.peer_id is None:
            return
        identity = self.registry.remove_sa(sa.unique_id, sa.peer_id.canonical())
        if identity is not None:
            if self.cluster is not None:
                self.cluster.withdraw(identity)
            self.engine.emit(mev.PeerOffline(identity, sa.unique_id))
            if self.relay is not None:  # offline, not re-registered: its relays without traffic go
                for r in self.relay.release_peer(identity, now):
                    self._freed(r, "mediation SA gone")

    def next_deadline(self) -> float | None:
        """Asked after every datagram and timer of the server's engine: no list made for the minimum."""
        best: float | None = None
        if (t := self.registry.get_timer()) is not None:
            now = self.engine.now
            best = now + max(0.0, t - self.clock(now))
        if self.relay is not None and (t := self.relay.get_timer()) is not None and (best is None or t < best):
            best = t  # the relay keeps engine (monotonic) time
        for t, _ in self._deferred:
            if best is None or t < best:
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        due = [f for t, f in self._deferred if t <= now]
        self._deferred = [(t, f) for t, f in self._deferred if t > now]
        for f in due:
            f(now)
        self.registry.handle_timer(self.clock(now))
        if self.relay is not None:
            for r in self.relay.handle_timer(now):
                self._freed(r, r.freed_reason)

    def _freed(self, r: Relay, reason: str) -> None:
        self.engine.emit(mev.RelayFreed(r.id, r.a.identity, r.b.identity, reason, r.a.bytes_in, r.b.bytes_in))

    # ================================================================== IKE_AUTH
    def _auth_answer(self, sa: IkeSaView, msg: Message, want_srflx: bool, has_child: bool) -> None:
        if not sa.mediation:
            return
        if has_child:
            # [ME] §3.1, docs/protocol.md §3.5: mediation SAs carry no CHILD_SA; the IKE_SA stays
            msg.payloads = [p for p in msg.payloads if p.ptype not in _CHILD_PAYLOADS and not (
                isinstance(p, NotifyPayload) and int(p.type) in _CHILD_ERRORS)]
            msg.payloads.append(NotifyPayload(NotifyType.NO_ADDITIONAL_SAS))
            for child in list(sa.children.values()):
                sa.remove_child(child, "no CHILD_SAs on a mediation connection")
            log.info("refusing CHILD_SA on mediation connection %s: NO_ADDITIONAL_SAS", sa.label)
        if want_srflx:
            # docs/protocol.md §3.4: the address and port the request arrived from
            ep = make_endpoint(MeEndpointType.SERVER_REFLEXIVE, sa.remote[0], sa.remote[1])
            msg.payloads.append(NotifyPayload(NotifyType.ME_ENDPOINT, encode_endpoint(ep)))

    def _send_queued(self) -> None:
        """A relayed ME_CONNECT just made leaves now, alone: a callback (§5) keeps its place behind the
        IKE_AUTH response that registered the peer, which that peer must process before the requests the
        callback brings it."""
        send_queued(self.engine, self.send_now)

    # ================================================================== ME_CONNECT relay
    def _on_connect(self, sa: IkeSaView, msg: Message, now: float) -> list[Payload]:
        assert sa.peer_id is not None
        requester = sa.peer_id.canonical()
        if msg.notify(NotifyType.ME_CONNECT_FAILED) is not None:
            self._forward_failure(sa, msg, now)
            return []
        req = parse_connect(msg.payloads)  # INVALID_SYNTAX per docs/protocol.md §4.2
        if req.kind is ConnectKind.CALLBACK:
            raise ProtocolError("ME_CALLBACK request from a peer", NotifyType.INVALID_SYNTAX)
        target_id = Identity(int(req.peer.id_type), req.peer.data)
        target = target_id.canonical()
        if target == requester:
            return self._refuse(requester, target, "a peer cannot mediate with itself", NotifyType.ME_CONNECT_FAILED)
        remote = self.cluster.where(target) if self.cluster is not None else None
        d = self.registry.request_connect(requester, target, self.clock(now), n_endpoints=len(req.endpoints),
                                          callback=req.callback, is_response=req.kind is ConnectKind.RESPONSE,
                                          elsewhere=remote is not None)
        if isinstance(d, TargetElsewhere) and self.cluster is not None and remote is not None:
            if req.kind is not ConnectKind.RESPONSE:
                sa.extension(MeSaState).answered = now
            nat = _checked_nat(req.nat, requester)
            log.info("forwarding ME_CONNECT%s from '%s' to '%s' at server %s%s",
                     " response" if req.kind is ConnectKind.RESPONSE else "", requester, target, remote.server,
                     " with its NAT behaviour" if nat is not None else "")
            endpoints = req.endpoint_data
            if req.kind is not ConnectKind.RESPONSE and (rel := self._relay_elsewhere(sa, remote, req, target, now)):
                endpoints = (*endpoints, rel)
            self.cluster.forward_connect(remote.server, (sa.peer_id.id_type, sa.peer_id.data), target,
                                         response=req.kind is ConnectKind.RESPONSE, connect_id=req.connect_id,
                                         key=req.key, endpoints=endpoints, nat=nat)
            self.engine.emit(mev.ConnectRelayed(requester, target, req.connect_id.hex(),
                                                req.kind is ConnectKind.RESPONSE))
            return []
        if isinstance(d, Refused):
            return self._refuse(requester, target, d.detail, d.notify, logged=True)
        if isinstance(d, TargetOffline):
            if d.callback_registered and self.cluster is not None \
                    and (cr := self.registry.callback(target, requester)) is not None:
                self.cluster.callback_added(cr.target, cr.requester, cr.created, cr.expires)
            why = "callback registered" if d.callback_registered else (
                d.callback_refused.detail if d.callback_refused else "no callback requested")
            return self._refuse(requester, target, f"peer is not online ({why})", NotifyType.ME_CONNECT_FAILED)
        assert isinstance(d, TargetOnline)
        tsa = self.engine.find_sa(_uid(d.sa_id))
        if tsa is None or not tsa.established:
            return self._refuse(requester, target, "peer's mediation SA is not usable", NotifyType.ME_CONNECT_FAILED)
        if req.kind is not ConnectKind.RESPONSE:
            sa.extension(MeSaState).answered = now  # our (empty) response goes out right after this
        self._relay(sa, tsa, req, target_id, now)
        return []

    def _relay(self, origin: IkeSaView, target_sa: IkeSaView, req: MeConnect, target_id: Identity, now: float) -> None:
        """docs/protocol.md §4.1 steps 4 and 7: ID_PEER rewritten to the requester, the rest copied."""
        assert origin.peer_id is not None
        requester, target, cid = origin.peer_id.canonical(), target_id.canonical(), req.connect_id
        relayed = self._relayed_endpoint(origin, target_sa, req, requester, target, now)
        nat = _checked_nat(req.nat, requester)
        if relayed is not None or nat is not req.nat:  # one copy at most: the target waits for it
            req = replace(req, endpoint_data=(*req.endpoint_data, relayed) if relayed is not None else req.endpoint_data,
                          nat=nat)
        # our own clients get the requester's NAT behaviour (core_ike/me/birthday.py); strongSwan never does
        payloads = build_relay(req, id_peer(origin.peer_id), private=target_sa.extension(MeSaState).ours)
        origin_id = origin.unique_id

        def done(s: IkeSaView, result: ConnectResult, t: float) -> None:
            if not result.ok:  # the target refused: tell the other side (docs/protocol.md §4.5)
                log.info("'%s' refused the ME_CONNECT from '%s'", target, requester)
                self._send_failure(origin_id, cid, target_id, t)

        def failed(s: IkeSaView, reason: str, t: float) -> None:
            log.info("relaying ME_CONNECT from '%s' to '%s' failed: %s", requester, target, reason)
            self._send_failure(origin_id, cid, target_id, t)

        self._send_relayed(target_sa, lambda: MeConnectRequest(_fixed(payloads), done, failed),
                           req.kind is ConnectKind.RESPONSE, now)
        self._send_queued()  # the target waits for it, nobody for our response (docs/protocol.md §4.1)
        log.info("relaying ME_CONNECT%s from '%s' to '%s'",  # after it left (the target waits for it)
                 " response" if req.kind is ConnectKind.RESPONSE else "", requester, target)
        self.engine.emit(mev.ConnectRelayed(requester, target, cid.hex(), req.kind is ConnectKind.RESPONSE))

    def _send_relayed(self, target_sa: IkeSaView, request: Callable[[], MeConnectRequest], response: bool,
                      now: float) -> None:
        """Send a relayed ME_CONNECT, from a requester here or at another server (the same rule for
        both): an answer to a peer that is not our client (no IMPL_VENDOR_ID) waits until ANSWER_GRACE
        after our response to its own request, which it must process first (docs/protocol.md §4.4)."""
        target_me = target_sa.extension(MeSaState)
        answered = target_me.answered
        if response and not target_me.ours and answered is not None and now < answered + ANSWER_GRACE:
            def later(t: float) -> None:
                if target_sa.established:
                    self.outbox.send(target_sa, request(), t)

            self._deferred.append((answered + ANSWER_GRACE, later))
        else:
            self.outbox.send(target_sa, request(), now)

    def _relayed_endpoint(self, origin: IkeSaView, target_sa: IkeSaView, req: MeConnect, requester: str, target: str,
                          now: float) -> bytes | None:
        """Our extension: the RELAYED ME_ENDPOINT to append, when both mediation SAs negotiated it.

        Request A -> B: allocate the relay, B gets RELAYED(server:port B sends to); answer B -> A: A
        gets RELAYED(server:port A sends to). Each port reaches the *other* peer (datarelay.py).
        """
        if self.relay is None or not (origin.extension(MeSaState).relay and target_sa.extension(MeSaState).relay):
            return None
        if req.kind is ConnectKind.RESPONSE:
            r = self.relay.by_connect_id(req.connect_id)
            if r is None or (r.a.identity, r.b.identity) != (target, requester):
                return None
            self.relay.touch(r, now)
            port = r.a.port
        else:
            try:
                r = self.relay.allocate(req.connect_id, origin.local[0], (requester, origin.remote[0]),
                                        (target, target_sa.remote[0]), now)
            except RelayRefused:
                return None  # logged by the table; the peers still try the direct pairs
            self.engine.emit(mev.RelayAllocated(r.id, requester, target, req.connect_id.hex(), r.address,
                                                r.a.port, r.b.port))
            port = r.b.port
        return encode_endpoint(relayed_endpoint(r.address, port))

    def _relay_elsewhere(self, origin: IkeSaView, remote: RemotePeer, req: MeConnect, target: str,
                         now: float) -> bytes | None:
        """The requester's server relays for a target at another server (docs/architecture.md, "Cluster"):
        the ports are allocated here, before the request leaves, and the target's RELAYED endpoint (the
        port it sends to, here) goes with the forwarded endpoints; its server passes them on unchanged.
        Both mediation SAs must have negotiated the relay (the target's is in its "up")."""
        if self.relay is None or not (origin.extension(MeSaState).relay and remote.relay) or remote.endpoint is None:
            return None
        assert origin.peer_id is not None
        requester = origin.peer_id.canonical()
        try:
            r = self.relay.allocate(req.connect_id, origin.local[0], (requester, origin.remote[0]),
                                    (target, remote.endpoint[0]), now)
        except RelayRefused:
            return None  # logged by the table; the peers still try the direct pairs
        self.engine.emit(mev.RelayAllocated(r.id, requester, target, req.connect_id.hex(), r.address, r.a.port,
                                            r.b.port))
        return encode_endpoint(relayed_endpoint(r.address, r.b.port))

    def _relay_answer(self, ev: ForwardedConnect, now: float) -> bytes | None:
        """The answer to a request relayed here comes back from the target's server: the requester's
        RELAYED endpoint (the port it sends to) is added here, where the relay is."""
        if self.relay is None or not ev.response:
            return None
        r = self.relay.by_connect_id(ev.connect_id)
        if r is None or (r.a.identity, r.b.identity) != (ev.target, Identity(*ev.requester).canonical()):
            return None
        self.relay.touch(r, now)
        return encode_endpoint(relayed_endpoint(r.address, r.a.port))

    def _send_failure(self, sa_id: int, cid: bytes, about: Identity, now: float) -> None:
        """Draft §4: ME_CONNECT{N(ME_CONNECTID), N(ME_CONNECT_FAILED), ID_PEER(about)}."""
        sa = self.engine.find_sa(sa_id)
        if sa is None or not sa.established:
            return
        payloads: list[Payload] = [NotifyPayload(NotifyType.ME_CONNECTID, cid),
                                   NotifyPayload(NotifyType.ME_CONNECT_FAILED), id_peer(about)]
        self.outbox.send(sa, MeConnectRequest(_fixed(payloads)), now)

    def _forward_failure(self, sa: IkeSaView, msg: Message, now: float) -> None:
        """A peer reports ME_CONNECT{IDp, N(ME_CONNECT_FAILED)}: forward it to IDp ([ME] §4)."""
        assert sa.peer_id is not None
        idp = msg.get(PayloadType.ID_PEER)
        cid = msg.notify(NotifyType.ME_CONNECTID)
        if not isinstance(idp, IdPayload) or cid is None:
            raise ProtocolError("ME_CONNECT_FAILED without ID_PEER or ME_CONNECTID", NotifyType.INVALID_SYNTAX)
        to = Identity(int(idp.id_type), idp.data).canonical()
        rec = self.registry.lookup(to)
        if rec is not None:
            log.info("forwarding ME_CONNECT_FAILED from '%s' to '%s'", sa.peer_id, rec.identity)
            self._send_failure(_uid(rec.sa_id), cid.data, sa.peer_id, now)
        elif self.cluster is not None and (remote := self.cluster.where(to)) is not None:
            log.info("forwarding ME_CONNECT_FAILED from '%s' to '%s' at server %s", sa.peer_id, to, remote.server)
            self.cluster.forward_failure(remote.server, to, cid.data, (sa.peer_id.id_type, sa.peer_id.data))

    def _refuse(self, requester: str, target: str, reason: str, notify: int, logged: bool = False) -> list[Payload]:
        if not logged:  # the registry logs its own refusals
            log.info("ME_CONNECT from '%s' to '%s' refused: %s", requester, target, reason)
        self.engine.emit(mev.ConnectRefused(requester, target, reason, int(notify)))
        return [NotifyPayload(notify)]

    # ================================================================== cluster (cluster/core.py)
    def on_cluster_message(self, data: bytes, now: float) -> None:
        """A message from another server of the cluster (the caller flushes the engine after it)."""
        if self.cluster is None:
            return
        try:
            ev = self.cluster.receive(data)
        except ClusterMessageError as e:
            log.warning("dropping a malformed cluster message: %s", e)
            return
        if isinstance(ev, PeerElsewhere):
            self._peer_elsewhere(ev, now)
        elif isinstance(ev, PeerGoneElsewhere):
            self._release_relays([ev.identity], now)
        elif isinstance(ev, SyncAsked):  # it (re)joined: what we knew of its peers is void, it says them again
            self.cluster.server_gone(ev.server)
            self.sync_to([ev.server])
        elif isinstance(ev, SyncChunk):
            for pe in ev.peers:
                self._peer_elsewhere(pe, now)
            for cb in ev.callbacks:
                self._callback_replica(cb, now)
        elif isinstance(ev, ForwardedConnect):
            self._forwarded_connect(ev, now)
        elif isinstance(ev, CallbackElsewhere | CallbackFiredElsewhere):
            self._callback_replica(ev, now)
        elif isinstance(ev, ForwardedFailure):
            rec = self.registry.lookup(ev.to)
            if rec is not None:
                self._send_failure(_uid(rec.sa_id), ev.connect_id, Identity(*ev.about), now)

    def _callback_replica(self, ev: CallbackElsewhere | CallbackFiredElsewhere, now: float) -> None:
        if isinstance(ev, CallbackFiredElsewhere):
            self.registry.drop_replica(ev.target, ev.requester)
        else:
            self.registry.add_replica(CallbackRegistration(ev.target, ev.requester, ev.created, ev.expires),
                                      self.clock(now))

    def cluster_server_gone(self, server: str, now: float) -> None:
        """`server` left the engine: its peers are forgotten, and our relays for them without traffic go."""
        if self.cluster is not None:
            self._release_relays(self.cluster.server_gone(server), now)

    def _release_relays(self, identities: list[str], now: float) -> None:
        """Peers of other servers went offline: as for our own (datarelay.py "Lifetime")."""
        if self.relay is None or not len(self.relay):
            return
        for identity in identities:
            if self.registry.lookup(identity) is None:
                for r in self.relay.release_peer(identity, now):
                    self._freed(r, "mediation SA gone")

    def on_sequenced(self, seq: int, now: float) -> None:
        """The engine's number of our oldest registration waiting for one (cluster/core.py): an older
        registration than one another server announced meanwhile goes ("newest wins")."""
        if self.cluster is None or (ev := self.cluster.sequenced(seq)) is None:
            return
        rec = self.registry.set_order(ev.identity, ev.seq)
        remote = self.cluster.where(ev.identity)
        if rec is not None and remote is not None and remote.seq > rec.order:
            self._drop_older(rec, remote.server, now)

    def sync_to(self, servers: list[str]) -> None:
        """Send each of `servers` every peer registered here and every callback registration known
        here, paced by their acknowledgements (cluster/core.py `start_sync`): to the servers already
        connected when we (re)connected to the engine, and to a server that said hello. Registrations
        whose number was asked for on a closed engine connection ask again."""
        if self.cluster is None:
            return
        for identity in self.cluster.take_lost():
            rec = self.registry.lookup(identity)
            if rec is not None and rec.order == 0:
                self.cluster.register(identity, rec.endpoint, relay=self._relay_capable(rec))
        identities = [rec.identity for rec in self.registry.online_peers()]
        callbacks = [(cr.target, cr.requester, cr.created, cr.expires) for cr in self.registry.registrations()]
        for server in servers:
            self.cluster.start_sync(server, identities, self._registered_here, callbacks)

    def _relay_capable(self, rec: PeerRecord) -> bool:
        sa = self.engine.find_sa(_uid(rec.sa_id))
        me = sa.find_extension(MeSaState) if sa is not None else None
        return bool(me is not None and me.relay)

    def _registered_here(self, identity: str) -> tuple[tuple[str, int] | None, int, bool] | None:
        rec = self.registry.lookup(identity)
        return (rec.endpoint, rec.order, self._relay_capable(rec)) if rec is not None else None

    def _drop_older(self, rec: PeerRecord, server: str, now: float) -> None:
        old = self.engine.find_sa(_uid(rec.sa_id))
        log.info("peer '%s' registered again at server %s: deleting its mediation SA here", rec.identity, server)
        self.registry.remove_sa(rec.sa_id, rec.identity)
        self.engine.emit(mev.PeerOffline(rec.identity, _uid(rec.sa_id)))
        if old is not None and old.state is IkeState.ESTABLISHED:
            self.engine.terminate(old, now)

    def _peer_elsewhere(self, ev: PeerElsewhere, now: float) -> None:
        """One registration per identity across the cluster, newest wins (the engine's numbers, not
        the servers' clocks): an older one here goes."""
        rec = self.registry.lookup(ev.identity)
        if rec is not None and rec.order == 0:
            return  # ours has no number yet: on_sequenced decides
        if rec is not None and rec.order < ev.seq:
            self._drop_older(rec, ev.server, now)
        elif rec is not None and self.cluster is not None:
            # ours is newer: say so again
            self.cluster.announce(rec.identity, rec.endpoint, rec.order, relay=self._relay_capable(rec))
            return
        try:
            online = Identity.parse(ev.identity)
        except Exception:  # noqa: BLE001 - an identity text we cannot parse has no callbacks to fire
            return
        self._callbacks(self.registry.online_elsewhere(ev.identity, self.clock(now)), online, now)

    def _forwarded_connect(self, ev: ForwardedConnect, now: float) -> None:
        """docs/protocol.md §4.1 steps 4 and 7 for a requester registered at another server."""
        assert self.cluster is not None
        requester = Identity(*ev.requester)
        rec = self.registry.lookup(ev.target)
        tsa = self.engine.find_sa(_uid(rec.sa_id)) if rec is not None else None
        if tsa is None or not tsa.established:
            log.info("forwarded ME_CONNECT from '%s': '%s' is not registered here", requester, ev.target)
            self.cluster.forward_failure(ev.origin, requester.canonical(), ev.connect_id,
                                         _id_tuple(Identity.parse(ev.target)))
            return
        endpoints = ev.endpoints
        if (rel := self._relay_answer(ev, now)) is not None:
            endpoints = (*endpoints, rel)
        req = MeConnect(ConnectKind.RESPONSE if ev.response else ConnectKind.REQUEST, id_peer(requester),
                        ev.connect_id, ev.key, endpoint_data=endpoints, nat=ev.nat)
        # as for a requester registered here (_relay): the NAT behaviour goes to our own clients only
        payloads = build_relay(req, id_peer(requester), private=tsa.extension(MeSaState).ours)
        cluster, origin, target_id = self.cluster, ev.origin, tsa.peer_id

        def fail(why: str) -> None:
            log.info("forwarded ME_CONNECT from '%s' to '%s' failed: %s", requester, ev.target, why)
            if target_id is not None:
                cluster.forward_failure(origin, requester.canonical(), ev.connect_id, _id_tuple(target_id))

        def done(s: IkeSaView, result: ConnectResult, t: float) -> None:
            if not result.ok:
                fail("refused by the target")

        log.info("relaying ME_CONNECT%s from '%s' (server %s) to '%s'", " response" if ev.response else "",
                 requester, origin, ev.target)
        self._send_relayed(tsa, lambda: MeConnectRequest(_fixed(payloads), done, lambda s, r, t: fail(r)),
                           ev.response, now)
        self.engine.emit(mev.ConnectRelayed(requester.canonical(), ev.target, ev.connect_id.hex(), ev.response))


def _checked_nat(nat: bytes | None, requester: str) -> bytes | None:
    """The requester's N(IKEME_NAT_BEHAVIOUR) data when it is what natinfo.py sends (printable ASCII, at
    most MAX_TEXT octets); anything else is not passed on to another peer (one log line)."""
    if nat is None or decode_nat(nat) is not None:
        return nat
    log.info("ME_CONNECT from '%s': dropping a malformed NAT behaviour (%d octets)", requester, len(nat))
    return None


def _id_tuple(ident: Identity) -> tuple[int, bytes]:
    return int(ident.id_type), ident.data
