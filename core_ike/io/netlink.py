"""One rtnetlink connection for the daemon's life, in its own thread.

pyroute2's synchronous `IPRoute` refuses to run inside a running event loop, and opening one per
operation costs a socket, a thread and the library's set-up (milliseconds on a loaded machine) on the
path from IKE_AUTH to an installed CHILD_SA. `NetlinkWorker` keeps one `IPRoute` in one thread that
runs queued operations in order (FIFO, so a route deleted and added again ends added), several per
wake-up when they queue up together.

The interface address list (for a route's preferred source) is cached and dumped again only after the
kernel announced an address change: a second netlink socket, bound to the RTMGRP_IPV4_IFADDR and
RTMGRP_IPV6_IFADDR multicast groups (rtnetlink(7)), is read by the event loop and only marks the cache
stale and queues a new dump, so a lookup normally finds the list ready. Without an event loop (or
when the subscription fails) every lookup dumps.

`RouteSocket` adds, deletes and looks up a route from the event loop's own thread: rtnetlink handles a
request inside the sender's sendmsg() and queues its answer before the call returns (rtnetlink(7),
netlink(7) NLM_F_ACK), so reading the answer right away costs one system call and no thread switch,
and the kernel's refusal still reaches the caller.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetlinkError  # type: ignore[import-untyped]

from .xfrmwire import parse_nlattrs

_T = TypeVar("_T")
log = logging.getLogger("core_ike.io.netlink")

NETLINK_ROUTE = 0
RTMGRP_IPV4_IFADDR = 0x10  # linux/rtnetlink.h
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
IFA_F_NODAD = 0x02  # linux/if_addr.h: a virtual IPv6 address is ours alone, no duplicate detection
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST = 254, 4, 253, 1
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Job = tuple[Callable[[Any], Any], "Future[Any]"]


class NetlinkClosedError(RuntimeError):
    """An operation was submitted after `close`."""


class NetlinkWorker:
    """Runs `fn(ipr)` calls on one long-lived `IPRoute` in a dedicated thread."""

    def __init__(self, name: str = "netlink") -> None:
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._ipr: Any = None
        self._addr_gen = 0  # bumped by the event loop on every address notification
        self._addrs: list[Address] = []
        self._refreshing = False  # a dump is queued
        self._addrs_gen = -1  # generation `_addrs` was dumped at (-1: never)
        self._events: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dumps = 0  # address dumps made (for tests and stats)
        self._thread.start()

    # -- lifecycle -------------------------------------------------------------------------------

    def watch_addresses(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to address changes; the cached address list is trusted from now on."""
        if self._events is not None:
            return
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE)
            s.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except OSError as e:  # e.g. a sandbox without netlink multicast: fall back to a dump per lookup
            log.debug("no address notifications (%s); dumping addresses per lookup", e)
            return
        self._events, self._loop = s, loop
        self._addr_gen += 1  # addresses may have changed before the subscription
        loop.add_reader(s.fileno(), self._on_events)
        self._refresh()

    def _on_events(self) -> None:
        assert self._events is not None
        try:
            while self._events.recv(65536):
                self._addr_gen += 1
        except BlockingIOError:
            pass
        except OSError as e:  # ENOBUFS: notifications were lost, so distrust the cache
            log.debug("address notifications: %s", e)
            self._addr_gen += 1
        self._refresh()

    def _refresh(self) -> None:
        """Queue one dump (not waited for) unless one is queued already."""
        if self._refreshing or self._closed:
            return
        self._refreshing = True

        def dump(ipr: Any) -> None:
            self._refreshing = False
            self.addresses(ipr)

        self.submit(dump)

    def addresses_changed(self) -> None:
        """Distrust the cached list now (we changed an address; its notification is still unread)."""
        self._addr_gen += 1
        self._refresh()

    def cached_addresses(self) -> list[Address] | None:
        """The address list if it is known to be current (from any thread), else None."""
        if self._events is None or self._addrs_gen != self._addr_gen:
            return None
        return self._addrs

    def close(self, timeout: float = 2.0) -> None:
        """Run what is queued, then close the netlink socket and end the thread."""
        if self._closed:
            return
        self._closed = True
        if self._events is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
        self._q.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- operations ------------------------------------------------------------------------------

    def submit(self, fn: Callable[[Any], _T]) -> Future[_T]:
        """Queue `fn(ipr)`; its result (or exception) arrives in the returned future."""
        if self._closed:
            raise NetlinkClosedError("netlink worker closed")
        fut: Future[_T] = Future()
        self._q.put((fn, fut))
        return fut

    def call(self, fn: Callable[[Any], _T], timeout: float = 5.0) -> _T:
        """`submit` and wait for the result (one netlink round trip when the queue is empty)."""
        return self.submit(fn).result(timeout)

    def addresses(self, ipr: Any) -> list[Address]:
        """The host's interface addresses; only for operations running in the worker (they get `ipr`)."""
        gen = self._addr_gen
        if self._events is None or gen != self._addrs_gen:
            self.dumps += 1
            self._addrs, self._addrs_gen = _addresses(ipr), gen
        return self._addrs

    def _run(self) -> None:
        try:
            self._ipr = IPRoute()
        except Exception as e:  # noqa: BLE001 - reported to every caller instead
            self._fail_all(e)
            return
        try:
            while True:
                job = self._q.get()
                if job is None:
                    return
                batch = [job]
                while True:  # run everything queued meanwhile in the same wake-up
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._run_batch(batch)
                        return
                    batch.append(nxt)
                self._run_batch(batch)
        finally:
            self._ipr.close()

    def _run_batch(self, batch: list[_Job]) -> None:
        for fn, fut in batch:
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self._ipr))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def _fail_all(self, err: BaseException) -> None:
        self._closed = True
        while True:
            job = self._q.get()
            if job is None:
                return
            if job[1].set_running_or_notify_cancel():
                job[1].set_exception(err)


