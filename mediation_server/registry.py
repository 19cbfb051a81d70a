"""Registry of online peers and callback registrations (pure logic: no IO, no SQL, `now` passed in).

The protocol is docs/protocol.md §5 (strongSwan's `mediation_manager.c`); what differs (§11.5, §11.7):
- one mediation SA per identity; a new registration replaces the old and reports the replaced SA;
- removal on SA destruction drops every stale entry and never removes a newer registration;
- callback registrations expire (configurable TTL) and persist through a storage Protocol;
- authorization policy and per-peer limits, each refusal typed with a reason and a notify.

Clock: `now` is whatever the caller uses consistently. With a persistent store, pass wall-clock time
(time.time()) so that stored expiry times stay meaningful across restarts.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from core_ike.constants import NotifyType

log = logging.getLogger("mediation_server.registry")

Identity = str  # canonical text of the mediation identity (e.g. "alice@example.org", "keyid:ab12...")
SaId = Hashable
Addr = tuple[str, int]


@dataclass(frozen=True)
class RegistryConfig:
    callback_ttl: float = 600.0  # seconds a callback registration lives
    connect_rate: float = 5.0  # ME_CONNECT requests per second per requester (token bucket)
    connect_burst: int = 10
    max_endpoints: int = 16  # ME_ENDPOINTs per ME_CONNECT ([ME] §4.2: MUST be configurable)
    max_pending_callbacks: int = 16  # pending callback registrations per requester


class Policy(Enum):
    ALL = "all"  # every registered peer may reach every other (the reference's behaviour)
    SAME_OWNER = "same-owner"  # only peers of the same portal user
    ALLOW_LIST = "allow-list"  # explicit pairs


@dataclass(slots=True)
class PeerRecord:
    identity: Identity
    sa_id: SaId
    endpoint: Addr | None  # public (observed) address of the mediation SA
    since: float
    last_activity: float
    nat: str | None = None  # the NAT behaviour the peer measured and reported (core_ike/me/natinfo.py)
    order: int = 0  # in a cluster, the engine's number of this registration (mediation_server/cluster/)


@dataclass(frozen=True)
class CallbackRegistration:
    """`requester` asked for `target`, which was offline; expires at `expires`."""

    target: Identity
    requester: Identity
    created: float
    expires: float


@dataclass(frozen=True)
class SendCallback:
    """Action: send `ME_CONNECT{N(ME_CALLBACK), ID_PEER(online)}` over `requester_sa`."""

    requester: Identity
    requester_sa: SaId
    online: Identity


@dataclass(frozen=True)
class Registered:
    identity: Identity
    replaced_sa_id: SaId | None  # the previous mediation SA of this identity (to delete), if any
    callbacks: tuple[SendCallback, ...]


class RefusalReason(Enum):
    NOT_AUTHORIZED = "not authorized"
    RATE_LIMITED = "rate limited"
    TOO_MANY_ENDPOINTS = "too many endpoints"
    TOO_MANY_CALLBACKS = "too many pending callbacks"


_REFUSAL_NOTIFY = {
    RefusalReason.NOT_AUTHORIZED: NotifyType.ME_CONNECT_FAILED,
    # RFC 7296 3.10.1 TEMPORARY_FAILURE: "try again later" - the client fails fast instead of waiting
    # for a callback that would never come
    RefusalReason.RATE_LIMITED: NotifyType.TEMPORARY_FAILURE,
    RefusalReason.TOO_MANY_ENDPOINTS: NotifyType.INVALID_SYNTAX,  # like the limits of docs/protocol.md §4.2
    RefusalReason.TOO_MANY_CALLBACKS: NotifyType.ME_CONNECT_FAILED,
}


@dataclass(frozen=True)
class Refused:
    reason: RefusalReason
    detail: str

    @property
    def notify(self) -> NotifyType:
        return _REFUSAL_NOTIFY[self.reason]


@dataclass(frozen=True)
class TargetOnline:
    sa_id: SaId  # relay over this SA; answer the requester with an empty response


@dataclass(frozen=True)
class TargetOffline:
    """Answer ME_CONNECT_FAILED; `callback_refused` says why no callback was registered, if so."""

    callback_registered: bool
    callback_refused: Refused | None = None


@dataclass(frozen=True)
class TargetElsewhere:
    """The target is registered at another server of the cluster (mediation_server/cluster/)."""


ConnectDecision = Refused | TargetOnline | TargetOffline | TargetElsewhere


class RegistrationStore(Protocol):
    """Persistence of callback registrations (the med_db implementation lives with the server).

    Each registry operation hands the store only the registration it changed (`put` / `drop`), so a
    store's work per operation does not grow with the number of peers or registrations."""

    def load_registrations(self) -> list[CallbackRegistration]: ...

    def put(self, registration: CallbackRegistration) -> None:
        """Insert or replace the registration of (target, requester)."""

    def drop(self, target: Identity, requester: Identity) -> None:
        """Remove the registration of (target, requester), if any."""


