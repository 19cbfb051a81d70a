"""Connection configuration (the swanctl.conf concepts a user knows), as plain dataclasses.

Everything a test must tune is a field here (design principle 7); nothing reads module constants.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from ..constants import IKE_PORT, NATT_PORT
from ..errors import LocalError
from .identity import ANY, Identity

# eap-*: RFC 7296 2.16, the local side as EAP peer (initiator), the remote side as EAP server (responder)
AuthKind = Literal["psk", "pubkey", "eap-md5", "eap-mschapv2"]


@dataclass(frozen=True)
class RetransmitConfig:
    """When a request is sent again (RFC 7296 2.1: the requester retransmits; 2.4: the waits MUST grow
    exponentially), a pure function of (config, attempt, prompt).

    The main schedule is strongSwan's (retransmit_timeout / _base / _tries): waits `timeout * base^n`, and
    the exchange fails after `tries` retransmissions (4, 7.2, 13, 23.3, 42, then 75.6 s: 165 s).
    A *prompt* exchange, one somebody waits for (IKE_SA_INIT, IKE_AUTH, ME_CONNECT: `Task.prompt`), first
    runs an early schedule: waits `early_timeout * early_base^n` while shorter than `timeout`, then the main
    schedule from its start. Under packet loss that turns a lost message into a sub-second delay instead of
    4 s and more (docs/operations.md, "Loss"); it is bounded: at most `early_steps()` more packets, all within
    the first `early_span()` seconds. `early_timeout = 0` gives strongSwan's schedule for every exchange.
    """

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5
    early_timeout: float = 0.25
    early_base: float = 1.2

    def early_steps(self) -> int:
        """How many waits of the early schedule precede the main one."""
        if self.early_timeout <= 0 or self.early_base <= 1.0:
            return 0
        n, wait = 0, self.early_timeout
        while wait < self.timeout:
            n, wait = n + 1, wait * self.early_base
        return n

    def early_span(self) -> float:
        """Seconds the early schedule lasts (sum of its waits)."""
        return sum(self.early_timeout * self.early_base**i for i in range(self.early_steps()))

    def delay(self, attempt: int, prompt: bool = False) -> float:
        """Wait after the `attempt`-th transmission (0 = first send) before the next one."""
        early = self.early_steps() if prompt else 0
        if attempt < early:
            return float(self.early_timeout * self.early_base**attempt)
        return float(self.timeout * self.base ** (attempt - early))

    def retransmits(self, prompt: bool = False) -> int:
        """Retransmissions before the exchange fails."""
        return self.tries + (self.early_steps() if prompt else 0)

    def give_up_after(self, prompt: bool = False) -> float:
        """Seconds from the first send until the exchange fails without an answer."""
        return sum(self.delay(i, prompt) for i in range(self.retransmits(prompt) + 1))


@dataclass
class AuthConfig:
    auth: AuthKind = "psk"
    id: Identity = ANY
    # pubkey: local private key (PEM path or key object), remote expected key(s) are found by identity
    # in the credential store; "signature" selects AUTH method 14 (RFC 7427) or 1 (classic RSA).
    signature: Literal["rfc7427", "rsa", "rsa-pss"] = "rfc7427"
    certs: list[Any] = field(default_factory=list)  # local certificate(s) to send (cryptography x509)
    # EAP identity (RFC 3748 5.1): local side, what we answer EAP-Identity with (None: the IKE identity);
    # remote side, None asks the peer with EAP-Identity, else the identity whose secret is used
    eap_id: str | None = None
    # remote side, EAP server: new EAP-MSCHAPv2 challenges after a failed verification (RFC 2759 6)
    eap_retries: int = 2


@dataclass
class ChildConfig:
    name: str
    local_ts: list[str] = field(default_factory=lambda: ["dynamic"])
    remote_ts: list[str] = field(default_factory=lambda: ["dynamic"])
    esp_proposals: str = "aes128gcm16-x25519,aes128gcm16,aes256-sha256"
    mode: Literal["tunnel"] = "tunnel"
    rekey_time: float = 3600.0
    life_time: float | None = None  # default: rekey_time * 1.1
    start_action: Literal["none", "start", "trap"] = "none"
    replay_window: int = 128


@dataclass
class IkeConfig:
    name: str
    local_addrs: list[str] = field(default_factory=lambda: ["%any"])
    remote_addrs: list[str] = field(default_factory=lambda: ["%any"])
    local_port: int = IKE_PORT
    remote_port: int = IKE_PORT
    # the CBC proposal offers x25519 first: a default charon responder prefers its own (CBC, x25519-first)
    # proposal and would answer INVALID_KE_PAYLOAD(MODP_2048) to our x25519 KE if we offered only MODP_2048
    proposals: str = "aes128gcm16-prfsha256-x25519,aes256-sha256-x25519-modp2048"
    local: AuthConfig = field(default_factory=AuthConfig)
    remote: AuthConfig = field(default_factory=AuthConfig)
    children: list[ChildConfig] = field(default_factory=list)
    rekey_time: float = 14400.0
    rekey_retry: float = 10.0  # RFC 7296 2.25: retry a rekey the peer refused with TEMPORARY_FAILURE (CHILD_SA)
    ike_rekey_retry: float = 30.0  # ... and an IKE_SA rekey the peer refused
    dpd_delay: float = 0.0  # 0 = no liveness checks
    keepalive_interval: float = 20.0  # RFC 3948 NAT keepalives, sent when behind a NAT
    retransmit: RetransmitConfig = field(default_factory=RetransmitConfig)
    fragmentation: bool = True  # RFC 7383, used only when both sides announce it
    fragment_size: int = 1280
    encap: bool = False  # force UDP encapsulation (float to 4500)
    vips: list[str] = field(default_factory=list)  # CP request, e.g. ["0.0.0.0"]
    pools: list[str] = field(default_factory=list)  # responder: virtual IPs to hand out
    mediation: bool = False  # ME: this is a mediation connection (to a mediation server)
    mediated_by: str | None = None  # ME: name of the mediation connection to use
    mediation_peer: Identity | None = None  # ME: identity to request from the server
    unique: Literal["no", "replace", "keep"] = "replace"
    keyingtries: int = 1
    send_certreq: bool = True

    def child(self, name: str) -> ChildConfig:
        for c in self.children:
            if c.name == name:
                return c
        raise LocalError(f"no CHILD_SA config named {name!r} in {self.name!r}")

    @property
    def natt_port(self) -> int:
        return NATT_PORT if self.local_port in (IKE_PORT, 0) else self.local_port


def remote_host(cfg: IkeConfig) -> str | None:
    """The first concrete remote address, or None for %any (responder-only / mediated)."""
    for a in cfg.remote_addrs:
        if a != "%any":
            return a
    return None


_ANY = {"%any": 0, "%any4": 4, "%any6": 6, "0.0.0.0/0": 4, "::/0": 6}


@lru_cache(maxsize=1024)
def _patterns(patterns: tuple[str, ...]) -> tuple[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network | None], ...]:
    """Parsed once: (version wildcard, network) per pattern; unparsable patterns are skipped."""
    out: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network | None]] = []
    for p in patterns:
        if p in _ANY:
            out.append((_ANY[p], None))
            continue
        try:
            out.append((-1, ipaddress.ip_network(p, strict=False)))
        except ValueError:
            continue
    return tuple(out)


@lru_cache(maxsize=4096)
def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(addr)


def addr_matches(patterns: list[str], addr: str) -> bool:
    """swanctl local_addrs/remote_addrs matching: %any, an address, or a subnet (parsed once)."""
    return _addr_matches(tuple(patterns), addr)


@lru_cache(maxsize=16384)
def _addr_matches(patterns: tuple[str, ...], addr: str) -> bool:
    ip = _ip(addr)
    for version, net in _patterns(patterns):
        if net is None:
            if version in (0, ip.version):
                return True
        elif ip.version == net.version and ip in net:
            return True
    return False
