"""The mediation server's UDP data relay, sans-IO (our extension, docs/protocol.md §11.1).

strongSwan defines the RELAYED endpoint type but its MS relays nothing, so two peers behind
endpoint-dependent (symmetric) NATs never connect. Here the MS offers, to peers that negotiated it
(Vendor ID `core_ike.me.endpoints.RELAY_VENDOR_ID`), one *relay* per ME_CONNECT: two UDP ports on its
own address, one per side, in the spirit of a TURN allocation (RFC 8656) but without a TURN protocol:

    A --> server:P_A ==> out of server:P_B --> B        (P_A is advertised to A as B's RELAYED endpoint)
    B --> server:P_B ==> out of server:P_A --> A        (P_B is advertised to B as A's RELAYED endpoint)

Each peer sees the other at the relay port it sends to, so checks are symmetric ([ME] §5.3) and the
mediated IKE_SA and its ESP-in-UDP follow the selected pair through the relay unchanged.

Rules:
- latching: a side's address is the source of the first datagram it sends to its port, accepted only
  from the IP address of that peer's mediation SA (RFC 8656 §9 permissions are per IP address, ports
  ignored); the same IP from a new port re-latches (NAT rebinding); anything else is dropped;
- datagrams for a side not latched yet are dropped (the ME checks retransmit, [ME] §5.1);
- limits: relays per peer, relays in total (RFC 8656 §7.2 "allocation quota"), a token bucket of bytes
  and packets per relay, and an idle timeout that frees the ports (RFC 8656 §3.2: allocations expire
  unless refreshed; here any traffic refreshes). Each refusal and each expiry logs one line.

Lifetime (when the two ports are given back):
- a relay is allocated for every ME_CONNECT between two relay-capable peers, before anyone knows
  whether a direct pair will work. A relay that is *unused* -- it never forwarded anything but ME
  connectivity checks (plaintext INFORMATIONAL, SPIs 0/0, after the non-ESP marker), i.e. neither
  the mediated IKE_SA nor its ESP ever went through it -- is freed after `unused_timeout` (default
  15 s) without traffic instead of `idle_timeout`. This covers a relay that never latched both sides
  and one whose relayed pair was checked (both sides latched by the checks) while a direct pair was
  selected: the server cannot see where the mediated IKE_SA was established (it never passes through
  the server unless it uses the relay, and the protocol has no message saying so), so the short
  timeout after the last check is how such a relay goes. The ME_CONNECT response that completes the
  exchange refreshes it (`touch`). Once anything else was forwarded the relay is *in use* and only
  `idle_timeout` applies;
- when a peer's mediation SA is destroyed and the peer did not re-register (it is offline at the
  server, `release_peer`), its relays are freed -- except those that carry traffic: both sides
  latched and active within `idle_timeout`. The data path does not depend on the mediation SA (a
  mediated IKE_SA and its CHILD_SAs through the relay outlive it, and a client finishes its checks
  without it); those relays end by the idle timeout, or the unused timeout if only checks went
  through them. A re-registration that replaces the mediation SA (rekey, reauthentication,
  uniqueness replace) frees nothing.

`DataRelay` is a table: `allocate()` -> ports, `receive(data, port, src, now)` -> datagrams to send
(data, out port, destination), `get_timer()` / `handle_timer(now)` for expiry, `release_peer()` when a
peer goes offline, `take_changes()` for the socket layer (ports to open / close).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("mediation_server.relay")

Addr = tuple[str, int]
Datagram = tuple[bytes, int, Addr]  # (payload, local relay port to send from, destination)


@dataclass(frozen=True)
class RelayConfig:
    """`[mediation]` settings `relay*` (see daemon.py); defaults are deliberately modest."""

    enabled: bool = True
    ports: tuple[int, int] = (50000, 50999)  # inclusive range; two ports per relay
    per_peer: int = 8  # relays one peer may hold (RFC 8656 §7.2 quota)
    total: int = 200  # relays in total
    idle_timeout: float = 120.0  # s without traffic (either way) -> ports freed
    unused_timeout: float = 15.0  # same, for a relay that never forwarded anything but ME checks
    rate_bytes: float = 2_000_000.0  # bytes/s per relay, both directions together (token bucket)
    rate_packets: float = 4000.0  # packets/s per relay
    burst: float = 0.5  # bucket depth, in seconds of the rates

    def __post_init__(self) -> None:
        lo, hi = self.ports
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError(f"relay port range {lo}-{hi} invalid (1024..65535)")
        if not (self.idle_timeout > 0 and self.unused_timeout > 0):
            raise ValueError("relay timeouts must be positive")


@dataclass
class Side:
    identity: str
    ip: str  # the IP address of this peer's mediation SA: the only one allowed to latch
    port: int  # the relay port this side sends to, and receives the other side's datagrams from
    latched: Addr | None = None
    bytes_in: int = 0
    packets_in: int = 0


@dataclass
class Relay:
    id: int
    connect_id: bytes
    address: str  # the server address the ports are on
    a: Side  # the ME_CONNECT initiator
    b: Side
    created: float
    last_activity: float
    tokens: float = 0.0
    packet_tokens: float = 0.0
    refill_at: float = 0.0
    rate_drops: int = 0
    in_use: bool = False  # forwarded something other than a connectivity check (module docstring)
    freed_reason: str = ""

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    @property
    def bytes(self) -> int:
        return self.a.bytes_in + self.b.bytes_in

    @property
    def both_latched(self) -> bool:
        return self.a.latched is not None and self.b.latched is not None


_CHECK_PREFIX = bytes(20)  # non-ESP marker (4) + IKE SPIs 0/0 (16)
_INFORMATIONAL = 37


def is_check(data: bytes) -> bool:
    """An ME connectivity check as the relay sees it (core_ike.me.checks): non-ESP marker, an IKE header
    with zero SPIs, exchange INFORMATIONAL. Anything else (IKE_SA_INIT, IKE, ESP, keepalives) is use."""
    return len(data) >= 32 and data[22] == _INFORMATIONAL and data.startswith(_CHECK_PREFIX)


@dataclass(frozen=True)
class RelayStatus:
    id: int
    connect_id: str
    address: str
    a: str
    b: str
    a_port: int  # where A sends (A reaches B here)
    b_port: int
    a_latched: Addr | None
    b_latched: Addr | None
    bytes_a_to_b: int
    bytes_b_to_a: int
    packets: int
    idle: float
    age: float
    in_use: bool = False


@dataclass
class Changes:
    opened: list[tuple[str, int]] = field(default_factory=list)
    closed: list[tuple[str, int]] = field(default_factory=list)


class RelayRefused(Exception):
    """allocate() refused (limits, no free ports); the message is the logged reason."""


class DataRelay:
    def __init__(self, config: RelayConfig | None = None) -> None:
        self.config = config or RelayConfig()
        self._relays: dict[int, Relay] = {}
        self._by_port: dict[int, tuple[Relay, Side]] = {}
        self._by_cid: dict[bytes, Relay] = {}
        self._held: dict[str, int] = {}  # identity -> relays it is a side of (the per-peer limit, asked per ME_CONNECT)
        self._next_id = 1
        lo, _hi = self.config.ports
        self._cursor = lo
        self._changes = Changes()
        # the earliest expiry, kept until a relay is added, active, in use or gone (get_timer is asked after
        # every datagram the server handles, most of them IKE messages, not relayed ones)
        self._due: float | None = None
        self._due_known = True
        self._refused: str | None = None  # the reason of the last refusal, while nothing was allocated since
        self.stats = {"allocated": 0, "refused": 0, "expired": 0, "forwarded": 0, "dropped": 0, "released": 0}

    def __len__(self) -> int:
        return len(self._relays)

    def __iter__(self) -> Iterator[Relay]:
        return iter(list(self._relays.values()))

    # ------------------------------------------------------------------ allocation
    def allocate(self, connect_id: bytes, address: str, a: tuple[str, str], b: tuple[str, str],
                 now: float) -> Relay:
        """A relay between a = (identity, mediation SA IP) and b; raises RelayRefused (logged)."""
        cfg = self.config
        old = self._by_cid.get(connect_id)
        if old is not None:
            return old
        why = None
        if len(self._relays) >= cfg.total:
            why = f"relay limit reached ({cfg.total} relays)"
        else:
            for ident, _ in (a, b):
                n = self._held.get(ident, 0)
                if n >= cfg.per_peer:
                    why = f"'{ident}' holds {n} relays (limit {cfg.per_peer})"
                    break
        ports = self._free_ports(2) if why is None else []
        if why is None and len(ports) < 2:
            why = f"no free relay ports in {cfg.ports[0]}-{cfg.ports[1]}"
        if why is not None:
            self.stats["refused"] += 1
            # a peer at its limit is refused on each ME_CONNECT until one of its relays goes: the first
            # refusal for a reason is logged at info, its repetitions (counted in stats) at debug
            again, self._refused = why == self._refused, why
            log.log(logging.DEBUG if again else logging.INFO, "relay for '%s' <-> '%s' refused: %s%s", a[0], b[0],
                    why, " (again)" if again else "")
            raise RelayRefused(why)
        self._refused = None
        r = Relay(self._next_id, connect_id, address, Side(a[0], a[1], ports[0]), Side(b[0], b[1], ports[1]),
                  now, now, cfg.rate_bytes * cfg.burst, cfg.rate_packets * cfg.burst, now)
        self._next_id += 1
        self._relays[r.id] = r
        if self._due_known:
            self._due = self._expires(r) if self._due is None else min(self._due, self._expires(r))
        self._by_cid[connect_id] = r
        for ident in {a[0], b[0]}:
            self._held[ident] = self._held.get(ident, 0) + 1
        for side in (r.a, r.b):
            self._by_port[side.port] = (r, side)
            self._changes.opened.append((address, side.port))
        self.stats["allocated"] += 1
        # logged by the owner once the ME_CONNECT carrying its endpoint has left (RelaySockets.on_event)
        return r

    def _free_ports(self, n: int) -> list[int]:
        lo, hi = self.config.ports
        out: list[int] = []
        for _ in range(hi - lo + 1):
            p = self._cursor
            self._cursor = lo if p >= hi else p + 1
            if p not in self._by_port and p not in out:
                out.append(p)
                if len(out) == n:
                    break
        return out

    def by_connect_id(self, connect_id: bytes) -> Relay | None:
        return self._by_cid.get(connect_id)

    def touch(self, relay: Relay, now: float) -> None:
        """Signalling for this relay went through the server (the ME_CONNECT response): not idle."""
        relay.last_activity = max(relay.last_activity, now)
        self._due_known = False

    def carries_traffic(self, relay: Relay, now: float) -> bool:
        """Both sides latched and active within the idle timeout (kept when a peer goes offline)."""
        return relay.both_latched and now - relay.last_activity < self.config.idle_timeout

    def release_peer(self, identity: str, now: float) -> list[Relay]:
        """`identity` went offline (its mediation SA gone, not re-registered): free its relays except
        those carrying traffic (module docstring); returns the freed ones."""
        gone = [r for r in self._relays.values()
                if identity in (r.a.identity, r.b.identity) and not self.carries_traffic(r, now)]
        for r in gone:
            self.stats["released"] += 1
            self.release(r.id, f"mediation SA of '{identity}' gone")
        kept = self._held.get(identity, 0)
        if kept:
            log.info("'%s' offline: keeping %d relay(s) that carry traffic", identity, kept)
        return gone

    def release(self, relay_id: int, reason: str) -> None:
        r = self._relays.pop(relay_id, None)
        if r is None:
            return
        self._due_known = False
        r.freed_reason = reason
        self._by_cid.pop(r.connect_id, None)
        for ident in {r.a.identity, r.b.identity}:
            if (n := self._held.get(ident, 0) - 1) > 0:
                self._held[ident] = n
            else:
                self._held.pop(ident, None)
        for side in (r.a, r.b):
            self._by_port.pop(side.port, None)
            self._changes.closed.append((r.address, side.port))
        log.info("relay %d '%s' <-> '%s' freed: %s (%d bytes A->B, %d bytes B->A)", r.id, r.a.identity,
                 r.b.identity, reason, r.a.bytes_in, r.b.bytes_in)

    # ------------------------------------------------------------------ datagrams
    def receive(self, data: bytes, port: int, src: Addr, now: float) -> list[Datagram]:
        """A datagram arrived at relay port `port` from `src`: what to send, if anything."""
        hit = self._by_port.get(port)
        if hit is None:
            self.stats["dropped"] += 1
            return []
        r, side = hit
        if src[0] != side.ip:
            # RFC 8656 §9: only the permitted peer IP; nobody else can latch or inject
            self.stats["dropped"] += 1
            log.debug("relay %d: dropping datagram from %s[%d] at port %d (expected %s)", r.id, src[0], src[1],
                      port, side.ip)
            return []
        if side.latched != src:
            if side.latched is not None:
                log.info("relay %d: '%s' moved from %s[%d] to %s[%d]", r.id, side.identity, side.latched[0],
                         side.latched[1], src[0], src[1])
            else:
                log.info("relay %d: '%s' latched at %s[%d]", r.id, side.identity, src[0], src[1])
            side.latched = src
        r.last_activity = now
        self._due_known = False
        other = r.other(side)
        if other.latched is None or not self._take(r, len(data), now):
            self.stats["dropped"] += 1
            return []
        side.bytes_in += len(data)
        side.packets_in += 1
        if not r.in_use and not is_check(data):
            r.in_use = True
            log.info("relay %d '%s' <-> '%s' in use (first datagram other than a check, from '%s')", r.id,
                     r.a.identity, r.b.identity, side.identity)
        self.stats["forwarded"] += 1
        return [(data, other.port, other.latched)]

    def _take(self, r: Relay, size: int, now: float) -> bool:
        """Token bucket on bytes and packets (refill at the configured rates, depth `burst` s)."""
        cfg = self.config
        dt = max(0.0, now - r.refill_at)
        r.refill_at = now
        r.tokens = min(cfg.rate_bytes * cfg.burst, r.tokens + dt * cfg.rate_bytes)
        r.packet_tokens = min(cfg.rate_packets * cfg.burst, r.packet_tokens + dt * cfg.rate_packets)
        if r.tokens < size or r.packet_tokens < 1.0:
            if r.rate_drops == 0:
                log.info("relay %d '%s' <-> '%s': rate limit (%g B/s, %g packets/s), dropping", r.id,
                         r.a.identity, r.b.identity, cfg.rate_bytes, cfg.rate_packets)
            r.rate_drops += 1
            return False
        r.tokens -= size
        r.packet_tokens -= 1.0
        if r.rate_drops:
            log.info("relay %d: below the rate limit again after %d drops", r.id, r.rate_drops)
            r.rate_drops = 0
        return True

    # ------------------------------------------------------------------ timers and the socket layer
    def _expires(self, r: Relay) -> float:
        cfg = self.config
        return r.last_activity + (cfg.idle_timeout if r.in_use else min(cfg.unused_timeout, cfg.idle_timeout))

    def get_timer(self) -> float | None:
        if not self._due_known:
            self._due = min((self._expires(r) for r in self._relays.values()), default=None)
            self._due_known = True
        return self._due

    def handle_timer(self, now: float) -> list[Relay]:
        """Free the relays idle for `idle_timeout` (unused ones: `unused_timeout`); returns them, each
        with `freed_reason` "idle" or "unused"."""
        gone = [r for r in self._relays.values() if now >= self._expires(r)]
        self._due_known = False
        for r in gone:
            self.stats["expired"] += 1
            what = "idle" if r.in_use else "unused"
            self.release(r.id, f"{what} for {now - r.last_activity:.0f} s")
            r.freed_reason = what
        return gone

    def take_changes(self) -> Changes:
        """Ports opened and closed since the last call (the socket layer binds / closes them)."""
        out, self._changes = self._changes, Changes()
        return out

    def status(self, now: float) -> list[RelayStatus]:
        return [RelayStatus(r.id, r.connect_id.hex(), r.address, r.a.identity, r.b.identity, r.a.port,
                            r.b.port, r.a.latched, r.b.latched, r.a.bytes_in, r.b.bytes_in,
                            r.a.packets_in + r.b.packets_in, now - r.last_activity, now - r.created, r.in_use)
                for r in self._relays.values()]
