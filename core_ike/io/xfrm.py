"""Kernel data plane through NETLINK_XFRM (the messages: core_ike/io/xfrmwire.py).

Kernel SAs need INET_ESP; `kernel_supports_esp()` probes it without side effects (a throwaway SA in
a fresh network namespace of a child process) and `choose_backend()` picks XFRM or userspace.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import sys
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .dataplane import (
    Acquire,
    DataPlane,
    DataPlaneError,
    DataPlaneEvent,
    Direction,
    PolicyAction,
    PolicyParams,
    SaExpired,
    SaParams,
    SaUsage,
    SendDatagram,
)
from .xfrmwire import (
    ACQUIRE,
    ALLOCSPI,
    DELPOLICY,
    DELSA,
    EXPIRE,
    GETAE,
    GETSA,
    MAPPING,
    NEWAE,
    NEWSA,
    NLM_F_DUMP,
    UDP_ENCAP,
    UDP_ENCAP_ESPINUDP,
    UPDPOLICY,
    UPDSA,
    XFRM_TRANSFORMS,
    XFRMA_LTIME_VAL,
    XFRMA_REPLAY_ESN_VAL,
    XFRMA_REPLAY_VAL,
    XFRMA_TMPL,
    XFRMNLGRP_ACQUIRE,
    XFRMNLGRP_EXPIRE,
    XFRMNLGRP_MAPPING,
    XfrmSocket,
    _sel_addrs,
    _split,
    decode_mapping,
    encode_aevent_id,
    encode_newsa,
    encode_policy,
    encode_policy_id,
    encode_usersa_id,
    encode_usersa_info,
    parse_nlattrs,
)

if TYPE_CHECKING:  # pyroute2 is imported with the first virtual IP or route, not by the ESP probe's child process
    from .netlink import NetlinkWorker
    from .srcroutes import RouteSettings, SourceRoutes

__all__ = [
    "UDP_ENCAP",
    "UDP_ENCAP_ESPINUDP",
    "XFRM_TRANSFORMS",
    "XfrmDataPlane",
    "choose_backend",
    "kernel_supports_esp",
]

log = logging.getLogger("core_ike.io.xfrm")

class XfrmDataPlane:
    """Kernel SAs and policies; implements `core_ike.io.dataplane.DataPlane`."""

    name = "xfrm"
    esp_transforms = XFRM_TRANSFORMS

    def __init__(self) -> None:
        self.nl = XfrmSocket()
        self.events_sock = XfrmSocket(sum(1 << (g - 1) for g in (XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE,
                                                                  XFRMNLGRP_MAPPING)))
        # the peer's ESP came from a new NAT mapping (XFRM_MSG_MAPPING): (inbound SPI, new source); the
        # daemon has the IKE_SA follow and check it (RFC 7296 §2.23), as with the userspace data plane
        self.on_mapping: Callable[[int, tuple[str, int]], None] | None = None
        self.events_sock.sock.setblocking(False)
        self._sas: dict[tuple[int, Direction], SaParams] = {}
        self._events: deque[DataPlaneEvent] = deque()
        self._netlink: NetlinkWorker | None = None
        self.route_settings: RouteSettings | None = None  # None: charon's defaults (core_ike/io/srcroutes.py)
        self._routes: SourceRoutes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: Any = None  # the IKE transport whose NAT-T sockets our ESP-in-UDP shares
        self._encapsulating: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # sockets given UDP_ENCAP
        self.esp_in_userspace = 0  # ESP-in-UDP that reached us instead of the kernel (see `receive_esp`)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The daemon's event loop: the source routes read our addresses from its notifications."""
        self._loop = loop

    def attach_transport(self, transport: Any, natt_port: int) -> None:
        """The IKE transport whose sockets the SAs' ESP-in-UDP arrives on (RFC 3948 §2.1: the IKE_SA's
        ports): each socket an encapsulated SA's local end uses gets UDP_ENCAP (`_encapsulate`)."""
        self._transport = transport

    def receive_esp(self, data: bytes, src: tuple[str, int]) -> None:
        """ESP-in-UDP the transport read itself: the kernel decapsulates only on sockets with UDP_ENCAP,
        so this comes on a socket no encapsulated SA uses (yet); the kernel has the SAs, we drop it."""
        self.esp_in_userspace += 1
        if self.esp_in_userspace == 1:
            log.info("ESP-in-UDP from %s[%d] on a socket without UDP_ENCAP: dropped (the kernel has the SAs)", *src)

    def _encapsulate(self, p: SaParams) -> None:
        """UDP_ENCAP_ESPINUDP on the socket of the SA's local end (the NAT-T port or an extra socket of
        many-port probing, core_ike/io/portpool.py), so the kernel takes the ESP arriving there (RFC 3948
        §2.2: IKE behind the non-ESP marker still reaches the socket; keepalives end in the kernel).
        Never the IKE port 500, whose messages carry no marker."""
        if not p.encap or self._transport is None:
            return
        local = (p.src, p.src_port) if p.direction == Direction.OUT else (p.dst, p.dst_port)
        sock = self._transport.socket_for(local)
        if sock is None or sock in self._encapsulating:
            if sock is None:
                log.warning("no socket on %s[%d] for the ESP-in-UDP of SA %08x", *local, p.spi)
            return
        try:
            sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        except OSError as e:  # e.g. a kernel without ESP-in-UDP for IPv6 sockets: the SA stays, logged
            log.warning("UDP_ENCAP on %s[%d] refused: %s; ESP-in-UDP arriving there stays in userspace",
                        *local, e.strerror or e)
            return
        self._encapsulating.add(sock)
        log.info("UDP_ENCAP on %s[%d]: the kernel takes ESP-in-UDP arriving there", *local)

    def _worker(self) -> NetlinkWorker:
        """One rtnetlink connection, opened by the first virtual IP or source route."""
        from .netlink import NetlinkWorker

        if self._netlink is None:
            self._netlink = NetlinkWorker("netlink-xfrm")
        return self._netlink

    def source_routes(self) -> SourceRoutes | None:
        """The routes naming our addresses as the source toward the outbound policies' destinations;
        None when `install_routes` is off."""
        from .srcroutes import RouteSettings, SourceRoutes

        settings = self.route_settings or RouteSettings()
        if not settings.install:
            return None
        if self._routes is None:
            self._routes = SourceRoutes(self._worker(), settings, self._loop)
        return self._routes

    def add_vip(self, address: str) -> bool:
        """Put a virtual IP we were assigned (RFC 7296 §2.19) on `lo` (charon uses the outbound interface;
        either makes it a local address the kernel sends from); False when the host has it already. The
        source routes of the CHILD_SAs' policies make traffic leave from it."""
        from .netlink import add_host_address

        def add(ipr: Any) -> bool:
            return add_host_address(ipr, int(ipr.link_lookup(ifname="lo")[0]), address)

        added = self._worker().call(add)
        if added and (routes := self.source_routes()) is not None:
            routes.label_vip(address)  # IPv6: chosen as source only where our routes name it (srcroutes.py)
        return added

    def del_vip(self, address: str) -> None:
        from .netlink import del_host_address

        if self._routes is not None:
            self._routes.unlabel_vip(address)
        if self._netlink is not None:
            self._netlink.call(lambda ipr: del_host_address(ipr, int(ipr.link_lookup(ifname="lo")[0]), address))

    def fileno(self) -> int:
        """Readable when kernel events (acquire, expire) are pending: call `read_events`."""
        return self.events_sock.fileno()

    def close(self) -> None:
        self.nl.close()
        self.events_sock.close()
        if self._routes is not None:
            self._routes.close()
            self._routes = None
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    def allocate_spi(self, src: str, dst: str, reqid: int = 0) -> int:
        info = encode_usersa_info(src, dst, 0, reqid)
        (_, body), *_ = self.nl.request(ALLOCSPI, info + struct.pack("=II", 0x100, 0xFFFFFFFF))
        return int.from_bytes(body[72:76], "big")  # usersa_info.id.spi

    def install_sa(self, params: SaParams) -> None:
        self._sa_add(params)
        self._sas[(params.spi, params.direction)] = params
        self._encapsulate(params)

    def installed_sa(self, spi: int, direction: Direction) -> SaParams | None:
        """What this data plane installed as that SA (its addresses and ports after any move)."""
        return self._sas.get((spi, direction))

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
        """New outer addresses, encapsulation ports or encapsulation (RFC 7296 §2.23, RFC 4555 §3.5):
        the SA moves with its keys, sequence numbers and usage (`_sa_move`)."""
        old = self._sas.get((spi, direction))
        if old is None:
            raise DataPlaneError(f"no SA {spi:08x} {direction.name}", errno_mod.ENOENT)
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("src", src),
                ("dst", dst),
                ("src_port", src_port),
                ("dst_port", dst_port),
                ("encap", encap),
            )
            if v is not None
        }
        new = replace(old, **changes)
        if new == old:
            return
        self._sa_move(old, new)
        self._sas[(spi, direction)] = new
        self._encapsulate(new)
        log.info("moved %r", new)

    def delete_sa(self, spi: int, direction: Direction, dst: str | None = None) -> None:
        p = self._sas.pop((spi, direction), None)
        target = dst or (p.dst if p else None)
        if target is None:
            raise DataPlaneError(f"no SA {spi:08x} {direction.name}", errno_mod.ENOENT)
        self._sa_del(target, spi)

    # -- the kernel's SA steps (the ones a kernel without INET_ESP refuses: tests/dataplane/noesp.py) --

    def _sa_add(self, params: SaParams) -> None:
        # UPDSA completes a larval SA created by ALLOCSPI; NEWSA otherwise (charon does the same)
        try:
            self.nl.request(UPDSA if params.direction == Direction.IN else NEWSA, encode_newsa(params))
        except DataPlaneError as e:
            if e.errno != errno_mod.ESRCH or params.direction != Direction.IN:
                raise
            self.nl.request(NEWSA, encode_newsa(params))

    def _sa_del(self, dst: str, spi: int) -> None:
        try:
            self.nl.request(DELSA, encode_usersa_id(dst, spi))
        except DataPlaneError as e:
            if e.errno != errno_mod.ESRCH:
                raise

    def _sa_move(self, old: SaParams, new: SaParams) -> None:
        """The destination is part of the SA's id and the source and encapsulation cannot be changed in
        place, so the SA is added again, as charon's kernel-netlink updates one: its replay state and
        usage read first (XFRM_MSG_GETAE), then deleted, then added with them (the outbound sequence
        numbers go on, RFC 4303 §3.3.3). Refused: the old SA is put back with the same state."""
        carried = self._sa_state(old)
        self._sa_del(old.dst, old.spi)
        try:
            self.nl.request(NEWSA, encode_newsa(new, carried))
        except DataPlaneError:
            self.nl.request(NEWSA, encode_newsa(old, carried))
            raise

    def _sa_state(self, p: SaParams) -> dict[int, bytes]:
        """The SA's replay state and current lifetime (XFRMA_REPLAY_VAL or _ESN_VAL, XFRMA_LTIME_VAL)."""
        out = self.nl.request(GETAE, encode_aevent_id(p))
        if not out or out[0][0] != NEWAE:
            return {}
        attrs = parse_nlattrs(out[0][1][48:])
        return {k: v for k, v in attrs.items() if k in (XFRMA_REPLAY_VAL, XFRMA_REPLAY_ESN_VAL, XFRMA_LTIME_VAL)}

    def install_policy(self, policy: PolicyParams) -> None:
        for p in _with_forward(policy):
            self.nl.request(UPDPOLICY, encode_policy(p))  # create or replace
        if _routed(policy) and (routes := self.source_routes()) is not None:
            routes.add(policy)

    def delete_policy(self, policy: PolicyParams) -> None:
        for p in _with_forward(policy):
            try:
                self.nl.request(DELPOLICY, encode_policy_id(p))
            except DataPlaneError as e:
                if e.errno != errno_mod.ENOENT:
                    raise
        if _routed(policy) and self._routes is not None:
            self._routes.remove(policy)

    def update_policy(self, old: PolicyParams, new: PolicyParams) -> None:
        """The same selectors with new template addresses (the path moved, RFC 7296 §2.23): the kernel's
        policy is replaced in place (XFRM_MSG_UPDPOLICY, no gap without a policy), and its source route
        follows the new peer (next hop, device)."""
        for p in _with_forward(new):
            self.nl.request(UPDPOLICY, encode_policy(p))
        if _routed(new) and (routes := self.source_routes()) is not None:
            routes.update(old, new)

    def query_usage(self, spi: int, direction: Direction) -> SaUsage:
        p = self._sas.get((spi, direction))
        if p is None:
            raise DataPlaneError(f"no SA {spi:08x} {direction.name}", errno_mod.ENOENT)
        (_, body), *_ = self.nl.request(GETSA, encode_usersa_id(p.dst, spi))
        nbytes, npkts, _add, use = struct.unpack_from("=4Q", body, 160)  # usersa_info.curlft
        return SaUsage(nbytes, npkts, float(use))

    def dump_sas(self) -> list[dict[str, Any]]:
        rows = []
        for _, body in self.nl.request(GETSA, b"", NLM_F_DUMP):
            spi = int.from_bytes(body[72:76], "big")
            reqid, fam = struct.unpack_from("=IH", body, 208)
            n = 16 if fam == socket.AF_INET6 else 4
            rows.append(
                {
                    "spi": spi,
                    "proto": body[76],
                    "reqid": reqid,
                    "dst": str(ipaddress.ip_address(body[56 : 56 + n])),
                    "src": str(ipaddress.ip_address(body[80 : 80 + n])),
                }
            )
        return rows

    def read_events(self) -> int:
        """Read pending multicast messages into the event queue; returns how many were queued."""
        n = 0
        while True:
            try:
                data = self.events_sock.sock.recv(1 << 16)
            except BlockingIOError:
                return n
            for mtype, _seq, body in _split(data):
                if mtype == MAPPING:
                    self._mapping(body)
                    continue
                ev = self._decode_event(mtype, body)
                if ev is not None:
                    self._events.append(ev)
                    n += 1

    def _decode_event(self, mtype: int, body: bytes) -> DataPlaneEvent | None:
        if mtype == ACQUIRE and len(body) >= 280:
            src, dst, proto = _sel_addrs(body[40:96])
            attrs = parse_nlattrs(body[280:])
            reqid = struct.unpack_from("=I", attrs[XFRMA_TMPL], 44)[0] if XFRMA_TMPL in attrs else 0
            fam = struct.unpack_from("=H", body, 40 + 40)[0]
            n = 16 if fam == socket.AF_INET6 else 4
            t_dst = str(ipaddress.ip_address(body[0:n]))
            t_src = str(ipaddress.ip_address(body[24 : 24 + n]))
            # the selector the kernel filled from the packet's flow: ports in network order at 32
            # (destination) and 36 (source) of struct xfrm_selector; ICMP's type and code there are
            # not ports (RFC 4301 4.4.1.3 encodes them otherwise)
            dport, sport = struct.unpack_from("!H2xH", body, 40 + 32)
            if proto not in (6, 17, 132):
                sport = dport = 0
            return Acquire(reqid, src, dst, proto, t_src, t_dst, sport, dport)
        if mtype == EXPIRE and len(body) >= 225:
            spi = int.from_bytes(body[72:76], "big")
            reqid = struct.unpack_from("=I", body, 208)[0]
            d = next((d for (s, d) in self._sas if s == spi), Direction.IN)
            return SaExpired(spi, d, reqid, bool(body[224]), "kernel")
        return None

    def _mapping(self, body: bytes) -> None:
        found = decode_mapping(body)
        if found is None or self.on_mapping is None:
            return
        spi, src = found
        log.info("kernel: ESP of SA %08x now from %s[%d]", spi, *src)
        self.on_mapping(spi, src)

    def next_event(self) -> DataPlaneEvent | None:
        if not self._events:
            self.read_events()
        return self._events.popleft() if self._events else None


