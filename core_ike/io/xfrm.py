"""Kernel data plane through NETLINK_XFRM (own small encoder; pyroute2 has no XFRM SA API).

Struct layouts from <linux/xfrm.h> (docs/nat-lab.md §6): xfrm_selector 56, xfrm_id 24,
xfrm_lifetime_cfg 64, xfrm_lifetime_cur 32, xfrm_usersa_info 224, xfrm_userpolicy_info 168,
xfrm_user_tmpl 64, xfrm_user_acquire 280. Netlink framing per RFC 3549 / <linux/netlink.h>.

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
from typing import TYPE_CHECKING, Any

from ..constants import EncrId, IntegId
from ..esp.algorithms import AES_KEY_BITS, EspTransforms
from .dataplane import (
    Acquire,
    DataPlane,
    DataPlaneError,
    DataPlaneEvent,
    Direction,
    Lifetime,
    PolicyAction,
    PolicyParams,
    SaExpired,
    SaParams,
    SaUsage,
    SendDatagram,
    TrafficSelector,
)

if TYPE_CHECKING:  # pyroute2 is imported with the first virtual IP or route, not by the ESP probe's child process
    from .netlink import NetlinkWorker
    from .srcroutes import RouteSettings, SourceRoutes

log = logging.getLogger("core_ike.io.xfrm")

NETLINK_XFRM = 6
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
# message types (XFRM_MSG_BASE = 0x10)
NEWSA, DELSA, GETSA, NEWPOLICY, DELPOLICY, GETPOLICY, ALLOCSPI, ACQUIRE, EXPIRE, UPDPOLICY = range(0x10, 0x1A)
UPDSA, POLEXPIRE, NEWAE, GETAE = 0x1A, 0x1B, 0x1E, 0x1F
# attributes
XFRMA_ALG_CRYPT, XFRMA_ENCAP, XFRMA_TMPL, XFRMA_LTIME_VAL, XFRMA_REPLAY_VAL = 2, 4, 5, 9, 10
XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC, XFRMA_REPLAY_ESN_VAL = 18, 20, 23
# multicast groups (bit = 1 << (group - 1))
XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE = 1, 2
XFRM_MODE_TUNNEL = 1
XFRM_STATE_ESN = 128
XFRM_INF = 0xFFFFFFFFFFFFFFFF
XFRM_AE_RVAL = 2  # xfrm_aevent_id.flags: ask for the replay state (enum xfrm_ae_ftype_t)
UDP_ENCAP_ESPINUDP = 2  # RFC 3948
UDP_ENCAP = 100  # the UDP socket option (linux/udp.h)
IPPROTO_ESP = 50

_NLMSG = struct.Struct("=IHHII")
_SELECTOR = struct.Struct("=16s16sHHHHHBBB3xiI")  # 56
_ID = struct.Struct("=16s4sB3x")  # 24 (spi big-endian in 4s)
_LFT_CFG = struct.Struct("=8Q")  # 64
_SA_TAIL = struct.Struct("=IIHBBB7x")  # seq reqid family mode replay_window flags + pad: 204..224
_POLICY_TAIL = struct.Struct("=IIBBBB4x")  # priority index dir action flags share + pad: 152..168
_TMPL = struct.Struct("=24sH2x16sIBBBxIII")  # 64
_ENCAP = struct.Struct("=HHH2x16s")  # 24 (ports big-endian, packed by hand)

_AUTH_NAMES = {
    IntegId.HMAC_SHA1_96: ("hmac(sha1)", 96),
    IntegId.HMAC_SHA2_256_128: ("hmac(sha256)", 128),
    IntegId.HMAC_SHA2_384_192: ("hmac(sha384)", 192),
    IntegId.HMAC_SHA2_512_256: ("hmac(sha512)", 256),
}
XFRM_TRANSFORMS = EspTransforms(
    "xfrm",
    frozenset((int(e), b) for e in (EncrId.AES_GCM_16, EncrId.AES_CBC) for b in AES_KEY_BITS),
    frozenset(int(i) for i in _AUTH_NAMES),
)
"""What `encode_newsa` encodes (rfc4106(gcm(aes)) with a 16-octet ICV, cbc(aes) with the HMACs)."""


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _addr(addr: str | None) -> bytes:
    if not addr:
        return bytes(16)
    return ipaddress.ip_address(addr).packed.ljust(16, b"\0")


def _attr(atype: int, data: bytes) -> bytes:
    hdr = struct.pack("=HH", 4 + len(data), atype)
    return hdr + data + bytes(-len(data) % 4)


def parse_nlattrs(data: bytes) -> dict[int, bytes]:
    """A netlink message's attributes (RFC 3549 2.3.2): type (without the nested/byte-order flags) -> value."""
    attrs: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        attrs[atype & 0x3FFF] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return attrs


