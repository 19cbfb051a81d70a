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


_OUT, _TRAP = Direction.OUT, PolicyAction.TRAP  # bound once: an Enum member read off its class runs Python code


def _key(p: PolicyParams) -> _Key:
    return (p.priority, -(p.remote.net[1] + p.local.net[1]), p.action == _TRAP)


def _shape_net(p: PolicyParams) -> tuple[_Shape, _Net]:
    """From the selectors' `net` (version, prefix length, network as an integer): no ipaddress object."""
    lver, lp, lo = p.local.net
    rver, rp, re = p.remote.net
    # a policy mixing families matches no packet (ts_match); its own shape keeps it out of the way
    if lver != rver:
        return (0, lp, rp), (lo >> ((32 if lver == 4 else 128) - lp), re >> ((32 if rver == 4 else 128) - rp))
    bits = 32 if lver == 4 else 128
    return (lver, lp, rp), (lo >> (bits - lp), re >> (bits - rp))


def _uses_ports(p: PolicyParams) -> bool:
    lo, re = p.local, p.remote
    return bool(lo.protocol or re.protocol or lo.port_start or re.port_start or lo.port_end != 65535
                or re.port_end != 65535)


class _Bucket:
    __slots__ = ("key", "out", "policies")

    def __init__(self, key: _Key) -> None:
        self.key = key
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
        where = self._where
        if p in where:
            return False
        key = _key(p)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(key)
            bisect.insort(self._keys, key)
        self._seq = seq = self._seq + 1
        b.policies[p] = seq
        where[p] = b.key  # the bucket's own key: one tuple per order key, not one per policy
        if p.direction == _OUT:
            shape, net = _shape_net(p)
            nets = b.out.get(shape)
            if nets is None:
                nets = b.out[shape] = {}
            cands = nets.get(net)
            if cands is None:
                cands = nets[net] = {}
            cands[p] = seq
        else:
            mine = self._inbound.get(p.reqid)
            if mine is None:
                mine = self._inbound[p.reqid] = {}
            mine[p] = None
        if _uses_ports(p):
            self._ports += 1
        return True

    def remove(self, p: PolicyParams) -> bool:
        """False if the policy is not there."""
        key = self._where.pop(p, None)
        if key is None:
            return False
        b = self._buckets[key]
        del b.policies[p]
        if p.direction == _OUT:
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
