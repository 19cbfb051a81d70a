"""What a task sees (design principle 5): the task interface, the IKE_SA as tasks use it, and the narrow
context of engine services tasks may call.

Exchanges are composed of small tasks (the shape of strongSwan's sa/ikev2/tasks): the initiator side
adds payloads to a request (`build_i`) and consumes the response (`process_i`); the responder side
consumes a request (`process_r`) and adds to the response (`build_r`). Every method takes `now`.
Tasks raise `ProtocolError` (the notify to answer with) or `AuthenticationFailed` to fail; the task
manager (task_manager.py) turns that into a notify, a log line and an event.

Tasks import from the IKE package only this module (which re-exports what they use of the value
modules: config, identity, traffic selectors, events, credentials, the info lines) and `state.py`; the import contracts
in .importlinter hold them to it. The engine, the IKE_SA and the task manager implement these protocols; nothing here imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from ..codec.message import Message, SkProtector
from ..codec.payloads import Proposal
from ..constants import ExchangeType
from ..rng import Rng
from . import events, ts
from .config import ChildConfig, IkeConfig
from .creds import Credentials, PublicKey
from .identity import Identity, san_holds
from .state import ChildSa, IkeState

if TYPE_CHECKING:
    from ..crypto.dh import KeyExchange
    from ..esp.algorithms import EspTransforms

# what tasks use of the value modules, so that tasks import from the IKE package only this module and
# state.py (.importlinter)
__all__ = [
    "Addr",
    "ChildConfig",
    "Credentials",
    "ExtensionState",
    "Failure",
    "Identity",
    "IkeConfig",
    "IkeSaView",
    "InFlight",
    "PublicKey",
    "Status",
    "Task",
    "TaskContext",
    "Vip",
    "events",
    "san_holds",
    "ts",
]

Addr = tuple[str, int]
Vip = IPv4Address | IPv6Address


class Status(Enum):
    DONE = "done"
    NEED_MORE = "need more"  # the task continues in a later exchange
    RESTART = "restart"  # resend this exchange with a rebuilt request (COOKIE / INVALID_KE)


class Task:
    """Base class; subclasses override what their role needs."""

    exchange: ExchangeType = ExchangeType.INFORMATIONAL
    name: str = "task"
    # somebody waits for this exchange (an `up`, a mediation): the request is retransmitted on the early
    # schedule of RetransmitConfig, and so is a request in flight that it has to wait for (window 1)
    prompt: bool = False
    # the task deletes the IKE_SA (RFC 7296 1.4.1): it may start on an IKE_SA that is being deleted
    is_delete: ClassVar[bool] = False

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        raise NotImplementedError

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        raise NotImplementedError

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        raise NotImplementedError

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        raise NotImplementedError

    def responded(self, sa: IkeSaView, now: float) -> None:
        """Responder: the response built by this task was sent; default: nothing."""

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        """The exchange carrying this task failed (timeout, error notify), or the IKE_SA ended before it
        was answered or sent (`sa.state` is DESTROYED, `reason` the end's); called at most once, it must
        not queue work on an ended SA (docs/architecture.md "Tasks when the IKE_SA ends");
        default: nothing."""

    @property
    def closes_ike(self) -> bool:
        """Responder: answering this request ends the IKE_SA (a DELETE of it, RFC 7296 1.4.1)."""
        return False


@dataclass(frozen=True)
class Failure:
    """Why an exchange of an IKE_SA failed, typed by consequence (design principle 8)."""

    reason: str
    notify: int | None = None
    authentication: bool = False  # credentials refused or missing (errors.AuthenticationFailed)
    timeout: bool = False  # the retransmissions were exhausted (RFC 7296 2.4)


class InFlight(Protocol):
    """Our request in flight (window 1, RFC 7296 2.3), as tasks may inspect it."""

    @property
    def exchange(self) -> int: ...

    @property
    def tasks(self) -> list[Task]: ...


class TaskContext(Protocol):
    """The engine services tasks may use; nothing else of the engine is reachable from a task."""

    @property
    def rng(self) -> Rng:
        """The one random source: SPIs, nonces, cookie secrets, IVs, connect IDs (core_ike/rng.py)."""
        ...

    @property
    def creds(self) -> Credentials: ...

    def wall_time(self) -> float | None:
        """Wall-clock time (UNIX seconds) now, an input of the adapter; None when it gave none."""
        ...

    def emit(self, event: object) -> None: ...

    def alloc_spi(self) -> int:
        """A fresh inbound ESP SPI (RFC 4303 2.1)."""
        ...

    def new_spi(self) -> bytes:
        """A fresh 8-octet IKE SPI no IKE_SA of this engine uses (RFC 7296 2.6)."""
        ...

    def next_child_id(self) -> int: ...

    def next_reqid(self) -> int: ...

    def esp_transforms(self) -> EspTransforms | None:
        """What the data plane can install (None: no data plane declared, every proposal is usable)."""
        ...

    def ike_proposals_for(self, sa: IkeSaView) -> list[Proposal]: ...

    def key_exchange(self, group: int) -> KeyExchange:
        """A fresh key pair of `group` for one exchange (crypto/dh.py KeyPool)."""
        ...

    def ike_proposal_texts(self, sa: IkeSaView) -> tuple[str, ...]:
        """The proposal strings `ike_proposals_for` is made of (a key for what it negotiates)."""
        ...

    def wants_peer_certs(self, sa: IkeSaView) -> bool:
        """Responder, before the peer's identity is known: a configuration for these addresses
        authenticates the peer by public key and sends CERTREQ (RFC 7296 §3.7)."""
        ...

    def select_peer_config(self, sa: IkeSaView, peer: Identity, wanted: Identity | None,
                           msg: Message) -> IkeConfig | None: ...

    def is_first_contact(self, sa: IkeSaView) -> bool: ...

    def assign_vip(self, sa: IkeSaView) -> Vip | None:
        """A virtual IP for the peer from the connection's pools (RFC 7296 2.19)."""
        ...

    def spi_learned(self, sa: IkeSaView) -> None:
        """The initiator learned the responder's SPI: the SA is indexed and its timers re-armed."""
        ...

    def ike_established(self, sa: IkeSaView, now: float) -> None: ...

    def create_rekeyed_sa(self, old: IkeSaView, initiator: bool, spi_i: bytes, spi_r: bytes,
                          now: float) -> IkeSaView:
        """The IKE_SA replacing `old` (RFC 7296 2.18), indexed and scheduled."""
        ...


class ExtensionState(Protocol):
    """Per-SA state of one extension (e.g. the mediation extension's role and srflx). `for_successor`
    says what the IKE_SA that replaces this one by a rekey (RFC 7296 2.18) carries over: a copy, a
    fresh state or nothing (None); never the same object unless the class says so."""

    def for_successor(self) -> ExtensionState | None: ...


ExtState = TypeVar("ExtState", bound=ExtensionState)


class IkeSaView(Protocol):
    """The IKE_SA as tasks see it (core_ike/ike/sa.py implements it)."""

    # identity and addresses
    name: str
    unique_id: int
    config: IkeConfig
    is_original_initiator: bool
    spi_i: bytes
    spi_r: bytes
    local: Addr
    remote: Addr
    my_id: Identity | None
    peer_id: Identity | None
    mediation: bool
    # negotiated
    proposal: Proposal | None
    proposal_text: str
    prf: Any
    prf_id: int
    sk_d: bytes
    sk_pi: bytes
    sk_pr: bytes
    out_prot: SkProtector | None
    in_prot: SkProtector | None
    pending_keys: Any  # tasks/ike_init.py PendingKeys: keys not derived yet (a responder's, RFC 7296 1.2)
    ni: bytes
    nr: bytes
    init_request: bytes
    init_response: bytes
    nat_here: bool
    nat_there: bool
    frag_supported: bool
    peer_hash_algs: frozenset[int]
    # typed facts of RFC 7296 2.19 configuration payloads
    vip: Vip | None
    peer_vip: Vip | None
    # life
    established_at: float | None
    rekey_at: float | None
    rekeyed_from: int | None
    dpd_pending: bool
    children: dict[int, ChildSa]

    @property
    def ctx(self) -> TaskContext: ...

    @property
    def state(self) -> IkeState: ...

    def set_state(self, new: IkeState) -> None: ...

    @property
    def label(self) -> str: ...

    @property
    def established(self) -> bool: ...

    @property
    def uses_marker(self) -> bool: ...

    def float_ports(self) -> None: ...

    # the task manager, as far as tasks act on it
    @property
    def queue(self) -> list[Task]: ...

    @property
    def outstanding(self) -> InFlight | None: ...

    def queue_task(self, task: Task, now: float) -> None: ...

    @property
    def failure(self) -> Failure | None:
        """The first exchange of this SA that failed, if one did."""
        ...

    def initiate_next(self, now: float) -> None: ...

    # children and teardown
    def remove_child(self, child: ChildSa, reason: str) -> None: ...

    def child_by_spi(self, spi: int, inbound: bool) -> ChildSa | None: ...

    def destroy(self, reason: str, now: float, failed: bool = False) -> None: ...

    def extension(self, kind: type[ExtState]) -> ExtState:
        """The typed state extension `kind` keeps on this SA, created on first use."""
        ...

    def find_extension(self, kind: type[ExtState]) -> ExtState | None: ...