def _ports(ts: TrafficSelector) -> tuple[int, int]:
    """(port, mask) in network order; ranges other than one port or any cannot be expressed."""
    if ts.port_start == ts.port_end:
        return socket.htons(ts.port_start), 0xFFFF
    return 0, 0


def encode_selector(src: TrafficSelector | None, dst: TrafficSelector | None, family: int = 0) -> bytes:
    if src is None or dst is None:
        return bytes(_SELECTOR.size)
    sport, smask = _ports(src)
    dport, dmask = _ports(dst)
    fam = socket.AF_INET6 if src.subnet.version == 6 else socket.AF_INET
    proto = src.protocol or dst.protocol
    return _SELECTOR.pack(
        _addr(str(dst.subnet.network_address)),
        _addr(str(src.subnet.network_address)),
        dport,
        dmask,
        sport,
        smask,
        fam,
        dst.subnet.prefixlen,
        src.subnet.prefixlen,
        proto,
        0,
        0,
    )


def encode_lifetime(lt: Lifetime | None = None) -> bytes:
    lt = lt or Lifetime()

    def inf(v: float) -> int:
        return int(v) if v else XFRM_INF

    return _LFT_CFG.pack(
        inf(lt.soft_bytes),
        inf(lt.hard_bytes),
        inf(lt.soft_packets),
        inf(lt.hard_packets),
        inf(lt.soft_seconds),
        inf(lt.hard_seconds),
        0,
        0,
    )


def encode_usersa_info(
    src: str,
    dst: str,
    spi: int,
    reqid: int,
    lifetime: Lifetime | None = None,
    replay_window: int = 0,
    flags: int = 0,
) -> bytes:
    """xfrm_usersa_info (224 octets): sel | id | saddr | lft | curlft | stats | seq reqid family mode ..."""
    fam = _family(dst)
    out = (
        encode_selector(None, None)
        + _ID.pack(_addr(dst), spi.to_bytes(4, "big"), IPPROTO_ESP)
        + _addr(src)
        + encode_lifetime(lifetime)
        + bytes(32 + 12)  # curlft, stats
        + _SA_TAIL.pack(0, reqid, fam, XFRM_MODE_TUNNEL, replay_window, flags)
    )
    assert len(out) == 224
    return out


def _algo(name: str, key: bytes, extra_bits: int | None = None) -> bytes:
    head = name.encode().ljust(64, b"\0") + struct.pack("=I", len(key) * 8)
    if extra_bits is not None:
        head += struct.pack("=I", extra_bits)
    return head + key


