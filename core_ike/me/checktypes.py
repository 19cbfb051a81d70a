"""The check lists' vocabulary: tunables, the retransmission schedule, pair priority, pair and list states,
the pair snapshot and the events a check list emits ([ME] §5, RFC 8445; core_ike/me/checklist.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from ..constants import MeEndpointType
from .checks import KeyRule
from .endpoints import Addr, Endpoint


@dataclass(frozen=True)
class CheckListConfig:
    """Tunables; defaults are strongSwan's `connect_manager.c` constants unless noted."""

    pacing: float = 0.005  # T ([ME] §5.1); RFC 8445 14.2 allows 5 ms (strongSwan: 25 ms)
    # the first check of this many pairs goes out at once when the list starts, the rest one per pacing
    # interval: the pair that works is often not the first by priority (the peer's private HOST address
    # behind another NAT ranks first), and a few 84-octet datagrams are no load a pacing interval would
    # spare the network (RFC 8445 14 paces the steady flow of checks); 1 = strictly paced
    initial_burst: int = 4
    rto: float = 0.025  # first retransmission timeout
    boost: int = 2  # ME_BOOST: the first `boost` retransmissions use `rto`
    retrans_base: float = 1.8  # ME_RETRANS_BASE
    # RFC 8445 14.3 style: no wait longer than rto_max (strongSwan's grow to 16 s, so a pair whose first
    # checks were lost is hardly checked again before the deadline), nor shorter than rto_per_pair per
    # pair still Waiting or In-Progress (Ta * N: the rate stays bounded with many pairs); 0 = no bound
    rto_max: float = 1.0
    rto_per_pair: float = 0.05
    # a pair the peer's checks arrive on is open through both NATs (its check opened ours, ours answered
    # it): an unanswered check there was lost, not sent into a dead path, so its waits stop growing at
    # rto_heard (with the same per-pair floor) and its checks go on until the list's deadline whatever
    # max_retransmits says. Under loss that keeps a steady few checks a second on the one path known to
    # be open instead of one a second: at 30 % loss per NAT a check's round trip through two NATs is
    # answered one time in four (RFC 8445 14.3 leaves the schedule to the agent); 0 = rto_max
    rto_heard: float = 0.2
    # one more timeout marks the pair Failed; with rto_max the checks go on until the list's deadline
    # (transaction_timeout), as ICE's do (strongSwan: ME_MAX_RETRANS 13)
    max_retransmits: int = 40
    # controlling side, after a pair succeeded while a better one is still pending (strongSwan waits
    # 1000 ms): a better pair that works answers about a round trip after its check left, so each one is
    # waited for until finish_rtts measured check round trips plus a margin for the peers' scheduling
    # jitter (finish_margin; where only our check is out one more round trip, at least finish_margin_min) after its first check, and not at all once that
    # has passed; never longer than finish_wait after the first success
    finish_wait: float = 0.050
    finish_rtts: float = 1.0
    finish_margin: float = 0.005
    finish_margin_min: float = 0.002  # the margin where only our check is out, on a path faster than this
    # our relay extension, controlling side: the RELAYED pair is the last resort (one rule, described
    # in checklist.py above CheckList.hold_relay, docs/protocol.md §11.1). Its checks wait
    # relay_delay_rtts mediation round trips (from sending ME_CONNECT to the peer's answer: the path a
    # relayed check takes), at most relay_delay_max, as long again when the peer's checks arrive on a
    # direct pair; a succeeded RELAYED pair waits relay_wait from the first success while a better pair
    # hears the peer's checks
    relay_wait: float = 1.0
    relay_delay_rtts: float = 0.5
    relay_delay_max: float = 0.25
    transaction_timeout: float = 30.0  # [ME] §4.3 overall timer, from list creation (initiator)
    responder_timeout: float = 60.0  # no IKE_SA_INIT with this connect ID -> give up (docs/protocol.md §11.3)
    max_remote_endpoints: int = 16  # [ME] §4.2 / RFC 8445 §19.5.1: drop lowest priority first (one RELAYED kept)
    max_pairs: int = 100  # RFC 8445 6.1.2.5 default (one pair to a RELAYED endpoint always kept)
    max_learnt_remote: int = 8  # remote prflx endpoints learnt from requests (RFC 8445 19.5.1)
    max_early_checks: int = 8  # checks buffered before our key / the peer's key is known
    key_rule: KeyRule = KeyRule.SENDER  # strongSwan's, the one that interoperates (docs/protocol.md §7.2)