def add_host_address(ipr: Any, index: int, address: str) -> bool:
    """`ip addr add ADDRESS/32 (/128) dev INDEX`; False when the host has that address already (then it
    is not ours to delete). For a virtual IP (RFC 7296 §2.19), as charon's kernel interface adds it."""
    ip = ipaddress.ip_address(address)
    extra = {"flags": IFA_F_NODAD} if ip.version == 6 else {}
    if any(ip == a for a in _addresses(ipr)):
        return False
    try:
        ipr.addr("add", index=index, address=str(ip), prefixlen=ip.max_prefixlen, **extra)
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            return False
        raise
    return True


def del_host_address(ipr: Any, index: int, address: str) -> None:
    """Remove what `add_host_address` added; an address (or device) already gone is no error."""
    ip = ipaddress.ip_address(address)
    try:
        ipr.addr("del", index=index, address=str(ip), prefixlen=ip.max_prefixlen)
    except NetlinkError as e:
        if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise


def _addresses(ipr: Any) -> list[Address]:
    return [ipaddress.ip_address(a) for msg in ipr.get_addr() if (a := msg.get_attr("IFA_ADDRESS"))]


RTM_DELROUTE, RTM_GETROUTE = 25, 26
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15  # linux/rtnetlink.h
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE, RT_TABLE_COMPAT = 0, 255, 252
RTM_F_LOOKUP_TABLE = 0x1000  # a lookup's answer names the table that held the route
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type, flags
RTM_NEWADDRLABEL, RTM_DELADDRLABEL = 72, 73  # linux/rtnetlink.h
IFAL_ADDRESS, IFAL_LABEL = 1, 2  # linux/if_addrlabel.h
NLM_F_EXCL = 0x200
_IFADDRLBLMSG = struct.Struct("=BBBBII")  # struct ifaddrlblmsg: family, reserved, prefixlen, flags, index, seq


@dataclass(frozen=True)
class RouteLookup:
    """The kernel's answer to a route lookup (`ip route get`): the table that held the route, its type
    (1 unicast, 2 local, ...), the next hop's address and the outgoing device."""

    table: int
    type: int
    gateway: str | None
    oif: int | None


