"""The userspace data plane's security policy database (RFC 4301 4.4.1), indexed so that installing
or deleting a policy and the lookups cost the same with ten policies as with ten thousand.

Lookup order (the first match decides, RFC 4301 4.4.1 "ordered"): explicit priority, then the more
specific policy first (longest local + remote prefixes), then a trap policy after a non-trap one
with the same key (a CHILD_SA's policy before the trap that started it, same selectors); equal keys
in installation order. The policies are kept in one bucket per such key (an insertion-ordered dict);
the few distinct keys are kept sorted.

Inside a bucket, outbound policies are indexed by the shape of their selectors (IP version, local
and remote prefix length) and then by the masked local and remote network: a packet's candidates in
a bucket are one dict look-up per shape, and `ts_match` still decides (protocols and ports). Inbound
and forward policies are indexed by reqid, which is all the inbound check (RFC 4301 5.2.1) needs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from .dataplane import Direction, PolicyAction, PolicyParams
from .tsmatch import ts_match

_Key = tuple[int, int, bool]  # (priority, -(prefix lengths), trap)
_Shape = tuple[int, int, int]  # (IP version, local prefix length, remote prefix length)
_Net = tuple[int, int]  # (local network, remote network) as integers shifted by their host bits


def _key(p: PolicyParams) -> _Key:
    return (p.priority, -(p.remote.subnet.prefixlen + p.local.subnet.prefixlen), p.action == PolicyAction.TRAP)


def _shape_net(p: PolicyParams) -> tuple[_Shape, _Net]:
    lo, re = p.local.subnet, p.remote.subnet
    # a policy mixing families matches no packet (ts_match); its own shape keeps it out of the way
    ver = lo.version if lo.version == re.version else 0
    return ((ver, lo.prefixlen, re.prefixlen),
            (int(lo.network_address) >> (lo.max_prefixlen - lo.prefixlen),
             int(re.network_address) >> (re.max_prefixlen - re.prefixlen)))


def _uses_ports(p: PolicyParams) -> bool:
    return bool(p.local.protocol or p.remote.protocol or not p.local.any_port or not p.remote.any_port)


class _Bucket:
    __slots__ = ("out", "policies")

    def __init__(self) -> None:
        self.policies: dict[PolicyParams, int] = {}  # -> installation sequence number
        self.out: dict[_Shape, dict[_Net, dict[PolicyParams, int]]] = {}


class PolicyTable:
    """The ordered policies with their indexes; `add` and `remove` are O(1) in the number held
    (plus O(k) in the number k of distinct order keys when a key appears or goes)."""

    __slots__ = ("_buckets", "_inbound", "_keys", "_ports", "_seq", "_where")

    def __init__(self) -> None:
        self._where: dict[PolicyParams, _Key] = {}
        self._buckets: dict[_Key, _Bucket] = {}
        self._keys: list[_Key] = []  # sorted
        self._inbound: dict[int, dict[PolicyParams, None]] = {}  # reqid -> IN/FWD policies
        self._ports = 0  # policies with a protocol or port selector
        self._seq = 0

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, p: object) -> bool:
        return p in self._where

    def __iter__(self) -> Iterator[PolicyParams]:
        """The policies in lookup order."""
        for k in self._keys:
            yield from self._buckets[k].policies

    @property
    def ports(self) -> bool:
        """Does some policy look at protocols or ports?"""
        return self._ports > 0

    def add(self, p: PolicyParams) -> bool:
        """False if the policy is there already (it keeps its place)."""
        if p in self._where:
            return False
        key = _key(p)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket()
            bisect.insort(self._keys, key)
        self._seq += 1
        b.policies[p] = self._seq
        self._where[p] = key
        if p.direction == Direction.OUT:
            shape, net = _shape_net(p)
            b.out.setdefault(shape, {}).setdefault(net, {})[p] = self._seq
        else:
            self._inbound.setdefault(p.reqid, {})[p] = None
        self._ports += _uses_ports(p)
        return True

    def remove(self, p: PolicyParams) -> bool:
        """False if the policy is not there."""
        key = self._where.pop(p, None)
        if key is None:
            return False
        b = self._buckets[key]
        del b.policies[p]
        if p.direction == Direction.OUT:
            shape, net = _shape_net(p)
            nets = b.out[shape]
            cands = nets[net]
            del cands[p]
            if not cands:
                del nets[net]
                if not nets:
                    del b.out[shape]
        else:
            mine = self._inbound[p.reqid]
            del mine[p]
            if not mine:
                del self._inbound[p.reqid]
        if not b.policies:
            del self._buckets[key]
            del self._keys[bisect.bisect_left(self._keys, key)]
        self._ports -= _uses_ports(p)
        return True

    def lookup_out(self, src: Any, dst: Any, proto: int, sport: int, dport: int) -> PolicyParams | None:
        """The first OUT policy (in lookup order) whose selectors cover the packet's flow."""
        ver, s, d = src.version, int(src), int(dst)
        bits = src.max_prefixlen
        for k in self._keys:
            best: PolicyParams | None = None
            best_seq = 0
            for (v, lp, rp), nets in self._buckets[k].out.items():
                if v != ver:
                    continue
                cands = nets.get((s >> (bits - lp), d >> (bits - rp)))
                if not cands:
                    continue
                for p, seq in cands.items():  # in installation order
                    if best is not None and seq > best_seq:
                        break
                    if ts_match(p, src, dst, proto, sport, dport, out=True):
                        best, best_seq = p, seq
                        break
            if best is not None:
                return best
        return None

    def inbound(self, reqid: int) -> Iterator[PolicyParams]:
        """The IN and FWD policies of a reqid."""
        return iter(self._inbound.get(reqid, ()))