def encode_newsa(p: SaParams, carried: dict[int, bytes] | None = None) -> bytes:
    """XFRM_MSG_NEWSA payload: usersa_info + algorithm / encap / replay attributes. `carried`: the
    replay state and usage of the SA this one replaces (XFRMA_REPLAY_VAL or XFRMA_REPLAY_ESN_VAL,
    XFRMA_LTIME_VAL, as XFRM_MSG_GETAE reports them), so that the moved SA goes on with its sequence
    numbers (RFC 4303 §3.3.3: a sender never reuses one; the peer's replay window would drop a restart)."""
    carried = carried or {}
    esn_attr = p.esn or p.replay_window > 255
    flags = XFRM_STATE_ESN if p.esn else 0
    body = encode_usersa_info(
        p.src, p.dst, p.spi, p.reqid, p.lifetime, 0 if esn_attr else p.replay_window, flags
    )
    if p.encr_id == EncrId.AES_GCM_16:
        body += _attr(XFRMA_ALG_AEAD, _algo("rfc4106(gcm(aes))", p.encr_key, 128))  # RFC 4106
    elif p.encr_id == EncrId.AES_CBC and p.integ_id in _AUTH_NAMES:
        name, trunc = _AUTH_NAMES[p.integ_id]
        body += _attr(XFRMA_ALG_CRYPT, _algo("cbc(aes)", p.encr_key))
        body += _attr(XFRMA_ALG_AUTH_TRUNC, _algo(name, p.integ_key, trunc))  # RFC 4868
    else:
        raise DataPlaneError(f"XFRM: unsupported transform {p.encr_id}/{p.integ_id}")
    if p.encap:  # RFC 3948 ESP-in-UDP
        encap = _ENCAP.pack(UDP_ENCAP_ESPINUDP, socket.htons(p.src_port), socket.htons(p.dst_port), bytes(16))
        body += _attr(XFRMA_ENCAP, encap)
    if esn_attr and XFRMA_REPLAY_ESN_VAL in carried:
        body += _attr(XFRMA_REPLAY_ESN_VAL, carried[XFRMA_REPLAY_ESN_VAL])
    elif esn_attr:
        words = (p.replay_window + 31) // 32
        body += _attr(
            XFRMA_REPLAY_ESN_VAL, struct.pack("=6I", words, 0, 0, 0, 0, p.replay_window) + bytes(4 * words)
        )
    elif XFRMA_REPLAY_VAL in carried:
        body += _attr(XFRMA_REPLAY_VAL, carried[XFRMA_REPLAY_VAL])
    if XFRMA_LTIME_VAL in carried:
        body += _attr(XFRMA_LTIME_VAL, carried[XFRMA_LTIME_VAL])
    return body


def encode_aevent_id(p: SaParams) -> bytes:
    """XFRM_MSG_GETAE payload (struct xfrm_aevent_id, 48 octets): the SA's id, its source, what to report."""
    return encode_usersa_id(p.dst, p.spi) + _addr(p.src) + struct.pack("=II", XFRM_AE_RVAL, p.reqid)


def _policy_selector(p: PolicyParams) -> bytes:
    if p.direction == Direction.OUT:
        return encode_selector(p.local, p.remote)
    return encode_selector(p.remote, p.local)


def encode_policy(p: PolicyParams) -> bytes:
    """XFRM_MSG_NEWPOLICY payload: userpolicy_info (+ one ESP tunnel template)."""
    action = 1 if p.action == PolicyAction.DROP else 0  # XFRM_POLICY_BLOCK / ALLOW
    priority = p.priority or (0x10000 - p.local.subnet.prefixlen - p.remote.subnet.prefixlen)
    body = _policy_selector(p) + encode_lifetime() + bytes(32)
    body += _POLICY_TAIL.pack(priority, 0, int(p.direction), action, 0, 0)
    assert len(body) == 168
    if p.action in (PolicyAction.PROTECT, PolicyAction.TRAP):
        # template src/dst are the outer addresses of the SA this traffic uses
        t_src, t_dst = (
            (p.tunnel_src, p.tunnel_dst) if p.direction == Direction.OUT else (p.tunnel_dst, p.tunnel_src)
        )
        ident = _ID.pack(_addr(t_dst), bytes(4), IPPROTO_ESP)
        tmpl = _TMPL.pack(
            ident,
            _family(t_dst or "0.0.0.0"),
            _addr(t_src),
            p.reqid,
            XFRM_MODE_TUNNEL,
            0,
            0,
            ~0 & 0xFFFFFFFF,
            ~0 & 0xFFFFFFFF,
            ~0 & 0xFFFFFFFF,
        )
        body += _attr(XFRMA_TMPL, tmpl)
    return body


