"""The OS side of host-candidate gathering ([ME] §3.3.1): which addresses this host has.

The sans-IO core decides which of them to offer (`core_ike.me.endpoints.host_candidates`); this module
reads them from the kernel (rtnetlink through pyroute2, which the data plane already uses) and keeps a
snapshot, so that building an ME_CONNECT never waits for the OS: the snapshot is taken when the daemon
starts and refreshed every `REFRESH` seconds on one `core_ike.io.netlink.NetlinkWorker` (one rtnetlink
socket in one thread for the daemon's life: pyroute2's synchronous API refuses to run inside an event
loop's thread, and the loop must not wait for the kernel). Addresses that appear later have no IKE
socket anyway (the transport binds at start), so a snapshot as old as that loses nothing the filter
would keep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import Any

from core_ike.io.netlink import NetlinkWorker
from core_ike.me.endpoints import HostAddress, host_candidates

log = logging.getLogger("mediation_client")

REFRESH = 10.0  # seconds between two reads of the host's addresses
IFF_UP = 0x1  # linux/if.h
IFF_LOOPBACK = 0x8
# linux/if_addr.h: an address that cannot be a source (yet): DAD running or failed (RFC 4862 5.4)
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08


def read_host_addresses() -> list[HostAddress]:
    """Every address of every interface, with what the filter needs to know about it (blocking; from
    any thread, an event loop's included), on a netlink worker of its own: for a one-off read."""
    nl = NetlinkWorker("netlink-hostaddr")
    try:
        return nl.call(read_with)
    finally:
        nl.close()


def read_with(ipr: Any) -> list[HostAddress]:
    """The read itself, on a NetlinkWorker's `IPRoute`."""
    links = {int(link["index"]): link for link in ipr.get_links()}
    return [h for h in (_host_address(a, links) for a in ipr.get_addr()) if h is not None]


def _host_address(msg: Any, links: dict[int, Any]) -> HostAddress | None:
    ip = msg.get_attr("IFA_ADDRESS")
    if not ip:
        return None
    link = links.get(int(msg["index"]))
    flags = int(link["flags"]) if link is not None else 0
    name = str(link.get_attr("IFLA_IFNAME") or "") if link is not None else ""
    aflags = int(msg.get_attr("IFA_FLAGS") or msg["flags"] or 0)
    usable = bool(flags & IFF_UP) and not aflags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    return HostAddress(str(ip), name, loopback=bool(flags & IFF_LOOPBACK), usable=usable)


class HostAddresses:
    """A snapshot of the host's addresses and the filter over it, as `MediationClientConfig.host_addresses`.

    `bound()` gives the addresses our IKE sockets are bound to (read at each call: the transport may
    rebind); `exclude_interfaces` names our own TUN device. The kernel is read on one NetlinkWorker,
    opened by the first read and kept until `close`; `read` replaces that (tests).
    """

    def __init__(self, bound: Callable[[], Collection[str]], exclude_interfaces: Collection[str] = (),
                 exclude_addresses: Callable[[], Collection[str]] = tuple,
                 read: Callable[[], list[HostAddress]] | None = None) -> None:
        self.bound = bound
        self.exclude_interfaces = tuple(exclude_interfaces)
        self.exclude_addresses = exclude_addresses
        self.read = read
        self.netlink: NetlinkWorker | None = None
        self.snapshot: list[HostAddress] = []
        # the last filter result and what it was computed from: an ME_CONNECT is built on the `up`'s
        # critical path, and parsing every address again (ipaddress) costs more than comparing inputs
        self._memo: tuple[list[HostAddress], tuple[str, ...], tuple[str, ...], list[str]] | None = None

    def _submit(self) -> Future[list[HostAddress]]:
        if self.netlink is None:
            self.netlink = NetlinkWorker("netlink-hostaddr")
        return self.netlink.submit(read_with)

    def close(self) -> None:
        if self.netlink is not None:
            self.netlink.close()
            self.netlink = None

    def refresh(self) -> None:
        """Read now and wait for it (at start, before the first ME_CONNECT can be built)."""
        try:
            self._set(self.read() if self.read is not None else self._submit().result(5.0))
        except Exception as e:  # noqa: BLE001 - keep the last snapshot; the srflx endpoint still works
            self._failed(e)

    def refresh_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read off the loop's thread; the snapshot is replaced (in the loop) when the read is done."""
        def done(fut: asyncio.Future[list[HostAddress]]) -> None:
            if fut.cancelled():
                return
            e = fut.exception()
            if e is not None:
                self._failed(e)
            else:
                self._set(fut.result())

        if self.read is not None:
            loop.run_in_executor(None, self.read).add_done_callback(done)
            return
        try:
            fut = self._submit()
        except Exception as e:  # noqa: BLE001 - a closed worker (the daemon stops)
            self._failed(e)
            return
        asyncio.wrap_future(fut, loop=loop).add_done_callback(done)

    def _set(self, found: list[HostAddress]) -> None:
        if not found:
            log.warning("the host has no addresses at all (reading them failed?); keeping %d known",
                        len(self.snapshot))
            return
        self.snapshot = found

    def _failed(self, e: BaseException) -> None:
        log.warning("cannot read the host's addresses (%s); keeping %d known", e, len(self.snapshot))

    def __call__(self) -> list[str]:
        bound, excluded = tuple(self.bound()), tuple(self.exclude_addresses())
        m = self._memo
        if m is not None and m[1] == bound and m[2] == excluded and m[0] == self.snapshot:
            return list(m[3])
        out = host_candidates(self.snapshot, bound, exclude_interfaces=self.exclude_interfaces,
                              exclude_addresses=excluded)
        self._memo = (list(self.snapshot), bound, excluded, list(out))
        return out
