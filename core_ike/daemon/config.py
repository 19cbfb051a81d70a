"""The daemon's TOML configuration, in the spirit of swanctl.conf.

```toml
[daemon]
listen = ["192.0.2.1"]          # addresses to bind (default: every local address)
port = 500                      # IKE port; natt_port = 4500
control = "/run/iked.ctl"       # control socket for ikectl
dataplane = "auto"              # auto | userspace | xfrm | none
tun = "ipsec0"

[[secrets.ike]]                 # pre-shared keys
id = ["alice@example.org", "bob@example.org"]
secret = "..."

[[secrets.private]]             # own private keys (PEM/DER)
file = "alice.key"

[[secrets.pubkey]]              # trusted raw public keys; also found by their ID_KEY_ID
file = "bob.pub"
id = "bob@example.org"          # optional extra identity

[connections.home]
remote_addrs = ["192.0.2.2"]
proposals = "aes128gcm16-prfsha256-x25519"
local = { auth = "psk", id = "alice@example.org" }
remote = { auth = "psk", id = "bob@example.org" }
[connections.home.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
esp_proposals = "aes128gcm16"
start_action = "start"
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ..errors import LocalError
from ..ike.config import AuthConfig, ChildConfig, IkeConfig, RetransmitConfig
from ..ike.creds import Credentials, load_private_key, load_public_key
from ..ike.identity import Identity


@dataclass
class DaemonSettings:
    listen: list[str] = field(default_factory=list)
    port: int = 500
    natt_port: int = 4500
    control: str = "/run/iked.ctl"
    dataplane: str = "auto"
    tun: str = "ipsec0"
    log_level: str = "info"
    log_file: str | None = None
    cookie_threshold: int = 30  # half-open IKE_SAs before COOKIEs are demanded (RFC 7296 2.6)
    cookie_threshold_ip: int = 3  # ... from one address
    half_open_timeout: float = 30.0
    max_half_open: int = 10000
    force_cookies: bool = False


@dataclass
class DaemonConfig:
    settings: DaemonSettings
    connections: list[IkeConfig]
    creds: Credentials


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(v: Any) -> float:
    """Seconds from a number or a strongSwan-style string: `30s`, `20m`, `4h`, `1d`."""
    if isinstance(v, int | float):
        return float(v)
    s = str(v).strip()
    if s and s[-1] in _DURATION_UNITS:
        return float(s[:-1]) * _DURATION_UNITS[s[-1]]
    return float(s)


def _path(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def check_keys(where: str, d: dict[str, Any], allowed: tuple[str, ...] | set[str]) -> None:
    """A typo in a key is an error with the section named, not a setting silently ignored."""
    unknown = sorted(k for k in d if k not in allowed)
    if unknown:
        raise LocalError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"in {where} (accepted: {', '.join(sorted(allowed))})")


def _auth(d: dict[str, Any], base: Path, where: str = "[connections.*.local]") -> AuthConfig:
    check_keys(where, d, AUTH_KEYS)
    a = AuthConfig(auth=d.get("auth", "psk"), id=Identity.parse(d.get("id", "%any")))
    if "signature" in d:
        a.signature = d["signature"]
    for c in d.get("certs", []):
        a.certs.append(x509.load_pem_x509_certificate(_path(base, c).read_bytes()))
    if a.auth not in ("psk", "pubkey"):
        raise LocalError(f"unknown auth method {a.auth!r} (use psk or pubkey)")
    return a


def _child(name: str, d: dict[str, Any], conn: str = "*") -> ChildConfig:
    check_keys(f"[connections.{conn}.children.{name}]", d, CHILD_KEYS)
    if d.get("start_action", "none") not in ("none", "start"):
        raise LocalError(f"[connections.{conn}.children.{name}] start_action must be 'none' or 'start' "
                         "(trap policies are not supported yet)")
    c = ChildConfig(name)
    for key in ("local_ts", "remote_ts"):
        if key in d:
            setattr(c, key, list(d[key]))
    for key in ("esp_proposals", "start_action", "mode"):
        if key in d:
            setattr(c, key, d[key])
    for key in ("rekey_time", "life_time"):
        if key in d:
            setattr(c, key, duration(d[key]))
    if "replay_window" in d:
        c.replay_window = int(d["replay_window"])
    return c


_SIMPLE = ("proposals", "unique", "vips", "pools", "encap", "fragmentation", "mediation", "mediated_by",
           "keyingtries", "local_port", "remote_port", "local_addrs", "remote_addrs", "fragment_size")
_DURATIONS = ("rekey_time", "dpd_delay", "keepalive_interval", "rekey_retry", "ike_rekey_retry")
_DAEMON_DURATIONS = ("half_open_timeout",)

# the keys each table accepts (docs/configuration.md documents exactly these; tests compare them)
CONNECTION_KEYS = (*_SIMPLE, *_DURATIONS, "mediation_peer", "local", "remote", "retransmit", "children")
AUTH_KEYS = ("auth", "id", "signature", "certs")
RETRANSMIT_KEYS = ("timeout", "base", "tries")
CHILD_KEYS = ("local_ts", "remote_ts", "esp_proposals", "start_action", "mode", "rekey_time", "life_time",
              "replay_window")
SECRET_KEYS = {"ike": ("id", "secret"), "private": ("file",), "pubkey": ("file", "id"), "ca": ("file",)}


def connection(name: str, d: dict[str, Any], base: Path) -> IkeConfig:
    check_keys(f"[connections.{name}]", d, CONNECTION_KEYS)
    cfg = IkeConfig(name)
    for key in _SIMPLE:
        if key in d:
            setattr(cfg, key, d[key])
    for key in _DURATIONS:
        if key in d:
            setattr(cfg, key, duration(d[key]))
    if "mediation_peer" in d:
        cfg.mediation_peer = Identity.parse(d["mediation_peer"])
    cfg.local = _auth(d.get("local", {}), base, f"[connections.{name}.local]")
    cfg.remote = _auth(d.get("remote", {}), base, f"[connections.{name}.remote]")
    if "retransmit" in d:
        r = d["retransmit"]
        check_keys(f"[connections.{name}.retransmit]", r, RETRANSMIT_KEYS)
        cfg.retransmit = RetransmitConfig(duration(r.get("timeout", 4)), float(r.get("base", 1.8)),
                                          int(r.get("tries", 5)))
    cfg.children = [_child(n, c, name) for n, c in d.get("children", {}).items()]
    if cfg.mediation and cfg.mediated_by:
        raise LocalError(f"{name}: a mediation connection cannot be a mediated connection at the same time")
    return cfg


def secrets(d: dict[str, Any], base: Path) -> Credentials:
    check_keys("[secrets]", d, set(SECRET_KEYS))
    for kind, entries in d.items():
        for e in entries:
            check_keys(f"[[secrets.{kind}]]", e, SECRET_KEYS[kind])
    creds = Credentials()
    for s in d.get("ike", []):
        ids = s.get("id", [])
        creds.add_psk(s["secret"], *([ids] if isinstance(ids, str) else ids))
    for s in d.get("private", []):
        creds.private_keys.append(load_private_key(_path(base, s["file"]).read_bytes()))
    for s in d.get("pubkey", []):
        key = load_public_key(_path(base, s["file"]).read_bytes())
        creds.add_public_key(key, Identity.parse(s["id"]) if "id" in s else None)
    for s in d.get("ca", []):
        creds.cas.append(x509.load_pem_x509_certificate(_path(base, s["file"]).read_bytes()))
    return creds


def load(path: str | Path) -> DaemonConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LocalError(f"cannot read config {p}: {e}") from e
    base = p.parent
    st = DaemonSettings()
    for k, v in raw.get("daemon", {}).items():
        if not hasattr(st, k):
            raise LocalError(f"unknown [daemon] setting {k!r}")
        setattr(st, k, duration(v) if k in _DAEMON_DURATIONS else v)
    conns = [connection(n, c, base) for n, c in raw.get("connections", {}).items()]
    return DaemonConfig(st, conns, secrets(raw.get("secrets", {}), base))