def encode_policy_id(p: PolicyParams) -> bytes:
    return _policy_selector(p) + struct.pack("=IB3x", 0, int(p.direction))


def encode_usersa_id(dst: str, spi: int) -> bytes:
    return _addr(dst) + spi.to_bytes(4, "big") + struct.pack("=HB1x", _family(dst), IPPROTO_ESP)


def _sel_addrs(sel: bytes) -> tuple[str, str, int]:
    fam = struct.unpack_from("=H", sel, 40)[0]
    n = 16 if fam == socket.AF_INET6 else 4
    dst = str(ipaddress.ip_address(sel[0:n]))
    src = str(ipaddress.ip_address(sel[16 : 16 + n]))
    return src, dst, sel[44]


class XfrmSocket:
    """Blocking request/response on NETLINK_XFRM (optionally subscribed to multicast groups)."""

    def __init__(self, groups: int = 0) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
        self.sock.bind((0, groups))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, mtype: int, payload: bytes, flags: int = 0) -> list[tuple[int, bytes]]:
        """Send one request; return (type, payload) of the answers; raise DataPlaneError on error."""
        self._seq += 1
        seq = self._seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        fl = NLM_F_REQUEST | flags | (0 if dump else NLM_F_ACK)
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(payload), mtype, fl, seq, 0) + payload)
        out: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 20)
            for rtype, rseq, body in _split(data):
                if rseq != seq:
                    continue
                if rtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    if err:
                        raise DataPlaneError(f"XFRM msg {mtype:#x}: {os.strerror(err)}", err)
                    return out
                if rtype == NLMSG_DONE:
                    return out
                out.append((rtype, body))
                if not dump:
                    return out


def _split(data: bytes) -> list[tuple[int, int, bytes]]:
    msgs = []
    off = 0
    while off + _NLMSG.size <= len(data):
        length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size:
            break
        msgs.append((mtype, seq, data[off + _NLMSG.size : off + length]))
        off += (length + 3) & ~3
    return msgs


class XfrmDataPlane:
    """Kernel SAs and policies; implements `core_ike.io.dataplane.DataPlane`."""

    name = "xfrm"
    esp_transforms = XFRM_TRANSFORMS

    def __init__(self) -> None:
        self.nl = XfrmSocket()
        self.events_sock = XfrmSocket((1 << (XFRMNLGRP_ACQUIRE - 1)) | (1 << (XFRMNLGRP_EXPIRE - 1)))
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
        sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
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
        import dataclasses

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
        new = dataclasses.replace(old, **changes)
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
        self.nl.request(UPDPOLICY, encode_policy(policy))  # create or replace
        if _routed(policy) and (routes := self.source_routes()) is not None:
            routes.add(policy)

    def delete_policy(self, policy: PolicyParams) -> None:
        try:
            self.nl.request(DELPOLICY, encode_policy_id(policy))
        except DataPlaneError as e:
            if e.errno != errno_mod.ENOENT:
                raise
        if _routed(policy) and self._routes is not None:
            self._routes.remove(policy)

    def update_policy(self, old: PolicyParams, new: PolicyParams) -> None:
        """The same selectors with new template addresses (the path moved, RFC 7296 §2.23): the kernel's
        policy is replaced in place (XFRM_MSG_UPDPOLICY, no gap without a policy), and its source route
        follows the new peer (next hop, device)."""
        self.nl.request(UPDPOLICY, encode_policy(new))
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

    def next_event(self) -> DataPlaneEvent | None:
        if not self._events:
            self.read_events()
        return self._events.popleft() if self._events else None


def _routed(policy: PolicyParams) -> bool:
    """An outbound tunnel policy (a CHILD_SA's or a trap) gets a source route, as with charon."""
    return policy.direction == Direction.OUT and policy.action in (PolicyAction.PROTECT, PolicyAction.TRAP)


# -- detection and choice ------------------------------------------------------------------------

_PROBE = """
import ctypes, errno, sys
from core_ike.io.xfrm import XfrmSocket, encode_newsa, NEWSA
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