@dataclass
class MemoryStore:
    """A RegistrationStore in memory (tests, or a server without a database); `writes` counts the
    registrations put or dropped."""

    rows: dict[tuple[Identity, Identity], CallbackRegistration] = field(default_factory=dict)
    writes: int = 0

    @property
    def saved(self) -> list[CallbackRegistration]:
        return list(self.rows.values())

    def load_registrations(self) -> list[CallbackRegistration]:
        return list(self.rows.values())

    def put(self, registration: CallbackRegistration) -> None:
        self.rows[(registration.target, registration.requester)] = registration
        self.writes += 1

    def drop(self, target: Identity, requester: Identity) -> None:
        self.rows.pop((target, requester), None)
        self.writes += 1


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class Authorizer:
    """Who may be mediated to whom (docs/protocol.md §11.7). Refusals carry a reason for the log line."""

    def __init__(self, policy: Policy = Policy.ALL, *,
                 owner_of: Callable[[Identity], str | None] | None = None,
                 allowed: Iterable[tuple[Identity, Identity]] = (), symmetric: bool = True,
                 allowed_fn: Callable[[Identity, Identity], bool] | None = None) -> None:
        if policy is Policy.SAME_OWNER and owner_of is None:
            raise ValueError("same-owner policy needs an owner_of function")
        self.policy = policy
        self._owner_of = owner_of
        self._symmetric = symmetric
        self._allowed_fn = allowed_fn  # e.g. the portal's mediation_grant table
        self._allowed: set[tuple[Identity, Identity]] = set()
        for a, b in allowed:
            self.allow(a, b)

    def allow(self, a: Identity, b: Identity) -> None:
        self._allowed.add((a, b))
        if self._symmetric:
            self._allowed.add((b, a))

    def check(self, requester: Identity, target: Identity) -> Refused | None:
        if self.policy is Policy.ALL:
            return None
        if self.policy is Policy.SAME_OWNER:
            assert self._owner_of is not None
            owner_r, owner_t = self._owner_of(requester), self._owner_of(target)
            if owner_r is not None and owner_r == owner_t:
                return None
            return Refused(RefusalReason.NOT_AUTHORIZED,
                           f"'{requester}' and '{target}' do not belong to the same user")
        if (requester, target) in self._allowed:
            return None
        if self._allowed_fn is not None and self._allowed_fn(requester, target):
            return None
        return Refused(RefusalReason.NOT_AUTHORIZED, f"'{requester}' may not reach '{target}'")


