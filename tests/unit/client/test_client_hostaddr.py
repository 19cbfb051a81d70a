"""The mediation client's host addresses ([ME] §3.3.1): read from the kernel by the adapter, filtered by
the core's pure `host_candidates` against the sockets the daemon has bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core_ike.me.endpoints import HostAddress
from mediation_client.hostaddr import HostAddresses, read_host_addresses


def test_reads_the_kernel_addresses_with_their_interface_facts() -> None:
    found = read_host_addresses()  # rtnetlink dump: no privileges needed
    lo = [h for h in found if h.address == "127.0.0.1"]
    assert lo and lo[0].loopback and lo[0].interface == "lo"
    assert all(h.address and isinstance(h.usable, bool) for h in found)


def test_reads_inside_a_running_event_loop_too() -> None:
    """The daemon reads from its loop's thread, where pyroute2's synchronous API refuses to run."""
    async def main() -> tuple[list[HostAddress], list[str]]:
        hosts = HostAddresses(lambda: ["0.0.0.0"])
        hosts.refresh()
        found = list(hosts.snapshot)
        hosts.snapshot = []
        hosts.refresh_soon(asyncio.get_running_loop())
        while not hosts.snapshot:
            await asyncio.sleep(0.01)
        hosts.close()
        return found, hosts()

    found, offered = asyncio.run(asyncio.wait_for(main(), 10))
    assert any(h.address == "127.0.0.1" and h.loopback for h in found)
    assert "127.0.0.1" not in offered


def test_snapshot_filtered_by_the_bound_sockets() -> None:
    reads: list[int] = []
    host = [HostAddress("10.1.0.2", "eth0"), HostAddress("10.10.1.1", "lo", loopback=True),
            HostAddress("10.99.0.1", "ipsec0"), HostAddress("192.0.2.7", "eth1")]

    def read() -> list[HostAddress]:
        reads.append(1)
        return host

    bound = ["10.1.0.2", "10.10.1.1", "10.99.0.1"]
    hosts = HostAddresses(lambda: bound, ("ipsec0",), read=read)
    assert hosts() == []  # nothing read yet: no host endpoint, never a blocking OS call here
    hosts.refresh()
    assert hosts() == ["10.1.0.2"] and len(reads) == 1
    assert hosts() == ["10.1.0.2"] and len(reads) == 1  # calls read the snapshot, not the OS
    bound.append("192.0.2.7")  # the transport bound one more address
    assert hosts() == ["10.1.0.2", "192.0.2.7"]


def test_a_failed_read_keeps_the_last_snapshot() -> None:
    answers: list[list[HostAddress] | Exception] = [[HostAddress("10.1.0.2", "eth0")], OSError("netlink")]

    def read() -> list[HostAddress]:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    hosts = HostAddresses(lambda: ["0.0.0.0"], read=read)
    hosts.refresh()
    hosts.refresh()
    assert hosts() == ["10.1.0.2"]


def test_refreshes_share_one_netlink_socket_and_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refresh (at start, then every REFRESH s) reads on the same NetlinkWorker: one IPRoute and
    one thread for the daemon's life, not one of each per read; `close` ends that thread."""
    import pyroute2

    from core_ike.io import netlink

    opened: list[object] = []

    class CountingIPRoute(netlink.IPRoute):  # type: ignore[misc]
        def __init__(self, *a: object, **kw: object) -> None:
            opened.append(self)
            super().__init__(*a, **kw)

    monkeypatch.setattr(netlink, "IPRoute", CountingIPRoute)
    monkeypatch.setattr(pyroute2, "IPRoute", CountingIPRoute)

    def hostaddr_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "netlink-hostaddr"]

    async def main() -> HostAddresses:
        hosts = HostAddresses(lambda: ["0.0.0.0"])
        hosts.refresh()
        for _ in range(4):
            hosts.snapshot = []
            hosts.refresh_soon(asyncio.get_running_loop())
            while not hosts.snapshot:  # replaced in the loop when the read is done
                await asyncio.sleep(0.01)
        return hosts

    before = set(hostaddr_threads())
    hosts = asyncio.run(asyncio.wait_for(main(), 10))
    assert any(h.address == "127.0.0.1" for h in hosts.snapshot)
    (thread,) = set(hostaddr_threads()) - before
    assert len(opened) == 1
    hosts.close()
    thread.join(5)
    assert not thread.is_alive()


def test_filter_result_follows_snapshot_sockets_and_exclusions() -> None:
    """The filter's result is reused only while its inputs are the same."""
    snap = [HostAddress("10.1.0.2", "eth0"), HostAddress("192.0.2.9", "eth1")]
    bound = ["10.1.0.2"]
    excluded: list[str] = []
    hosts = HostAddresses(lambda: bound, exclude_addresses=lambda: excluded, read=lambda: list(snap))
    hosts.refresh()
    first = hosts()
    assert first == ["10.1.0.2"]
    first.append("x")  # a caller's change does not leak into the next answer
    assert hosts() == ["10.1.0.2"]
    bound.append("0.0.0.0")  # the transport bound the wildcard
    assert hosts() == ["10.1.0.2", "192.0.2.9"]
    excluded.append("192.0.2.9")  # a virtual IP of ours
    assert hosts() == ["10.1.0.2"]
    hosts.snapshot = [HostAddress("10.1.0.2", "eth0", usable=False), HostAddress("10.1.0.3", "eth0")]
    assert hosts() == ["10.1.0.3"]
