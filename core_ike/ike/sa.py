"""One IKE_SA: state, keys, message IDs, retransmission, response cache and the task manager.

Sans-IO: the engine feeds decoded messages and `now`; the SA sends through `engine.send` and reports
through `engine.emit`. RFC 7296 2.1-2.4 govern message IDs, windows and retransmission.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..codec.message import Message, SkProtector, decrypt_message, encode_message
from ..codec.payloads import NotifyPayload, Proposal, SkfPayload
from ..codec.rules import check_rules
from ..constants import ExchangeType, HeaderFlag, NotifyType, name_of
from ..errors import DecodeError, IntegrityError, ProtocolError
from . import events as ev
from .config import IkeConfig
from .fragments import FragmentReceiver
from .identity import Identity
from .state import ChildSa, ChildState, IkeState

__all__ = ["ChildSa", "ChildState", "IkeSa", "IkeState", "Outstanding"]
from .task import Status, Task

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("core_ike.ike")
Addr = tuple[str, int]


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


class IkeSa:
    # a mediation server holds one IkeSa per registered peer: no per-instance __dict__ (about 1 KiB each)
    __slots__ = (
        "cached_response", "children", "config", "created_at", "dpd_pending", "engine", "established_at",
        "extension_data", "frag_supported", "fragments", "in_prot", "init_request", "init_response",
        "is_original_initiator", "last_in", "last_out", "local", "mediation", "my_id", "my_mid", "name",
        "nat_here", "nat_there", "ni", "nr", "out_prot", "outstanding", "peer_hash_algs", "peer_id",
        "peer_mid", "prf", "prf_id", "proposal", "proposal_text", "queue", "rekey_at",
        "rekeyed_from", "remote", "sk_d", "sk_pi", "sk_pr", "spi_i", "spi_r", "state", "timer_at", "unique_id",
        "init_key", "indexed",
    )

    def __init__(
        self, engine: Engine, config: IkeConfig, initiator: bool, unique_id: int,
        local: Addr, remote: Addr, now: float, spi_i: bytes | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.name = config.name
        self.unique_id = unique_id
        self.is_original_initiator = initiator
        self.spi_i = spi_i if spi_i is not None else os.urandom(8)
        self.spi_r = os.urandom(8) if not initiator else b"\x00" * 8
        self.local = local
        self.remote = remote
        self.state = IkeState.CREATED
        self.created_at = now
        self.established_at: float | None = None
        # negotiated
        self.proposal: Proposal | None = None
        self.proposal_text = ""
        self.prf: Any = None
        self.prf_id = 0
        self.sk_d = b""
        self.sk_pi = b""
        self.sk_pr = b""
        self.out_prot: SkProtector | None = None
        self.in_prot: SkProtector | None = None
        self.ni = b""
        self.nr = b""
        self.init_request = b""  # RealMessage1 as sent / received (RFC 7296 2.15)
        self.init_response = b""
        self.my_id: Identity | None = None
        self.peer_id: Identity | None = None
        self.nat_here = False
        self.nat_there = False
        self.frag_supported = False
        self.peer_hash_algs: frozenset[int] = frozenset()
        self.mediation = config.mediation
        self.extension_data: dict[str, Any] = {}  # per-extension state (e.g. ME)
        # message IDs and retransmission
        self.my_mid = 0
        self.peer_mid = 0
        self.outstanding: Outstanding | None = None
        self.queue: list[Task] = []
        self.cached_response: tuple[int, list[bytes]] | None = None
        self.fragments: FragmentReceiver | None = None  # created on the first SKF fragment (memory per SA)
        # children
        self.children: dict[int, ChildSa] = {}
        # timers
        self.rekey_at: float | None = None
        self.last_in = now
        self.last_out = now
        self.dpd_pending = False
        self.rekeyed_from: int | None = None
        self.timer_at: float | None = None  # the engine's heap entry for this SA
        self.init_key: tuple[bytes, Addr] | None = None  # responder: the engine's IKE_SA_INIT index key
        self.indexed: tuple[str, str] | None = None  # engine's established index: (config, peer)

    # ------------------------------------------------------------------ naming / state
    @property
    def label(self) -> str:
        return f"{self.name}[{self.unique_id}]"

    def set_state(self, new: IkeState) -> None:
        """The one mutation point of the IKE_SA state (design principle 6)."""
        if new is not self.state:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("IKE_SA %s state change: %s => %s", self.label, self.state.value, new.value)
            self.state = new

    @property
    def own_spi(self) -> bytes:
        """The SPI we chose: the engine's key for this SA (RFC 7296 2.6)."""
        return self.spi_i if self.is_original_initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state in (IkeState.ESTABLISHED, IkeState.REKEYING)

    @property
    def uses_marker(self) -> bool:
        return self.local[1] == self.engine.natt_port

    def float_ports(self) -> None:
        """RFC 7296 2.23: move IKE (and ESP) of this SA to the NAT-T port."""
        natt = self.engine.natt_port
        if self.local[1] == natt:
            return
        self.local = (self.local[0], natt)
        if self.remote[1] == self.engine.ike_port:
            self.remote = (self.remote[0], natt)

    # ------------------------------------------------------------------ sending
    def _send(self, packets: list[bytes], now: float) -> None:
        for p in packets:
            data = b"\x00\x00\x00\x00" + p if self.uses_marker else p
            log.info("sending packet: from %s[%d] to %s[%d] (%d bytes)",
                     self.local[0], self.local[1], self.remote[0], self.remote[1], len(data))
            self.engine.send(data, self.local, self.remote)
        self.last_out = now

    def _encode(self, msg: Message) -> list[bytes]:
        frag = self.config.fragment_size if (self.frag_supported and self.config.fragmentation) else None
        prot = self.out_prot if msg.encrypted else None
        packets = encode_message(msg, prot, frag)
        if len(packets) > 1:
            log.info("splitting IKE message into %d fragments of at most %d bytes (RFC 7383)",
                     len(packets), max(map(len, packets)))
        return packets

    def new_message(self, exchange: int, response: bool, mid: int) -> Message:
        flags = _HEADER_FLAGS[self.is_original_initiator][response]
        return Message(
            spi_i=self.spi_i, spi_r=self.spi_r, exchange=exchange, flags=flags, message_id=mid,
            payloads=[], encrypted=exchange != ExchangeType.IKE_SA_INIT,
        )

    # ------------------------------------------------------------------ initiating
    def queue_task(self, task: Task, now: float) -> None:
        self.queue.append(task)
        self.initiate_next(now)

    def initiate_next(self, now: float) -> None:
        """Start the next exchange from the queue if none is in flight (window 1)."""
        if self.outstanding is not None:
            if not self.outstanding.prompt and any(t.prompt for t in self.queue):
                self._hurry(self.outstanding)
            return
        if not self.queue or self.state is IkeState.DESTROYED:
            return
        if self.state is IkeState.DELETING and not getattr(self.queue[0], "is_delete", False):
            return
        exchange = self.queue[0].exchange
        tasks: list[Task] = []
        while self.queue and self.queue[0].exchange == exchange:
            tasks.append(self.queue.pop(0))
        tasks += self.engine.extension_tasks(self, exchange, True, None)
        self._send_request(exchange, tasks, now)

    def _send_request(self, exchange: int, tasks: list[Task], now: float) -> None:
        mid = self.my_mid
        msg = self.new_message(exchange, False, mid)
        try:
            for t in tasks:
                t.build_i(self, msg)
        except ProtocolError as e:  # e.g. our own credentials are missing: fail with the reason
            self._task_failed(Outstanding(mid, exchange, tasks, [], 0, now), str(e), now, None)
            return
        if exchange == ExchangeType.IKE_SA_INIT:
            self.set_state(IkeState.CONNECTING) if self.state is IkeState.CREATED else None
        packets = self._encode(msg)
        if exchange == ExchangeType.IKE_SA_INIT:
            self.init_request = packets[0]
        if log.isEnabledFor(logging.INFO):
            log.info("generating %s request %d %s", name_of(ExchangeType, exchange), mid, msg.summary())
        # RFC 7296 2.1 / RetransmitConfig: a prompt exchange, or one a prompt request waits behind
        prompt = any(t.prompt for t in tasks) or any(t.prompt for t in self.queue)
        self.outstanding = Outstanding(mid, exchange, tasks, packets, 0,
                                       now + self.config.retransmit.delay(0, prompt), prompt, now)
        self._send(packets, now)
        self.engine.reschedule(self)

    def _hurry(self, out: Outstanding) -> None:
        """A prompt request queued behind `out` (window 1): `out` continues on the early schedule, so a
        lost DPD or rekey in flight does not hold an `up` back for the main schedule's seconds."""
        out.prompt = True
        due = out.sent_at + self.config.retransmit.delay(out.attempt, True)
        if due < out.deadline:
            out.deadline = due
            self.engine.reschedule(self)

    # ------------------------------------------------------------------ receiving
    def receive(self, msg: Message, now: float) -> None:
        """A message for this SA (header already matched by SPI)."""
        try:
            full = self._unprotect(msg, now)
            if full is None:
                return
            check_rules(full)
        except IntegrityError as e:
            self.engine.log_limit.warning("integrity", now, "%s: dropping message %d: integrity check failed (%s)",
                                          self.label, msg.message_id, e)
            return
        except DecodeError as e:
            self.engine.log_limit.warning("malformed-message", now, "%s: dropping malformed message %d: %s",
                                          self.label, msg.message_id, e)
            return
        except ProtocolError as e:
            log.warning("%s: invalid message %d: %s", self.label, msg.message_id, e)
            if msg.is_request and e.notify is not None and msg.message_id == self.peer_mid:
                self._respond_error(msg, e, now)
            return
        self.last_in = now
        self.dpd_pending = False
        if log.isEnabledFor(logging.INFO):
            log.info("parsed %s %s %d %s", name_of(ExchangeType, full.exchange),
                     "response" if full.is_response else "request", full.message_id, full.summary())
        if full.is_response:
            self._process_response(full, now)
        else:
            self._process_request(full, now)

    def _unprotect(self, msg: Message, now: float) -> Message | None:
        if msg.sk is None:
            # RFC 7296 3.14: only IKE_SA_INIT (and ME checks, handled before SA lookup) are plaintext
            if msg.exchange != ExchangeType.IKE_SA_INIT:
                raise ProtocolError(f"unencrypted {name_of(ExchangeType, msg.exchange)} message", None)
            return msg
        if self.in_prot is None:
            raise DecodeError("encrypted message before keys exist")
        if isinstance(msg.sk, SkfPayload):
            if self.fragments is None:
                self.fragments = FragmentReceiver(self)
            return self.fragments.receive(self, msg, self.in_prot, now)  # RFC 7383 2.6
        return decrypt_message(msg, self.in_prot)

    def _process_response(self, msg: Message, now: float) -> None:
        out = self.outstanding
        if out is None or msg.message_id != out.mid or msg.exchange != out.exchange:
            log.info("%s: ignoring unexpected response %d", self.label, msg.message_id)
            return
        self.outstanding = None
        restart = False
        try:
            for t in out.tasks:
                st = t.process_i(self, msg, now)
                if st is Status.RESTART:
                    restart = True
                elif st is Status.NEED_MORE:
                    self.queue.insert(0, t)
        except ProtocolError as e:
            self._task_failed(out, str(e), now, e.notify)
            return
        if restart:
            self._send_request(out.exchange, out.tasks, now)
            return
        self.my_mid += 1
        self.initiate_next(now)

    def _task_failed(self, out: Outstanding, reason: str, now: float, notify: int | None) -> None:
        for t in out.tasks:
            t.failed(self, reason, now)
        if out.exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH) or not self.established:
            log.warning("establishing IKE_SA %s failed: %s", self.label, reason)
            self.engine.emit(ev.IkeSaFailed(self.name, self.unique_id, reason, notify, self.is_original_initiator))
            if self.in_prot is not None and notify is not None and notify != NotifyType.AUTHENTICATION_FAILED:
                pass
            self.destroy(reason, now, notify_peer=False, failed=True)
            return
        log.warning("%s: %s exchange failed: %s", self.label, name_of(ExchangeType, out.exchange), reason)
        self.my_mid += 1
        self.initiate_next(now)

    def _process_request(self, msg: Message, now: float) -> None:
        mid = msg.message_id
        if mid == self.peer_mid - 1 and self.cached_response and self.cached_response[0] == mid:
            self.resend_response(mid, now)
            return
        if mid != self.peer_mid:
            log.info("%s: ignoring request %d, expected %d", self.label, mid, self.peer_mid)
            return
        resp = self.new_message(msg.exchange, True, mid)
        try:
            tasks = self.engine.responder_tasks(self, msg)  # may refuse, e.g. CHILD_SA_NOT_FOUND
            for t in tasks:
                t.process_r(self, msg, now)
            for t in tasks:
                t.build_r(self, resp)
        except ProtocolError as e:
            self._respond_error(msg, e, now)
            return
        self._send_response(resp, now)
        if any(getattr(t, "closes_ike", False) for t in tasks):
            self.destroy("deleted by peer", now)
            return
        for t in tasks:
            t.responded(self, now)
        self.after_response(now)

    def resend_response(self, mid: int, now: float) -> None:
        """A retransmitted request `mid` (RFC 7296 2.1): send our cached response again."""
        if self.cached_response is not None and self.cached_response[0] == mid:
            log.info("received retransmit of request with ID %d, retransmitting response", mid)
            self._send(self.cached_response[1], now)

    def _send_response(self, resp: Message, now: float) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("generating %s response %d %s", name_of(ExchangeType, resp.exchange),
                     resp.message_id, resp.summary())
        packets = self._encode(resp)
        if resp.exchange == ExchangeType.IKE_SA_INIT:
            self.init_response = packets[0]
        self.cached_response = (resp.message_id, packets)
        self.peer_mid = resp.message_id + 1
        self._send(packets, now)

    def _respond_error(self, req: Message, e: ProtocolError, now: float) -> None:
        log.warning("%s: %s request %d failed: %s", self.label, name_of(ExchangeType, req.exchange),
                    req.message_id, e)
        if e.notify is None:
            return
        resp = self.new_message(req.exchange, True, req.message_id)
        if resp.encrypted and self.out_prot is None:
            return
        resp.payloads.append(NotifyPayload(e.notify, e.data))
        self._send_response(resp, now)
        if req.exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH) and not self.established:
            self.engine.emit(ev.IkeSaFailed(self.name, self.unique_id, str(e), int(e.notify),
                                             self.is_original_initiator))
            self.destroy(str(e), now, notify_peer=False, failed=True)

    def after_response(self, now: float) -> None:
        """Hook after a request was answered: start queued work (e.g. our own rekey)."""
        self.initiate_next(now)

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        ds: list[float] = []
        if self.outstanding is not None:
            ds.append(self.outstanding.deadline)
        if self.state is IkeState.DESTROYED:
            return None
        if self.rekey_at is not None:
            ds.append(self.rekey_at)
        for c in self.children.values():
            if c.rekey_at is not None:
                ds.append(c.rekey_at)
            if c.expire_at is not None:
                ds.append(c.expire_at)
        if self.established:
            # a request in flight is the liveness check (its retransmissions time out); the DPD is due
            # only when engine.maintenance can send it (ESTABLISHED, nothing in flight), else this
            # deadline would stay in the past and the timer loop would spin
            if self.config.dpd_delay > 0 and not self.dpd_pending and self.outstanding is None \
                    and self.state is IkeState.ESTABLISHED:
                ds.append(self.last_in + self.config.dpd_delay)
            if self.nat_here and self.config.keepalive_interval > 0:
                ds.append(self.last_out + self.config.keepalive_interval)
        elif not self.is_original_initiator:
            ds.append(self.created_at + self.engine.half_open_timeout)
        nxt = self.fragments.next_deadline() if self.fragments is not None else None
        if nxt is not None:
            ds.append(nxt)
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> None:
        if self.fragments is not None:
            self.fragments.expire(self, now)
        out = self.outstanding
        if out is not None and now >= out.deadline:
            self._retransmit(out, now)
        if self.state is IkeState.DESTROYED:
            return
        if not self.established:
            if not self.is_original_initiator and now >= self.created_at + self.engine.half_open_timeout:
                log.info("%s: half-open IKE_SA timed out", self.label)
                self.destroy("half-open timeout", now, notify_peer=False, failed=True)
            return
        self.engine.maintenance(self, now)
        if self.nat_here and self.config.keepalive_interval > 0 and \
                now >= self.last_out + self.config.keepalive_interval:
            log.debug("sending keep alive to %s[%d]", *self.remote)
            self.engine.send(b"\xff", self.local, self.remote)
            self.last_out = now

    def _retransmit(self, out: Outstanding, now: float) -> None:
        rt = self.config.retransmit
        tries = rt.retransmits(out.prompt)
        if out.attempt >= tries:
            reason = f"giving up after {tries} retransmits"
            if out.exchange == ExchangeType.IKE_SA_INIT:
                reason = f"peer {self.remote[0]} unreachable: no response to IKE_SA_INIT ({reason})"
            else:
                reason = f"peer not responding: {reason}"
            log.warning("%s %s: %s", "IKE_SA" if self.established else "establishing IKE_SA", self.label, reason)
            self.outstanding = None
            for t in out.tasks:
                t.failed(self, reason, now)
            if not self.established:
                self.engine.emit(ev.IkeSaFailed(self.name, self.unique_id, reason, None,
                                                 self.is_original_initiator))
            self.destroy(reason, now, notify_peer=False, failed=not self.established)
            return
        out.attempt += 1
        log.info("retransmit %d of request with message ID %d", out.attempt, out.mid)
        out.deadline = now + rt.delay(out.attempt, out.prompt)
        out.sent_at = now
        self._send(out.packets, now)

    # ------------------------------------------------------------------ teardown
    def destroy(self, reason: str, now: float, notify_peer: bool = False, failed: bool = False) -> None:
        if self.state is IkeState.DESTROYED:
            return
        for child in list(self.children.values()):
            self.remove_child(child, reason)
        if self.established_at is not None and not failed:
            self.engine.emit(ev.IkeSaDeleted(self.name, self.unique_id, reason))
        self.set_state(IkeState.DESTROYED)
        self.outstanding = None
        self.queue.clear()
        if self.fragments is not None:
            self.fragments.close(self, now)  # gives back its share of the engine-wide budget
            self.fragments = None
        self.engine.forget(self)

    def remove_child(self, child: ChildSa, reason: str) -> None:
        if self.children.pop(child.unique_id, None) is None:
            return
        if child.state.live:
            log.info("CHILD_SA %s{%d} closed (%s)", child.name, child.unique_id, reason)
            self.engine.emit(ev.ChildSaDeleted(self.name, child.name, child.unique_id, child.spi_in,
                                               child.spi_out, reason))
        child.set_state(ChildState.DELETED)

    def child_by_spi(self, spi: int, inbound: bool) -> ChildSa | None:
        for c in self.children.values():
            if (c.spi_in if inbound else c.spi_out) == spi:
                return c
        return None
