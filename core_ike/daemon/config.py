"""The daemon's TOML configuration, in the spirit of swanctl.conf.

```toml
[daemon]
listen = ["192.0.2.1"]          # addresses to bind (default: every local address)
port = 500                      # IKE port; natt_port = 4500
control = "/run/iked.ctl"       # control socket for ikectl
dataplane = "auto"              # auto | userspace | xfrm | none
tun = "ipsec0"
log_target = "stderr"           # stderr | stdout | syslog[:FACILITY] | file:PATH

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

Everything is checked here, when the file is loaded: types, choices, ranges, identities, proposals,
traffic selectors, durations, key and certificate files. A mistake is a LocalError whose one-line
message names the section, the key and the bad value, so that `up` never meets a bad setting.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging.handlers
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast

from cryptography import x509

from ..crypto.proposals import parse_esp_proposals, parse_ike_proposals
from ..errors import LocalError
from ..ike import ts as tsmod
from ..ike.config import AuthConfig, AuthKind, ChildConfig, IkeConfig, RetransmitConfig
from ..ike.creds import Credentials, PrivateKey, PublicKey, load_private_key, load_public_key
from ..ike.identity import Identity

LOG_LEVELS = ("debug", "info", "warning", "error")
DATAPLANES = ("auto", "userspace", "xfrm", "none")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")  # core_ike/daemon/startup.py loop_factory
# top-level tables besides [daemon], [secrets], [connections]: the mediation daemons read their own
DAEMON_SECTIONS = ("mediation", "client")

Signature = Literal["rfc7427", "rsa", "rsa-pss"]
StartAction = Literal["none", "start"]
Mode = Literal["tunnel"]


@dataclass
class DaemonSettings:
    listen: list[str] = field(default_factory=list)
    port: int = 500
    natt_port: int = 4500
    control: str = "/run/iked.ctl"
    dataplane: str = "auto"
    tun: str = "ipsec0"
    esp_offload: str = "all"  # userspace data plane: kernel offload steps (core_ike/io/fastpath.py)
    log_level: str = "info"
    log_target: str = "stderr"  # stderr | stdout | syslog | syslog:FACILITY | file:PATH
    log_file: str | None = None  # the same as log_target = "file:PATH"
    cookie_threshold: int = 30  # half-open IKE_SAs before COOKIEs are demanded (RFC 7296 2.6)
    cookie_threshold_ip: int = 3  # ... from one address
    half_open_timeout: float = 30.0
    max_half_open: int = 10000
    frag_max_per_sa: int = 2 * 1024 * 1024  # octets of incomplete IKE fragment sets per IKE_SA (RFC 7383)
    frag_max_total: int = 64 * 1024 * 1024  # ... of all IKE_SAs together
    force_cookies: bool = False
    init_rate_ip: float = 50.0  # while COOKIEs are demanded: IKE_SA_INIT requests per second from one address
    receive_buffer: int = 4 * 1024 * 1024  # socket receive buffer of each IKE socket (docs/operations.md)
    metrics: str | None = None  # ADDRESS:PORT for Prometheus metrics (docs/operations.md); off when unset
    workers: int = 1  # iked's processes sharing the IKE ports (docs/operations.md, "Workers"); 0 = "auto"
    event_loop: str = "auto"  # uvloop when installed, else asyncio's (docs/operations.md, "Event loop")
    # connections and credentials also from strongSwan's SQL schema / classic files (docs/gateway.md)
    config_db: str | None = None
    ipsec_conf: str | None = None
    ipsec_secrets: str | None = None


@dataclass
class DaemonConfig:
    settings: DaemonSettings
    connections: list[IkeConfig]
    creds: Credentials
    raw: dict[str, Any] = field(default_factory=dict)  # the whole TOML document ([mediation], [client])
    warnings: list[str] = field(default_factory=list)  # for the log, once it is set up (certcheck.py)


# ---------------------------------------------------------------------------------------- values


def show(v: Any) -> str:
    """A value the way it looks in the TOML file."""
    try:
        return json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(v)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(v: Any) -> float:
    """Seconds from a number or a strongSwan-style string: `30s`, `20m`, `4h`, `1d`."""
    out = float("nan")
    try:
        if isinstance(v, int | float) and not isinstance(v, bool):  # TOML true/false is no duration
            out = float(v)
        elif isinstance(v, str):
            s = v.strip()
            out = float(s[:-1]) * _DURATION_UNITS[s[-1]] if s and s[-1] in _DURATION_UNITS else float(s)
    except ValueError:
        pass
    if not out >= 0 or out == float("inf"):
        raise LocalError(f"bad duration {show(v)} (seconds, or a number followed by s, m, h or d)")
    return out


def _dur(where: str, key: str, v: Any) -> float:
    try:
        return duration(v)
    except LocalError as e:
        raise LocalError(f"{where} {key}: {e}") from None


def _str(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise LocalError(f"{where} {key}: expected a non-empty string, got {show(v)}")
    return v


def _bool(where: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise LocalError(f"{where} {key}: expected true or false, got {show(v)}")
    return v


def _int(where: str, key: str, v: Any, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        raise LocalError(f"{where} {key}: expected an integer {rng}, got {show(v)}")
    return v


def _port(where: str, key: str, v: Any) -> int:
    return _int(where, key, v, 0, 65535)


def _number(where: str, key: str, v: Any, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v >= lo:
        raise LocalError(f"{where} {key}: expected a number >= {lo:g}, got {show(v)}")
    return float(v)


def _choice(where: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise LocalError(f"{where} {key}: {show(v)} is not one of {', '.join(choices)}")
    return v


def _strs(where: str, key: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise LocalError(f"{where} {key}: expected a list of strings, got {show(v)}")
    return list(v)


def _table(where: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise LocalError(f"{where} must be a table, got {show(v)}")
    return v


def _identity(where: str, key: str, v: Any) -> Identity:
    try:
        i = Identity.parse(_str(where, key, v))
    except LocalError as e:
        raise LocalError(f"{where} {key}: {e}") from None
    if not i.is_any and not i.data:
        raise LocalError(f"{where} {key}: empty identity {show(v)}")
    return i


_ADDR_WILDCARDS = ("%any", "%any4", "%any6")


def _addrs(where: str, key: str, v: Any, subnets: bool = True) -> list[str]:
    """Addresses (and subnets, `%any`): host names are not resolved, so they are refused here."""
    out = _strs(where, key, v)
    for a in out:
        if subnets and a in _ADDR_WILDCARDS:
            continue
        try:
            ipaddress.ip_network(a, strict=False) if subnets else ipaddress.ip_address(a)
        except ValueError:
            what = "an address, a subnet or %any" if subnets else "an IP address"
            raise LocalError(f"{where} {key}: {show(a)} is not {what} (host names are not resolved)") from None
    return out


def _subnets(where: str, key: str, v: Any) -> list[str]:
    out = _strs(where, key, v)
    for a in out:
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            raise LocalError(f"{where} {key}: {show(a)} is not a subnet") from None
    return out


def _proposals_check(parse: Callable[[str], object]) -> Callable[[str, str, Any], str]:
    """A check that parses a proposal string now, so a bad algorithm fails at load, not at `up`."""
    def check(where: str, key: str, v: Any) -> str:
        text = _str(where, key, v)
        try:
            parse(text)
        except LocalError as e:
            raise LocalError(f"{where} {key}: {e}") from None
        return text
    return check


_ike_proposals = _proposals_check(parse_ike_proposals)
_esp_proposals = _proposals_check(parse_esp_proposals)


def _selectors(where: str, key: str, v: Any) -> list[str]:
    out = _strs(where, key, v)
    for text in out:
        try:
            t = tsmod.parse(text, "192.0.2.1")  # any address stands in for `dynamic`
            ok = t.ip_proto <= 255 and t.end_port <= 65535
        except (LocalError, ValueError):
            ok = False
        if not ok:
            raise LocalError(f"{where} {key}: bad traffic selector {show(text)} "
                             "(a subnet, an address or dynamic, optionally [proto/port])")
    return out


# ---------------------------------------------------------------------------------------- files


def _path(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def _read(where: str, key: str, base: Path, name: Any) -> tuple[Path, bytes]:
    p = _path(base, _str(where, key, name))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LocalError(f"{where} {key}: cannot read {p}: {e.strerror or e}") from None
    if not data.strip():
        raise LocalError(f"{where} {key}: {p} is empty")
    return p, data


def _pem_kind(data: bytes) -> str:
    head = data.lstrip()[:64]
    return head.split(b"-----BEGIN ", 1)[1].split(b"-----", 1)[0].decode("ascii", "replace") \
        if head.startswith(b"-----BEGIN ") else ""


def _private_key(where: str, base: Path, name: Any) -> PrivateKey:
    p, data = _read(where, "file", base, name)
    kind = _pem_kind(data)
    if "ENCRYPTED" in kind or b"Proc-Type: 4,ENCRYPTED" in data[:200]:
        raise LocalError(f"{where} file: {p} is encrypted (store the private key without a passphrase)")
    if kind and "PRIVATE KEY" not in kind:
        raise LocalError(f"{where} file: {p} holds a {kind.lower()}, not a private key")
    try:
        return load_private_key(data)
    except LocalError as e:
        reason = str(e) if str(e).startswith("unsupported") else "not a PEM or DER private key (RSA, EC, Ed25519, Ed448)"
        raise LocalError(f"{where} file: {p}: {reason}") from None


def _public_key(where: str, base: Path, name: Any) -> PublicKey:
    p, data = _read(where, "file", base, name)
    kind = _pem_kind(data)
    if "PRIVATE KEY" in kind:
        raise LocalError(f"{where} file: {p} holds a private key; give the public key (openssl pkey -pubout)")
    try:
        return load_public_key(data)
    except LocalError as e:
        reason = str(e) if str(e).startswith("unsupported") else "not a PEM or DER public key or certificate"
        raise LocalError(f"{where} file: {p}: {reason}") from None


def _certificate(where: str, key: str, base: Path, name: Any) -> x509.Certificate:
    p, data = _read(where, key, base, name)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise LocalError(f"{where} {key}: {p}: not a PEM certificate") from None


# ---------------------------------------------------------------------------------------- sections


def check_keys(where: str, d: dict[str, Any], allowed: tuple[str, ...] | set[str]) -> None:
    """A typo in a key is an error with the section named, not a setting silently ignored."""
    unknown = sorted(k for k in d if k not in allowed)
    if unknown:
        raise LocalError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"in {where} (accepted: {', '.join(sorted(allowed))})")


Check = Callable[[str, str, Any], Any]


def check_section(where: str, d: Any, checks: dict[str, Check]) -> dict[str, Any]:
    """Validate a daemon's own table ([mediation], [client]): known keys only, each value through its
    check (which names the key in its one-line error); returns the checked values."""
    table = _table(where, d)
    check_keys(where, table, tuple(checks))
    return {k: checks[k](where, k, v) for k, v in table.items()}


def database_url(where: str, key: str, v: Any) -> str:
    """`sqlite:////var/lib/ikeme/med_db.sqlite`, `postgresql://user:pw@host/db`, `mysql://...`."""
    text = _str(where, key, v)
    if "://" not in text:
        raise LocalError(f"{where} {key}: {show(v)} is not a database URL (sqlite:////PATH, "
                         "postgresql://USER@HOST/DB, mysql://USER@HOST/DB)")
    return text


# checks other modules combine into their tables (each: where, key, value -> value)
CHECK_INT: Check = _int
CHECK_NUMBER: Check = _number
CHECK_DURATION: Check = _dur
CHECK_BOOL: Check = _bool
CHECK_STR: Check = _str
CHECK_IDENTITY: Check = _identity


def check_choice(choices: tuple[str, ...]) -> Check:
    return lambda w, k, v: _choice(w, k, v, choices)


_IFNAMSIZ = 16  # Linux interface names: at most 15 octets and the terminating NUL


def _ifname(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) < _IFNAMSIZ or "/" in v or v.strip() != v:
        raise LocalError(f"{where} {key}: {show(v)} is not an interface name (1-15 characters, no '/')")
    return v


def _log_target(where: str, key: str, v: Any) -> str:
    t = _str(where, key, v)
    kind, _, arg = t.partition(":")
    if kind in ("stderr", "stdout") and not arg:
        return t
    if kind == "syslog" and (not arg or arg in logging.handlers.SysLogHandler.facility_names):
        return t
    if kind == "file" and arg.strip():
        return t
    raise LocalError(f"{where} {key}: {show(v)} is not stderr, stdout, syslog, syslog:FACILITY or file:PATH")


def _esp_offload(where: str, key: str, v: Any) -> str:
    from ..io.fastpath import offload_steps

    if not isinstance(v, str):
        raise LocalError(f"{where} {key}: {show(v)} is not a string")
    try:
        offload_steps(v)
    except LocalError as e:
        raise LocalError(f"{where} {key}: {e}") from None
    return v


def log_target(st: DaemonSettings) -> str:
    """The log destination: `log_file` is a shorthand for `log_target = "file:PATH"`."""
    return f"file:{st.log_file}" if st.log_file else st.log_target


_DAEMON_CHECKS: dict[str, Callable[[str, str, Any], Any]] = {
    "listen": lambda w, k, v: _addrs(w, k, v, subnets=False),
    "port": _port,
    "natt_port": _port,
    "control": _str,
    "dataplane": lambda w, k, v: _choice(w, k, v, DATAPLANES),
    "tun": _ifname,
    "esp_offload": lambda w, k, v: _esp_offload(w, k, v),
    "log_level": lambda w, k, v: _choice(w, k, v.lower() if isinstance(v, str) else v, LOG_LEVELS),
    "log_target": _log_target,
    "log_file": _str,
    "cookie_threshold": _int,
    "cookie_threshold_ip": _int,
    "half_open_timeout": _dur,
    "max_half_open": lambda w, k, v: _int(w, k, v, 1),
    # no less than the size limit of one reassembled message (64 KiB)
    "frag_max_per_sa": lambda w, k, v: _int(w, k, v, 65536),
    "frag_max_total": lambda w, k, v: _int(w, k, v, 65536),
    "force_cookies": _bool,
    "init_rate_ip": _number,
    "receive_buffer": _int,
    "metrics": lambda w, k, v: _metrics(w, k, v),
    "workers": lambda w, k, v: _workers(w, k, v),
    "event_loop": lambda w, k, v: _choice(w, k, v, EVENT_LOOPS),
    "config_db": lambda w, k, v: database_url(w, k, v),
}


_MAX_WORKERS = 64


def _workers(where: str, key: str, v: Any) -> int:
    """A number of processes (1-64: the first octet of an SPI names the worker), or "auto" (0: one per CPU)."""
    if v == "auto":
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _MAX_WORKERS:
        raise LocalError(f"{where} {key}: expected an integer 1-64 or \"auto\", got {show(v)}")
    return v


def _metrics(where: str, key: str, v: Any) -> str:
    from .metrics import parse_listen

    text = _str(where, key, v)
    try:
        host, _ = parse_listen(text)
        ipaddress.ip_address(host)
    except ValueError:
        raise LocalError(f"{where} {key}: {show(v)} is not ADDRESS:PORT (e.g. \"127.0.0.1:9488\")") from None
    return text


def _by_default(default: Any) -> Callable[[str, str, Any], Any]:
    """The check of a [daemon] setting without one of its own: the type of its default."""
    if isinstance(default, bool):
        return _bool
    if isinstance(default, int):
        return _int
    if isinstance(default, float):
        return _dur
    if isinstance(default, list):
        return _strs
    return _str


def _daemon(d: Any) -> DaemonSettings:
    d = _table("[daemon]", d)
    st = DaemonSettings()
    accepted = [f.name for f in fields(DaemonSettings)]
    for k, v in d.items():
        if k not in accepted:
            raise LocalError(f"unknown [daemon] setting {k!r} (accepted: {', '.join(accepted)})")
        check = _DAEMON_CHECKS.get(k) or _by_default(getattr(st, k))
        setattr(st, k, check("[daemon]", k, v))
    if st.port == st.natt_port and st.port:
        raise LocalError(f"[daemon] port and natt_port are both {st.port}; they must differ")
    if st.config_db and st.workers != 1:  # each worker would write the pools' leases (docs/gateway.md)
        raise LocalError("[daemon] config_db needs workers = 1 (the database's pools have one writer)")
    if st.log_file and "log_target" in d:
        raise LocalError("[daemon] log_file and log_target both set; use log_target = \"file:PATH\" alone")
    return st


def _auth(d: dict[str, Any], base: Path, where: str = "[connections.*.local]") -> AuthConfig:
    d = _table(where, d)
    check_keys(where, d, AUTH_KEYS)
    a = AuthConfig()
    if "auth" in d:
        a.auth = cast(AuthKind, _choice(where, "auth", d["auth"], ("psk", "pubkey", "eap-md5", "eap-mschapv2")))
    if "eap_id" in d:
        a.eap_id = _str(where, "eap_id", d["eap_id"])
    if "id" in d:
        a.id = _identity(where, "id", d["id"])
    if "signature" in d:
        a.signature = cast(Signature, _choice(where, "signature", d["signature"], ("rfc7427", "rsa", "rsa-pss")))
    for c in _strs(where, "certs", d["certs"]) if "certs" in d else []:
        a.certs.append(_certificate(where, "certs", base, c))
    return a


def _child(name: str, d: dict[str, Any], conn: str = "*") -> ChildConfig:
    where = f"[connections.{conn}.children.{name}]"
    d = _table(where, d)
    check_keys(where, d, CHILD_KEYS)
    c = ChildConfig(name)
    for key in ("local_ts", "remote_ts"):
        if key in d:
            setattr(c, key, _selectors(where, key, d[key]))
    if "esp_proposals" in d:
        c.esp_proposals = _esp_proposals(where, "esp_proposals", d["esp_proposals"])
    if "start_action" in d:
        c.start_action = cast(StartAction, _choice(where, "start_action", d["start_action"],
                                                   ("none", "start", "trap")))
    if "mode" in d:
        c.mode = cast(Mode, _choice(where, "mode", d["mode"], ("tunnel",)))
    for key in ("rekey_time", "life_time"):
        if key in d:
            setattr(c, key, _dur(where, key, d[key]))
    if c.life_time is not None and c.life_time <= c.rekey_time:
        raise LocalError(f"{where} life_time ({c.life_time:g} s) must be longer than rekey_time ({c.rekey_time:g} s)")
    if "replay_window" in d:
        c.replay_window = _int(where, "replay_window", d["replay_window"])
    return c


# key -> check of the plain connection settings (each check returns the value to store)
_CONN_CHECKS: dict[str, Callable[[str, str, Any], Any]] = {
    "proposals": _ike_proposals,
    "unique": lambda w, k, v: _choice(w, k, v, ("replace", "keep", "no")),
    "vips": lambda w, k, v: _addrs(w, k, v, subnets=False),
    "pools": _subnets,
    "encap": _bool,
    "fragmentation": _bool,
    "mediation": _bool,
    "mediated_by": _str,
    "keyingtries": _int,
    "local_port": _port,
    "remote_port": _port,
    "local_addrs": _addrs,
    "remote_addrs": _addrs,
    "fragment_size": lambda w, k, v: _int(w, k, v, 256, 65535),
    **dict.fromkeys(("rekey_time", "dpd_delay", "keepalive_interval", "rekey_retry", "ike_rekey_retry"), _dur),
}

# A mediation connection we initiate checks its server this often when idle: a restarted server answers
# with INVALID_IKE_SPI (RFC 7296 2.21.4) and the client registers again at once (docs/operations.md,
# "Recovery"). 20 s is the NAT keepalive interval a NATed client sends anyway.
MEDIATION_DPD_DELAY = 20.0

# the keys each table accepts (docs/configuration.md documents exactly these; tests compare them)
CONNECTION_KEYS = (*_CONN_CHECKS, "mediation_peer", "local", "remote", "retransmit", "children")
AUTH_KEYS = ("auth", "id", "signature", "certs", "eap_id")
RETRANSMIT_KEYS = ("timeout", "base", "tries", "early_timeout", "early_base")
CHILD_KEYS = ("local_ts", "remote_ts", "esp_proposals", "start_action", "mode", "rekey_time", "life_time",
              "replay_window")
SECRET_KEYS = {"ike": ("id", "secret"), "eap": ("id", "secret"), "private": ("file",), "pubkey": ("file", "id"),
               "ca": ("file",)}


def connection(name: str, d: dict[str, Any], base: Path) -> IkeConfig:
    where = f"[connections.{name}]"
    d = _table(where, d)
    check_keys(where, d, CONNECTION_KEYS)
    cfg = IkeConfig(name)
    for key, check in _CONN_CHECKS.items():
        if key in d:
            setattr(cfg, key, check(where, key, d[key]))
    if "mediation_peer" in d:
        cfg.mediation_peer = _identity(where, "mediation_peer", d["mediation_peer"])
    cfg.local = _auth(d.get("local", {}), base, f"[connections.{name}.local]")
    cfg.remote = _auth(d.get("remote", {}), base, f"[connections.{name}.remote]")
    if "retransmit" in d:
        w = f"[connections.{name}.retransmit]"
        r = _table(w, d["retransmit"])
        check_keys(w, r, RETRANSMIT_KEYS)
        dflt = RetransmitConfig()
        cfg.retransmit = RetransmitConfig(_dur(w, "timeout", r.get("timeout", dflt.timeout)),
                                          _number(w, "base", r.get("base", dflt.base), 1.0),
                                          _int(w, "tries", r.get("tries", dflt.tries)),
                                          _dur(w, "early_timeout", r.get("early_timeout", dflt.early_timeout)),
                                          _number(w, "early_base", r.get("early_base", dflt.early_base), 1.01))
    cfg.children = [_child(n, c, name) for n, c in _table(f"{where} children", d.get("children", {})).items()]
    if cfg.mediation and cfg.mediated_by:
        raise LocalError(f"{where} a mediation connection cannot be a mediated connection at the same time "
                         "(mediation = true and mediated_by)")
    if cfg.mediated_by and cfg.mediation_peer is None:
        raise LocalError(f"{where} mediated_by needs mediation_peer (the peer's identity at the mediation server)")
    if any(ch.start_action == "trap" for ch in cfg.children):
        _trap_target(where, cfg)
    if cfg.mediation and "dpd_delay" not in d and any(a != "%any" for a in cfg.remote_addrs):
        cfg.dpd_delay = MEDIATION_DPD_DELAY
    return cfg


def _trap_target(where: str, cfg: IkeConfig) -> None:
    """start_action = "trap": the first packet starts the connection, so there must be one peer address
    to initiate to, not one the mediation server tells (docs/gateway.md, "Trap policies")."""
    target = next((a for a in cfg.remote_addrs if a not in _ADDR_WILDCARDS), "%any")
    if cfg.mediation or cfg.mediated_by or "/" in target or target.startswith("%"):
        raise LocalError(f"{where} start_action = \"trap\" needs remote_addrs to name the peer's address "
                         f"(not {show(target)}), and no mediation")


def _mediators(conns: list[IkeConfig], raw: dict[str, Any]) -> None:
    """`mediated_by` names a mediation connection of this file (or, for the mediation client with a
    database, the `medsrv` connection the database brings)."""
    by_name = {c.name: c for c in conns}
    from_db = isinstance(raw.get("client"), dict) and bool(raw["client"].get("database"))
    for c in conns:
        if not c.mediated_by:
            continue
        target = by_name.get(c.mediated_by)
        if target is None and not from_db:
            raise LocalError(f"[connections.{c.name}] mediated_by: no connection {show(c.mediated_by)} in this file")
        if target is not None and not target.mediation:
            raise LocalError(f"[connections.{c.name}] mediated_by: connection {show(c.mediated_by)} "
                             "is not a mediation connection (mediation = true)")


def secrets(d: dict[str, Any], base: Path) -> Credentials:
    d = _table("[secrets]", d)
    check_keys("[secrets]", d, set(SECRET_KEYS))
    for kind, entries in d.items():
        if not isinstance(entries, list):
            raise LocalError(f"[[secrets.{kind}]] must be an array of tables ([[secrets.{kind}]] blocks)")
        for e in entries:
            check_keys(f"[[secrets.{kind}]]", _table(f"[[secrets.{kind}]]", e), SECRET_KEYS[kind])
            if kind not in ("ike", "eap") and "file" not in e:
                raise LocalError(f"[[secrets.{kind}]] needs file")
    creds = Credentials()
    for s in d.get("ike", []):
        if "secret" not in s:
            raise LocalError("[[secrets.ike]] needs secret")
        ids = s.get("id", [])
        ids = [ids] if isinstance(ids, str) else _strs("[[secrets.ike]]", "id", ids)
        creds.add_psk(_str("[[secrets.ike]]", "secret", s["secret"]),
                      *(_identity("[[secrets.ike]]", "id", i) for i in ids))
    for s in d.get("eap", []):  # EAP passwords by EAP identity (RFC 7296 2.16, RFC 3748 5.1)
        if "secret" not in s:
            raise LocalError("[[secrets.eap]] needs secret")
        ids = s.get("id", [])
        ids = [ids] if isinstance(ids, str) else _strs("[[secrets.eap]]", "id", ids)
        creds.add_eap_secret(_str("[[secrets.eap]]", "secret", s["secret"]),
                             *(_identity("[[secrets.eap]]", "id", i) for i in ids))
    for s in d.get("private", []):
        creds.private_keys.append(_private_key("[[secrets.private]]", base, s["file"]))
    for s in d.get("pubkey", []):
        key = _public_key("[[secrets.pubkey]]", base, s["file"])
        creds.add_public_key(key, _identity("[[secrets.pubkey]]", "id", s["id"]) if "id" in s else None)
    for s in d.get("ca", []):
        creds.cas.append(_certificate("[[secrets.ca]]", "file", base, s["file"]))
    return creds


def load(path: str | Path, now: datetime.datetime | None = None) -> DaemonConfig:
    """The configuration in `path`; LocalError on any mistake, or when our own certificate is outside
    its validity period at `now` (default: the current time; core_ike/daemon/certcheck.py)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except OSError as e:
        raise LocalError(f"cannot read config {p}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LocalError(f"cannot read config {p}: {e}") from e
    check_keys(f"config {p}", raw, ("daemon", "secrets", "connections", *DAEMON_SECTIONS))
    for section in DAEMON_SECTIONS:
        _table(f"[{section}]", raw.get(section, {}))
    base = p.parent
    st = _daemon(raw.get("daemon", {}))
    conns = [connection(n, c, base) for n, c in _table("[connections]", raw.get("connections", {})).items()]
    _mediators(conns, raw)
    from .glue import check_installable  # the data plane's ESP transforms (glue imports the engine)

    check_installable(st.dataplane, conns)
    creds = secrets(raw.get("secrets", {}), base)
    from .certcheck import check_certificates

    return DaemonConfig(st, conns, creds, raw, check_certificates(raw, conns, creds.cas, base, now))


def check_host(cfg: DaemonConfig) -> None:
    """What the configuration needs from this host before the daemon starts (the bind of the IKE
    sockets is checked by the transport itself): the control socket's directory."""
    d = Path(cfg.settings.control).parent
    if not d.is_dir():
        raise LocalError(f"[daemon] control: directory {d} does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        raise LocalError(f"[daemon] control: cannot create a socket in {d}: permission denied")
    from .control import control_socket_in_use

    if control_socket_in_use(cfg.settings.control):
        raise LocalError(f"control socket {cfg.settings.control} is in use by another running daemon")
    if cfg.settings.metrics:
        from .metrics import check_listen

        check_listen(cfg.settings.metrics)