class Registry:
    """Online peers keyed by identity, plus persistent expiring callback registrations."""

    def __init__(self, config: RegistryConfig | None = None, *, store: RegistrationStore | None = None,
                 authorizer: Authorizer | None = None) -> None:
        self.config = config or RegistryConfig()
        self.authorizer = authorizer or Authorizer()
        self._store = store
        self._peers: dict[Identity, PeerRecord] = {}
        self._callbacks: dict[Identity, dict[Identity, CallbackRegistration]] = {}
        self._pending: dict[Identity, int] = {}  # requester -> number of registrations
        self._expiry: list[tuple[float, Identity, Identity]] = []  # lazy heap
        self._buckets: dict[Identity, _Bucket] = {}
        if store is not None:
            for reg in store.load_registrations():
                self._add_callback(reg)

    # --- presence ---------------------------------------------------------------------------------

    def update_sa_id(self, identity: Identity, sa_id: SaId, now: float,
                     endpoint: Addr | None = None) -> Registered:
        """The peer authenticated (IKE_AUTH) or its SA was rekeyed/reauthenticated: register it and
        drain callbacks waiting for it (docs/protocol.md §5; strongSwan's `update_sa_id`)."""
        old = self._peers.get(identity)
        replaced: SaId | None = None
        if old is not None and old.sa_id != sa_id:
            replaced = old.sa_id
            log.info("peer '%s' re-registered, replacing mediation SA %s", identity, replaced)
        since = old.since if old is not None and replaced is None else now
        ep = endpoint if endpoint is not None or old is None else old.endpoint
        self._peers[identity] = PeerRecord(identity, sa_id, ep, since, now, old.nat if old is not None else None)
        return Registered(identity, replaced, self._drain(identity, now))

    register = update_sa_id

    def _drain(self, online: Identity, now: float) -> tuple[SendCallback, ...]:
        """Callbacks fire once, to requesters that are online; others stay until they expire."""
        regs = self._callbacks.get(online)
        if not regs:
            return ()
        actions = []
        for requester, reg in list(regs.items()):
            rec = self._peers.get(requester)
            if reg.expires <= now or rec is None:
                continue
            actions.append(SendCallback(requester, rec.sa_id, online))
            self._drop_callback(online, requester)
            self._store_drop(online, requester)
        return tuple(actions)

    def online_elsewhere(self, identity: Identity, now: float) -> tuple[SendCallback, ...]:
        """`identity` registered at another server of the cluster: the callbacks waiting for it here
        fire as for a registration here (docs/protocol.md §5)."""
        return self._drain(identity, now)

    def set_nat(self, identity: Identity, text: str) -> None:
        rec = self._peers.get(identity)
        if rec is not None:
            rec.nat = text

    def set_order(self, identity: Identity, order: int) -> PeerRecord | None:
        """The cluster's number of the current registration of `identity` (a later one wins)."""
        rec = self._peers.get(identity)
        if rec is not None:
            rec.order = max(rec.order, order)
        return rec

    def touch(self, identity: Identity, now: float) -> None:
        rec = self._peers.get(identity)
        if rec is not None:
            rec.last_activity = now

    def remove_sa(self, sa_id: SaId, identity: Identity) -> Identity | None:
        """MS-side SA `sa_id` of `identity` destroyed: the peer goes offline unless a newer SA replaced
        this one (the caller knows the SA's peer: no index by SA is kept, one dict entry less per peer).

        Nothing stale is left (docs/protocol.md §11.5: offline peers have no entry at all; callback
        registrations are separate and expire).
        """
        rec = self._peers.get(identity)
        if rec is not None and rec.sa_id == sa_id:
            del self._peers[identity]
            self._buckets.pop(identity, None)
            log.info("peer '%s' is offline (mediation SA %s gone)", identity, sa_id)
            return identity
        return None

    def lookup(self, identity: Identity) -> PeerRecord | None:
        return self._peers.get(identity)

    def online_peers(self) -> list[PeerRecord]:
        return sorted(self._peers.values(), key=lambda r: r.identity)

    def __len__(self) -> int:
        return len(self._peers)

    # --- ME_CONNECT ------------------------------------------------------------------------------------

    def check(self, target: Identity) -> SaId | None:
        rec = self._peers.get(target)
        return None if rec is None else rec.sa_id

    def check_and_register(self, target: Identity, requester: Identity, now: float) -> SaId | Refused | None:
        """docs/protocol.md §5: online -> its SA id; offline -> register the requester (deduplicated) and
        return None; too many pending callbacks -> Refused."""
        sa_id = self.check(target)
        if sa_id is not None:
            return sa_id
        regs = self._callbacks.get(target, {})
        if requester not in regs and self._pending.get(requester, 0) >= self.config.max_pending_callbacks:
            return Refused(RefusalReason.TOO_MANY_CALLBACKS,
                           f"'{requester}' already waits for {self._pending[requester]} peers")
        reg = CallbackRegistration(target, requester, now, now + self.config.callback_ttl)
        self._add_callback(reg)
        if self._store is not None:
            self._store.put(reg)
        return None

    def request_connect(self, requester: Identity, target: Identity, now: float, *,
                        n_endpoints: int, callback: bool, is_response: bool = False,
                        elsewhere: bool = False) -> ConnectDecision:
        """All checks of one relayed ME_CONNECT: rate, endpoints, authorization, presence, callback.
        `elsewhere`: the target is registered at another server of the cluster."""
        self.touch(requester, now)
        refusal = (self._rate_limit(requester, now) or self._endpoint_limit(requester, n_endpoints)
                   or self.authorizer.check(requester, target))
        if refusal is not None:
            log.info("ME_CONNECT from '%s' to '%s' refused: %s", requester, target, refusal.detail)
            return refusal
        if elsewhere and target not in self._peers:
            return TargetElsewhere()
        if not callback or is_response:
            sa_id = self.check(target)
            return TargetOnline(sa_id) if sa_id is not None else TargetOffline(False)
        result = self.check_and_register(target, requester, now)
        if isinstance(result, Refused):
            log.info("no callback for '%s': %s", requester, result.detail)
            return TargetOffline(False, result)
        return TargetOnline(result) if result is not None else TargetOffline(True)

    def _rate_limit(self, requester: Identity, now: float) -> Refused | None:
        cfg = self.config
        b = self._buckets.get(requester)
        if b is None:
            b = self._buckets[requester] = _Bucket(float(cfg.connect_burst), now)
        b.tokens = min(float(cfg.connect_burst), b.tokens + max(0.0, now - b.stamp) * cfg.connect_rate)
        b.stamp = now
        if b.tokens < 1.0:
            return Refused(RefusalReason.RATE_LIMITED,
                           f"more than {cfg.connect_rate:g} ME_CONNECT/s from '{requester}'")
        b.tokens -= 1.0
        return None

    def _endpoint_limit(self, requester: Identity, n: int) -> Refused | None:
        if n > self.config.max_endpoints:
            return Refused(RefusalReason.TOO_MANY_ENDPOINTS,
                           f"{n} endpoints from '{requester}' (limit {self.config.max_endpoints})")
        return None

    # --- callback registrations --------------------------------------------------------------------

    def _add_callback(self, reg: CallbackRegistration) -> None:
        regs = self._callbacks.setdefault(reg.target, {})
        if reg.requester not in regs:
            self._pending[reg.requester] = self._pending.get(reg.requester, 0) + 1
        regs[reg.requester] = reg  # deduplicated; a repeated request refreshes the expiry
        heapq.heappush(self._expiry, (reg.expires, reg.target, reg.requester))

    def _drop_callback(self, target: Identity, requester: Identity) -> None:
        regs = self._callbacks.get(target)
        if regs is None or regs.pop(requester, None) is None:
            return
        if not regs:
            del self._callbacks[target]
        left = self._pending.get(requester, 1) - 1
        if left > 0:
            self._pending[requester] = left
        else:
            self._pending.pop(requester, None)

    def add_replica(self, reg: CallbackRegistration, now: float) -> None:
        """A registration made at another server of the cluster (its server persisted it); the
        requester's limit is that server's to enforce."""
        if reg.expires > now:
            self._add_callback(reg)

    def drop_replica(self, target: Identity, requester: Identity) -> None:
        self._drop_callback(target, requester)

    def callback(self, target: Identity, requester: Identity) -> CallbackRegistration | None:
        return self._callbacks.get(target, {}).get(requester)

    def waiting_for(self, target: Identity) -> list[Identity]:
        return sorted(self._callbacks.get(target, {}))

    def registrations(self) -> list[CallbackRegistration]:
        return [r for regs in self._callbacks.values() for r in regs.values()]

    def get_timer(self) -> float | None:
        """Next callback expiry (stale heap entries may make it early; that is harmless)."""
        return self._expiry[0][0] if self._expiry else None

    def handle_timer(self, now: float) -> list[CallbackRegistration]:
        """Drop expired callback registrations; returns them (for a log line)."""
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            _, target, requester = heapq.heappop(self._expiry)
            reg = self._callbacks.get(target, {}).get(requester)
            if reg is not None and reg.expires <= now:
                self._drop_callback(target, requester)
                self._store_drop(target, requester)
                expired.append(reg)
                log.info("callback for '%s' waiting for '%s' expired", requester, target)
        return expired

    def _store_drop(self, target: Identity, requester: Identity) -> None:
        if self._store is not None:
            self._store.drop(target, requester)
