"""A lighter load driver for bench/ike_setup_rate.py (``--driver template``): the initiator's messages built
from templates the sans-IO ``Engine`` itself wrote, so the responder gets the same messages as from
bench/ike_driver.py's Engine driver at a fraction of the driver's CPU per IKE_SA.

Before the batch (outside its measured window) the driver runs one IKE_SA of the Engine initiator
(ike_driver's configuration, childless extension included) against a stand-in IKE_SA_INIT response it
writes itself, and keeps the Engine's IKE_SA_INIT request and the plaintext of its IKE_AUTH request (opened
with the SK_ei the stand-in's DH gives) as templates: payload by payload, in the Engine's order. It also
draws every IKE_SA's SPIi, nonce and X25519 key pair before the batch. Per IKE_SA it then does what an
initiator must (RFC 7296 1.2, 2.14, 2.15, 2.23): the IKE_SA_INIT request with its own SPIi, KE, Ni and
NAT-D hashes; on the response the real DH with the responder's KE, SKEYSEED and the keys, its own IDi (PSK:
one identity per IKE_SA, as the Engine driver), the real AUTH (PSK MAC or an RSA-2048 signature chosen
as the Engine chooses it) and the SK payload sealed with SK_ei; on the IKE_AUTH response the SK payload
opened with SK_er and checked for an AUTH payload and no error notify. The responder thus does all of its
work, and verifies everything, as for the Engine driver.

Differences from the Engine driver (stated in the results): keys, nonces and SPIs drawn before the batch;
the responder's AUTH not verified (its IKE_AUTH response is decrypted and its payloads checked); no
retransmission (a lost datagram fails its IKE_SA, counted as "no response").
"""

from __future__ import annotations

import os
import resource
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ike_driver import PSK, _driver_engine, _Progress  # noqa: E402

# RFC 7296 3.2 payload types, 3.1 exchange types and flags, 3.10.1 notify types used here
SA, KE, IDI, AUTH, NONCE, NOTIFY, SK = 33, 34, 35, 39, 40, 41, 46
IKE_SA_INIT, IKE_AUTH = 34, 35
F_INITIATOR, F_RESPONSE = 0x08, 0x20
NAT_D_SRC, NAT_D_DST, SIG_HASH_ALGS, CHILDLESS = 16388, 16389, 16431, 16418
ERROR_NOTIFY_MAX = 16383  # RFC 7296 3.10.1: types below 16384 are errors
ENCR_AES_GCM_16, PRF_HMAC_SHA2_256 = 20, 5
ZERO_SPI = bytes(8)
HDR = struct.Struct("!8s8sBBBBII")  # RFC 7296 3.1


