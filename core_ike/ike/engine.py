"""The sans-IO IKE engine: demultiplexes datagrams to IKE_SAs, answers new IKE_SA_INITs (with
stateless COOKIEs under load, RFC 7296 2.6), runs timers and collects datagrams and events.

Model: aioquic's QuicConnection. The adapter calls `receive(data, local, remote, now)`,
`handle_timer(now)` at `get_timer()`, and drains `datagrams_to_send()` and `next_event()`.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..codec.message import Message, ReassemblyBudget, decode_message
from ..codec.payloads import Proposal, TrafficSelector
from ..constants import (
    IKE_PORT,
    NATT_PORT,
    NON_ESP_MARKER,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from ..crypto.dh import KeyExchange, KeyPool
from ..crypto.proposals import parse_proposals
from ..errors import CredentialsPending, DecodeError, LocalUsageError, ProtocolError
from ..esp.algorithms import EspTransforms
from ..logutil import LogLimiter
from ..rng import Rng
from ..sysrng import SystemRng
from . import events as ev
from . import fastauth, fastinit
from .answers import TokenBucket, error_response, header_error_request, invalid_spi_response
from .config import IkeConfig, addr_matches
from .context import IkeSaView, Task, Vip
from .cookies import CookieSecrets
from .creds import Credentials
from .extension import Extension
from .identity import Identity
from .prefilter import InitIndex, Prefilter
from .sa import IkeSa
from .state import ChildState, IkeState
from .tasks.child_create import ChildCreate
from .tasks.ike_auth import IkeAuth
from .tasks.ike_init import IkeInit, derive_pending
from .tasks.ike_rekey import IkeRekey
from .tasks.informational import ChildDelete, Dpd, IkeDelete
from .uniqueness import EstablishedIndex
from .vips import VipPool

log = logging.getLogger("core_ike.ike")

Addr = tuple[str, int]
_IKE_SA_INIT = int(ExchangeType.IKE_SA_INIT)
_IKE_AUTH = int(ExchangeType.IKE_AUTH)
# bound once: Python 3.11 reads a member off its Enum class by a hook (about 1 us a read)
_DESTROYED, _DELETING = IkeState.DESTROYED, IkeState.DELETING


@dataclass
class EngineConfig:
    ike_port: int = IKE_PORT
    natt_port: int = NATT_PORT
    cookie_threshold: int = 30  # half-open SAs before COOKIEs are demanded (strongSwan's default)
    cookie_threshold_ip: int = 3
    force_cookies: bool = False
    cookie_secret_lifetime: float = 600.0  # RFC 7296 2.6: rotate the cookie secret this often
    half_open_timeout: float = 30.0
    max_half_open: int = 10000  # hard cap on what unauthenticated peers can make us allocate
    # RFC 7383 reassembly memory (accounted octets of incomplete messages): per IKE_SA and engine-wide
    frag_max_per_sa: int = 2 * 1024 * 1024
    frag_max_total: int = 64 * 1024 * 1024
    invalid_spi_rate: float = 20.0  # INVALID_IKE_SPI answers per second at most (RFC 7296 2.21.4)
    init_rate_ip: float = 50.0  # while COOKIEs are demanded: IKE_SA_INIT requests per second per source (0: any)
    # a worker of several (docs/operations.md, "Workers"): the first octet of every SPI we choose (IKE
    # and ESP), by which the kernel steers an IKE_SA's datagrams to this worker (like strongSwan's
    # charon.spi_label); unique IDs count from spi_tag + 1 in steps of unique_id_stride
    spi_tag: int | None = None
    unique_id_stride: int = 1
    # the cookie secret's seed shared by the workers: the secret of period v is derived from it, so any
    # worker verifies another's COOKIE, and all rotate together (RFC 7296 2.6); None: a random secret
    cookie_seed: bytes | None = None


class Engine:
    """Implements context.TaskContext, the part of it tasks may use."""

    def __init__(self, configs: list[IkeConfig], creds: Credentials, config: EngineConfig | None = None,
                 route_source: Callable[[str], str] | None = None, *, rng: Rng | None = None) -> None:
        self.configs = configs
        self.creds = creds
        # the one random source (core_ike/rng.py): tests pass a SeededRng; default the OS CSPRNG
        self.rng: Rng = rng if rng is not None else SystemRng()
        self.cfg = config or EngineConfig()
        self.ike_port = self.cfg.ike_port
        self.natt_port = self.cfg.natt_port
        # more local ports that are NAT-T sockets (RFC 3948 §2.2 non-ESP marker, no floating): the extra
        # sockets of many-port probing (core_ike/me/birthday.py), added and removed by their adapter
        self.natt_extra: set[int] = set()
        self.half_open_timeout = self.cfg.half_open_timeout
        self.route_source = route_source
        self.extensions: list[Extension] = []
        self.now = 0.0
        # wall-clock (UNIX) time minus `now`, an input of the adapter (set_wall_clock); None: not given,
        # and peer certificates are refused (their validity cannot be checked, RFC 5280 6.1.3 (a)(2))
        self.wall_offset: float | None = None
        self.sas: dict[bytes, IkeSa] = {}  # by our own SPI
        self.init_index: InitIndex[IkeSa] = InitIndex()  # responder: (SPIi, peer) of IKE_SA_INIT
        # indexes so nothing scans every SA (a mediation server holds 100k of them)
        self.by_uid: dict[int, IkeSa] = {}
        self.established_index = EstablishedIndex()
        self._out: list[tuple[bytes, Addr, Addr]] = []
        self._events: deque[Any] = deque()
        self._timers: list[tuple[float, int, IkeSa]] = []
        self._seq = itertools.count()
        self._ike_ids = itertools.count(1 + (self.cfg.spi_tag or 0), self.cfg.unique_id_stride)
        self._child_ids = itertools.count(1 + (self.cfg.spi_tag or 0), self.cfg.unique_id_stride)
        self._reqids = itertools.count(1)
        self._spis: set[int] = set()
        self.spi_allocator: Callable[[], int] | None = None
        self.cookies = CookieSecrets(self.cfg.cookie_secret_lifetime, self.cfg.cookie_seed, self.rng)
        self._half_open = 0
        # what `ikectl stats` and the metrics show: drops by reason, cookies, refusals
        self.counters: Counter[str] = Counter()
        # incomplete fragmented messages of all IKE_SAs share this (core_ike/ike/fragments.py)
        self.frag_budget = ReassemblyBudget(self.cfg.frag_max_total)
        self.accepting = True  # False while the daemon shuts down: no new IKE_SAs from peers
        self.log_limit = LogLimiter(log)  # lines remote parties can trigger at will
        self.invalid_spi_bucket = TokenBucket(self.cfg.invalid_spi_rate)  # INVALID_IKE_SPI answers
        self.prefilter = Prefilter(self)  # decisions on raw datagrams, COOKIEs (core_ike/ike/prefilter.py)
        self._half_open_by_ip: dict[str, int] = {}
        self.vips = VipPool()
        self.key_pool = KeyPool()  # the responder's KEr key pairs (RFC 7296 1.2), made a few at a time
        self._pending_keys: deque[IkeSa] = deque()  # responders whose keys are derived after their response (prepare)
        # a configuration source that looks connections up per attempt (docs/gateway.md): called when no
        # config matches an IKE_SA_INIT (peer None) or an IKE_AUTH (the peer's identity); it raises
        # CredentialsPending while it looks, and the peer's retransmission (RFC 7296 2.1) is answered
        self.config_miss: Callable[[Identity | None], None] | None = None

    # ================================================================== adapter API
    def receive(self, data: bytes, local: Addr, remote: Addr, now: float) -> None:
        """One IKE message (non-ESP marker already stripped) that arrived on `local` from `remote`."""
        self.now = now
        if type(data) is not bytes:
            data = bytes(data)  # a memoryview or bytearray from the adapter
        if self.prefilter.check(data, local, remote, now):
            return
        if self._pending_keys and data[18] != _IKE_SA_INIT:
            self.derive_keys()  # before any IKE_SA processes a message that may need them
        if (data[18] == _IKE_SA_INIT and fastinit.answer(self, data, local, remote, now)) or \
                (data[18] == _IKE_AUTH and fastauth.answer(self, data, local, remote, now)):
            if self.established_index.deferred:  # `_run_deferred`'s test, without its frame per datagram
                self._run_deferred(now)
            return
        try:
            msg = decode_message(data)
        except DecodeError as e:
            self.counters["drop-malformed"] += 1
            self.log_limit.warning("malformed-packet", now, "dropping malformed packet from %s[%d] (%d bytes): %s",
                                   remote[0], remote[1], len(data), e)
            return
        except ProtocolError as e:
            self.counters["drop-invalid"] += 1
            self.log_limit.warning("invalid-packet", now, "dropping invalid packet from %s[%d]: %s", remote[0],
                                   remote[1], e)
            self._answer_plain_error(data, e, local, remote)
            return
        if log.isEnabledFor(logging.INFO):  # the arguments cost more than the disabled call
            log.info("received packet: from %s[%d] to %s[%d] (%d bytes)", remote[0], remote[1],
                     local[0], local[1], len(data))
        self._dispatch(msg, local, remote, now)
        if self.established_index.deferred:  # as above
            self._run_deferred(now)

    def prepare(self) -> None:
        """Work no datagram waits for: the keys of IKE_SAs just answered (`derive_keys`), the next KEr key
        pairs (KeyPool.refill). The adapter calls it after sending what `receive` and `handle_timer` made,
        so no IKE_SA_INIT response waits for either (RFC 7296 1.2); without it `receive` (but for an
        IKE_SA_INIT request) and `handle_timer` derive first (docs/architecture.md)."""
        if self._pending_keys:
            self.derive_keys()
        self.key_pool.refill(self.rng)

    def derive_keys(self) -> None:
        """The keys of the responder IKE_SAs answered without them (tasks/ike_init.py defer_keys). One
        whose keys cannot be made (a KE value check_public let through) is deleted, half-open."""
        pending = self._pending_keys
        while pending:  # one at a time: whatever happens to one, the others stay queued
            sa = pending.popleft()
            if sa.pending_keys is None or sa.state is _DESTROYED:
                continue
            try:
                derive_pending(sa)
            except (ProtocolError, LocalUsageError) as e:  # a rejected KE value; keys our suite cannot make
                self.counters["drop-invalid-ke"] += 1
                self.log_limit.warning("invalid-ke", self.now, "%s: %s, deleting the half-open IKE_SA", sa.label, e)
                sa.destroy(f"no keys: {e}", self.now, failed=True)

    def keys_pending(self, sa: IkeSa) -> None:  # for `derive_keys` (tasks/ike_init.py defer_keys)
        self._pending_keys.append(sa)

    def set_wall_clock(self, wall: float, now: float) -> None:
        """The wall-clock time (UNIX seconds) at monotonic `now`: certificates are checked against
        `now + (wall - now at this call)` (RFC 5280 4.1.2.5). The adapter refreshes it so that a step
        of the system clock reaches the engine (core_ike/daemon/runtime.py)."""
        self.wall_offset = wall - now

    def wall_time(self) -> float | None:
        """Wall-clock time (UNIX seconds) at `self.now`, None when the adapter gave none."""
        return None if self.wall_offset is None else self.now + self.wall_offset

    def datagrams_to_send(self) -> list[tuple[bytes, Addr, Addr]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Any:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest deadline (asked after every datagram: a running minimum, no temporaries)."""
        timers, best = self._timers, None
        while timers:
            t, _, sa = timers[0]
            if sa.state is not _DESTROYED and t == sa.timer_at:
                best = t  # the earliest live entry
                break
            heapq.heappop(timers)  # a destroyed SA's, or one its later `_schedule` superseded
        for x in self.extensions:
            d = x.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now: float) -> None:
        self.now = now
        if self._pending_keys:
            self.derive_keys()
        while self._timers and self._timers[0][0] <= now:
            t, _, sa = heapq.heappop(self._timers)
            if sa.state is _DESTROYED or t != sa.timer_at:
                continue  # stale entry
            sa.timer_at = None
            d = sa.next_deadline()
            if d is not None and d <= now:
                sa.handle_timer(now)
            self._schedule(sa)
        for x in self.extensions:
            d = x.next_deadline()
            if d is not None and d <= now:
                x.handle_timer(now)

    # ================================================================== control API
    def initiate(self, name: str, child: str | None = None, now: float | None = None,
                 remote: Addr | None = None, local: Addr | None = None,
                 packet: tuple[TrafficSelector, TrafficSelector] | None = None,
                 key_exchange: KeyExchange | None = None) -> IkeSa:
        """Bring up connection `name` (and CHILD_SA `child`, default: all its children). `packet`: the
        (source, destination) selectors of the packet that triggered it, offered first (RFC 7296 2.9).
        `key_exchange`: a fresh key pair made ahead for the IKE_SA_INIT's KEi (used once, for this IKE_SA)."""
        if now is not None:
            self.now = now
        cfg = self.config(name)
        children = [cfg.child(child)] if child else list(cfg.children)
        for sa in (self.established_index.of_config(cfg.name) if remote is None else ()):
            if sa.config is cfg and sa.established and sa.is_original_initiator:
                for c in children:
                    sa.queue_task(ChildCreate(c, in_auth=False, packet=packet), self.now)
                return sa
        sa = self.new_initiator(cfg, remote, local)
        sa.queue.append(IkeInit(key_exchange))
        sa.queue.append(IkeAuth())
        for i, c in enumerate(children):
            sa.queue.append(ChildCreate(c, in_auth=(i == 0), packet=packet))
        log.info("initiating IKE_SA %s to %s", sa.label, sa.remote[0])
        sa.initiate_next(self.now)
        return sa

    def new_initiator(self, cfg: IkeConfig, remote: Addr | None = None, local: Addr | None = None) -> IkeSa:
        if remote is None:
            host = next((a for a in cfg.remote_addrs if a != "%any"), None)
            if host is None:
                raise LocalUsageError(f"connection {cfg.name!r} has no remote address to initiate to")
            remote = (host, cfg.remote_port)
        if local is None:
            # RFC 3948 / RFC 7296 2.23: IKE_SA_INIT goes 500 -> 500 even with forced encapsulation
            # (the SA floats afterwards); a peer on a non-500 port is reached from the NAT-T socket,
            # with the non-ESP marker
            port = cfg.local_port if remote[1] == self.ike_port else self.natt_port
            local = (self._source_for(cfg, remote[0]), port)
        sa = IkeSa(self, cfg, True, next(self._ike_ids), local, remote, self.now)
        while sa.spi_i in self.sas:
            sa.spi_i = self.new_spi()
        self._add(sa)
        return sa

    def _source_for(self, cfg: IkeConfig, remote_ip: str) -> str:
        for a in cfg.local_addrs:
            if a not in ("%any", "%any4", "%any6"):
                return a
        if self.route_source is not None:
            return self.route_source(remote_ip)
        return "0.0.0.0" if ipaddress.ip_address(remote_ip).version == 4 else "::"

    def terminate(self, sa: IkeSa, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        if sa.established:
            sa.queue_task(IkeDelete("terminated by user"), self.now)
        else:
            sa.destroy("terminated by user", self.now)  # no failure: its CHILD_SAs asked for say why

    def terminate_child(self, sa: IkeSa, unique_id: int, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        c = sa.children.get(unique_id)
        if c is not None:
            sa.queue_task(ChildDelete(child=c, reason="terminated by user"), self.now)

    def rekey_ike(self, sa: IkeSa, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        sa.queue_task(IkeRekey(), self.now)

    def rekey_child(self, sa: IkeSa, unique_id: int, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        c = sa.children.get(unique_id)
        if c is not None and c.state is ChildState.INSTALLED:
            c.set_state(ChildState.REKEYING)
            sa.queue_task(ChildCreate(None, in_auth=False, rekey=c), self.now)

    @property
    def half_open(self) -> int:
        return self._half_open

    def config(self, name: str) -> IkeConfig:
        for c in self.configs:
            if c.name == name:
                return c
        raise LocalUsageError(f"no connection named {name!r}")

    def find_sa(self, unique_id: int) -> IkeSa | None:
        return self.by_uid.get(unique_id)

    def ike_sas(self) -> list[IkeSa]:
        return [self.by_uid[k] for k in sorted(self.by_uid)]

    def _add(self, sa: IkeSa) -> None:
        self.sas[sa.own_spi] = sa
        self.by_uid[sa.unique_id] = sa

    # ================================================================== used by SAs and tasks
    def send(self, data: bytes, local: Addr, remote: Addr) -> None:
        self._out.append((data, local, remote))

    def emit(self, event: object) -> None:
        self._events.append(event)

    def is_natt(self, port: int) -> bool:
        """Does IKE on this local port carry the non-ESP marker (RFC 3948 §2.2)?"""
        return port == self.natt_port or port in self.natt_extra

    def new_spi(self) -> bytes:
        """An IKE SPI of ours (RFC 7296 3.1), its first octet the worker's `spi_tag` when set."""
        spi = self.rng.bytes(8)
        return spi if self.cfg.spi_tag is None else bytes((self.cfg.spi_tag,)) + spi[1:]

    def alloc_spi(self) -> int:
        if self.spi_allocator is not None:
            return self.spi_allocator()
        while True:
            spi = int.from_bytes(self.rng.bytes(4), "big")
            if self.cfg.spi_tag is not None:
                spi = self.cfg.spi_tag << 24 | spi & 0xFFFFFF
            if spi >= 256 and spi not in self._spis:  # RFC 4303 2.1: 1..255 reserved
                self._spis.add(spi)
                return spi

    def next_child_id(self) -> int:
        return next(self._child_ids)

    def next_reqid(self) -> int:
        return next(self._reqids)

    def extension_tasks(self, sa: IkeSa, exchange: int, initiator: bool, msg: Message | None) -> list[Task]:
        out: list[Task] = []
        for x in self.extensions:
            out += x.tasks(sa, exchange, initiator, msg)
        return out

    # ------------------------------------------------------------------ context.TaskContext
    def ike_proposals_for(self, sa: IkeSaView) -> list[Proposal]:
        out: list[Proposal] = []
        for text in self.ike_proposal_texts(sa):
            for p in parse_proposals(text, ProtocolId.IKE):
                if p not in out:
                    out.append(p)
        return out

    def key_exchange(self, group: int) -> KeyExchange:
        return self.key_pool.take(group, self.rng)

    def ike_proposal_texts(self, sa: IkeSaView) -> tuple[str, ...]:
        return tuple(dict.fromkeys([c.proposals for c in self._configs_for(sa)]))

    def wants_peer_certs(self, sa: IkeSaView) -> bool:
        return any(c.remote.auth == "pubkey" and c.send_certreq for c in self._configs_for(sa))

    def _configs_for(self, sa: IkeSaView) -> list[IkeConfig]:
        return [c for c in self.configs if addr_matches(c.local_addrs, sa.local[0])
                and addr_matches(c.remote_addrs, sa.remote[0])]

    def select_peer_config(self, view: IkeSaView, peer: Identity, wanted: Identity | None,
                           msg: Message) -> IkeConfig | None:
        """RFC 7296 2.15 / strongSwan peer_cfg lookup: addresses, both identities, auth method."""
        sa = _own(view)
        auth = msg.get(PayloadType.AUTH)
        method = getattr(auth, "method", 0)
        best: tuple[int, IkeConfig] | None = None
        for c in self._configs_for(sa):
            if not c.remote.id.matches(peer):
                continue
            if wanted is not None and not c.local.id.is_any and c.local.id != wanted:
                continue
            if auth is None:
                if not c.remote.auth.startswith("eap-"):  # RFC 7296 2.16: no AUTH asks for EAP
                    continue
            elif (method == 2) != (c.remote.auth == "psk") or c.remote.auth.startswith("eap-"):
                continue
            scores = [x.config_score(c, sa) for x in self.extensions]
            if any(x < 0 for x in scores):
                continue
            score = (2 if not c.remote.id.is_any else 1) + sum(scores)
            if best is None or score > best[0]:
                best = (score, c)
        if best is None and self.config_miss is not None:
            self.config_miss(peer)
        return best[1] if best else None

    def is_first_contact(self, sa: IkeSaView) -> bool:
        return self.established_index.is_first_contact(_own(sa))

    def assign_vip(self, sa: IkeSaView) -> Vip | None:
        return self.vips.lease(sa.config.pools, sa.peer_id)  # a persistent pool binds to the identity

    def esp_transforms(self) -> EspTransforms | None:
        """What the data plane can install, declared by an engine extension (the daemon's data-plane glue)."""
        for x in self.extensions:
            t = getattr(x, "esp_transforms", None)
            if isinstance(t, EspTransforms):
                return t
        return None

    def spi_learned(self, sa: IkeSaView) -> None:
        self._schedule(_own(sa))

    def ike_established(self, view: IkeSaView, now: float) -> None:
        sa = _own(view)
        if not sa.is_original_initiator:
            self._half_open_done(sa)
        cfg = sa.config
        if cfg.rekey_time > 0 and sa.rekey_at is None:
            sa.rekey_at = now + (cfg.rekey_time if sa.is_original_initiator else cfg.rekey_time * 1.05)
        for other in self.established_index.established(sa, now):
            self.terminate(other, now)
        for x in self.extensions:
            x.on_established(sa, now)

    def _run_deferred(self, now: float) -> None:
        deferred = self.established_index.deferred
        while deferred:
            sa = deferred.pop(0)
            if sa.established and sa.state is not _DELETING:
                self.terminate(sa, now)

    def create_rekeyed_sa(self, view: IkeSaView, initiator: bool, spi_i: bytes, spi_r: bytes, now: float) -> IkeSa:
        old = _own(view)
        new = IkeSa(self, old.config, initiator, next(self._ike_ids), old.local, old.remote, now, spi_i)
        new.spi_r = spi_r
        new.my_id, new.peer_id = old.my_id, old.peer_id
        new.nat_here, new.nat_there = old.nat_here, old.nat_there
        new.frag_supported, new.peer_hash_algs = old.frag_supported, old.peer_hash_algs
        new.mediation = old.mediation
        # RFC 7296 2.18: the successor keeps the configuration payloads' outcome; extensions decide theirs
        new.vip, new.peer_vip = old.vip, old.peer_vip
        if new.peer_vip is not None:
            self.vips.hold(new.peer_vip)
        new.inherit_extensions(old)
        self._add(new)
        self._schedule(new)
        return new

    def forget(self, sa: IkeSa) -> None:
        if sa.peer_vip is not None:
            self.vips.release(sa.peer_vip, sa.label)  # back to the pool unless a rekeyed successor holds it
        if self.sas.get(sa.own_spi) is sa:
            del self.sas[sa.own_spi]
        if self.sas.get(sa.spi_i) is sa:  # an initiator before its SPIr was known
            del self.sas[sa.spi_i]
        if self.by_uid.get(sa.unique_id) is sa:
            del self.by_uid[sa.unique_id]
        if sa.init_key is not None and self.init_index.get(sa.init_key) is sa:
            del self.init_index[sa.init_key]
        self.established_index.forget(sa)
        if not sa.is_original_initiator and sa.established_at is None:
            self._half_open_done(sa)
        for x in self.extensions:
            x.on_destroyed(sa, self.now)

    # ================================================================== internals
    def _schedule(self, sa: IkeSa) -> None:
        """Keep at most one live heap entry per SA: push only when the deadline moved earlier."""
        d = sa.tm.next_deadline()  # IkeSa.next_deadline's, without its frame (after every datagram)
        if d is None or (sa.timer_at is not None and sa.timer_at <= d):
            return
        sa.timer_at = d
        heapq.heappush(self._timers, (d, next(self._seq), sa))

    reschedule = _schedule

    def _dispatch(self, msg: Message, local: Addr, remote: Addr, now: float) -> None:
        if msg.spi_i == b"\x00" * 8 and msg.spi_r == b"\x00" * 8:
            if not any(x.handle_plain(msg, local, remote, now) for x in self.extensions):
                log.info("dropping message with zero SPIs from %s[%d]", *remote)
            return
        if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.is_response and msg.spi_r == b"\x00" * 8:
            self._init_request(msg, local, remote, now)
            return
        # RFC 7296 2.6: the SPI that we chose is SPIi for SAs we initiated, SPIr otherwise
        from_initiator = msg.is_initiator
        ours = msg.spi_r if from_initiator else msg.spi_i
        sa = self.sas.get(ours)
        if sa is None and msg.is_response and msg.exchange == ExchangeType.IKE_SA_INIT:
            sa = self.sas.get(msg.spi_i)
        if sa is None:
            log.info("ignoring %s for unknown IKE_SA %s_i %s_r", "response" if msg.is_response else "request",
                     msg.spi_i.hex(), msg.spi_r.hex())
            if not msg.is_response:
                self._answer_invalid_spi(msg, local, remote, now)
            return
        if sa.is_original_initiator == from_initiator:
            log.info("ignoring message with wrong initiator flag for %s", sa.label)
            return
        if msg.is_response and msg.sk is None and msg.exchange == ExchangeType.INFORMATIONAL:
            sa.tm.invalid_spi_answer(msg, now)
            return
        old = (sa.local, sa.remote, sa.last_in)
        moved = self._update_addresses(sa, local, remote) and sa.established
        if moved:
            sa.last_in = float("-inf")  # set again by sa.receive once the message is authenticated
        sa.receive(msg, now)
        if sa.state is _DESTROYED:
            return
        if moved and sa.last_in == float("-inf"):
            sa.local, sa.remote, sa.last_in = old  # not authenticated: the move is not taken
        elif moved:
            log.info("%s: the peer moved to %s[%d] (RFC 7296 2.23)", sa.label, *sa.remote)
            self.emit(ev.PeerAddressChanged(sa.unique_id, sa.remote, sa.local))
        self._schedule(sa)

    def _update_addresses(self, sa: IkeSa, local: Addr, remote: Addr) -> bool:
        """Port floating and RFC 7296 2.23 dynamic updates. Applied before decryption so that a response
        goes back where the request came from (RFC 7296 2.11); `_dispatch` undoes it when the message
        fails its integrity check, and reports a move only once the message was authenticated."""
        moved = False
        if sa.local != local:
            sa.local, moved = local, True
        if sa.remote != remote and (sa.nat_there or sa.remote[0] == remote[0]):
            sa.remote, moved = remote, True
        return moved

    def peer_mapping(self, unique_id: int, remote: Addr, now: float) -> None:
        """The data plane saw authenticated ESP-in-UDP of this IKE_SA's peer arrive from `remote` (its
        NAT mapping changed): follow it (IKE and ESP share the NAT-T mapping, RFC 3948) and check
        that the peer answers there (a DPD); an unanswered check closes the SA as any DPD does."""
        sa = self.by_uid.get(unique_id)
        if sa is None or not sa.established or sa.remote == remote or not sa.nat_there:
            return
        self.now = now
        log.info("%s: NAT mapping of the peer changed to %s[%d], checking liveness there", sa.label, *remote)
        sa.remote = remote
        self.emit(ev.PeerAddressChanged(sa.unique_id, remote, sa.local))
        if not sa.dpd_pending:
            sa.queue_task(Dpd(), now)
        self._schedule(sa)

    def _init_request(self, msg: Message, local: Addr, remote: Addr, now: float) -> None:
        key = (msg.spi_i, remote)
        old = self.init_index.get(key)
        if old is not None and old.state is not _DESTROYED:
            if old.init_request == msg.raw and old.cached_response is not None:
                log.info("received retransmit of IKE_SA_INIT from %s[%d], retransmitting response", *remote)
                old.receive(msg, now)  # answered from the response cache
            return
        if not self.accepting:
            log.info("shutting down: ignoring IKE_SA_INIT from %s[%d]", *remote)
            return
        if self._half_open >= self.cfg.max_half_open:
            self.counters["drop-half-open-limit"] += 1
            self.log_limit.warning("half-open-limit", now, "dropping IKE_SA_INIT from %s: too many half-open IKE_SAs",
                                   remote[0])
            return
        if self.prefilter.needs_cookie(remote[0]) and not self.prefilter.cookie_ok(msg, remote):
            self.prefilter.send_cookie(msg, local, remote)
            return
        cfgs = [c for c in self.configs if addr_matches(c.local_addrs, local[0])
                and addr_matches(c.remote_addrs, remote[0])]
        if not cfgs and self.config_miss is not None:
            try:
                self.config_miss(None)
            except CredentialsPending as e:
                log.info("no IKE config for %s...%s yet (%s): its retransmission is answered", local[0], remote[0], e)
                return
        if not cfgs:
            log.info("no IKE config found for %s...%s, sending NO_PROPOSAL_CHOSEN", local[0], remote[0])
            self._reply_error(msg, NotifyType.NO_PROPOSAL_CHOSEN, local, remote)
            return
        sa = self.new_responder(cfgs[0], local, remote, now, key)
        sa.receive(msg, now)
        if sa.state is not _DESTROYED:
            if sa.pending_keys is not None:
                self.keys_pending(sa)
            self._schedule(sa)

    def new_responder(self, cfg: IkeConfig, local: Addr, remote: Addr, now: float, key: tuple[bytes, Addr]) -> IkeSa:
        """A responder's IKE_SA for the IKE_SA_INIT request `key` (SPIi, peer), indexed and counted as
        half-open (RFC 7296 2.6: what a flood of requests makes us hold)."""
        sa = IkeSa(self, cfg, False, next(self._ike_ids), local, remote, now, spi_i=key[0])
        while sa.spi_r in self.sas:
            sa.spi_r = self.new_spi()
        if log.isEnabledFor(logging.INFO):  # Logger.info's frame and its arguments only when it logs
            log.info("%s[%d] is initiating an IKE_SA", remote[0], remote[1])
        self._add(sa)
        self.init_index[key] = sa
        sa.init_key = key
        self._half_open += 1
        self._half_open_by_ip[remote[0]] = self._half_open_by_ip.get(remote[0], 0) + 1
        sa.half_open = True
        return sa

    def _half_open_done(self, sa: IkeSa) -> None:
        if sa.half_open:
            sa.half_open = False
            self._half_open -= 1
            ip = sa.remote[0]
            n = self._half_open_by_ip.get(ip, 1) - 1
            if n <= 0:
                self._half_open_by_ip.pop(ip, None)
            else:
                self._half_open_by_ip[ip] = n

    def _send_plain(self, pkt: bytes, local: Addr, remote: Addr) -> None:
        self.send(NON_ESP_MARKER + pkt if self.is_natt(local[1]) else pkt, local, remote)

    def rotate_cookie_secret(self) -> None:
        """RFC 7296 2.6: change the secret now (it also changes by itself every cookie_secret_lifetime)."""
        self.cookies.rotate(self.now)

    def _reply_error(self, msg: Message, notify: int, local: Addr, remote: Addr, data: bytes = b"") -> None:
        """Unauthenticated IKE_SA_INIT answer without state: an error notify (RFC 7296 2.6, 2.21)."""
        self._send_plain(error_response(msg, notify, data), local, remote)

    def _answer_invalid_spi(self, msg: Message, local: Addr, remote: Addr, now: float) -> None:
        """RFC 7296 2.21.4 / 1.5: a request for an IKE_SA we do not know (we restarted, or it expired)
        gets an unprotected INVALID_IKE_SPI response, so the peer need not wait for its DPD to fail;
        at most `invalid_spi_rate` per second (answers.py)."""
        if not self.invalid_spi_bucket.allow(now):
            self.counters["invalid-spi-suppressed"] += 1
            return
        self.counters["invalid-spi-sent"] += 1
        log.info("sending INVALID_IKE_SPI to %s[%d] for unknown IKE_SA %s_i %s_r", remote[0], remote[1],
                 msg.spi_i.hex(), msg.spi_r.hex())
        self._send_plain(invalid_spi_response(msg), local, remote)

    def _answer_plain_error(self, data: bytes, e: ProtocolError, local: Addr, remote: Addr) -> None:
        """Header-level errors of IKE_SA_INIT requests (INVALID_MAJOR_VERSION, unsupported critical)."""
        hdr = header_error_request(data, e)
        if hdr is not None and e.notify is not None:
            self._reply_error(hdr, int(e.notify), local, remote, e.data)

def _own(view: IkeSaView) -> IkeSa:
    """The engine's own IkeSa behind the view a task holds (tasks only ever see the engine's SAs)."""
    assert isinstance(view, IkeSa)
    return view