def retransmit_timeout(cfg: CheckListConfig, n: int, active: int = 1, heard: bool = False) -> float:
    """Seconds between retransmission n-1 (or the first send) and retransmission n (n >= 1).

    strongSwan's schedule (docs/protocol.md §7.6): 25, 25, then 25 * 1.8^(n-2) ms truncated to whole
    ms; n = max+1 is the final timeout after which the pair fails. With `rto_max` no wait exceeds max(rto_max, rto_per_pair *
    active), `active` = the list's pairs Waiting or In-Progress (RFC 8445 14.3); on a pair the peer's checks
    arrive on (`heard`), `rto_heard` takes rto_max's place.
    """
    base_ms = cfg.rto * 1000.0
    if n <= cfg.boost:
        wait = base_ms / 1000.0
    else:
        wait = math.floor(base_ms * cfg.retrans_base ** (n - cfg.boost) + 1e-9) / 1000.0
    cap = cfg.rto_heard if heard and cfg.rto_heard > 0 else cfg.rto_max
    if cap > 0:
        wait = min(wait, max(cap, cfg.rto_per_pair * active))
    return wait


def pair_priority(g: int, d: int) -> int:
    """[ME] §5.1 / RFC 8445 6.1.2.3: 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D ? 1 : 0).

    G = the ME_CONNECT initiator's endpoint priority, D = the responder's, on both sides.
    """
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


class PairState(Enum):
    WAITING = "WAITING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class ListState(Enum):
    NONE = "NONE"  # initiator data only
    WAITING = "WAITING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class PairInfo:
    """Immutable snapshot of a pair, for events and reports."""

    id: int
    local: Addr  # base: where checks (and the mediated IKE_SA) leave from
    remote: Addr
    local_type: MeEndpointType
    remote_type: MeEndpointType
    priority: int
    state: PairState
    mapped: Addr | None = None  # our address as seen by the peer on this pair (valid pair local)

    def __str__(self) -> str:
        return (f"#{self.id} {self.local[0]}[{self.local[1]}] - {self.remote[0]}[{self.remote[1]}] "
                f"({self.local_type._name_}->{self.remote_type._name_}) {self.state._value_}")  # no enum properties


@dataclass(frozen=True)
class PairStateChanged:
    """A pair of the list succeeded (its other changes are logged at debug, not queued: nobody acts on them)."""

    connect_id: bytes
    pair: PairInfo
    old: PairState
    new: PairState


@dataclass(frozen=True)
class CheckListSucceeded:
    connect_id: bytes
    selected: PairInfo
    tried: tuple[PairInfo, ...]


@dataclass(frozen=True)
class CheckListFailed:
    connect_id: bytes
    reason: str
    tried: tuple[PairInfo, ...]


@dataclass(frozen=True)
class CheckListStopped:
    connect_id: bytes
    reason: str


CheckListEvent = PairStateChanged | CheckListSucceeded | CheckListFailed | CheckListStopped
Datagram = tuple[bytes, Addr, Addr]  # (IKE octets without non-ESP marker, local base, remote)


@dataclass(eq=False)
class Pair:
    id: int
    local: Endpoint
    remote: Endpoint
    priority: int
    state: PairState = PairState.WAITING
    retransmits: int = 0
    deadline: float | None = None  # next retransmission or final timeout
    packet: bytes | None = None
    mapped: Endpoint | None = None
    sent_at: float = 0.0  # last transmission of this pair's check
    first_sent: float | None = None  # first transmission of its current check (retransmissions keep it)
    initial_sent: float | None = None  # the pair's very first check
    # Karn's rule (RFC 6298 3): only a check sent once gives a round-trip sample; an answer after a
    # retransmission or a triggered re-send is timed from the pair's first check (an upper bound)
    clean: bool = False
    heard: bool = False  # a check request of the peer arrived on this pair
    instant: bool = False  # its one triggered check that left at once (later ones keep the pacing)

    @property
    def base(self) -> Addr:
        return self.local.local_base

    @property
    def remote_addr(self) -> Addr:
        return self.remote.addr

    def __str__(self) -> str:  # the debug lines' text, made only when they are written
        return str(self.info())

    def info(self) -> PairInfo:  # made for every pair state change: the two properties above inlined
        local, remote = self.local, self.remote
        base = local.base if local.base is not None else local.addr
        return PairInfo(self.id, base, remote.addr, local.type, remote.type,
                        self.priority, self.state, None if self.mapped is None else self.mapped.addr)


def earliest(times: tuple[float | None, ...], pairs: list[Pair]) -> float | None:
    """The earliest of `times` and the pairs' deadlines: a check list's timer, asked after every datagram
    and timer of its owner (no list made for the minimum)."""
    best: float | None = None
    for t in times:
        if t is not None and (best is None or t < best):
            best = t
    for p in pairs:
        if (t := p.deadline) is not None and (best is None or t < best):
            best = t
    return best


@dataclass
class _Side:
    key: bytes | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
