"""The task manager of one IKE_SA: request queue, message IDs, retransmission, the response cache, the
choice of responder tasks and the SA's maintenance (rekeying, expiry, liveness, NAT keepalives).

The shape of strongSwan's task_manager_v2: tasks are queued, the tasks of one exchange type go out
together in one request; window size 1 (RFC 7296 2.3); a request is retransmitted on the schedule of
the connection's RetransmitConfig (RFC 7296 2.1, 2.4) and the SA is given up when it is exhausted;
a retransmitted request is answered from the response cache (RFC 7296 2.1).

Sans-IO: datagrams go out through the engine's `send`, events through `emit`; `now` is an input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..codec.message import Message, decrypt_message, encode_message, reassembled
from ..codec.payloads import NotifyPayload, Proposal, SkfPayload
from ..codec.rules import check_rules
from ..constants import ExchangeType, HeaderFlag, NotifyType, PayloadType, ProtocolId, name_of
from ..errors import AuthenticationFailed, CredentialsPending, DecodeError, IntegrityError, ProtocolError
from . import events as ev
from . import fastauth
from .context import Failure, Status, Task
from .fragments import FragmentReceiver
from .state import ChildState, IkeState
from .tasks.child_create import ChildCreate
from .tasks.collisions import check_create_child
from .tasks.eap_auth import eap_round, error_payload, peer_left_eap, with_first_request
from .tasks.ike_auth import IkeAuth
from .tasks.ike_init import IkeInit
from .tasks.ike_rekey import IkeRekey
from .tasks.informational import ChildDelete, Dpd, Informational

# name_of(ExchangeType, x) by a lookup: the "parsed"/"generating" lines name the exchange of every message
_EXCHANGE_NAMES: dict[int, str] = {int(x): x.name for x in ExchangeType}


def _exchange(x: int) -> str:
    return _EXCHANGE_NAMES.get(x) or name_of(ExchangeType, x)


if TYPE_CHECKING:
    from .sa import IkeSa

log = logging.getLogger("core_ike.ike")

# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook
_CREATED, _CONNECTING, _DESTROYED = IkeState.CREATED, IkeState.CONNECTING, IkeState.DESTROYED
_ESTABLISHED, _REKEYING, _DELETING = IkeState.ESTABLISHED, IkeState.REKEYING, IkeState.DELETING
_IKE_SA_INIT, _IKE_AUTH = ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH
_CREATE_CHILD_SA, _INFORMATIONAL = ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL
_SA_PAYLOAD, _REKEY_SA, _INVALID_IKE_SPI = PayloadType.SA, NotifyType.REKEY_SA, NotifyType.INVALID_IKE_SPI
_PROTO_IKE, _PROTO_CHILD = ProtocolId.IKE, (ProtocolId.ESP, ProtocolId.AH)
_INSTALLED, _CHILD_REKEYING = ChildState.INSTALLED, ChildState.REKEYING
_RESTART, _NEED_MORE = Status.RESTART, Status.NEED_MORE

# (original initiator, response) -> header flags, without IntFlag arithmetic per message
_HEADER_FLAGS = ((HeaderFlag.NONE, HeaderFlag.RESPONSE),
                 (HeaderFlag.INITIATOR, HeaderFlag.INITIATOR | HeaderFlag.RESPONSE))


@dataclass
class Outstanding:
    """Our request in flight (window size 1, RFC 7296 2.3)."""

    mid: int
    exchange: int
    tasks: list[Task]
    packets: list[bytes]
    attempt: int
    deadline: float
    prompt: bool = False  # on the early retransmission schedule (RetransmitConfig)
    sent_at: float = 0.0  # last transmission


def _children_deadline(sa: IkeSa, best: float | None) -> float | None:
    """The earliest of `best` and the CHILD_SAs' rekey and expiry times (RFC 7296 2.8)."""
    for c in sa.children.values():
        d = c.rekey_at
        if d is not None and (best is None or d < best):
            best = d
        d = c.expire_at
        if d is not None and (best is None or d < best):
            best = d
    return best