def split_payloads(first: int, data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags octet, body) of each payload of a chain (RFC 7296 3.2 generic headers)."""
    out = []
    nxt, pos = first, 0
    while nxt:
        if pos + 4 > len(data):
            raise ValueError("payload chain runs past the message")
        n, flags, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 4 or pos + length > len(data):
            raise ValueError(f"payload length {length} at {pos}")
        out.append((nxt, flags, data[pos + 4 : pos + length]))
        nxt, pos = n, pos + length
    return out


def join_payloads(payloads: list[tuple[int, int, bytes]]) -> bytes:
    """The chain of `payloads` (each header's next-payload field the type of the one after it)."""
    parts = []
    for k, (_t, flags, body) in enumerate(payloads):
        nxt = payloads[k + 1][0] if k + 1 < len(payloads) else 0
        parts.append(bytes((nxt, flags)) + (4 + len(body)).to_bytes(2, "big") + body)
    return b"".join(parts)


def header(spi_i: bytes, spi_r: bytes, first: int, exchange: int, flags: int, mid: int, length: int) -> bytes:
    return HDR.pack(spi_i, spi_r, first, 0x20, exchange, flags, mid, length)


@dataclass
class Template:
    """The Engine initiator's own messages, payload by payload: IKE_SA_INIT's and IKE_AUTH's plaintext."""

    init: list[tuple[int, int, bytes]]  # the IKE_SA_INIT request's payloads
    auth: list[tuple[int, int, bytes]]  # the IKE_AUTH request's inner payloads (IDi, AUTH, notifies ...)
    local_port: int  # the port the Engine sent IKE_AUTH from (500: no NAT, RFC 7296 2.23)


def _natd(spi_i: bytes, addr: tuple[str, int]) -> bytes:
    from core_ike.ike.tasks.ike_init import natd_hash

    return natd_hash(spi_i, ZERO_SPI, addr)


def standin_response(request: bytes, spi_r: bytes, pub: bytes, nr: bytes) -> bytes:
    """An IKE_SA_INIT response to the Engine's `request`: its SA payload (one proposal, one transform of
    each type) back, our KE and Nr, N(SIGNATURE_HASH_ALGORITHMS) (SHA2-256/384/512, RFC 7427 4) and
    N(CHILDLESS_IKEV2_SUPPORTED) (RFC 6023 3)."""
    spi_i, _, first, *_ = HDR.unpack_from(request)
    pls = split_payloads(first, request[28:])
    sa_body = next(b for t, _, b in pls if t == SA)
    group = next(b for t, _, b in pls if t == KE)[:2]
    out = [
        (SA, 0, sa_body),
        (KE, 0, group + b"\0\0" + pub),
        (NONCE, 0, nr),
        (NOTIFY, 0, struct.pack("!BBH", 0, 0, SIG_HASH_ALGS) + bytes.fromhex("000200030004")),
        (NOTIFY, 0, struct.pack("!BBH", 0, 0, CHILDLESS)),
    ]
    body = join_payloads(out)
    return header(spi_i, spi_r, SA, IKE_SA_INIT, F_RESPONSE, 0, 28 + len(body)) + body


def _suite() -> Any:
    from core_ike.crypto.keys import IkeSuite

    return IkeSuite(PRF_HMAC_SHA2_256, ENCR_AES_GCM_16, 128, None)  # aes128gcm16-prfsha256


def capture(spec: dict[str, Any]) -> Template:
    """One IKE_SA of the Engine driver against a stand-in response: its requests as templates."""
    import dataclasses

    from core_ike.crypto.keys import derive_ike_keys
    from core_ike.crypto.sk import AeadProtector
    from core_ike.ike.config import AuthConfig
    from core_ike.ike.identity import Identity
    from core_ike.ike.tasks.ike_auth import IkeAuth
    from core_ike.ike.tasks.ike_init import IkeInit
    from core_ike.sysrng import SystemRng

    engine, base, kind, my_id = _driver_engine(spec)
    ip = spec["ips"][0]
    cfg = dataclasses.replace(
        base, name="template", local=AuthConfig(kind, my_id or Identity.parse("t0@bench"))
    )
    sa = engine.new_initiator(cfg, (spec["remote"], 500), (ip, 500))
    sa.queue.append(IkeInit())
    sa.queue.append(IkeAuth())
    now = time.monotonic()
    sa.initiate_next(now)
    [(req, local, peer)] = engine.datagrams_to_send()
    priv = X25519PrivateKey.generate()
    spi_r, nr = os.urandom(8), os.urandom(32)
    engine.receive(standin_response(req, spi_r, priv.public_key().public_bytes_raw(), nr), local, peer, now)
    [(auth_req, auth_local, _)] = engine.datagrams_to_send()
    spi_i, _, first, *_ = HDR.unpack_from(req)
    init = split_payloads(first, req[28:])
    ni = next(b for t, _, b in init if t == NONCE)
    their = X25519PublicKey.from_public_bytes(next(b for t, _, b in init if t == KE)[4:])
    keys = derive_ike_keys(_suite(), ni, nr, priv.exchange(their), spi_i, spi_r)
    sk_next = auth_req[28]
    plain = AeadProtector(ENCR_AES_GCM_16, keys.sk_ei, SystemRng()).open(auth_req[:32], auth_req[32:])
    assert auth_req[16] == SK, "the Engine's IKE_AUTH request is one SK payload"
    return Template(init, split_payloads(sk_next, plain), auth_local[1])


@dataclass
class _Sa:
    """One IKE_SA in flight: what its IKE_AUTH request and response need."""

    n: int
    ip: str
    remote: tuple[str, int]
    priv: X25519PrivateKey
    ni: bytes
    init: bytes = b""
    inbound: Any = None  # the SK_er protector, once IKE_AUTH is sent


@dataclass
class _Pools:
    """Every IKE_SA's SPIi, nonce and X25519 key pair, drawn before the batch."""

    spis: list[bytes] = field(default_factory=list)
    nonces: list[bytes] = field(default_factory=list)
    keys: list[tuple[X25519PrivateKey, bytes]] = field(default_factory=list)

    @classmethod
    def draw(cls, count: int) -> _Pools:
        keys = []
        for _ in range(count):
            k = X25519PrivateKey.generate()
            keys.append((k, k.public_key().public_bytes_raw()))
        return cls([os.urandom(8) for _ in range(count)], [os.urandom(32) for _ in range(count)], keys)


class TemplateInitiator:
    """The per-IKE_SA work of an initiator on the templates: message bytes in, message bytes out."""

    def __init__(self, spec: dict[str, Any], tpl: Template) -> None:
        from core_ike.crypto.prf import prf_for
        from core_ike.ike.identity import Identity
        from core_ike.sysrng import SystemRng

        self.spec, self.tpl = spec, tpl
        self.remote = (spec["remote"], 500)
        self.prefix = spec["prefix"]
        self.psk = spec["auth"] == "psk"
        self.prf = prf_for(PRF_HMAC_SHA2_256)
        self.suite = _suite()
        self.rng = SystemRng()
        self.key: Any = None
        if not self.psk:
            from core_ike.ike.creds import load_private_key

            self.key = load_private_key(Path(spec["key"]).read_bytes())
        self.id_type = next(b for t, _, b in tpl.auth if t == IDI)[0]
        self.fixed_id = None if self.psk else next(b for t, _, b in tpl.auth if t == IDI)
        self._identity = Identity
        self.pending: dict[bytes, _Sa] = {}
        self.peer = self.remote  # the responder of the last response handled

    def first(
        self,
        n: int,
        ip: str,
        spi_i: bytes,
        ni: bytes,
        key: tuple[X25519PrivateKey, bytes],
        remote: tuple[str, int] | None = None,
    ) -> bytes:
        """IKE_SA number n's IKE_SA_INIT request, sent from ip:500 to `remote` (default spec["remote"])."""
        remote = remote or self.remote
        pls = []
        for t, flags, body in self.tpl.init:
            if t == KE:
                body = body[:4] + key[1]
            elif t == NONCE:
                body = ni
            elif t == NOTIFY and body[2:4] == b"\x40\x04":  # NAT_DETECTION_SOURCE_IP (RFC 7296 2.23)
                body = body[:4] + _natd(spi_i, (ip, 500))
            elif t == NOTIFY and body[2:4] == b"\x40\x05":  # NAT_DETECTION_DESTINATION_IP
                body = body[:4] + _natd(spi_i, remote)
            pls.append((t, flags, body))
        chain = join_payloads(pls)
        msg = header(spi_i, ZERO_SPI, pls[0][0], IKE_SA_INIT, F_INITIATOR, 0, 28 + len(chain)) + chain
        self.pending[spi_i] = _Sa(n, ip, remote, key[0], ni, msg)
        return msg

    def on_response(self, data: bytes) -> tuple[str, bytes | None, str | None]:
        """('auth', the IKE_AUTH request, None) after an IKE_SA_INIT response, ('done', None, None) after
        a good IKE_AUTH response, ('failed', None, reason), or ('ignored', None, None)."""
        if len(data) < 28:
            return "ignored", None, None
        spi_i, spi_r, first, _v, exch, flags, mid, _len = HDR.unpack_from(data)
        st = self.pending.get(spi_i)
        if st is None or not flags & F_RESPONSE:
            return "ignored", None, None
        self.peer = st.remote  # where the answer goes, whose IKE_SA is done or failed
        if exch == IKE_SA_INIT and mid == 0 and st.inbound is None:
            try:
                return "auth", self._auth_request(st, spi_i, spi_r, split_payloads(first, data[28:])), None
            except _Failed as e:
                del self.pending[spi_i]
                return "failed", None, str(e)
        if exch == IKE_AUTH and mid == 1 and st.inbound is not None and first == SK:
            del self.pending[spi_i]
            reason = self._auth_response_fault(st, data)
            return ("done", None, None) if reason is None else ("failed", None, reason)
        return "ignored", None, None

    def _auth_request(self, st: _Sa, spi_i: bytes, spi_r: bytes, pls: list[tuple[int, int, bytes]]) -> bytes:
        """The IKE_AUTH request after the IKE_SA_INIT response's payloads `pls` (raises _Failed)."""
        from core_ike.crypto.auth import create_signature_auth, psk_auth, signed_octets
        from core_ike.crypto.keys import derive_ike_keys
        from core_ike.crypto.sk import AeadProtector

        ke = nr = None
        hashes: set[int] = set()
        for t, _f, body in pls:
            if t == KE:
                ke = body[4:]
            elif t == NONCE:
                nr = body
            elif t == NOTIFY:
                ntype = int.from_bytes(body[2:4], "big")
                if ntype <= ERROR_NOTIFY_MAX:
                    raise _Failed(f"IKE_SA_INIT notify {ntype}")
                if ntype == SIG_HASH_ALGS:
                    hashes = {int.from_bytes(body[k : k + 2], "big") for k in range(4, len(body) - 1, 2)}
        if ke is None or nr is None:
            raise _Failed("IKE_SA_INIT response lacks KE or Nonce")
        shared = st.priv.exchange(X25519PublicKey.from_public_bytes(ke))  # RFC 7748 5, real DH
        keys = derive_ike_keys(self.suite, st.ni, nr, shared, spi_i, spi_r)  # RFC 7296 2.14
        idb = self.fixed_id or bytes((self.id_type, 0, 0, 0)) + f"{self.prefix}{st.n}@bench".encode()
        octets = signed_octets(st.init, nr, self.prf, keys.sk_pi, idb)  # RFC 7296 2.15
        if self.psk:
            authb = bytes((2, 0, 0, 0)) + psk_auth(self.prf, PSK.encode(), octets)
        else:  # as ike_auth.build_auth: RFC 7427 with the responder's hashes, else RSA_SIG (method 1)
            m, sig = create_signature_auth(self.key, 14 if hashes else 1, octets, hashes)
            authb = bytes((m, 0, 0, 0)) + sig
        inner = [(t, f, idb if t == IDI else authb if t == AUTH else b) for t, f, b in self.tpl.auth]
        plain = join_payloads(inner)
        out = AeadProtector(ENCR_AES_GCM_16, keys.sk_ei, self.rng)
        size = 4 + out.sealed_length(len(plain))
        prefix = (
            header(spi_i, spi_r, SK, IKE_AUTH, F_INITIATOR, 1, 28 + size)
            + bytes((inner[0][0], 0))
            + size.to_bytes(2, "big")
        )
        st.inbound = AeadProtector(ENCR_AES_GCM_16, keys.sk_er, self.rng)
        st.init = b""
        return prefix + out.seal(prefix, plain)

    @staticmethod
    def _auth_response_fault(st: _Sa, data: bytes) -> str | None:
        """Why the IKE_AUTH response `data` does not establish the IKE_SA, or None when it does."""
        try:
            inner = split_payloads(data[28], st.inbound.open(data[:32], data[32:]))
        except Exception as e:  # noqa: BLE001 - any failure to open or read is this IKE_SA's failure
            return f"IKE_AUTH response unreadable: {type(e).__name__}"
        for t, _f, body in inner:
            if t == NOTIFY and int.from_bytes(body[2:4], "big") <= ERROR_NOTIFY_MAX:
                return f"IKE_AUTH notify {int.from_bytes(body[2:4], 'big')}"
        if not any(t == AUTH for t, _f, _b in inner):
            return "IKE_AUTH response without AUTH"
        return None


class _Failed(Exception):
    """An IKE_SA the responder refused (its reason)."""


def _sockets(ips: list[str], port: int) -> tuple[dict[str, socket.socket], Any, dict[int, socket.socket]]:
    """A non-blocking UDP socket on `port` of each source address, an epoll on them, the sockets by fd."""
    socks: dict[str, socket.socket] = {}
    poller = select.epoll()
    for ip in ips:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        s.bind((ip, port))
        s.setblocking(False)
        socks[ip] = s
        poller.register(s.fileno(), select.EPOLLIN)
    return socks, poller, {s.fileno(): s for s in socks.values()}


def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """As ike_driver.drive (the same spec and result keys), on the templates."""
    count, inflight_max = int(spec["count"]), int(spec["inflight"])
    ips: list[str] = spec["ips"]
    tpl = capture(spec)
    ini = TemplateInitiator(spec, tpl)
    pools = _Pools.draw(count)
    socks, poller, by_fd = _sockets(ips, tpl.local_port)
    # spec["remotes"] (optional): several responders at once, IKE_SA n to remotes[pattern[n % len]], each
    # its weight's share (bench/ike_setup_rate.py's paired measurement)
    remotes = [(r, 500) for r in spec.get("remotes") or [spec["remote"]]]
    weights = spec.get("weights") or [1] * len(remotes)
    pattern = [k for k, w in enumerate(weights) for _ in range(int(w))]
    per_remote = {r[0]: 0 for r in remotes}
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    deadline = t0 + float(spec["timeout"])
    p = _Progress(t_last=t0)
    while p.done + p.failed < count:
        while p.inflight < inflight_max and p.started < count:
            n = p.started
            ip = ips[n % len(ips)]
            remote = remotes[pattern[n % len(pattern)]]
            socks[ip].sendto(ini.first(n, ip, pools.spis[n], pools.nonces[n], pools.keys[n], remote), remote)
            p.started += 1
        if time.monotonic() > deadline:
            break
        for fd, _ in poller.poll(0.05):
            s = by_fd[fd]
            for _ in range(256):
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                what, reply, reason = ini.on_response(data)
                if what == "auth":
                    assert reply is not None
                    s.sendto(reply, ini.peer)
                elif what == "done":
                    p.done += 1
                    per_remote[ini.peer[0]] += 1
                    p.t_last = time.monotonic()
                elif what == "failed":
                    p.failed += 1
                    p.reasons[str(reason)] = p.reasons.get(str(reason), 0) + 1
    lost = p.inflight
    if lost:
        p.reasons["no response (no retransmission)"] = lost
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    for s in socks.values():
        s.close()
    return {
        "established": p.done,
        "failed": p.failed,
        "started": p.started,
        "t_start": t0,
        "t_end": p.t_last,
        "cpu": cpu,
        "reasons": p.reasons,
        "per_remote": per_remote,
    }
