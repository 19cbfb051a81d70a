"""A STUN binding responder on the mediation server (RFC 5389 §7.3, §10), with the NAT behaviour
discovery additions of RFC 5780 §6-§7 when the server has a second address and/or port.

`StunResponder` is sans-IO: `receive(data, src, local, now)` answers one datagram and says from which of
the server's transport addresses the answer leaves (CHANGE-REQUEST, RFC 5780 §7.2). `StunServer` is the
thin asyncio side: one UDP socket per (address, port) combination, datagrams fed to the responder.

The codec is aioice's (`aioice.stun`). STUN here is unauthenticated, as RFC 5780 §9 expects of a
behaviour-discovery server. Being an open UDP responder it could reflect traffic toward a forged
source, so the answer carries only what discovery needs (XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN,
OTHER-ADDRESS, FINGERPRINT: 64 octets to a 20-octet request; no MAPPED-ADDRESS or SOFTWARE, and no
PADDING, RFC 5780 §9.1) and all answers together are rate limited (`stun_rate`). Only Binding
requests are answered; everything else is dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

from aioice import stun

from core_ike.daemon.config import CHECK_BOOL, CHECK_INT, CHECK_NUMBER, DaemonConfig
from core_ike.errors import LocalError

log = logging.getLogger("mediation_server.stun")

Addr = tuple[str, int]

# RFC 5780 §7.2: CHANGE-REQUEST flags
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

MAX_REQUEST = 548  # RFC 5389 §7.1 (the largest datagram every path carries); a Binding request is ~100 octets


@dataclass(frozen=True)
class StunSettings:
    """The server's STUN transport addresses: primary (address, port) always; the alternate port and/or
    alternate address when configured (RFC 5780 §6: both are needed for the full set of tests)."""

    address: str
    port: int = 3478
    alt_port: int = 0          # 0: none
    alt_address: str = ""      # "": none
    rate: float = 500.0        # answers per second, all sources together (token bucket)
    burst: int = 200

    def addresses(self) -> list[Addr]:
        """Every (address, port) the server answers on: the primary first."""
        addrs = [self.address] + ([self.alt_address] if self.alt_address else [])
        ports = [self.port] + ([self.alt_port] if self.alt_port else [])
        return [(a, p) for a in addrs for p in ports]

    def other_address(self) -> Addr | None:
        """RFC 5780 §7.4: the transport address that differs from the primary in address and port, or
        what of it the server has (an alternate port alone still makes the port tests possible)."""
        if not self.alt_address and not self.alt_port:
            return None
        return (self.alt_address or self.address, self.alt_port or self.port)


@dataclass
class StunStats:
    requests: int = 0
    responses: int = 0
    errors: int = 0
    dropped: int = 0
    changed: int = 0  # answered from another address or port (CHANGE-REQUEST)
    limited: int = 0  # dropped over the rate limit


@dataclass
class StunResponder:
    """Answers Binding requests (RFC 5389 §7.3.1): XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS for RFC 3489
    clients), RESPONSE-ORIGIN and OTHER-ADDRESS (RFC 5780 §7.3), honouring CHANGE-REQUEST."""

    settings: StunSettings
    stats: StunStats = field(default_factory=StunStats)
    _tokens: float | None = None
    _last: float = 0.0

    def _allow(self, now: float) -> bool:
        s = self.settings
        tokens = float(s.burst) if self._tokens is None else \
            min(float(s.burst), self._tokens + max(now - self._last, 0.0) * s.rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def receive(self, data: bytes, src: Addr, local: Addr, now: float) -> tuple[bytes, Addr, Addr] | None:
        """(response, local transport address to send it from, destination), or None to drop."""
        if len(data) < 20 or len(data) > MAX_REQUEST:
            self.stats.dropped += 1
            return None
        try:
            msg = stun.parse_message(data)
        except ValueError:
            self.stats.dropped += 1
            return None
        if msg.message_class != stun.Class.REQUEST or msg.message_method != stun.Method.BINDING:
            self.stats.dropped += 1  # RFC 5389 §7.3: only Binding here; indications need no answer
            return None
        self.stats.requests += 1
        if not self._allow(now):
            self.stats.limited += 1
            return None
        change = int(msg.attributes.get("CHANGE-REQUEST", 0) or 0)
        origin = self._origin(local, change)
        if origin is None:
            # RFC 5780 §6.1: a change the server cannot make is answered with 420 (Unknown Attribute)
            self.stats.errors += 1
            return self._error(msg, 420, "CHANGE-REQUEST not supported by this server"), local, src
        resp = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                            transaction_id=msg.transaction_id)
        resp.attributes["XOR-MAPPED-ADDRESS"] = src
        resp.attributes["RESPONSE-ORIGIN"] = origin
        other = self.settings.other_address()
        if other is not None:
            resp.attributes["OTHER-ADDRESS"] = other
        resp.add_fingerprint()
        self.stats.responses += 1
        if origin != local:
            self.stats.changed += 1
        return bytes(resp), origin, src

    def _origin(self, local: Addr, change: int) -> Addr | None:
        addr, port = local
        s = self.settings
        if change & CHANGE_IP:
            if not s.alt_address:
                return None
            addr = s.alt_address if addr == s.address else s.address
        if change & CHANGE_PORT:
            if not s.alt_port:
                return None
            port = s.alt_port if port == s.port else s.port
        return addr, port

    def _error(self, msg: stun.Message, code: int, reason: str) -> bytes:
        resp = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.ERROR,
                            transaction_id=msg.transaction_id)
        resp.attributes["ERROR-CODE"] = (code, reason)
        resp.add_fingerprint()
        return bytes(resp)


def _port(where: str, key: str, v: Any) -> int:
    p = CHECK_INT(where, key, v)
    if not 0 <= p < 65536 or (key == "stun_port" and p == 0):
        raise LocalError(f"{where} {key}: {v!r} is not a UDP port")
    return int(p)


def _ip(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise LocalError(f"{where} {key}: expected an IP address string, got {v!r}")
    if v:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise LocalError(f"{where} {key}: {v!r} is not an IP address") from None
    return v


# the [mediation] keys of the STUN responder (mediation_server/daemon.py merges them into its checks)
STUN_CHECKS: dict[str, Any] = {"stun": CHECK_BOOL, "stun_port": _port, "stun_alt_port": _port,
                               "stun_alt_address": _ip, "stun_rate": CHECK_NUMBER}


def stun_settings(med: dict[str, Any], cfg: DaemonConfig) -> StunSettings | None:
    """The responder's addresses from `[mediation]`: the primary address is the first `[daemon] listen`
    address (the one peers reach the server on), the wildcard when none is configured."""
    if not med.get("stun", True):
        return None
    listen = [a for a in cfg.settings.listen if "/" not in a]
    address = next((a for a in listen if ipaddress.ip_address(a).version == 4), listen[0] if listen else "0.0.0.0")
    port = int(med.get("stun_port", 3478))
    alt_port = int(med.get("stun_alt_port", 3479))
    alt_address = str(med.get("stun_alt_address", ""))
    if alt_port == port:
        raise LocalError("[mediation] stun_alt_port must differ from stun_port (RFC 5780 §6)")
    if alt_address and ipaddress.ip_address(alt_address).version != ipaddress.ip_address(address).version:
        raise LocalError("[mediation] stun_alt_address must be of the primary address's family (RFC 5780 §6)")
    rate = float(med.get("stun_rate", 500))
    if rate <= 0:
        raise LocalError("[mediation] stun_rate must be above 0 (answers per second)")
    return StunSettings(address, port, alt_port, alt_address, rate=rate, burst=max(int(rate * 0.4), 1))


class StunServer:
    """The asyncio side: binds every address of `settings` and answers from the socket the responder
    names. STUN is a help, not the service: when the primary address cannot be bound the responder stays
    off (clients report "no STUN answer"), when an alternate cannot, the responder offers none
    (no OTHER-ADDRESS: clients report mapping and filtering unknown) rather than drop CHANGE-REQUEST
    answers, which would make every client believe its NAT filters them."""

    def __init__(self, settings: StunSettings) -> None:
        self.responder = StunResponder(settings)
        self.sockets: dict[Addr, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> list[Addr]:
        """Open the sockets (inside the running loop); return the transport addresses bound."""
        self._loop = asyncio.get_running_loop()
        settings = self.responder.settings
        for addr in settings.addresses():
            fam = socket.AF_INET6 if ipaddress.ip_address(addr[0]).version == 6 else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                s.setblocking(False)
                s.bind(addr)
            except OSError as err:
                s.close()
                primary = addr == (settings.address, settings.port)
                log.warning("STUN %s[%d]: %s; %s", addr[0], addr[1], err.strerror or err,
                            "no STUN responder" if primary else "answering without RFC 5780 tests")
                self.close()
                if primary:
                    return []
                self.responder.settings = replace(settings, alt_port=0, alt_address="")
                return self.start()
            self.sockets[addr] = s
            self._loop.add_reader(s.fileno(), self._readable, addr, s)
        if self.sockets:
            log.info("STUN responder on %s", ", ".join(f"{a}[{p}]" for a, p in self.sockets))
        return list(self.sockets)

    def _readable(self, local: Addr, s: socket.socket) -> None:
        for _ in range(64):  # drain a burst, then yield to the loop
            try:
                data, src = s.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # ICMP errors surface here on Linux
                log.debug("STUN %s[%d]: %s", local[0], local[1], err)
                return
            out = self.responder.receive(data, (src[0], src[1]), local, time.monotonic())
            if out is None:
                continue
            resp, origin, dst = out
            sock = self.sockets.get(origin)
            if sock is None:  # the alternate socket could not be bound: the change cannot be made
                continue
            try:
                sock.sendto(resp, dst)
            except OSError as err:
                log.debug("STUN %s[%d] -> %s[%d]: %s", origin[0], origin[1], dst[0], dst[1], err)

    def status(self) -> dict[str, object]:
        st = self.responder.stats
        return {"addresses": [f"{a}[{p}]" for a, p in self.sockets], "requests": st.requests,
                "responses": st.responses, "changed": st.changed, "errors": st.errors, "dropped": st.dropped,
                "limited": st.limited}

    def close(self) -> None:
        for s in self.sockets.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(s.fileno())
            s.close()
        self.sockets.clear()
