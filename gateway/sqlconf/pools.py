"""Virtual IP pools in the database (strongSwan's `pools`, `addresses`, `leases` tables, the way its
`ipsec pool` tool and attr-sql plugin use them; docs/gateway.md, "Pools").

A pool is a named address range with a lease timeout; every address of it is a row of `addresses`
that remembers the identity that last held it. An identity asking again gets its own address back,
also after a daemon restart, as long as nobody else took it: with a timeout, a released address goes
to another identity only `timeout` seconds after its release; with timeout 0 (static), never.

`PoolAdmin` is the command line's side (add, del, status, leases; one transaction each).
`DbVipPool` is the daemon's: it answers from memory (the event loop never waits for SQL) and writes
each acquire and release behind, in a worker thread, in the order they happened.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from core_ike.errors import LocalError
from core_ike.ike.context import Vip
from core_ike.ike.identity import Identity
from core_ike.ike.vips import VipPool

from . import models as m
from .loader import identity_of

log = logging.getLogger("gateway.pools")


def parse_range(spec: str, end: str | None = None) -> tuple[Vip, Vip]:
    """`10.3.0.0/16` (its hosts: network and broadcast addresses left out, as strongSwan does) or a
    start and an end address."""
    try:
        if end is not None:
            a, b = ipaddress.ip_address(spec), ipaddress.ip_address(end)
        else:
            net = ipaddress.ip_network(spec, strict=False)
            a, b = net.network_address, net.broadcast_address
            if net.num_addresses > 2:
                a, b = a + 1, b - 1
    except ValueError as e:
        raise LocalError(f"bad address range {spec}{' ' + end if end else ''}: {e}") from None
    if a.version != b.version or int(a) > int(b):
        raise LocalError(f"address range {a}..{b} is empty")
    return a, b


def _ip(raw: Any) -> Vip:
    return ipaddress.ip_address(bytes(raw))


# ------------------------------------------------------------------------------------ the CLI's side


class PoolAdmin:
    """`ikeme-ipsec pool add|del|status|leases` on the database (like `ipsec pool --add ...`)."""

    def __init__(self, db: Engine) -> None:
        self.db = db
        m.Base.metadata.create_all(db)

    def add(self, name: str, start: Vip, end: Vip, timeout: int) -> int:
        """The pool and one `addresses` row per address; returns the number of addresses."""
        if timeout < 0:
            raise LocalError("the lease timeout is a number of seconds >= 0")
        size = int(end) - int(start) + 1
        if size > 1 << 20:
            raise LocalError(f"pool of {size} addresses: at most 1048576 (a /12 or a /108)")
        with Session(self.db) as s, s.begin():
            if s.scalar(select(m.PoolRow.id).where(m.PoolRow.name == name)) is not None:
                raise LocalError(f"pool {name!r} exists already")
            pool = m.PoolRow(name=name, start=start.packed, end=end.packed, timeout=timeout)
            s.add(pool)
            s.flush()
            first = int(start)
            rows = [{"pool": pool.id, "address": ipaddress.ip_address(first + i).packed, "identity": 0,
                     "acquired": 0, "released": 1} for i in range(size)]
            for i in range(0, size, 10000):
                s.execute(insert(m.AddressRow), rows[i:i + 10000])
        return size

    def delete(self, name: str) -> None:
        with Session(self.db) as s, s.begin():
            pid = s.scalar(select(m.PoolRow.id).where(m.PoolRow.name == name))
            if pid is None:
                raise LocalError(f"no pool named {name!r}")
            ids = select(m.AddressRow.id).where(m.AddressRow.pool == pid).scalar_subquery()
            s.execute(delete(m.LeaseRow).where(m.LeaseRow.address.in_(ids)))
            s.execute(delete(m.AddressRow).where(m.AddressRow.pool == pid))
            s.execute(delete(m.PoolRow).where(m.PoolRow.id == pid))

    def status(self) -> list[dict[str, Any]]:
        out = []
        with Session(self.db) as s:
            for p in s.scalars(select(m.PoolRow).order_by(m.PoolRow.name)):
                size = s.scalar(select(func.count()).where(m.AddressRow.pool == p.id)) or 0
                online = s.scalar(select(func.count()).where(m.AddressRow.pool == p.id,
                                                             m.AddressRow.released == 0)) or 0
                bound = s.scalar(select(func.count()).where(m.AddressRow.pool == p.id,
                                                            m.AddressRow.identity != 0)) or 0
                out.append({"name": p.name, "start": str(_ip(p.start)), "end": str(_ip(p.end)),
                            "timeout": p.timeout, "size": size, "online": online, "offline": bound - online})
        return out

    def leases(self, name: str | None = None) -> list[dict[str, Any]]:
        q = (select(m.PoolRow.name, m.AddressRow.address, m.SqlIdentity.type, m.SqlIdentity.data,
                    m.AddressRow.acquired, m.AddressRow.released)
             .join(m.AddressRow, m.AddressRow.pool == m.PoolRow.id)
             .join(m.SqlIdentity, m.SqlIdentity.id == m.AddressRow.identity)
             .order_by(m.PoolRow.name, m.AddressRow.id))
        if name is not None:
            q = q.where(m.PoolRow.name == name)
        with Session(self.db) as s:
            return [{"pool": p, "address": str(_ip(a)), "identity": str(identity_of(int(t), d)),
                     "acquired": int(acq), "released": int(rel), "online": int(rel) == 0}
                    for p, a, t, d, acq, rel in s.execute(q)]


# ------------------------------------------------------------------------------------ the daemon's side


@dataclass
class _Addr:
    row: int  # addresses.id
    ip: Vip
    identity: Identity | None
    acquired: int
    released: int  # 0 while in use


@dataclass
class _Pool:
    id: int
    name: str
    timeout: int
    addrs: list[_Addr]
    fresh: int = 0  # the next never-used address (in order)
    by_identity: dict[Identity, _Addr] = field(default_factory=dict)
    released: list[tuple[int, int]] = field(default_factory=list)  # heap of (released at, index)

    def index(self, a: _Addr) -> int:
        return int(a.ip) - int(self.addrs[0].ip)


@dataclass
class _Subnet:
    """An in-memory pool (`rightsourceip=10.3.0.0/16`): its hosts in order, the lowest free one first.
    Every offset below `next` is leased or in `free` (a heap), so a lease costs O(log n), not a scan."""

    first: int
    size: int
    version: int
    next: int = 0
    free: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, text: str) -> _Subnet:
        net = ipaddress.ip_network(text, strict=False)
        skip = 1 if net.num_addresses > 2 else 0  # network and broadcast addresses are no hosts
        return cls(int(net.network_address) + skip, net.num_addresses - 2 * skip, net.version)

    def take(self) -> Vip | None:
        if self.free:
            return ipaddress.ip_address(self.first + heapq.heappop(self.free))
        if self.next < self.size:
            self.next += 1
            return ipaddress.ip_address(self.first + self.next - 1)
        return None

    def give_back(self, vip: Vip) -> bool:
        off = int(vip) - self.first
        if vip.version != self.version or not 0 <= off < self.next:
            return False
        heapq.heappush(self.free, off)
        return True


class DbVipPool(VipPool):
    """VipPool whose pools named in a config (`%name` or `name`) live in the database (`db`; None:
    none), and whose subnets are in-memory pools handed out in order. `clock()` is the wall clock in
    seconds (leases are stored in Unix time, as strongSwan stores them)."""

    def __init__(self, db: Engine | None, clock: Any) -> None:
        super().__init__()
        self.db = db
        self.clock = clock
        self.pools: dict[str, _Pool] = {}
        self.by_ip: dict[Vip, tuple[_Pool, _Addr]] = {}
        self.subnets: dict[str, _Subnet] = {}
        self.subnet_of: dict[Vip, _Subnet] = {}
        self._writes: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()

    # -- loading (a worker thread, or start-up) ------------------------------------------------
    def read(self) -> None:
        """Load the pools this instance does not know yet; rows in use by nobody now (a daemon that
        stopped without releasing) count as released at this moment."""
        if self.db is None:
            return
        now = int(self.clock())
        with Session(self.db) as s:
            names = {p.name: p for p in s.scalars(select(m.PoolRow))}
            new = [p for n, p in names.items() if n not in self.pools]
            if not new:
                return
            ids = {int(r.id): identity_of(int(r.type), r.data) for r in s.scalars(select(m.SqlIdentity))}
            loaded = []
            for p in new:
                rows = s.execute(select(m.AddressRow.id, m.AddressRow.address, m.AddressRow.identity,
                                        m.AddressRow.acquired, m.AddressRow.released)
                                 .where(m.AddressRow.pool == p.id).order_by(m.AddressRow.address)).all()
                addrs = [_Addr(int(r[0]), _ip(r[1]), ids.get(int(r[2])) if int(r[2]) else None, int(r[3]),
                               now if int(r[4]) == 0 else int(r[4])) for r in rows]
                loaded.append(self._pool(int(p.id), p.name, int(p.timeout), addrs))
            s.execute(update(m.AddressRow).where(m.AddressRow.released == 0,
                                                 m.AddressRow.pool.in_([p.id for p in new])).values(released=now))
            s.commit()
        with self._lock:
            for pool in loaded:
                self.pools[pool.name] = pool
                for a in pool.addrs:
                    self.by_ip[a.ip] = (pool, a)
        for pool in loaded:
            log.info("virtual IP pool '%s' loaded from the database: %d addresses, timeout %d s",
                     pool.name, len(pool.addrs), pool.timeout)

    @staticmethod
    def _pool(pid: int, name: str, timeout: int, addrs: list[_Addr]) -> _Pool:
        pool = _Pool(pid, name, timeout, addrs)  # fresh = 0: _next_fresh steps over bound addresses
        for i, a in enumerate(addrs):
            if a.identity is not None:
                pool.by_identity[a.identity] = a
                heapq.heappush(pool.released, (a.released, i))
        return pool

    # -- VipPool ---------------------------------------------------------------------------------
    def lease(self, pools: list[str], identity: Identity | None = None) -> Vip | None:
        for name in pools:
            pool = self.pools.get(name.lstrip("%"))
            if pool is None:
                if _is_subnet(name):
                    vip = self._subnet_lease(name)
                    if vip is not None:
                        return vip
                    continue
                log.warning("no virtual IP pool named '%s' (ikeme-ipsec pool add)", name.lstrip("%"))
                continue
            a = self._acquire(pool, identity)
            if a is not None:
                return a.ip
        return None

    def _subnet_lease(self, name: str) -> Vip | None:
        sub = self.subnets.get(name)
        if sub is None:
            sub = self.subnets[name] = _Subnet.of(name)
        while (vip := sub.take()) is not None:
            if vip in self._holders:  # an address of an overlapping pool, or held by a database pool
                continue
            self._holders[vip] = 1
            self.subnet_of[vip] = sub
            return vip
        return None

    def _acquire(self, pool: _Pool, identity: Identity | None) -> _Addr | None:
        now = int(self.clock())
        a = pool.by_identity.get(identity) if identity is not None else None
        if a is None or a.released == 0:
            a = self._next_fresh(pool) or (self._expired(pool, now) if pool.timeout else None)
            if a is None:
                return None
            if a.identity is not None:
                pool.by_identity.pop(a.identity, None)
            a.identity = identity
            if identity is not None:
                pool.by_identity[identity] = a
        a.acquired, a.released = now, 0
        self._holders[a.ip] = 1
        self._write("acquire", (a.row, identity, now))
        return a

    def _next_fresh(self, pool: _Pool) -> _Addr | None:
        while pool.fresh < len(pool.addrs):
            a = pool.addrs[pool.fresh]
            pool.fresh += 1
            if a.identity is None and a.released != 0:
                return a
        return None

    def _expired(self, pool: _Pool, now: int) -> _Addr | None:
        """The address released longest ago, if its timeout has passed (heap entries of addresses
        taken again since are stale and skipped)."""
        while pool.released:
            at, i = pool.released[0]
            a = pool.addrs[i]
            if a.released != at or a.released == 0:
                heapq.heappop(pool.released)
                continue
            if at >= now - pool.timeout:
                return None
            heapq.heappop(pool.released)
            return a
        return None

    def release(self, vip: Vip, label: str) -> None:
        hit = self.by_ip.get(vip)
        if hit is None:
            n = self._holders.get(vip, 0) - 1
            if n > 0:
                self._holders[vip] = n
                return
            if self._holders.pop(vip, None) is not None:
                sub = self.subnet_of.pop(vip, None)
                if sub is not None:
                    sub.give_back(vip)
                log.info("released virtual IP %s of %s", vip, label)
            return
        n = self._holders.get(vip, 0) - 1
        if n > 0:
            self._holders[vip] = n
            return
        self._holders.pop(vip, None)
        pool, a = hit
        now = int(self.clock())
        a.released = now
        heapq.heappush(pool.released, (now, pool.index(a)))
        self._write("release", (a.row, a.identity, a.acquired, now))
        log.info("released virtual IP %s of %s (pool '%s')", vip, label, pool.name)

    def online(self, name: str) -> int:
        pool = self.pools.get(name)
        return 0 if pool is None else sum(1 for a in pool.addrs if a.released == 0)

    # -- writing behind ----------------------------------------------------------------------------
    def _write(self, kind: str, args: Any) -> None:
        with self._lock:
            self._writes.append((kind, args))

    def pending(self) -> int:
        return len(self._writes)

    def flush(self) -> int:
        """Write the queued acquires and releases in one transaction (a worker thread); returns how
        many. Each address row gets its final state, each release a row of history (strongSwan's
        `leases`). A failed transaction keeps them queued for the next flush."""
        with self._lock:
            batch = list(self._writes)
        if not batch or self.db is None:
            return 0
        final: dict[int, dict[str, Any]] = {}
        history: list[tuple[int, Identity | None, int, int]] = []
        for kind, args in batch:
            if kind == "acquire":
                row, ident, now = args
                final[row] = {"ident": ident, "acquired": now, "released": 0}
            else:
                row, ident, acquired, now = args
                final.setdefault(row, {"ident": ident, "acquired": acquired})["released"] = now
                history.append((row, ident, acquired, now))
        with Session(self.db) as s, s.begin():
            ids = self._identity_ids(s, {v["ident"] for v in final.values()} | {h[1] for h in history})
            t = m.AddressRow.__table__  # Core executemany: one statement, a parameter set per row
            s.connection().execute(
                t.update().where(t.c.id == bindparam("rid"))  # type: ignore[attr-defined]
                .values(identity=bindparam("iid"), acquired=bindparam("acq"), released=bindparam("rel")),
                [{"rid": row, "iid": ids.get(v["ident"], 0), "acq": v["acquired"], "rel": v["released"]}
                       for row, v in final.items()])
            if history:
                s.execute(insert(m.LeaseRow), [{"address": row, "identity": ids.get(ident, 0), "acquired": acq,
                                                "released": rel} for row, ident, acq, rel in history])
        with self._lock:
            for _ in batch:
                self._writes.popleft()
        return len(batch)

    @staticmethod
    def _identity_ids(s: Session, idents: set[Identity | None]) -> dict[Identity | None, int]:
        """identities.id of each identity, inserting the ones the table lacks (strongSwan's attr-sql
        does the same)."""
        want = {(i.id_type, b"%any" if i.is_any else i.data): i for i in idents if i is not None}
        out: dict[Identity | None, int] = {}

        def lookup() -> None:
            keys = list(want)
            for k in range(0, len(keys), 500):
                chunk = keys[k:k + 500]
                q = select(m.SqlIdentity.id, m.SqlIdentity.type, m.SqlIdentity.data).where(
                    m.SqlIdentity.data.in_([d for _, d in chunk]))
                for iid, t, d in s.execute(q):
                    hit = want.get((int(t), bytes(d)))
                    if hit is not None:
                        out[hit] = int(iid)

        lookup()
        missing = [{"type": t, "data": d} for (t, d), i in want.items() if i not in out]
        if missing:
            s.execute(insert(m.SqlIdentity), missing)
            lookup()
        return out


def _is_subnet(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
