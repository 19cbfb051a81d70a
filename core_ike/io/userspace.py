"""Userspace ESP data plane over a TUN device (the default where the kernel lacks ESP).

Outbound: IP packet read from TUN -> policy lookup (destination, source, protocol, ports) -> the
current outbound SA of the policy's reqid -> `EspSa.seal` -> ESP-in-UDP through the IKE transport's
4500 socket (RFC 3948, `send_udp`) or plain ESP on a raw IP protocol 50 socket (RFC 4303).
Inbound: the transport's demux (RFC 3948 2.2: non-zero first word) calls `receive_esp`; raw ESP
arrives on our own protocol 50 socket -> SA by SPI -> `open` -> inbound policy check -> TUN.

The 4500 socket must NOT have the UDP_ENCAP option set (the kernel would swallow ESP, docs/nat-lab.md §6).
Routes for the remote traffic selectors point into the TUN device (pyroute2).
Kernel offloads (TSO reads from the TUN device, UDP_SEGMENT sends, UDP_GRO reads, GSO writes to the
TUN device) and how to switch each off: `core_ike.io.fastpath`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import NetlinkError  # type: ignore[import-untyped]

from ..esp import USERSPACE, EspSa, InboundSad, SequenceExhaustedError
from ..esp.sa import SealRun
from .acquire import AcquireLimiter
from .batchsteps import BatchSteps
from .dataplane import (
    Acquire,
    DataPlaneError,
    DataPlaneEvent,
    Direction,
    PolicyAction,
    PolicyParams,
    SaParams,
    SaUsage,
    SendDatagram,
)
from .fastpath import (
    DEFAULT_STEPS,
    OFFLOAD_STEPS,
    UdpEspIo,
    grow_rcvbuf,
    limit_tun_gso,
    open_tun,
    quiet_tun_ipv6,
)
from .netlink import Address, NetlinkWorker, RouteSocket, add_host_address, del_host_address
from .offload import (
    VNET_HDR_LEN,
    OffloadError,
    VnetHdr,
    segment,
)
from .satimers import SaState, SaTimers
from .spd import PolicyTable
from .tsmatch import packet_flow, ts_match

log = logging.getLogger("core_ike.io.userspace")

IPPROTO_ESP = 50
_ROUTED = (PolicyAction.PROTECT, PolicyAction.TRAP)
# bound once: Python 3.11 reads an Enum member off its class through EnumType's attribute hook (Python code)
_IN, _OUT = Direction.IN, Direction.OUT
_READ_BATCH = 64  # packets per readiness callback
_FLOW_CACHE_MAX = 65536  # flows remembered per direction; past it the cache starts afresh (bounded memory)


_SaState = SaState  # the name `core_ike.io.batchsteps` knows it by


@dataclass(slots=True)
class SaStatus:
    """One row of the SA listing (for `ikectl list-sas`)."""

    spi: int
    direction: str
    reqid: int
    src: str
    dst: str
    encap: bool
    algorithm: str
    seq_out: int
    replay_top: int
    installed: float
    counters: dict[str, float | int] = field(default_factory=dict)


class UserspaceDataPlane(BatchSteps, SaTimers):
    """ESP in Python over TUN; implements `core_ike.io.dataplane.DataPlane`."""

    name = "userspace"
    esp_transforms = USERSPACE  # everything EspSa runs: AES-GCM/CCM 8/12/16, ChaCha20-Poly1305, AES-CBC+HMAC

    def __init__(  # noqa: PLR0913 - keyword-only settings, each defaulted; choose_backend passes them by name
        self,
        send_udp: SendDatagram | None = None,
        *,
        tun_name: str = "ipsec0",
        mtu: int = 1400,
        tun_addresses: tuple[str, ...] = (),
        keepalive_interval: float = 20.0,
        tick_interval: float = 1.0,
        tick_budget: int = 1000,
        wakeup: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        offload: frozenset[str] | None = None,
    ) -> None:
        self.send_udp = send_udp
        self.offload = DEFAULT_STEPS if offload is None else offload
        self._vnet = self._tso = False  # TUN frames carry a virtio header / TSO super-packets
        self._udp: UdpEspIo | None = None  # the NAT-T sockets, once `attach_transport` ran
        self._pending: dict[tuple[str, int], list[bytes]] = {}  # sealed ESP-in-UDP per peer, for one send
        self._rbuf = bytearray(VNET_HDR_LEN + 65535)
        self._seal_plains: list[bytearray] = []  # `seal_batch`: super-packets' segments, one buffer each
        self._seal_runs: list[SealRun] = []  # those kept for one seal, and their SA
        self._seal_st: _SaState | None = None
        self._esp_out = bytearray()  # their ESP packets
        self._rx_plain = bytearray()  # `open_batch`: a GRO read's decrypted packets
        self.tun_name = tun_name
        self.mtu = mtu
        self.tun_addresses = tun_addresses
        self.keepalive_interval = keepalive_interval
        self.tick_interval = tick_interval
        self.tick_budget = tick_budget  # SA deadlines a tick looks at per event-loop turn (satimers.py)
        self.wakeup = wakeup
        self.clock = clock
        self.sad = InboundSad()
        self._sas: dict[tuple[int, Direction], _SaState] = {}
        self._out_by_reqid: dict[int, _SaState] = {}  # the current outbound SA of each reqid
        self._outs: dict[int, dict[int, _SaState]] = {}  # reqid -> SPI -> every outbound SA of it
        self._spd = PolicyTable()
        self._out_cache: dict[bytes, _SaState | None] = {}
        self._in_cache: dict[tuple[int, bytes], bool] = {}
        self._events: deque[DataPlaneEvent] = deque()
        self._tun_fd = -1
        self._tun_index = 0
        self._netlink: NetlinkWorker | None = None  # one rtnetlink connection in a thread, from `start`
        self._routesock: RouteSocket | None = None  # route additions from the loop's thread
        self._src_addrs: list[Address] | None = None  # the address list `_src_for` was chosen from
        self._src_for: dict[tuple[int, int, int], Address | None] = {}  # local selector's net -> the routes' source
        self._raw: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.Handle | None = None
        self._routes: dict[tuple[int, int, int], int] = {}  # remote selector's net -> OUT policies using it
        self._acquires = AcquireLimiter()  # trap policies' acquires, bounded (core_ike/io/acquire.py)
        self.drop_no_policy = 0  # outbound packet matches no policy / no SA
        self.drop_policy_mismatch = 0  # decrypted packet outside the SA's inbound selectors
        self.drop_send_error = 0
        self.drop_bad_frame = 0  # TUN frame with a virtio header we cannot segment
        self.tso_frames = self.tso_segments = self.coalesced = self.tun_writes = 0
        self.batch_seals = 0  # super-packets sealed by the seal_batch step
        self.tun_wakeups = self.tun_frames = 0  # TUN reader wake-ups and the frames they read
        self.keepalives_sent = 0
        # (spi_in, new source) of authenticated ESP from a changed NAT mapping; set by the daemon
        self.on_mapping: Callable[[int, tuple[str, int]], None] | None = None
        self._mapping_seen: dict[int, float] = {}
        self._timers_init()  # lifetimes and keepalives by deadline (core_ike/io/satimers.py)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Create and configure the TUN device and register readers (call inside the loop)."""
        self._loop = loop or asyncio.get_running_loop()
        off = self.offload
        fd, self._vnet, self._tso = open_tun(self.tun_name, "tso" in off or "coalesce" in off, "tso" in off)
        self._tun_fd = fd

        def setup(ipr: Any) -> int:
            index = int(ipr.link_lookup(ifname=self.tun_name)[0])
            quiet_tun_ipv6(ipr, index, self.tun_name)  # before "up": no link-local address, no RS/MLD
            ipr.link("set", index=index, mtu=self.mtu, state="up")
            if self._tso and "gso" in off:
                limit_tun_gso(ipr, index, self.tun_name, self.mtu)
            for a in self.tun_addresses:
                iface = ipaddress.ip_interface(a)
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            return index

        self._netlink = NetlinkWorker(f"netlink-{self.tun_name}")
        self._netlink.watch_addresses(self._loop)
        self._tun_index = self._netlink.call(setup)
        self._routesock = RouteSocket()
        done: set[str] = set()
        for p in self._spd:  # policies installed before the TUN device existed
            key = str(p.remote.subnet)
            if p.direction == Direction.OUT and p.action in _ROUTED and key not in done:
                done.add(key)
                self._route_add(p)
        self._loop.add_reader(fd, self._on_tun_readable)
        self._tick = self._loop.call_later(self.tick_interval, self._on_tick)
        log.info("userspace ESP data plane on %s (mtu %d, offloads: %s)", self.tun_name, self.mtu,
                 ", ".join(s for s in OFFLOAD_STEPS if s in off and (s != "tso" or self._tso))
                 or "none")

    def attach_transport(self, transport: Any, natt_port: int) -> None:
        """Read and send ESP-in-UDP on the IKE transport's NAT-T sockets ourselves (in batches, with
        UDP_GRO / UDP_SEGMENT when on); IKE messages and keepalives go back to the transport."""
        if self._loop is None:
            raise DataPlaneError("attach_transport before start")
        self._udp = UdpEspIo(transport, natt_port, self.offload, self._receive_batch, self.clock)
        if "open_batch" in self.offload:
            self._udp.on_run = self._receive_run
        self._udp.start(self._loop)
        for s in self._udp.sockets():
            grow_rcvbuf(s)

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None
        if self._routesock is not None:
            self._routesock.close()
            self._routesock = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tick:
            self._tick.cancel()
        if self._loop and self._tun_fd >= 0:
            self._loop.remove_reader(self._tun_fd)
        if self._tun_fd >= 0:
            os.close(self._tun_fd)  # the (non-persistent) TUN device and its routes vanish
            self._tun_fd = -1
        if self._raw is not None:
            if self._loop:
                self._loop.remove_reader(self._raw.fileno())
            self._raw.close()
            self._raw = None

    def add_vip(self, address: str) -> bool:
        """Put a virtual IP we were assigned (RFC 7296 §2.19) on the TUN device, before the CHILD_SA's
        routes name it as their source; False when the host has it already."""
        nl = self._netlink
        if nl is None or not self._tun_index:
            raise DataPlaneError("userspace data plane not started")
        index = self._tun_index
        added = nl.call(lambda ipr: add_host_address(ipr, index, address))
        nl.addresses_changed()
        return added

    def del_vip(self, address: str) -> None:
        if self._netlink is not None and self._tun_index:
            index = self._tun_index
            self._netlink.call(lambda ipr: del_host_address(ipr, index, address))
            self._netlink.addresses_changed()

    # -- SA management ---------------------------------------------------------------------------

    def allocate_spi(self, src: str, dst: str, reqid: int = 0) -> int:
        while True:
            spi = secrets.randbits(32)
            if spi >= 256 and spi not in self.sad:  # RFC 4303 2.1: 1..255 reserved
                return spi

    def install_sa(self, params: SaParams) -> None:
        spi, direction = params.spi, params.direction
        esp = EspSa(spi, params.encr_id, params.encr_key_bits, params.encr_key, params.integ_id, params.integ_key,
                    replay_window=params.replay_window, esn=params.esn)
        st = _SaState(params, esp, (params.dst, params.dst_port), self.clock())
        key = (spi, direction)
        old = self._sas.get(key)
        if old is not None:
            self._disarm(old)
            if direction == _OUT:  # the same SPI again: it replaces that SA
                self._outs.get(old.params.reqid, {}).pop(spi, None)
        self._sas[key] = st
        self._arm(st)
        if direction == _IN:
            self.sad.add(esp)
        else:
            if not params.encap:
                self._ensure_raw_socket()
            self._out_by_reqid[params.reqid] = st  # make-before-break: new outbound SA takes over
            self._outs.setdefault(params.reqid, {})[params.spi] = st
            self._out_cache.clear()
        log.debug("installed %r", params)  # at info the CHILD_SA's established/closing lines say it (docs/operations.md, Logging)

    def update_sa(
        self,
        spi: int,
        direction: Direction,
        *,
        src: str | None = None,
        dst: str | None = None,
        src_port: int | None = None,
        dst_port: int | None = None,
        encap: bool | None = None,
    ) -> None:
        st = self._get(spi, direction)
        given: dict[str, Any] = {"src": src, "dst": dst, "src_port": src_port, "dst_port": dst_port, "encap": encap}
        old = st.params
        st.params = p = dataclasses.replace(old, **{k: v for k, v in given.items() if v is not None})
        st.addr = (p.dst, p.dst_port)
        if direction == Direction.IN and (p.src, p.src_port) != (old.src, old.src_port):
            # the SA moved (a followed mapping, RFC 7296 2.23, or a path of our choice): the peer's packets
            # still in flight on the path left are not a new mapping (`_check_mapping`'s second starts now)
            self._mapping_seen[spi] = self.clock()
        self._schedule_keepalive(st)  # encapsulation may have come (RFC 3948 2.3)
        if direction == Direction.OUT:
            if not p.encap:
                self._ensure_raw_socket()
            self._out_by_reqid[p.reqid] = st
            self._out_cache.clear()
        log.info("updated %r", p)

    def delete_sa(self, spi: int, direction: Direction) -> None:
        st = self._sas.pop((spi, direction), None)
        if st is None:
            return
        self._disarm(st)
        if direction == Direction.IN:
            self.sad.remove(spi)
            self._mapping_seen.pop(spi, None)
            self._in_cache.clear()
        else:
            reqid = st.params.reqid
            outs = self._outs.get(reqid, {})
            outs.pop(spi, None)
            if not outs:
                self._outs.pop(reqid, None)
            if self._out_by_reqid.get(reqid) is st:
                # fall back to another outbound SA of the same reqid, if one is left
                if outs:
                    self._out_by_reqid[reqid] = max(outs.values(), key=lambda s: s.installed)
                else:
                    del self._out_by_reqid[reqid]
                self._out_cache.clear()
        log.debug("deleted SA %08x %s", spi, direction.name)

    def query_usage(self, spi: int, direction: Direction) -> SaUsage:
        c = self._get(spi, direction).esp.counters
        if direction == Direction.IN:
            return SaUsage(c.bytes_in, c.packets_in, c.last_in)
        return SaUsage(c.bytes_out, c.packets_out, c.last_out)

    def _get(self, spi: int, direction: Direction) -> _SaState:
        st = self._sas.get((spi, direction))
        if st is None:
            raise DataPlaneError(f"no SA {spi:08x} {direction.name}", errno.ENOENT)
        return st

    # -- policies --------------------------------------------------------------------------------

    @property
    def _policies(self) -> list[PolicyParams]:
        """The policies in lookup order (core_ike/io/spd.py), as a list."""
        return list(self._spd)

    def install_policy(self, policy: PolicyParams) -> None:
        """Install a policy and, for an outbound one, its route into the TUN device; a route the kernel
        refuses leaves nothing of the policy behind (the CHILD_SA fails; a later one with the same
        selectors asks the kernel again)."""
        if not self._spd.add(policy):  # ordered and indexed: core_ike/io/spd.py
            return
        self._out_cache.clear()
        self._in_cache.clear()
        if policy.direction == _OUT and policy.action in _ROUTED:
            key = policy.remote.net  # (version, prefix length, network): no ipaddress object made or hashed
            n = self._routes.get(key, 0)
            if n == 0 and self._tun_index:
                try:
                    self._route_add(policy)  # counted once the kernel took it
                except BaseException:
                    self._spd.remove(policy)
                    self._policies_changed()
                    raise
            self._routes[key] = n + 1

    def delete_policy(self, policy: PolicyParams) -> None:
        if not self._spd.remove(policy):
            return
        self._policies_changed()
        if policy.direction == _OUT and policy.action in _ROUTED:
            self._del_route(policy)

    def _policies_changed(self) -> None:
        self._out_cache.clear()
        self._in_cache.clear()

    def _route_add(self, policy: PolicyParams) -> None:
        """Add the route and read the kernel's answer (`RouteSocket`: no thread switch), so that a
        refused route fails the CHILD_SA's installation."""
        nl, rs = self._netlink, self._routesock
        if nl is None or rs is None:
            raise DataPlaneError("userspace data plane closed")
        addrs = nl.cached_addresses()
        if addrs is None:  # changed a moment ago (or no notifications): dump now
            addrs = nl.call(nl.addresses)
        # a local address inside the local selector as the route's source, like charon; a gateway's
        # CHILD_SAs share their local selector, so the choice is kept while the address list is the same
        if addrs is not self._src_addrs:
            self._src_addrs, self._src_for = addrs, {}
        local = policy.local
        try:
            src = self._src_for[local.net]
        except KeyError:
            subnet = local.subnet
            src = self._src_for[local.net] = next((a for a in addrs if a in subnet), None)
        version, prefixlen, address = policy.remote.net
        rs.replace_prefix(version, prefixlen, address.to_bytes(4 if version == 4 else 16, "big"), self._tun_index,
                          src)

    def _del_route(self, policy: PolicyParams) -> None:
        """The route of the last OUT policy with this remote selector, deleted as it was added: from the
        loop's thread on the `RouteSocket`, answered before the call returns. A deletion left to the
        netlink worker could run after a later CHILD_SA's route for the same subnet was added (on the
        RouteSocket) and take that one."""
        key = policy.remote.net
        n = self._routes.get(key, 0) - 1
        if n > 0:
            self._routes[key] = n
            return
        self._routes.pop(key, None)
        rs = self._routesock
        if not self._tun_index or rs is None:
            return
        subnet = policy.remote.subnet
        try:
            rs.delete(subnet, oif=self._tun_index)
        except (NetlinkError, OSError) as err:  # ESRCH: gone already (with the device or its source address)
            log.debug("route %s: %s", subnet, err)

    # -- outbound path ---------------------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        fd = self._tun_fd
        now = self.clock()
        batch = self._udp is not None and (self._vnet or self._udp.gso or self._udp.mmsg)
        buf, view = self._rbuf, memoryview(self._rbuf)
        seal_batch = batch and "seal_batch" in self.offload
        self.tun_wakeups += 1
        try:
            for _ in range(_READ_BATCH):
                try:
                    if not self._vnet:
                        pkt = os.read(fd, 65535)
                        self.tun_frames += 1
                        if pkt:
                            self._outbound(pkt, now, batch)
                        continue
                    n = os.readv(fd, [buf])
                    self.tun_frames += 1
                except BlockingIOError:
                    return
                except OSError as e:
                    log.warning("TUN read: %s", e)
                    return
                try:  # a TSO super-packet becomes MSS-sized segments, one ESP packet each
                    vh = VnetHdr.parse(view[:n])
                    if seal_batch and self._seal_laid_out(view[VNET_HDR_LEN:n], vh, now):
                        continue
                    self._seal_pending(now)  # the super-packets kept so far leave before this frame
                    pkts = segment(view[VNET_HDR_LEN:n], vh)
                except OffloadError as e:
                    self.drop_bad_frame += 1
                    log.debug("TUN frame of %d octets dropped: %s", n, e)
                    continue
                if len(pkts) > 1:
                    self.tso_frames += 1
                    self.tso_segments += len(pkts)
                for p in pkts:
                    self._outbound(p, now, batch)
                if len(self._pending) > 1 or sum(map(len, self._pending.values())) >= 64:
                    self._flush_sends()
        finally:
            self._seal_pending(now)
            self._flush_sends()

    def _flush_sends(self) -> None:
        """What `_outbound` queued, per peer; then the `mmsg` step's batch (all peers in one sendmmsg)."""
        if self._udp is None:
            return
        pending, self._pending = self._pending, {}
        for addr, pkts in pending.items():
            self._udp.send(pkts, addr)
        self._udp.flush()

    def _sa_out(self, pkt: bytes | bytearray) -> _SaState | None:
        """The outbound SA for an IP packet (the policies' answer, cached per flow)."""
        v6 = pkt[0] >> 4 == 6
        key = bytes(pkt[8:40] if v6 else pkt[12:20])
        if self._needs_ports():
            key = key + bytes(pkt[9:10] + pkt[20:24] if not v6 else pkt[6:7] + pkt[40:44])
        try:
            return self._out_cache[key]
        except KeyError:
            st = self._lookup_out(bytes(pkt[:64]))
            if len(self._out_cache) > _FLOW_CACHE_MAX:
                self._out_cache.clear()
            self._out_cache[key] = st
            return st

    def _outbound(self, pkt: bytes | bytearray, now: float, batch: bool = False) -> None:
        v6 = pkt[0] >> 4 == 6
        st = self._sa_out(pkt)
        if st is None:
            self.drop_no_policy += 1
            return
        try:
            esp = st.esp.seal(pkt, 41 if v6 else 4, now)  # RFC 4303 2.6 next header
        except SequenceExhaustedError:
            self._expire(st, True, "sequence")
            return
        self._sent(st)
        if batch and st.params.encap:  # sent by _flush_sends, runs of equal size in one send
            self._pending.setdefault(st.addr, []).append(esp)
            return
        try:
            if st.params.encap:
                if self.send_udp is None:
                    raise OSError("no UDP transport for ESP-in-UDP")
                self.send_udp(esp, st.addr)
            elif self._raw is not None:
                self._raw.sendto(esp, (st.addr[0], 0))
        except OSError as e:
            self.drop_send_error += 1
            log.debug("ESP send to %s: %s", st.addr, e)

    def _needs_ports(self) -> bool:
        """Does any policy look at protocols or ports? (kept by install/delete_policy)"""
        return self._spd.ports

    def _lookup_out(self, pkt: bytes) -> _SaState | None:
        flow = packet_flow(pkt)
        if flow is None:
            return None
        p = self._spd.lookup_out(*flow)  # the first OUT policy covering the flow
        if p is None or p.action in (PolicyAction.BYPASS, PolicyAction.DROP):
            return None
        st = self._out_by_reqid.get(p.reqid)
        if st is None and p.action == PolicyAction.TRAP:
            self._acquire(p, flow)
        return st

    def _acquire(self, p: PolicyParams, flow: tuple[Any, Any, int, int, int]) -> None:
        if self._acquires.allow(p.reqid, self.clock(), len(self._events)):
            self._emit(Acquire(p.reqid, str(flow[0]), str(flow[1]), flow[2], p.tunnel_src, p.tunnel_dst,
                               flow[3], flow[4]))

    # -- inbound path ----------------------------------------------------------------------------

    def receive_esp(self, data: bytes, src: tuple[str, int]) -> None:
        """ESP (without UDP header) from the IKE transport's demux or the raw socket."""
        self._receive_batch([(data, src)])

    def _check_mapping(self, spi: int, src: tuple[str, int]) -> None:
        """After ESP of inbound SA `spi` from `src` was opened: its byte and packet marks (`SaTimers`),
        then its peer. Authenticated UDP-encapsulated ESP from another address or port than the SA's
        peer: its NAT mapping changed. Reported (at most once a second per SA, and not in the second
        after the SA moved: `update_sa`) to `on_mapping`, as the kernel reports XFRM_MSG_MAPPING; the IKE
        side follows and verifies (core_ike/ike/engine.py peer_mapping)."""
        st = self._sas.get((spi, Direction.IN))
        if st is None:
            return
        self._opened(st)
        if not st.params.encap or (st.params.src, st.params.src_port) == src:
            return
        now = self.clock()
        if self.on_mapping is None or now - self._mapping_seen.get(spi, -1.0) < 1.0:
            return
        self._mapping_seen[spi] = now
        self.on_mapping(spi, src)

    def _inbound_allowed(self, spi: int, inner: bytes) -> bool:
        """RFC 4301 5.2.1 (4): the decrypted packet must match the SA's inbound selectors."""
        key = (spi, inner[8:40] if inner[0] >> 4 == 6 else inner[12:20])
        ok = self._in_cache.get(key)
        if ok is None:
            st = self._sas.get((spi, Direction.IN))
            flow = packet_flow(inner)
            ok = (
                st is not None
                and flow is not None
                and any(ts_match(p, *flow, out=False) for p in self._spd.inbound(st.params.reqid))
            )
            if not self._needs_ports():
                if len(self._in_cache) > _FLOW_CACHE_MAX:
                    self._in_cache.clear()
                self._in_cache[key] = ok
        return ok

    def _ensure_raw_socket(self) -> None:
        if self._raw is not None or self._loop is None:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ESP)
        s.setblocking(False)
        grow_rcvbuf(s)
        self._raw = s
        self._loop.add_reader(s.fileno(), self._on_raw_readable)

    def _on_raw_readable(self) -> None:
        raw = self._raw
        if raw is None:
            return
        for _ in range(_READ_BATCH):
            try:
                data, addr = raw.recvfrom(65535)
            except BlockingIOError:
                return
            ihl = (data[0] & 0x0F) * 4  # IPv4 raw sockets deliver the IP header
            self.receive_esp(data[ihl:], (addr[0], 0))

    # -- the tick: lifetimes and NAT keepalives (core_ike/io/satimers.py) -------------------------

    def _on_tick(self) -> None:
        now = self.clock()
        more = self.check_timers(now)
        if self._loop is not None:
            # a tick with more SAs due than its budget goes on at the loop's next turn, after the
            # datagrams and callbacks ready by then
            self._tick = (self._loop.call_soon(self._on_tick) if more
                          else self._loop.call_later(self.tick_interval, self._on_tick))

    # -- events and listing ----------------------------------------------------------------------

    def _emit(self, ev: DataPlaneEvent) -> None:
        self._events.append(ev)
        if self.wakeup is not None:
            self.wakeup()

    def next_event(self) -> DataPlaneEvent | None:
        return self._events.popleft() if self._events else None

    def list_sas(self) -> list[SaStatus]:
        rows = []
        for (spi, d), st in sorted(self._sas.items(), key=lambda kv: (kv[1].params.reqid, kv[0])):
            p = st.params
            rows.append(
                SaStatus(
                    spi=spi,
                    direction=d.name.lower(),
                    reqid=p.reqid,
                    src=f"{p.src}[{p.src_port}]" if p.encap else p.src,
                    dst=f"{p.dst}[{p.dst_port}]" if p.encap else p.dst,
                    encap=p.encap,
                    algorithm=f"{p.encr_id.name}_{p.encr_key_bits}"
                    + (f"/{p.integ_id.name}" if p.integ_id else ""),
                    seq_out=st.esp.seq_out,
                    replay_top=st.esp.window.top,
                    installed=st.installed,
                    counters=st.esp.counters.as_dict(),
                )
            )
        return rows

    def stats(self) -> dict[str, int]:
        """Drops not attributable to one SA."""
        return {
            "drop_unknown_spi": self.sad.drop_unknown_spi,
            "drop_truncated": self.sad.drop_truncated,
            "drop_no_policy": self.drop_no_policy,
            "drop_policy_mismatch": self.drop_policy_mismatch,
            "drop_send_error": self.drop_send_error + (self._udp.send_errors if self._udp else 0),
            "drop_bad_frame": self.drop_bad_frame,
            "tso_frames": self.tso_frames,  # super-packets read from the TUN device
            "tso_segments": self.tso_segments,
            "tun_wakeups": self.tun_wakeups,  # frames per wake-up: tun_frames / tun_wakeups
            "tun_frames": self.tun_frames,
            "tun_writes": self.tun_writes,
            "coalesced": self.coalesced,  # segments written inside another one's TUN write
            "batch_seals": self.batch_seals,
            **(self._udp.counters() if self._udp else {}),
            "keepalives_sent": self.keepalives_sent,
            **self._acquires.counters(),
        }

