"""NETLINK_XFRM messages: the struct layouts of <linux/xfrm.h> packed by hand (pyroute2 has no XFRM SA
API), and a blocking request/response socket. The data plane built on them: core_ike/io/xfrm.py.

Struct layouts (docs/nat-lab.md §6): xfrm_selector 56, xfrm_id 24, xfrm_lifetime_cfg 64,
xfrm_lifetime_cur 32, xfrm_usersa_info 224, xfrm_userpolicy_info 168, xfrm_user_tmpl 64,
xfrm_user_acquire 280, xfrm_aevent_id 48, xfrm_user_mapping 64. Netlink framing per RFC 3549 /
<linux/netlink.h>.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from ..constants import EncrId, IntegId
from ..esp.algorithms import AES_KEY_BITS, EspTransforms
from .dataplane import (
    DataPlaneError,
    Direction,
    Lifetime,
    PolicyAction,
    PolicyParams,
    SaParams,
    TrafficSelector,
)

NETLINK_XFRM = 6
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
# message types (XFRM_MSG_BASE = 0x10)
NEWSA, DELSA, GETSA, NEWPOLICY, DELPOLICY, GETPOLICY, ALLOCSPI, ACQUIRE, EXPIRE, UPDPOLICY = range(0x10, 0x1A)
UPDSA, POLEXPIRE, NEWAE, GETAE, MAPPING = 0x1A, 0x1B, 0x1E, 0x1F, 0x26
# attributes
XFRMA_ALG_CRYPT, XFRMA_ENCAP, XFRMA_TMPL, XFRMA_LTIME_VAL, XFRMA_REPLAY_VAL = 2, 4, 5, 9, 10
XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC, XFRMA_REPLAY_ESN_VAL = 18, 20, 23
# multicast groups (bit = 1 << (group - 1))
XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE, XFRMNLGRP_MAPPING = 1, 2, 8
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


_MAPPING = struct.Struct("=16s4sHBxI16s16s2s2s")  # struct xfrm_user_mapping, 64 octets


def decode_mapping(body: bytes) -> tuple[int, tuple[str, int]] | None:
    """XFRM_MSG_MAPPING (the kernel saw an encapsulated SA's ESP arrive from a new source address or
    port, RFC 3948 §2.2): (the inbound SA's SPI, the new source); None when malformed."""
    if len(body) < _MAPPING.size:
        return None
    _daddr, spi, family, _proto, _reqid, _old, new, _old_port, new_port = _MAPPING.unpack_from(body)
    n = 16 if family == socket.AF_INET6 else 4
    return int.from_bytes(spi, "big"), (str(ipaddress.ip_address(new[:n])), int.from_bytes(new_port, "big"))


def encode_mapping(dst: str, spi: int, reqid: int, old: tuple[str, int], new: tuple[str, int]) -> bytes:
    """An XFRM_MSG_MAPPING body as the kernel sends it (for tests of the decoder)."""
    return _MAPPING.pack(_addr(dst), spi.to_bytes(4, "big"), _family(dst), IPPROTO_ESP, reqid, _addr(old[0]),
                         _addr(new[0]), old[1].to_bytes(2, "big"), new[1].to_bytes(2, "big"))