def _with_forward(policy: PolicyParams) -> list[PolicyParams]:
    """An inbound tunnel policy and its forward twin: the kernel checks decapsulated packets it forwards
    (a gateway's protected subnets) against the FWD policies and drops those that came through a
    tunnel-mode SA no FWD policy names (RFC 4301 §5.2: inbound traffic is checked against the SPD);
    charon installs the same pair."""
    if policy.direction != Direction.IN or policy.action not in (PolicyAction.PROTECT, PolicyAction.TRAP):
        return [policy]
    return [policy, replace(policy, direction=Direction.FWD)]


def _routed(policy: PolicyParams) -> bool:
    """An outbound tunnel policy (a CHILD_SA's or a trap) gets a source route, as with charon."""
    return policy.direction == Direction.OUT and policy.action in (PolicyAction.PROTECT, PolicyAction.TRAP)


# -- detection and choice ------------------------------------------------------------------------

_PROBE = """
import ctypes, errno, sys
from core_ike.io.xfrmwire import XfrmSocket, encode_newsa, NEWSA
from core_ike.io.dataplane import SaParams, Direction
from core_ike.constants import EncrId, IntegId
if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET: throwaway namespace
    sys.exit(3)
p = SaParams(spi=0x100, direction=Direction.OUT, src="192.0.2.1", dst="192.0.2.2", encr_id=EncrId.AES_CBC,
             encr_key_bits=128, encr_key=bytes(16), integ_id=IntegId.HMAC_SHA2_256_128, integ_key=bytes(32))
try:
    XfrmSocket().request(NEWSA, encode_newsa(p))
except Exception as e:
    sys.exit(1 if getattr(e, "errno", 0) == errno.EPROTONOSUPPORT else 2)
sys.exit(0)
"""


def kernel_supports_esp() -> bool:
    """True when the kernel accepts an ESP SA (INET_ESP built in).

    Side-effect free: a child process unshares into a new, empty network namespace and tries
    XFRM_MSG_NEWSA there (cbc(aes) + hmac(sha256)); the namespace and the SA vanish with it.
    EPROTONOSUPPORT means no ESP (docs/nat-lab.md §6). Without the rights to do that: False.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def choose_backend(
    mode: str = "auto", send_udp: SendDatagram | None = None, **userspace_kw: Any
) -> DataPlane:
    """ "auto" | "userspace" | "xfrm": the data plane the daemon should use."""
    if mode not in ("auto", "userspace", "xfrm"):
        raise DataPlaneError(f"unknown data plane {mode!r}")
    if mode == "xfrm" or (mode == "auto" and kernel_supports_esp()):
        if mode == "xfrm" and not kernel_supports_esp():
            raise DataPlaneError("data plane 'xfrm' forced but the kernel lacks ESP (EPROTONOSUPPORT)")
        return XfrmDataPlane()
    from .userspace import UserspaceDataPlane

    return UserspaceDataPlane(send_udp, **userspace_kw)
