"""One IKE_SA: identities, keys, addresses, state, flags, CHILD_SAs and typed per-extension state.

Its exchanges are run by its task manager (task_manager.py); tasks see it through the `IkeSaView`
protocol of context.py and the engine through `ctx` (the `TaskContext` protocol).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..codec.message import Message, SkProtector
from ..codec.payloads import Proposal
from . import events as ev
from .config import IkeConfig
from .context import ExtState, Failure, Task, TaskContext, Vip
from .identity import Identity
from .state import ChildSa, ChildState, IkeState
from .task_manager import Outstanding, TaskManager

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["ChildSa", "ChildState", "IkeSa", "IkeState", "Outstanding"]

log = logging.getLogger("core_ike.ike")
# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook
_CREATED, _ESTABLISHED, _REKEYING = IkeState.CREATED, IkeState.ESTABLISHED, IkeState.REKEYING
_DESTROYED, _CHILD_DELETED = IkeState.DESTROYED, ChildState.DELETED
Addr = tuple[str, int]


class IkeSa:
    # a mediation server holds one IkeSa per registered peer: no per-instance __dict__ (about 1 KiB each)
    __slots__ = (
        "_ext",
        "children",
        "config",
        "created_at",
        "dpd_pending",
        "engine",
        "established_at",
        "frag_supported",
        "half_open",
        "in_prot",
        "indexed",
        "init_key",
        "init_request",
        "init_response",
        "is_original_initiator",
        "last_in",
        "last_out",
        "local",
        "mediation",
        "my_id",
        "name",
        "nat_here",
        "nat_there",
        "ni",
        "nr",
        "out_prot",
        "peer_hash_algs",
        "peer_id",
        "peer_vip",
        "pending_keys",
        "prf",
        "prf_id",
        "proposal",
        "proposal_text",
        "rekey_at",
        "rekeyed_from",
        "remote",
        "sk_d",
        "sk_pi",
        "sk_pr",
        "spi_i",
        "spi_r",
        "state",
        "timer_at",
        "tm",
        "unique_id",
        "vip",
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
        self.spi_i = spi_i if spi_i is not None else engine.new_spi()
        self.spi_r = engine.new_spi() if not initiator else b"\x00" * 8
        self.local = local
        self.remote = remote
        self.state = _CREATED
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
        # a responder's keys derived after its IKE_SA_INIT response left (tasks/ike_init.py defer_keys)
        self.pending_keys: Any = None
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
        # RFC 7296 2.19: the virtual IP the peer assigned us, the one we assigned the peer (VipPool)
        self.vip: Vip | None = None
        self.peer_vip: Vip | None = None
        self.half_open = False  # counted by the engine as half-open (responder before IKE_AUTH)
        self._ext: list[Any] | None = None  # typed per-extension states (extension()), on first use
        # message IDs, queues and retransmission
        self.tm = TaskManager(self)
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

    @property
    def ctx(self) -> TaskContext:
        """The engine as tasks may use it (context.py)."""
        return self.engine

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
        state = self.state
        return state is _ESTABLISHED or state is _REKEYING

    @property
    def uses_marker(self) -> bool:
        return self.engine.is_natt(self.local[1])

    def float_ports(self) -> None:
        """RFC 7296 2.23: move IKE (and ESP) of this SA to the NAT-T port (a NAT-T socket already: stay)."""
        natt = self.engine.natt_port
        if self.engine.is_natt(self.local[1]):
            return
        self.local = (self.local[0], natt)
        if self.remote[1] == self.engine.ike_port:
            self.remote = (self.remote[0], natt)

    # ------------------------------------------------------------------ typed per-extension state
    def extension(self, kind: type[ExtState]) -> ExtState:
        """The state extension `kind` keeps on this SA (context.ExtensionState), created on first use."""
        if self._ext is None:
            self._ext = []  # a list: one or two states per SA, less memory than a dict (100k SAs per server)
        for st in self._ext:
            if type(st) is kind:
                return st
        new = kind()
        self._ext.append(new)
        return new

    def find_extension(self, kind: type[ExtState]) -> ExtState | None:
        for st in self._ext or ():
            if type(st) is kind:
                return st
        return None

    def inherit_extensions(self, old: IkeSa) -> None:
        """RFC 7296 2.18: the rekeyed IKE_SA continues `old`; each extension state says what carries over."""
        for st in old._ext or ():
            nxt = st.for_successor()
            if nxt is not None:
                if self._ext is None:
                    self._ext = []
                self._ext.append(nxt)

    # ------------------------------------------------------------------ the task manager (task_manager.py)
    @property
    def queue(self) -> list[Task]:
        return self.tm.queue

    @property
    def outstanding(self) -> Outstanding | None:
        return self.tm.outstanding

    @property
    def my_mid(self) -> int:
        return self.tm.my_mid

    @property
    def peer_mid(self) -> int:
        return self.tm.peer_mid

    @property
    def cached_response(self) -> tuple[int, list[bytes]] | None:
        return self.tm.cached_response

    @property
    def failure(self) -> Failure | None:
        return self.tm.failure

    def new_message(self, exchange: int, response: bool, mid: int) -> Message:
        return self.tm.new_message(exchange, response, mid)

    def queue_task(self, task: Task, now: float) -> None:
        self.tm.queue_task(task, now)

    def initiate_next(self, now: float) -> None:
        self.tm.initiate_next(now)

    def receive(self, msg: Message, now: float) -> None:
        self.tm.receive(msg, now)

    def resend_response(self, mid: int, now: float) -> None:
        self.tm.resend_response(mid, now)

    def next_deadline(self) -> float | None:
        return self.tm.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.tm.handle_timer(now)

    # ------------------------------------------------------------------ teardown
    def destroy(self, reason: str, now: float, failed: bool = False) -> None:
        """The IKE_SA ends (`reason`). `failed`: the caller reported the end as the SA's failure
        (IkeSaFailed, a mediation's MediationFailed), kept as `failure` if none is yet: no IkeSaDeleted,
        and its tasks do not report it again (docs/architecture.md "Tasks when the IKE_SA ends")."""
        if self.state is _DESTROYED:
            return
        if failed and self.tm.failure is None:
            self.tm.failure = Failure(reason)
        for child in list(self.children.values()):
            self.remove_child(child, reason)
        if self.established_at is not None and not failed:
            self.engine.emit(ev.IkeSaDeleted(self.name, self.unique_id, reason))
        self.set_state(_DESTROYED)
        self.tm.close(reason, now)
        self.engine.forget(self)

    def remove_child(self, child: ChildSa, reason: str) -> None:
        if self.children.pop(child.unique_id, None) is None:
            return
        if child.state.live:
            log.info("CHILD_SA %s{%d} closed (%s)", child.name, child.unique_id, reason)
            self.engine.emit(ev.ChildSaDeleted(self.name, child.name, child.unique_id, child.spi_in,
                                               child.spi_out, reason))
        child.set_state(_CHILD_DELETED)

    def child_by_spi(self, spi: int, inbound: bool) -> ChildSa | None:
        for c in self.children.values():
            if (c.spi_in if inbound else c.spi_out) == spi:
                return c
        return None