def _rta(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + bytes(-n % 4)


def _ip_attr(atype: int, address: str) -> bytes:
    return _rta(atype, ipaddress.ip_address(address).packed)


class RouteSocket:
    """Routes added, deleted and looked up with one request and its answer on a plain rtnetlink socket
    (messages packed here: each costs tens of microseconds, not a library round)."""

    def __init__(self, timeout: float = 2.0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        # Non-blocking: the kernel handles a request inside send() and queues its answer before send()
        # returns, so the answer is read at once, with no poll() before each call as a socket timeout
        # would add; `timeout` bounds the wait only if an answer were ever late (a kernel bug).
        self._sock.setblocking(False)
        self._timeout = timeout
        self._seq = 0
        # `replace`'s request without its header and destination, by everything else it says: a data plane
        # adds its routes into one device with one source, so a route's request is one pack and a join
        self._replace_parts: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}

    def replace(self, dst: str | Network, oif: int, prefsrc: str | Address | None = None, *,
                table: int = RT_TABLE_MAIN, gateway: str | None = None, scope: int | None = None) -> None:
        """`ip route replace DST [via GATEWAY] dev OIF [src PREFSRC] table TABLE proto static [scope]`
        (default scope: link without a gateway, else universe); NetlinkError when refused. DST and PREFSRC
        as text or as ipaddress objects (a data plane holds them so: no parsing per route)."""
        net = ipaddress.ip_network(dst, strict=False) if isinstance(dst, str) else dst
        self.replace_prefix(net.version, net.prefixlen, net.network_address.packed, oif, prefsrc, table=table,
                            gateway=gateway, scope=scope)

    def replace_prefix(self, version: int, prefixlen: int, addr: bytes, oif: int, prefsrc: str | Address | None = None,
                       *, table: int = RT_TABLE_MAIN, gateway: str | None = None, scope: int | None = None) -> None:
        """`replace` with the destination as IP version, prefix length and network address (4 or 16 octets,
        host bits clear): a data plane's selector holds it so, without an ipaddress network."""
        key = (version, prefixlen, oif, prefsrc, table, gateway, scope)
        parts = self._replace_parts.get(key)
        if parts is None:
            if len(self._replace_parts) >= 256:  # bounded: next hops and sources a host has are few
                self._replace_parts.clear()
            parts = self._replace_parts[key] = _replace_parts(version, prefixlen, oif, prefsrc, table, gateway,
                                                              scope)
        rtm, tail = parts
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        n = _NLMSGHDR.size + len(rtm) + 4 + len(addr) + len(tail)  # an address is a multiple of 4 octets
        self._send_acked(b"".join((_NLMSGHDR.pack(n, RTM_NEWROUTE, _REPLACE_FLAGS, seq, 0), rtm,
                                   _RTA_HDR.pack(4 + len(addr), RTA_DST), addr, tail)), seq)

    def delete(self, dst: str | Network, table: int = RT_TABLE_MAIN, oif: int | None = None) -> None:
        """`ip route del DST [dev OIF] table TABLE`; NetlinkError (ESRCH) when there is none."""
        net = ipaddress.ip_network(dst, strict=False) if isinstance(dst, str) else dst
        attrs = _rta(RTA_DST, net.network_address.packed)
        if oif is not None:  # only the route into that device
            attrs += _rta(RTA_OIF, struct.pack("=I", oif))
        # RT_SCOPE_NOWHERE: any scope matches (as `ip route del` asks)
        self._route(RTM_DELROUTE, NLM_F_ACK, net, table, RT_SCOPE_NOWHERE, attrs)

    def lookup(self, address: str) -> RouteLookup:
        """`ip route get ADDRESS`; NetlinkError when there is no route (ENETUNREACH)."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(family, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, RTM_F_LOOKUP_TABLE) + _rta(RTA_DST, ip.packed)
        reply = self._request(RTM_GETROUTE, 0, body)
        if reply is None or len(reply) < _RTMSG.size:
            raise NetlinkError(errno.EPROTO, "no route in the kernel's answer")
        rtm_table, rtm_type = reply[4], reply[7]
        attrs = parse_nlattrs(reply[_RTMSG.size:])
        table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else rtm_table
        gw = attrs.get(RTA_GATEWAY)
        oif = attrs.get(RTA_OIF)
        return RouteLookup(table, rtm_type, str(ipaddress.ip_address(gw)) if gw else None,
                           struct.unpack("=I", oif)[0] if oif else None)

    def label(self, address: str, label: int, *, delete: bool = False) -> None:
        """`ip addrlabel add|del prefix ADDRESS/128 label LABEL`: an entry of the RFC 6724 §2.1 policy
        table for one IPv6 address (the kernel wants the label to delete one too); NetlinkError when
        refused (EEXIST: there is one; ESRCH: none to delete)."""
        mtype, flags = (RTM_DELADDRLABEL, NLM_F_ACK) if delete else (RTM_NEWADDRLABEL,
                                                                     NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        attrs = _rta(IFAL_ADDRESS, ipaddress.IPv6Address(address).packed) + _rta(IFAL_LABEL, struct.pack("=I", label))
        self._request(mtype, flags, _IFADDRLBLMSG.pack(socket.AF_INET6, 0, 128, 0, 0, 0) + attrs)

    def _route(self, mtype: int, flags: int, net: ipaddress.IPv4Network | ipaddress.IPv6Network, table: int,
               scope: int, attrs: bytes) -> None:
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        rtm = _RTMSG.pack(family, net.prefixlen, 0, 0, table if table < 256 else RT_TABLE_COMPAT, RTPROT_STATIC,
                          scope, RTN_UNICAST, 0)
        self._request(mtype, flags, rtm + attrs + _rta(RTA_TABLE, struct.pack("=I", table)))

    def _request(self, mtype: int, flags: int, body: bytes) -> bytes | None:
        """Send one request; the body of the kernel's answer, None for an acknowledgement; NetlinkError
        when refused."""
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        return self._send_acked(
            _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, NLM_F_REQUEST | flags, seq, 0) + body, seq)

    def _send_acked(self, msg: bytes, seq: int) -> bytes | None:
        """Send one request message numbered `seq` and read the kernel's answer to it (see `_request`)."""
        self._sock.send(msg)
        while True:
            data = self._recv()
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, rtype, _flags, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
                if rseq == seq:
                    if rtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, off + 16)
                        if code:
                            raise NetlinkError(-code, os.strerror(-code))
                        return None
                    return data[off + 16:off + length]
                off += max((length + 3) & ~3, 16)

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(65536)
        except BlockingIOError:
            if not select.select([self._sock], [], [], self._timeout)[0]:
                raise TimeoutError(f"no netlink answer within {self._timeout} s") from None
            return self._sock.recv(65536)

    def close(self) -> None:
        self._sock.close()


_RTA_HDR = struct.Struct("=HH")
_REPLACE_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


def _replace_parts(version: int, prefixlen: int, oif: int, prefsrc: str | Address | None, table: int,
                   gateway: str | None, scope: int | None) -> tuple[bytes, bytes]:
    """`RouteSocket.replace`'s request around its destination attribute: the rtmsg, then the attributes
    after RTA_DST (device, next hop, preferred source, table)."""
    attrs = _rta(RTA_OIF, struct.pack("=I", oif))
    if gateway:
        attrs += _ip_attr(RTA_GATEWAY, gateway)
    if prefsrc:
        attrs += _ip_attr(RTA_PREFSRC, prefsrc) if isinstance(prefsrc, str) else _rta(RTA_PREFSRC, prefsrc.packed)
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    rtm = _RTMSG.pack(family, prefixlen, 0, 0, table if table < 256 else RT_TABLE_COMPAT, RTPROT_STATIC, scope,
                      RTN_UNICAST, 0)
    return rtm, attrs + _rta(RTA_TABLE, struct.pack("=I", table))