def _liveness_deadline(sa: IkeSa, dpd_due: bool) -> float | None:
    """An established SA's next liveness check (RFC 7296 1.4) or NAT keepalive (RFC 3948 4), if any. A
    request in flight is the liveness check (its retransmissions time out): the DPD is due only when
    maintenance can send it (`dpd_due`: ESTABLISHED, nothing in flight), else this deadline would stay in
    the past and the timer loop would spin."""
    cfg = sa.config
    best = None
    if dpd_due and cfg.dpd_delay > 0 and not sa.dpd_pending:
        best = sa.last_in + cfg.dpd_delay
    if sa.nat_here and cfg.keepalive_interval > 0:
        d = sa.last_out + cfg.keepalive_interval
        if best is None or d < best:
            best = d
    return best


def failure_of(e: ProtocolError) -> Failure:
    auth = isinstance(e, AuthenticationFailed) or e.notify == NotifyType.AUTHENTICATION_FAILED
    return Failure(str(e), None if e.notify is None else int(e.notify), auth)


class TaskManager:
    # one per IKE_SA (a mediation server holds 100k of them): no per-instance __dict__
    __slots__ = ("cached_response", "failure", "fragments", "held", "my_mid", "outstanding", "peer_mid", "queue", "sa")

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa
        self.my_mid = 0
        self.peer_mid = 0
        self.outstanding: Outstanding | None = None
        self.queue: list[Task] = []
        self.cached_response: tuple[int, list[bytes]] | None = None
        self.fragments: FragmentReceiver | None = None  # created on the first SKF fragment (memory per SA)
        self.failure: Failure | None = None  # the first failed exchange (what the SA's loss is reported as)
        self.held: Message | None = None  # a request that came before our IKE_AUTH response (`_process_request`)

    # ------------------------------------------------------------------ sending
    def _send(self, packets: list[bytes], now: float) -> None:
        sa = self.sa
        eng, port = sa.engine, sa.local[1]
        marker = port == eng.natt_port or port in eng.natt_extra  # sa.uses_marker (RFC 3948 2.2) without its frames
        info = log.isEnabledFor(logging.INFO)  # the arguments cost more than the disabled call
        for p in packets:
            data = b"\x00\x00\x00\x00" + p if marker else p
            if info:
                log.info("sending packet: from %s[%d] to %s[%d] (%d bytes)",
                         sa.local[0], sa.local[1], sa.remote[0], sa.remote[1], len(data))
            eng.send(data, sa.local, sa.remote)
        sa.last_out = now

    def _encode(self, msg: Message) -> list[bytes]:
        sa = self.sa
        frag = sa.config.fragment_size if (sa.frag_supported and sa.config.fragmentation) else None
        prot = sa.out_prot if msg.encrypted else None
        packets = encode_message(msg, prot, frag)
        if len(packets) > 1:
            log.info("splitting IKE message into %d fragments of at most %d bytes (RFC 7383)",
                     len(packets), max(map(len, packets)))
        return packets

    def new_message(self, exchange: int, response: bool, mid: int) -> Message:
        sa = self.sa
        flags = _HEADER_FLAGS[sa.is_original_initiator][response]
        return Message(
            spi_i=sa.spi_i, spi_r=sa.spi_r, exchange=exchange, flags=flags, message_id=mid,
            payloads=[], encrypted=exchange != _IKE_SA_INIT,
        )

    # ------------------------------------------------------------------ initiating
    def queue_task(self, task: Task, now: float) -> None:
        self.queue.append(task)
        self.initiate_next(now)

    def initiate_next(self, now: float) -> None:
        """Start the next exchange from the queue if none is in flight (window 1)."""
        sa = self.sa
        if self.outstanding is not None:
            if not self.outstanding.prompt and any(t.prompt for t in self.queue):
                self._hurry(self.outstanding)
            return
        if not self.queue or sa.state is _DESTROYED:
            return
        if sa.state is _DELETING and not self.queue[0].is_delete:
            return
        exchange = self.queue[0].exchange
        tasks: list[Task] = []
        while self.queue and self.queue[0].exchange == exchange:
            tasks.append(self.queue.pop(0))
        tasks += sa.engine.extension_tasks(sa, exchange, True, None)
        self._send_request(exchange, tasks, now)

    def _send_request(self, exchange: int, tasks: list[Task], now: float,
                      builders: list[Task] | None = None) -> None:
        sa = self.sa
        mid = self.my_mid
        msg = self.new_message(exchange, False, mid)
        try:
            for t in tasks if builders is None else builders:
                t.build_i(sa, msg, now)
        except ProtocolError as e:  # e.g. our own credentials are missing: fail with the reason
            self._task_failed(Outstanding(mid, exchange, tasks, [], 0, now), failure_of(e), now)
            return
        if exchange == _IKE_SA_INIT and sa.state is _CREATED:
            sa.set_state(_CONNECTING)
        packets = self._encode(msg)
        if exchange == _IKE_SA_INIT:
            sa.init_request = packets[0]
        if log.isEnabledFor(logging.INFO):
            log.info("generating %s request %d %s", _exchange(exchange), mid, msg.summary())
        # RFC 7296 2.1 / RetransmitConfig: a prompt exchange, or one a prompt request waits behind
        prompt = any(t.prompt for t in tasks) or any(t.prompt for t in self.queue)
        self.outstanding = Outstanding(mid, exchange, tasks, packets, 0,
                                       now + sa.config.retransmit.delay(0, prompt), prompt, now)
        self._send(packets, now)
        sa.engine.reschedule(sa)

    def _hurry(self, out: Outstanding) -> None:
        """A prompt request queued behind `out` (window 1): `out` continues on the early schedule, so a
        lost DPD or rekey in flight does not hold an `up` back for the main schedule's seconds."""
        out.prompt = True
        due = out.sent_at + self.sa.config.retransmit.delay(out.attempt, True)
        if due < out.deadline:
            out.deadline = due
            self.sa.engine.reschedule(self.sa)

    # ------------------------------------------------------------------ receiving
    def receive(self, msg: Message, now: float) -> None:
        """A message for this SA (header already matched by SPI)."""
        sa = self.sa
        try:
            full = self._unprotect(msg, now)
            if full is None:
                return
            check_rules(full)
        except IntegrityError as e:
            sa.engine.log_limit.warning("integrity", now, "%s: dropping message %d: integrity check failed (%s)",
                                        sa.label, msg.message_id, e)
            return
        except DecodeError as e:
            sa.engine.log_limit.warning("malformed-message", now, "%s: dropping malformed message %d: %s",
                                        sa.label, msg.message_id, e)
            return
        except ProtocolError as e:
            log.warning("%s: invalid message %d: %s", sa.label, msg.message_id, e)
            if msg.is_request and e.notify is not None and msg.message_id == self.peer_mid:
                self._respond_error(msg, e, now)
            return
        sa.last_in = now
        sa.dpd_pending = False
        if log.isEnabledFor(logging.INFO):
            log.info("parsed %s %s %d %s", _exchange(full.exchange),
                     "response" if full.is_response else "request", full.message_id, full.summary())
        if full.is_response:
            self._process_response(full, now)
        else:
            self._process_request(full, now)

    def _unprotect(self, msg: Message, now: float) -> Message | None:
        sa = self.sa
        if msg.sk is None:
            # RFC 7296 3.14: only IKE_SA_INIT (and ME checks, handled before SA lookup) are plaintext
            if msg.exchange != _IKE_SA_INIT:
                raise ProtocolError(f"unencrypted {name_of(ExchangeType, msg.exchange)} message", None)
            return msg
        if sa.in_prot is None:
            raise DecodeError("encrypted message before keys exist")
        if isinstance(msg.sk, SkfPayload):
            if self.fragments is None:
                self.fragments = FragmentReceiver(sa)
            done = self.fragments.receive(sa, msg, sa.in_prot, now)  # RFC 7383 2.6
            # the first IKE_AUTH request (charon's with a certificate and a CHILD_SA comes in fragments)
            # answered by core_ike/ike/fastauth.py as an unfragmented one; what it declines goes on here
            if done is None or fastauth.answer_reassembled(sa, done[0], done[1], now):
                return None
            return reassembled(done[0], done[1])
        return decrypt_message(msg, sa.in_prot)

    def _process_response(self, msg: Message, now: float) -> None:
        sa = self.sa
        out = self.outstanding
        if out is None or msg.message_id != out.mid or msg.exchange != out.exchange:
            log.info("%s: ignoring unexpected response %d", sa.label, msg.message_id)
            return
        self.outstanding = None
        restart = False
        try:
            for t in out.tasks:
                st = t.process_i(sa, msg, now)
                if st is _RESTART:
                    restart = True
                elif st is _NEED_MORE:
                    if out.exchange == _IKE_AUTH:
                        # RFC 7296 2.16: another IKE_AUTH round (EAP), built by this task alone; the
                        # other tasks of the exchange process the final response
                        self.my_mid += 1
                        self._send_request(out.exchange, out.tasks, now, builders=[t])
                        return
                    self.queue.insert(0, t)
        except ProtocolError as e:
            self._task_failed(out, failure_of(e), now)
            return
        if restart:
            self._send_request(out.exchange, out.tasks, now)
            return
        self.my_mid += 1
        if self.held is not None and sa.established:
            held, self.held = self.held, None
            self._process_request(held, now)
            if sa.state is _DESTROYED:
                return
        self.initiate_next(now)

    def _task_failed(self, out: Outstanding, failure: Failure, now: float) -> None:
        sa = self.sa
        if self.failure is None:
            self.failure = failure
        for t in out.tasks:
            t.failed(sa, failure.reason, now)
        if out.exchange in (_IKE_SA_INIT, _IKE_AUTH) or not sa.established:
            log.warning("establishing IKE_SA %s failed: %s", sa.label, failure.reason)
            sa.engine.emit(ev.IkeSaFailed(sa.name, sa.unique_id, failure.reason, failure.notify,
                                          sa.is_original_initiator, failure.authentication))
            sa.destroy(failure.reason, now, failed=True)
            return
        log.warning("%s: %s exchange failed: %s", sa.label, name_of(ExchangeType, out.exchange), failure.reason)
        self.my_mid += 1
        self.initiate_next(now)

    def _process_request(self, msg: Message, now: float) -> None:
        sa = self.sa
        mid = msg.message_id
        if mid == self.peer_mid - 1 and self.cached_response and self.cached_response[0] == mid:
            self.resend_response(mid, now)
            return
        if mid != self.peer_mid:
            log.info("%s: ignoring request %d, expected %d", sa.label, mid, self.peer_mid)
            return
        out = self.outstanding
        if out is not None and out.exchange == _IKE_AUTH and sa.established_at is None \
                and msg.exchange not in (_IKE_SA_INIT, _IKE_AUTH):
            # RFC 7296 2.3: the responder may send its first request right after its IKE_AUTH response
            # (a mediation server its ME_CONNECT), and the network may deliver it first. It is processed
            # once that response has authenticated the peer (RFC 7296 1.2; same keys), not refused
            log.info("%s: %s request %d before the IKE_AUTH response: held until that is processed", sa.label,
                     _exchange(msg.exchange), mid)
            self.held = msg
            return
        resp = self.new_message(msg.exchange, True, mid)
        try:
            if msg.exchange == _IKE_AUTH:
                msg = with_first_request(sa, msg)  # RFC 7296 2.16: the final request of EAP
            tasks = self.responder_tasks(msg)  # may refuse, e.g. CHILD_SA_NOT_FOUND
            for t in tasks:
                t.process_r(sa, msg, now)
            for t in tasks:
                t.build_r(sa, resp, now)
        except CredentialsPending as e:
            log.info("%s: %s request %d waits for credentials (%s); its retransmission is answered", sa.label,
                     name_of(ExchangeType, msg.exchange), mid, e)
            return
        except ProtocolError as e:
            self._respond_error(msg, e, now)
            return
        self._send_response(resp, now)
        if any(t.closes_ike for t in tasks):
            sa.destroy("deleted by peer", now)
            return
        for t in tasks:
            t.responded(sa, now)
        self.initiate_next(now)  # queued work of ours (e.g. our own rekey) may start now

    def resend_response(self, mid: int, now: float) -> None:
        """A retransmitted request `mid` (RFC 7296 2.1): send our cached response again."""
        if self.cached_response is not None and self.cached_response[0] == mid:
            log.info("received retransmit of request with ID %d, retransmitting response", mid)
            self._send(self.cached_response[1], now)

    def _send_response(self, resp: Message, now: float) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("generating %s response %d %s", _exchange(resp.exchange),
                     resp.message_id, resp.summary())
        packets = self._encode(resp)
        if resp.exchange == _IKE_SA_INIT:
            self.sa.init_response = packets[0]
        self.cached_response = (resp.message_id, packets)
        self.peer_mid = resp.message_id + 1
        self._send(packets, now)

    def answered_init(self, packet: bytes, now: float) -> None:
        """The IKE_SA_INIT response written by core_ike/ike/fastinit.py for request 0: kept and sent as
        `_send_response` keeps and sends one (RFC 7296 2.1 response cache, 2.15 the signed octets)."""
        self.sa.init_response = packet
        self.answered(0, packet, now)

    def answered(self, mid: int, packet: bytes, now: float) -> None:
        """A response to request `mid` written outside the tasks (core_ike/ike/fastinit.py, fastauth.py):
        kept and sent as `_send_response` keeps and sends one (RFC 7296 2.1 response cache)."""
        self.cached_response = (mid, [packet])
        self.peer_mid = mid + 1
        self._send([packet], now)

    def _respond_error(self, req: Message, e: ProtocolError, now: float) -> None:
        sa = self.sa
        log.warning("%s: %s request %d failed: %s", sa.label, name_of(ExchangeType, req.exchange),
                    req.message_id, e)
        if e.notify is None:
            return
        resp = self.new_message(req.exchange, True, req.message_id)
        if resp.encrypted and sa.out_prot is None:
            return
        resp.payloads.append(error_payload(e) or NotifyPayload(e.notify, e.data))  # RFC 7296 2.16: EAP-Failure
        self._send_response(resp, now)
        if req.exchange in (_IKE_SA_INIT, _IKE_AUTH) and not sa.established:
            failure = failure_of(e)
            self.failure = self.failure or failure
            sa.engine.emit(ev.IkeSaFailed(sa.name, sa.unique_id, failure.reason, failure.notify,
                                          sa.is_original_initiator, failure.authentication))
            sa.destroy(failure.reason, now, failed=True)

    # ------------------------------------------------------------------ responder tasks
    def responder_tasks(self, msg: Message) -> list[Task]:
        """The tasks that answer request `msg` (strongSwan: task_manager_v2 process_request)."""
        sa = self.sa
        x = msg.exchange
        tasks: list[Task]
        if x not in (_IKE_SA_INIT, _IKE_AUTH) and sa.established_at is None:
            # RFC 7296 1.2: before IKE_AUTH has authenticated the peer nothing else is processed
            # (an ME_CONNECT, a CREATE_CHILD_SA or an INFORMATIONAL from an unauthenticated peer),
            # except the INFORMATIONAL of RFC 7296 2.21.2 ending an EAP exchange
            if (left := peer_left_eap(sa, msg)) is not None:
                return [left]
            raise ProtocolError(f"{name_of(ExchangeType, x)} request before the IKE_SA is authenticated",
                                NotifyType.INVALID_SYNTAX)
        if x == _IKE_SA_INIT:
            tasks = [IkeInit()]
        elif x == _IKE_AUTH:
            tasks = [IkeAuth()]
            if eap_round(sa, msg):  # RFC 7296 2.16: SA and TS are answered with the final AUTH
                return tasks
            if msg.get(_SA_PAYLOAD) is not None:
                tasks.append(ChildCreate(None, in_auth=True))
        elif x == _CREATE_CHILD_SA:
            tasks = [self._create_child_task(msg)]
        elif x == _INFORMATIONAL:
            tasks = [Informational()]
        else:
            tasks = []
        return tasks + sa.engine.extension_tasks(sa, x, False, msg)

    def _create_child_task(self, msg: Message) -> Task:
        sa = self.sa
        rekey = msg.notify(_REKEY_SA)
        sa_pl = msg.get(_SA_PAYLOAD)
        props: list[Proposal] = getattr(sa_pl, "proposals", [])
        is_ike = bool(props) and props[0].protocol == _PROTO_IKE
        old = None
        if rekey is not None and rekey.protocol in _PROTO_CHILD:
            old = sa.child_by_spi(int.from_bytes(rekey.spi, "big"), inbound=False)
            if old is None:  # RFC 7296 2.25.1
                raise ProtocolError("CHILD_SA to rekey not found", NotifyType.CHILD_SA_NOT_FOUND, rekey.spi)
        check_create_child(sa, msg, is_ike and old is None, old)  # RFC 7296 2.25 collisions
        if old is not None:
            return ChildCreate(None, in_auth=False, rekey=old)
        if is_ike:
            return IkeRekey()
        if sa.mediation:
            # draft-brunner-ikev2-mediation §3.1: mediation SAs carry no CHILD_SAs
            raise ProtocolError("no CHILD_SAs on a mediation connection", NotifyType.NO_ADDITIONAL_SAS)
        return ChildCreate(None, in_auth=False)

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        """The earliest of the SA's deadlines (runs after every datagram: a running minimum, no list)."""
        sa = self.sa
        state = sa.state
        if state is _DESTROYED:
            return None
        out = self.outstanding
        best = out.deadline if out is not None else None
        d = sa.rekey_at
        if d is not None and (best is None or d < best):
            best = d
        if sa.children:
            best = _children_deadline(sa, best)
        if state is _ESTABLISHED or state is _REKEYING:  # sa.established
            d = _liveness_deadline(sa, state is _ESTABLISHED and out is None)
        elif not sa.is_original_initiator and sa.established_at is None:  # half-open (never established)
            d = sa.created_at + sa.engine.half_open_timeout
        else:
            d = None
        if d is not None and (best is None or d < best):
            best = d
        if self.fragments is not None:
            d = self.fragments.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now: float) -> None:
        sa = self.sa
        if self.fragments is not None:
            self.fragments.expire(sa, now)
        out = self.outstanding
        if out is not None and now >= out.deadline:
            self._retransmit(out, now)
        if sa.state is _DESTROYED:
            return
        if not sa.established:  # half-open, or rekeyed or being deleted: only its exchange in flight
            if sa.established_at is None and not sa.is_original_initiator \
                    and now >= sa.created_at + sa.engine.half_open_timeout:
                log.info("%s: half-open IKE_SA timed out", sa.label)
                sa.destroy("half-open timeout", now, failed=True)
            return
        self.maintenance(now)
        if sa.nat_here and sa.config.keepalive_interval > 0 and now >= sa.last_out + sa.config.keepalive_interval:
            log.debug("sending keep alive to %s[%d]", *sa.remote)
            sa.engine.send(b"\xff", sa.local, sa.remote)  # RFC 3948 2.3
            sa.last_out = now

    def maintenance(self, now: float) -> None:
        """Periodic duties of an established SA: rekeying (RFC 7296 2.8), child expiry, liveness (1.4)."""
        sa = self.sa
        if sa.state is not _ESTABLISHED:
            return
        if sa.rekey_at is not None and now >= sa.rekey_at:
            sa.rekey_at = None
            log.info("rekeying IKE_SA %s", sa.label)
            self.queue_task(IkeRekey(), now)
        for c in list(sa.children.values()):
            if c.expire_at is not None and now >= c.expire_at:
                log.info("CHILD_SA %s{%d} expired", c.name, c.unique_id)
                c.expire_at = None
                self.queue_task(ChildDelete(child=c, reason="expired"), now)
            elif c.rekey_at is not None and now >= c.rekey_at and c.state is _INSTALLED:
                c.rekey_at = None
                c.set_state(_CHILD_REKEYING)
                log.info("rekeying CHILD_SA %s{%d}", c.name, c.unique_id)
                self.queue_task(ChildCreate(None, in_auth=False, rekey=c), now)
        if sa.config.dpd_delay > 0 and not sa.dpd_pending and now >= sa.last_in + sa.config.dpd_delay \
                and self.outstanding is None:
            self.queue_task(Dpd(), now)

    def _retransmit(self, out: Outstanding, now: float) -> None:
        sa = self.sa
        rt = sa.config.retransmit
        tries = rt.retransmits(out.prompt)
        if out.attempt >= tries:
            reason = f"giving up after {tries} retransmits"
            if out.exchange == _IKE_SA_INIT:
                reason = f"peer {sa.remote[0]} unreachable: no response to IKE_SA_INIT ({reason})"
            else:
                reason = f"peer not responding: {reason}"
            # an IKE_SA once established (rekeyed or being deleted too) ends as deleted, not as a failed setup
            setup = sa.established_at is None
            log.warning("%s %s: %s", "establishing IKE_SA" if setup else "IKE_SA", sa.label, reason)
            self.outstanding = None
            self.failure = self.failure or Failure(reason, timeout=True)
            for t in out.tasks:
                t.failed(sa, reason, now)
            if setup:
                sa.engine.emit(ev.IkeSaFailed(sa.name, sa.unique_id, reason, None, sa.is_original_initiator))
            sa.destroy(reason, now, failed=setup)
            return
        out.attempt += 1
        log.info("retransmit %d of request with message ID %d", out.attempt, out.mid)
        out.deadline = now + rt.delay(out.attempt, out.prompt)
        out.sent_at = now
        self._send(out.packets, now)

    def invalid_spi_answer(self, msg: Message, now: float) -> None:
        """The peer answered our request with INVALID_IKE_SPI (RFC 7296 2.21.4): it lost this IKE_SA
        (a restart). Unprotected, so only the answer to the request in flight counts (same SPIs and
        message ID); the SA is closed at once instead of after its retransmissions."""
        sa = self.sa
        out = self.outstanding
        if msg.notify(_INVALID_IKE_SPI) is None or out is None or out.mid != msg.message_id \
                or not sa.established:
            log.info("%s: ignoring unprotected INFORMATIONAL response %d", sa.label, msg.message_id)
            return
        log.info("%s: the peer answered INVALID_IKE_SPI, it has lost this IKE_SA", sa.label)
        sa.destroy("the peer lost this IKE_SA (INVALID_IKE_SPI: it restarted)", now)

    def close(self, reason: str, now: float) -> None:
        """The SA is destroyed (`reason`): nothing more goes out, the tasks of the request in flight and the
        queued ones are told (`Task.failed`, once: a task already told by its exchange's failure is no
        longer here; docs/architecture.md "Tasks when the IKE_SA ends"), fragments give back their memory
        share."""
        out, queued = self.outstanding, self.queue
        self.outstanding, self.queue = None, []
        for t in out.tasks if out is not None else ():
            t.failed(self.sa, reason, now)
        for t in queued:
            t.failed(self.sa, reason, now)
        if self.fragments is not None:
            self.fragments.close(self.sa, now)  # gives back its share of the engine-wide budget
            self.fragments = None
