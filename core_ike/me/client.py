"""The peer (client) role of the mediation extension: `MediationClient`, an engine Extension.

[ME] = draft-brunner-ikev2-mediation-00; § numbers are docs/protocol.md sections. What it does:
- mediation connections (config.mediation): N(ME_MEDIATION) in IKE_SA_INIT (§3.2), the engine floats
  to 4500 (§3.3), srflx discovery in IKE_AUTH (§3.4);
- `connect(name, now)` for a mediated connection (config.mediated_by / mediation_peer): brings the
  mediation SA up if needed, sends ME_CONNECT (§4.1), creates the check list *when sending* (the
  relayed answer may come first, §4.4), waits for a callback when the peer is offline (§5), runs the
  checks (§7) and starts the mediated IKE_SA on the selected pair with N(ME_CONNECTID) (§9);
- as target (target.py): answers relayed ME_CONNECTs, sends its own ME_CONNECT + ME_RESPONSE, checks,
  and stops on the mediated IKE_SA_INIT (§8).
Every connect() ends in MediatedEstablished or MediationFailed within bounded, configurable times
(§11.4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..codec.message import Message
from ..codec.payloads import NotifyPayload, Payload
from ..constants import ExchangeType, NotifyType, ProtocolId, name_of
from ..crypto.proposals import parse_proposals
from ..errors import LocalError, LocalUsageError, ProtocolError
from ..ike.context import IkeSaView, Task
from ..ike.engine import Engine
from ..ike.extension import Extension
from ..ike.identity import Identity
from ..ike.state import IkeState
from ..ike.tasks.ike_init import first_group
from ..rng import Rng
from . import events as mev
from .attempt import Attempt, AttemptState, timeout_reason
from .birthday import Probes
from .checklist import (
    CheckListEvent,
    CheckListFailed,
    CheckListSucceeded,
    PairInfo,
    PairState,
    PairStateChanged,
)
from .checks import is_connectivity_check
from .clienttypes import (
    ClientStatus,
    ConnectionStatus,
    MediationClientConfig,
    MediationSaStatus,
    Session,
    failure_text,
    pairs_text,
    rate_limit_backoff,
)
from .connect import (
    ConnectKind,
    ConnectResult,
    build_connect,
    id_peer,
    identity_of,
    new_connect_id,
    new_connect_key,
    parse_connect,
)
from .endpoints import Endpoint, host_endpoints, remove_redundant, srflx_endpoint
from .engine import CheckEngine
from .natinfo import IKEME_NAT_BEHAVIOUR, decode_nat, encode_nat
from .predict import predicted_endpoints
from .target import TargetRole
from .tasks import (
    ConnectIdInit,
    ConnectIdResponder,
    MeConnectRequest,
    MeConnectResponder,
    MediationInit,
    MeOutbox,
    MeSaState,
    SrflxRequest,
    me_role,
    send_queued,
)
from .upgrade import PathLink, Paths

log = logging.getLogger("core_ike.me")
_SUCCEEDED = PairState.SUCCEEDED  # bound once (an Enum member read off its class runs EnumType's hook)
Addr = tuple[str, int]
MAX_OFFERED = 15  # endpoints in our ME_CONNECT with predictions: the server takes 16, with its RELAYED one
NON_ESP = b"\x00\x00\x00\x00"  # RFC 3948 2.2: checks always carry the marker (docs/protocol.md §7.1)


def _nat_text(data: bytes | None) -> str | None:
    return decode_nat(data) if data is not None else None


class MediationClient(TargetRole, Extension):
    def __init__(self, engine: Engine, config: MediationClientConfig | None = None,
                 rng: Rng | None = None) -> None:
        self.engine = engine
        self.config = config or MediationClientConfig()
        self.rng: Rng = rng if rng is not None else engine.rng  # connect IDs and keys (docs/protocol.md §4.1)
        self.checks = CheckEngine(self.config.checks)
        self.checks.flush = self._send_checks
        self.paths = Paths(self.config.upgrade, self.config.checks)
        self.probes = Probes(self.config.probing, self.config.port_pool, self.rng, self._local_in_use)
        self.paths.use_probing(self.probes, lambda: self.config.nat_behaviour() if self.config.nat_behaviour else None)
        self.outbox = MeOutbox(lambda: send_queued(self.engine, self.config.send_now))
        self.attempts: dict[str, Attempt] = {}
        self.sessions: dict[bytes, Session] = {}
        self._mediated: dict[int, str] = {}  # mediated IKE_SA unique id -> attempt name
        self._target_sas: dict[int, str] = {}  # mediated IKE_SAs we answered -> peer (status)
        self._initiating: tuple[str, bytes] | None = None
        self._nat_hold: dict[str, float] = {}  # mediation connection -> ME_CONNECTs wait until (nat_pending)
        self._unsent: dict[str, tuple[IkeSaView, MeConnectRequest]] = {}  # attempt -> ME_CONNECT not built yet
        self._unsent_answers: dict[bytes, tuple[IkeSaView, MeConnectRequest]] = {}  # target: answer not built yet
        self._after: list[Callable[[float], None]] = []  # work the datagram being answered does not wait for
        self._post_send: list[Callable[[], None]] | None = None  # work for after our ME_CONNECT left (_after_send)
        engine.extensions.append(self)

    # ================================================================== control API
    def connect(self, name: str, now: float) -> Attempt:
        """Bring up mediated connection `name`; returns its attempt (already running: unchanged)."""
        cfg = self.engine.config(name)
        if cfg.mediated_by is None or cfg.mediation_peer is None:
            raise LocalError(f"connection {name!r} is not mediated (needs mediated_by and mediation_peer)")
        med = self.engine.config(cfg.mediated_by)
        if not med.mediation:
            raise LocalError(f"{cfg.mediated_by!r} is not a mediation connection")
        old = self.attempts.get(name)
        if old is not None and old.active:
            return old
        att = Attempt(name, med.name, cfg.mediation_peer, now, deadline=now + self.config.server_timeout)
        self.attempts[name] = att
        peer = str(att.peer)  # its text once, for the line and the event (a str: the line is formatted after the send)
        log.info("mediated connection '%s': mediating with '%s' via '%s'", name, peer, med.name)
        self.engine.emit(mev.MediatedConnecting(name, peer, now))
        for sess in self.sessions.values():
            if not sess.initiator and sess.peer == att.peer and sess.mediation == med.name \
                    and self.checks.get(sess.connect_id) is not None:
                # the peer is already mediating with us; join its attempt (docs/protocol.md §11.9)
                self._yield(att, sess.connect_id, now, "already the target of its")
                return att
        sa = self.mediation_sa(med.name)
        if sa is not None and sa.established and med.name not in self._nat_hold:
            self._send_connect(sa, att, now)
        elif sa is None:
            log.info("initiating mediation connection '%s'", med.name)
            self.engine.initiate(med.name, now=now)
        self._pump(now)
        return att

    def cancel(self, name: str, now: float) -> None:
        att = self.attempts.get(name)
        if att is not None and att.active:
            self._fail(att, "cancelled by user", now)
            self._pump(now)

    def mediation_sa(self, name: str) -> IkeSaView | None:
        """The live mediation SA of config `name` (established one preferred)."""
        best: IkeSaView | None = None
        for sa in self.engine.ike_sas():
            if sa.config.name != name or me_role(sa) != "peer":
                continue
            if sa.state in (IkeState.DESTROYED, IkeState.DELETING, IkeState.REKEYED):
                continue
            if sa.established:
                return sa
            best = best or sa
        return best

    def status(self) -> ClientStatus:
        meds = []
        for sa in self.engine.ike_sas():
            st = sa.find_extension(MeSaState)
            if st is not None and st.role == "peer":
                meds.append(MediationSaStatus(sa.name, sa.unique_id, sa.state.value, sa.local, sa.remote,
                                              st.srflx.addr if st.srflx is not None else None))
        conns = [ConnectionStatus(
            att.name, str(att.peer), att.state.value, att.started, att.connect_id.hex() if att.connect_id else None,
            tuple(str(p) for p in self._tried(att)), str(att.pair) if att.pair else None, att.sa_id, att.reason,
            self.paths.describe(att.sa_id), self.probes.describe(att.connect_id) if att.connect_id else None)
            for att in self.attempts.values()]
        targets = tuple(f"{s.connect_id.hex()} from '{s.peer}'" for s in self.sessions.values() if not s.initiator)
        return ClientStatus(tuple(meds), tuple(conns), targets)

    # ================================================================== Extension hooks
    def tasks(self, sa: IkeSaView, exchange: int, initiator: bool, msg: Message | None) -> list[Task]:
        if exchange == ExchangeType.IKE_SA_INIT:
            if initiator and sa.config.mediation:
                return [MediationInit(relay=self.config.relay)]
            if initiator and self._initiating is not None and self._initiating[0] == sa.config.name:
                self._mediated[sa.unique_id] = self._initiating[0]
                return [ConnectIdInit(self._initiating[1])]
            n = msg.notify(NotifyType.ME_CONNECTID) if msg is not None and not initiator else None
            if n is not None:
                return [ConnectIdResponder(n.data, self._mediated_request)]
        elif exchange == ExchangeType.IKE_AUTH and initiator:
            if me_role(sa) == "peer":
                send = self.config.srflx_always or sa.nat_here  # docs/protocol.md §3.4 (interop)
                return [SrflxRequest(send, self._mediation_up, self.outbox)]
        elif exchange == ExchangeType.ME_CONNECT and not initiator and \
                me_role(sa) == "peer":
            return [MeConnectResponder(self._on_connect, self.outbox)]
        return []

    def on_established(self, sa: IkeSaView, now: float) -> None:
        if self.paths.established(sa.unique_id, sa.remote, now) and sa.unique_id in self.paths.watches:
            sa.extension(PathLink).connect_id = self.paths.watches[sa.unique_id].cands.connect_id
        name = self._mediated.get(sa.unique_id)
        att = self.attempts.get(name) if name else None
        if att is None or att.sa_id != sa.unique_id or att.state not in (AttemptState.INITIATING, AttemptState.YIELDED):
            return
        att.set_state(AttemptState.ESTABLISHED, None)
        self._end_session(att)
        log.info("mediated connection '%s' to '%s' established in %.3f s", att.name, att.peer, now - att.started)
        self.engine.emit(mev.MediatedEstablished(att.name, str(att.peer), sa.unique_id, sa.local, sa.remote,
                                                 now - att.started))

    def on_destroyed(self, sa: IkeSaView, now: float) -> None:
        for task in self.outbox.drop(sa):
            task.failed(sa, "mediation connection lost", now)
        self._target_sas.pop(sa.unique_id, None)
        self.probes.release(sa.local)
        link = sa.find_extension(PathLink)
        self.paths.destroyed(sa.unique_id, next((s.unique_id for s in self.engine.ike_sas() if link is not None
                                                 and s.unique_id != sa.unique_id and s.established
                                                 and s.find_extension(PathLink) == link), None))
        name = self._mediated.pop(sa.unique_id, None)
        att = self.attempts.get(name) if name else None
        if att is not None and att.sa_id == sa.unique_id and att.state in (AttemptState.INITIATING, AttemptState.YIELDED):
            self._fail(att, failure_text("mediated IKE_SA failed", sa), now)
        if me_role(sa) == "peer" and sa.established_at is None:
            for a in list(self.attempts.values()):
                if a.state is AttemptState.MEDIATION and a.mediation == sa.config.name and self.mediation_sa(a.mediation) is None:
                    self._fail(a, failure_text("mediation server unreachable", sa), now)
        self._pump(now)

    def handle_plain(self, msg: Message, local: Addr, remote: Addr, now: float) -> bool:
        if not is_connectivity_check(msg):
            return False
        if self.paths.watches and self.paths.receive_message(msg, remote, local, now):
            self._pump(now)
            return True
        reason = self.checks.receive_check(msg, remote, local, now)  # src = remote, dst = local
        if reason is not None:
            log.debug("dropping connectivity check from %s[%d]: %s", remote[0], remote[1], reason)
        self._pump(now)
        return True

    def next_deadline(self) -> float | None:
        if self._after:
            return self.engine.now  # the next turn, once the answer being made has left
        # asked after every datagram and timer of the engine: the parts with nothing to time ask nothing,
        # and no list is made for the minimum
        best = self.checks.get_timer()
        for a in self.attempts.values():
            if (t := a.deadline) is not None and (best is None or t < best):
                best = t
        if self.paths.watches and (t := self.paths.get_timer()) is not None and (best is None or t < best):
            best = t
        if self.probes.probes and (t := self.probes.get_timer()) is not None and (best is None or t < best):
            best = t
        if self._nat_hold:
            for t in self._nat_hold.values():
                if best is None or t < best:
                    best = t
        return best

    def handle_timer(self, now: float) -> None:
        after, self._after = self._after, []
        for fn in after:
            fn(now)
        self.checks.handle_timer(now)
        self.paths.handle_timer(now)
        self.probes.handle_timer(now)
        self._release_held(now)
        self._pump(now)
        due = [a for a in self.attempts.values() if a.deadline is not None and now >= a.deadline and a.active]
        for att in due:
            self._timeout(att, now)
        if due:  # the first pump drained everything else
            self._pump(now)

    # ================================================================== mediation SA
    def _mediation_up(self, sa: IkeSaView, srflx: Endpoint | None, now: float) -> None:
        """IKE_AUTH done (inside the task manager of `sa`): store the srflx, send waiting ME_CONNECTs."""
        if srflx is not None and srflx.address is not None:
            # docs/protocol.md §3.4: base = the local address used toward the MS
            sa.extension(MeSaState).srflx = srflx_endpoint(srflx.address, srflx.port, base=sa.local)
            log.info("server reflexive endpoint of '%s': %s[%d]", sa.name, srflx.address, srflx.port)
        ep = sa.extension(MeSaState).srflx
        self.engine.emit(mev.MediationSaUp(sa.name, sa.unique_id, sa.local, sa.remote,
                                           ep.addr if ep is not None else None))
        if self.config.nat_pending is not None and self.config.nat_pending() and self.config.probing.enabled and \
                any(a.state is AttemptState.MEDIATION and a.mediation == sa.config.name for a in self.attempts.values()):
            self._nat_hold[sa.config.name] = now + self.config.probing.nat_wait
            log.info("mediation connection '%s' up: its ME_CONNECTs wait for the NAT discovery (at most %g s)",
                     sa.name, self.config.probing.nat_wait)
            return
        self._send_waiting(sa, now)

    def _send_waiting(self, sa: IkeSaView, now: float) -> None:
        for att in list(self.attempts.values()):
            if att.state is AttemptState.MEDIATION and att.mediation == sa.config.name:
                self._send_connect(sa, att, now)

    def nat_known(self, now: float) -> None:
        """The adapter's NAT discovery finished: the ME_CONNECTs that waited for it go out."""
        self._release_held(now, force=True)
        self._pump(now)

    def _release_held(self, now: float, force: bool = False) -> None:
        for name, until in list(self._nat_hold.items()):
            if force or now >= until:
                del self._nat_hold[name]
                sa = self.mediation_sa(name)
                if sa is not None and sa.established:
                    self._send_waiting(sa, now)

    def gather(self, sa: IkeSaView) -> list[Endpoint]:
        """docs/protocol.md §6.1: HOST endpoints on the mediation SA's local port, plus the srflx."""
        port = sa.local[1]
        eps = host_endpoints(self.config.host_addresses() if self.config.host_addresses is not None else (), port)
        srflx = sa.extension(MeSaState).srflx
        if srflx is not None:
            eps.append(srflx)
        if self.config.extra_endpoints is not None:
            eps.extend(self.config.extra_endpoints(sa.local))
        alloc = self.config.port_allocation() if self.config.port_allocation is not None else None
        if alloc is not None and srflx is not None and sa.extension(MeSaState).server_ours:
            # our server and peers only (a strongSwan peer would check them as well, to no harm, but
            # they would crowd the 16 endpoints its server accepts); one slot stays for the RELAYED one
            room = max(0, min(self.config.predicted, MAX_OFFERED - len(eps)))
            eps.extend(predicted_endpoints(srflx, alloc, sa.local, room))
        return remove_redundant(eps)

    # ================================================================== ME_CONNECT, initiator (A)
    def _send_connect(self, sa: IkeSaView, att: Attempt, now: float) -> None:
        # no deadline while queued behind another exchange of the SA: that one is bounded by its own
        # retransmissions, and the SA's loss fails this request (on_destroyed)
        att.set_state(AttemptState.CONNECTING, None)
        att.called_back = False
        holder: list[bytes] = []

        def build(s: IkeSaView, t: float) -> list[Payload]:
            if self._unsent.get(att.name, (s, None))[1] is task:
                del self._unsent[att.name]
            if self.config.connect_timeout > 0:
                att.deadline = t + self.config.connect_timeout
            cid, key = new_connect_id(self.rng), new_connect_key(self.rng)  # docs/protocol.md §4.1 step 1
            eps = self.gather(s)
            self.sessions[cid] = Session(cid, True, att.peer, att.name, key, eps)
            att.connect_id, att.tried = cid, ()
            holder.append(cid)
            self._after_send(lambda: self._initiator_list(att, cid, key, eps, t))
            return self._with_nat(s, build_connect(cid, key, eps, id_peer(att.peer), callback=True))

        def done(s: IkeSaView, result: ConnectResult, t: float) -> None:
            if not holder or att.connect_id != holder[0] or not att.active:
                return
            if result.error != NotifyType.TEMPORARY_FAILURE:
                att.rate_limited = 0
            if result.ok:
                if att.state is AttemptState.CONNECTING:  # else the relayed answer came first (the race)
                    att.set_state(AttemptState.RELAYED, t + self.config.checks.transaction_timeout + 1.0)
                # made after the datagrams read with this response (`_after`): the peer's relayed answer,
                # which our first checks wait for, may be queued behind it
                self._after.append(lambda _t: self._ready_key(att))
                return
            self._end_session(att)
            if result.error == NotifyType.ME_CONNECT_FAILED and att.called_back:
                log.info("peer '%s' reported offline, but its ME_CALLBACK came meanwhile: asking again", att.peer)
                self._send_connect(s, att, t)
            elif result.error == NotifyType.ME_CONNECT_FAILED:
                # docs/protocol.md §4.1 step 3: offline (or refused); we asked for a callback
                until = t + self.config.callback_timeout
                att.set_state(AttemptState.CALLBACK, until)
                log.info("peer '%s' is not online, waiting up to %.0f s for a callback", att.peer,
                         self.config.callback_timeout)
                self.engine.emit(mev.PeerNotOnline(att.name, str(att.peer), until))
            elif result.error == NotifyType.TEMPORARY_FAILURE:
                self._rate_limited(att, t)
            else:
                self._fail(att, f"refused by the mediation server: {name_of(NotifyType, int(result.error or 0))}", t)
            self._pump(t)

        def failed(s: IkeSaView, reason: str, t: float) -> None:
            if self._unsent.get(att.name, (s, None))[1] is task:
                del self._unsent[att.name]
            if att.active and (not holder or att.connect_id == holder[0]) and att.state in (AttemptState.CONNECTING, AttemptState.RELAYED):
                self._fail(att, f"mediation server unreachable: {reason}", t)

        task = MeConnectRequest(build, done, failed)
        self._unsent[att.name] = (sa, task)
        post = self._post_send = []
        try:
            self.outbox.send(sa, task, now)  # built and sent here when the SA has no exchange in flight
        finally:
            self._post_send = None
            for fn in post:
                fn()

    def _after_send(self, fn: Callable[[], None]) -> None:
        """Work a request being built does not need, done once it has left: `_send_connect`'s `send`
        sends what it builds; a request built later, in the SA's task manager, leaves after it (so at once)."""
        if self._post_send is not None:
            self._post_send.append(fn)
        else:
            fn()

    def _initiator_list(self, att: Attempt, cid: bytes, key: bytes, eps: list[Endpoint], now: float) -> None:
        """Our check list, created when *sending* ME_CONNECT: the relayed answer may come before our response
        (docs/protocol.md §4.4), never before the request has left, and nothing is read in between."""
        self.checks.create_initiator(cid, key, eps, now)
        self.engine.emit(mev.MeConnectSent(att.name, str(att.peer), cid.hex(), tuple(map(str, eps))))

    # ================================================================== received ME_CONNECT
    def _on_connect(self, sa: IkeSaView, msg: Message, now: float) -> list[Payload]:
        try:
            if msg.notify(NotifyType.ME_CONNECT_FAILED) is not None:
                return self._forwarded_failure(msg, now)
            req = parse_connect(msg.payloads)
            peer = identity_of(req.peer)
            if req.kind is ConnectKind.CALLBACK:
                self._callback(sa, peer, now)
                return []
            if req.kind is ConnectKind.REQUEST:
                return self._relayed_request(sa, req.connect_id, req.key, list(req.endpoints), peer, now,
                                             _nat_text(req.nat))
            self._relayed_answer(req.connect_id, req.key, list(req.endpoints), peer, now, _nat_text(req.nat))
            return []
        finally:
            self._pump(now)

    def _callback(self, sa: IkeSaView, peer: Identity, now: float) -> None:
        """docs/protocol.md §5: re-run mediation for every connection waiting for `peer`."""
        names = []
        for att in list(self.attempts.values()):
            if att.peer != peer or att.mediation != sa.config.name:
                continue
            if att.state is AttemptState.CALLBACK:
                names.append(att.name)
                self._send_connect(sa, att, now)
            elif att.state is AttemptState.CONNECTING and att.name not in self._unsent:
                att.called_back = True  # our ME_CONNECT is in flight; its answer decides (done)
        log.info("received ME_CALLBACK for '%s'%s", peer, f", retrying {', '.join(names)}" if names else "")
        self.engine.emit(mev.CallbackReceived(str(peer), tuple(names)))

    def _relayed_answer(self, cid: bytes, key: bytes, eps: list[Endpoint], peer: Identity, now: float,
                        nat: str | None = None) -> None:
        """The target's ME_RESPONSE (docs/protocol.md §4.1 step 8): build pairs, start checking."""
        sess = self.sessions.get(cid)
        att = self.attempts.get(sess.name) if sess is not None and sess.initiator else None
        cl = self.checks.get(cid)
        if att is None or cl is None or not att.active or att.connect_id != cid or not cl.is_initiator:
            log.info("ignoring ME_CONNECT answer for unknown connect ID %s", cid.hex())
            return
        if sess is not None:
            sess.peer_nat = nat
        try:
            self.checks.set_responder_data(cid, key, eps, now)
        except LocalError as e:
            log.info("ignoring duplicate ME_CONNECT answer for %s: %s", cid.hex(), e)
            return
        att.set_state(AttemptState.CHECKING, now + self.config.checks.transaction_timeout + 1.0)
        self.checks.handle_timer(now)  # the first ones leave now, not a turn of the event loop later
        self._pump(now)  # ... before the probing and the event, which the peer does not wait for
        self._start_probe(cid, now)
        self.engine.emit(mev.ChecksStarted(att.name, str(att.peer), cid.hex(), True,
                                           tuple(str(p) for p in cl.tried())))

    def _yield(self, att: Attempt, cid: bytes, now: float, why: str) -> None:
        """The tie-break (docs/protocol.md §11.9): the peer's attempt `cid` wins; ours ends without MediationFailed and
        follows `cid` as its target; the peer's mediated IKE_SA completes it (on_established)."""
        unsent = self._unsent.pop(att.name, None)
        if unsent is not None:
            self.outbox.cancel(unsent[0], unsent[1], now)
        own = att.connect_id.hex() if att.connect_id is not None and unsent is None else "(none)"
        self._end_session(att)  # our check list and session (nothing was nominated, docs/protocol.md §8)
        att.connect_id, att.tried, att.pair = cid, (), None
        ike = self.config.ike_timeout or self.engine.config(att.name).retransmit.give_up_after(True)
        att.set_state(AttemptState.YIELDED, now + self.config.checks.responder_timeout + ike)
        log.info("mediated connection '%s' to '%s': %s connect ID %s (ours %s), waiting for its mediated "
                 "IKE_SA", att.name, att.peer, why, cid.hex(), own)

    def _forwarded_failure(self, msg: Message, now: float) -> list[Payload]:
        """[ME] §4, docs/protocol.md §4.5: the target failed; the MS forwards ME_CONNECT_FAILED."""
        n = msg.notify(NotifyType.ME_CONNECTID)
        sess = self.sessions.get(n.data) if n is not None else None
        if sess is None:
            return []
        if sess.initiator:
            att = self.attempts.get(sess.name)
            if att is not None and att.active and att.connect_id == sess.connect_id:
                self._fail(att, f"refused: peer '{sess.peer}' did not accept the mediation", now)
        else:
            self._end_target(sess.connect_id, "the initiator gave up", now)
        return []

    # ================================================================== mediated IKE_SA
    def _initiate(self, att: Attempt, selected: PairInfo, now: float) -> None:
        """docs/protocol.md §9.2: IKE_SA_INIT from the pair's local base to its remote."""
        assert att.connect_id is not None
        att.pair = selected
        att.set_state(AttemptState.INITIATING, self._ike_deadline(now))
        self.engine.emit(mev.MediatedInitiating(att.name, str(att.peer), att.connect_id.hex(),
                                                selected.local, selected.remote))
        self._initiating = (att.name, att.connect_id)
        ready, att.key_share = att.key_share, None
        ke = ready[1] if ready is not None and ready[0] == att.connect_id else None
        try:
            sa = self.engine.initiate(att.name, now=now, local=selected.local, remote=selected.remote,
                                      key_exchange=ke)
        except (LocalUsageError, ProtocolError) as e:
            self._fail(att, f"mediated IKE_SA failed: {e}", now)
            return
        finally:
            self._initiating = None
        # our IKE_SA_INIT leaves when it is made, as our ME_CONNECT does (MeOutbox.flush): the peer waits for
        # it, nobody for what follows (the path watch below, the events and log lines of this datagram)
        send_queued(self.engine, self.config.send_now)
        att.sa_id = sa.unique_id
        sess = self.sessions.get(att.connect_id)
        self.paths.track(sa.unique_id, self.checks.get(att.connect_id), sess.peer_nat if sess is not None else None)

    def _ready_key(self, att: Attempt) -> None:
        """The mediated IKE_SA_INIT's KEi made while the peer's answer is on its way, not on the way from
        the checks to the IKE_SA; from the engine's pool (each pair handed out once), for this connect ID."""
        if att.connect_id is None or att.sa_id is not None or att.state not in (
                AttemptState.RELAYED, AttemptState.CHECKING) or (att.key_share or (None,))[0] == att.connect_id:
            return
        try:
            group = first_group(parse_proposals(self.engine.config(att.name).proposals, ProtocolId.IKE))
            att.key_share = (att.connect_id, self.engine.key_pool.take(group, self.rng))
        except (LocalError, ProtocolError, KeyError, ValueError) as e:  # the IKE_SA_INIT makes one (and says why)
            log.debug("mediated connection '%s': no key share made ahead: %s", att.name, e)

    def _ike_deadline(self, now: float) -> float | None:
        """The mediated IKE_SA: its retransmissions decide (RFC 7296 2.1), unless ike_timeout caps them."""
        return now + self.config.ike_timeout if self.config.ike_timeout > 0 else None

    # ================================================================== many-port probing (birthday.py)
    def _with_nat(self, sa: IkeSaView, payloads: list[Payload]) -> list[Payload]:
        """Our ME_CONNECT to our own server carries our NAT's behaviour (it relays it to our clients only)."""
        text = self.config.nat_behaviour() if self.config.nat_behaviour is not None else None
        st = sa.find_extension(MeSaState)
        if text and st is not None and st.server_ours and self.config.probing.enabled:
            payloads.insert(len(payloads) - 1, NotifyPayload(IKEME_NAT_BEHAVIOUR, encode_nat(text)))
        return payloads

    def _start_probe(self, cid: bytes, now: float) -> None:
        cl, sess = self.checks.get(cid), self.sessions.get(cid)
        if cl is not None and not cl.finished and sess is not None and sess.peer_nat is not None:
            own = self.config.nat_behaviour() if self.config.nat_behaviour is not None else None
            self.probes.start(cl, own, sess.peer_nat, now)

    def _local_in_use(self, local: Addr) -> bool:
        return any(sa.local == local for sa in self.engine.ike_sas() if sa.state is not IkeState.DESTROYED)

    # ================================================================== checks and timers
    def _send_checks(self) -> None:
        """CheckEngine.flush: what the check lists queued leaves now (an answer before the work it causes)."""
        send = self.config.send_now or self.engine.send
        for data, local, remote in self.checks.datagrams_to_send():
            send(NON_ESP + data, local, remote)

    def _send_extra(self) -> None:
        """The path watches' and probes' datagrams (none without a watch or a probe)."""
        if self.paths.watches:
            for data, local, remote in self.paths.datagrams_to_send():
                self.engine.send(NON_ESP + data, local, remote)
        if self.probes.probes:
            for data, local, remote in self.probes.datagrams_to_send():
                self.engine.send(NON_ESP + data, local, remote)

    def _pump(self, now: float) -> None:
        """Send the checks' datagrams, act on their events."""
        paths, probes, checks = self.paths, self.probes, self.checks
        if paths.busy():  # no path watch: no moves, no probe rounds (upgrade.py)
            paths.apply_moves(self.engine, now)
        send = self.config.send_now or self.engine.send
        for _ in range(100):
            for data, local, remote in checks.datagrams_to_send():
                send(NON_ESP + data, local, remote)
            if paths.watches or probes.probes:
                self._send_extra()
            ev = checks.next_event()
            if ev is None:
                if probes.probes and probes.sweep(checks.get, now):
                    continue  # a check list's hold on the relay ended: it may have selected a pair
                for pev in probes.events() if probes.queued else ():
                    self.engine.emit(pev)
                return
            if probes.probes:  # no probe: nothing follows the lists' events (birthday.py)
                probes.on_event(ev, now)
            self._check_event(ev, now)

    def _check_event(self, ev: CheckListEvent, now: float) -> None:
        sess = self.sessions.get(ev.connect_id)
        att = self.attempts.get(sess.name) if sess is not None and sess.initiator else None
        if isinstance(ev, PairStateChanged) and ev.new is _SUCCEEDED and sess is not None:
            self.engine.emit(mev.PairSucceeded(att.name if att else "", str(sess.peer), ev.connect_id.hex(),
                                               str(ev.pair)))
        elif isinstance(ev, CheckListSucceeded) and att is not None and att.connect_id == ev.connect_id:
            att.tried = ev.tried
            self._initiate(att, ev.selected, now)
        elif isinstance(ev, CheckListFailed):
            if att is not None and att.connect_id == ev.connect_id and att.active:
                att.tried = ev.tried
                self._fail(att, f"checks failed: {ev.reason}{self.probes.note(ev.connect_id)}; "
                                f"tried {pairs_text(ev.tried)}", now)
            elif sess is not None and not sess.initiator:
                self._end_target(ev.connect_id, f"checks failed: {ev.reason}", now)

    def _timeout(self, att: Attempt, now: float) -> None:
        if att.state is AttemptState.RATE_LIMITED:
            self._retry_connect(att, now)
        elif (why := timeout_reason(att, now, self.config.callback_timeout, self.config.ike_timeout,
                                    self._tried(att))) is not None:
            self._fail(att, why, now)

    def _rate_limited(self, att: Attempt, now: float) -> None:
        """The server refused our ME_CONNECT for its rate limit: the peer may well be online, so this is
        neither "offline" (no callback will come) nor final; ask again after a backoff."""
        att.rate_limited += 1
        if att.rate_limited >= self.config.rate_limit_tries:
            self._fail(att, f"rate limited by the mediation server: ME_CONNECT refused {att.rate_limited} times "
                            "(TEMPORARY_FAILURE), try again later", now)
            return
        wait = rate_limit_backoff(self.config, att.rate_limited)
        att.reason = f"rate limited by the mediation server, asking again in {wait:g} s"
        att.set_state(AttemptState.RATE_LIMITED, now + wait)
        log.info("mediated connection '%s': ME_CONNECT rate limited by the mediation server, asking again in "
                 "%g s", att.name, wait)

    def _retry_connect(self, att: Attempt, now: float) -> None:
        att.reason = ""
        sa = self.mediation_sa(att.mediation)
        if sa is not None and sa.established:
            self._send_connect(sa, att, now)
            return
        att.set_state(AttemptState.MEDIATION, now + self.config.server_timeout)
        if sa is None:
            self.engine.initiate(att.mediation, now=now)

    def _tried(self, att: Attempt) -> tuple[PairInfo, ...]:
        cl = self.checks.get(att.connect_id) if att.connect_id else None
        return cl.tried() if cl is not None else att.tried

    def _fail(self, att: Attempt, reason: str, now: float) -> None:
        if not att.active:
            return
        att.tried = self._tried(att)
        att.reason = reason
        att.set_state(AttemptState.FAILED, None)
        unsent = self._unsent.pop(att.name, None)
        if unsent is not None:  # never sent: withdrawn, it would only hold up the SA's next requests
            self.outbox.cancel(unsent[0], unsent[1], now)
        self._end_session(att)
        log.warning("mediated connection '%s' to '%s' failed: %s", att.name, att.peer, reason)
        self.engine.emit(mev.MediationFailed(att.name, str(att.peer), reason))
        sa = self.engine.find_sa(att.sa_id) if att.sa_id is not None else None
        if sa is not None and not sa.established:
            sa.destroy(reason, now, failed=True)

    def _end_session(self, att: Attempt) -> None:
        if att.connect_id is not None:
            self.sessions.pop(att.connect_id, None)
            self.checks.remove(att.connect_id)
