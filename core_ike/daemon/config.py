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
import logging.handlers
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast

from ..eap.methods import MAX_RETRIES as MAX_EAP_RETRIES
from ..errors import LocalError
from ..ike.config import AuthConfig, AuthKind, ChildConfig, IkeConfig, RetransmitConfig
from ..ike.creds import Credentials
from .confvalues import (
    ADDR_WILDCARDS,
    as_addrs,
    as_bool,
    as_choice,
    as_duration,
    as_esp_proposals,
    as_identity,
    as_ike_proposals,
    as_int,
    as_number,
    as_port,
    as_selectors,
    as_str,
    as_strs,
    as_subnets,
    as_table,
    certificate_file,
    private_key_file,
    public_key_file,
    show,
)

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
    # XFRM data plane: routes with our address as source in a table of their own (core_ike/io/srcroutes.py)
    install_routes: bool = True
    routing_table: int = 220
    routing_table_prio: int = 220
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
    table = as_table(where, d)
    check_keys(where, table, tuple(checks))
    return {k: checks[k](where, k, v) for k, v in table.items()}


def database_url(where: str, key: str, v: Any) -> str:
    """`sqlite:////var/lib/ikeme/med_db.sqlite`, `postgresql://user:pw@host/db`, `mysql://...`."""
    text = as_str(where, key, v)
    if "://" not in text:
        raise LocalError(f"{where} {key}: {show(v)} is not a database URL (sqlite:////PATH, "
                         "postgresql://USER@HOST/DB, mysql://USER@HOST/DB)")
    return text


# checks other modules combine into their tables (each: where, key, value -> value)
CHECK_INT: Check = as_int
CHECK_NUMBER: Check = as_number
CHECK_DURATION: Check = as_duration
CHECK_BOOL: Check = as_bool
CHECK_STR: Check = as_str
CHECK_IDENTITY: Check = as_identity


def check_choice(choices: tuple[str, ...]) -> Check:
    return lambda w, k, v: as_choice(w, k, v, choices)


_IFNAMSIZ = 16  # Linux interface names: at most 15 octets and the terminating NUL


def _ifname(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) < _IFNAMSIZ or "/" in v or v.strip() != v:
        raise LocalError(f"{where} {key}: {show(v)} is not an interface name (1-15 characters, no '/')")
    return v


def _log_target(where: str, key: str, v: Any) -> str:
    t = as_str(where, key, v)
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
    "listen": lambda w, k, v: as_addrs(w, k, v, subnets=False),
    "port": as_port,
    "natt_port": as_port,
    "control": as_str,
    "dataplane": lambda w, k, v: as_choice(w, k, v, DATAPLANES),
    "tun": _ifname,
    "esp_offload": lambda w, k, v: _esp_offload(w, k, v),
    "log_level": lambda w, k, v: as_choice(w, k, v.lower() if isinstance(v, str) else v, LOG_LEVELS),
    "log_target": _log_target,
    "log_file": as_str,
    "cookie_threshold": as_int,
    "cookie_threshold_ip": as_int,
    "half_open_timeout": as_duration,
    "max_half_open": lambda w, k, v: as_int(w, k, v, 1),
    # no less than the size limit of one reassembled message (64 KiB)
    "frag_max_per_sa": lambda w, k, v: as_int(w, k, v, 65536),
    "frag_max_total": lambda w, k, v: as_int(w, k, v, 65536),
    "force_cookies": as_bool,
    "init_rate_ip": as_number,
    "receive_buffer": as_int,
    "metrics": lambda w, k, v: _metrics(w, k, v),
    "workers": lambda w, k, v: _workers(w, k, v),
    "event_loop": lambda w, k, v: as_choice(w, k, v, EVENT_LOOPS),
    "routing_table": lambda w, k, v: _routing_table(w, k, v),
    "routing_table_prio": lambda w, k, v: as_int(w, k, v, 1, 32765),  # 32766: the main table's rule
    "config_db": lambda w, k, v: database_url(w, k, v),
}


_MAX_WORKERS = 64


def _routing_table(where: str, key: str, v: Any) -> int:
    """A table of its own for the source routes: not unspec (0), default, main or local (253-255)."""
    n = as_int(where, key, v, 1, 2**32 - 1)
    if n in (253, 254, 255):
        raise LocalError(f"{where} {key}: {n} is the kernel's default/main/local table; give a table of its own "
                         "(charon's is 220)")
    return n


def _workers(where: str, key: str, v: Any) -> int:
    """A number of processes (1-64: the first octet of an SPI names the worker), or "auto" (0: one per CPU)."""
    if v == "auto":
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _MAX_WORKERS:
        raise LocalError(f"{where} {key}: expected an integer 1-64 or \"auto\", got {show(v)}")
    return v


def _metrics(where: str, key: str, v: Any) -> str:
    from .metrics import parse_listen

    text = as_str(where, key, v)
    try:
        host, _ = parse_listen(text)
        ipaddress.ip_address(host)
    except ValueError:
        raise LocalError(f"{where} {key}: {show(v)} is not ADDRESS:PORT (e.g. \"127.0.0.1:9488\")") from None
    return text


def _by_default(default: Any) -> Callable[[str, str, Any], Any]:
    """The check of a [daemon] setting without one of its own: the type of its default."""
    if isinstance(default, bool):
        return as_bool
    if isinstance(default, int):
        return as_int
    if isinstance(default, float):
        return as_duration
    if isinstance(default, list):
        return as_strs
    return as_str


def _daemon(d: Any) -> DaemonSettings:
    d = as_table("[daemon]", d)
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
    d = as_table(where, d)
    check_keys(where, d, AUTH_KEYS)
    a = AuthConfig()
    if "auth" in d:
        a.auth = cast(AuthKind, as_choice(where, "auth", d["auth"], ("psk", "pubkey", "eap-md5", "eap-mschapv2")))
    if "eap_id" in d:
        a.eap_id = as_str(where, "eap_id", d["eap_id"])
    if "eap_retries" in d:  # each retry is one more password guess in the same IKE_SA
        a.eap_retries = as_int(where, "eap_retries", d["eap_retries"], 0, MAX_EAP_RETRIES)
    if "id" in d:
        a.id = as_identity(where, "id", d["id"])
    if "signature" in d:
        a.signature = cast(Signature, as_choice(where, "signature", d["signature"], ("rfc7427", "rsa", "rsa-pss")))
    for c in as_strs(where, "certs", d["certs"]) if "certs" in d else []:
        a.certs.append(certificate_file(where, "certs", base, c))
    return a


def _child(name: str, d: dict[str, Any], conn: str = "*") -> ChildConfig:
    where = f"[connections.{conn}.children.{name}]"
    d = as_table(where, d)
    check_keys(where, d, CHILD_KEYS)
    c = ChildConfig(name)
    for key in ("local_ts", "remote_ts"):
        if key in d:
            setattr(c, key, as_selectors(where, key, d[key]))
    if "esp_proposals" in d:
        c.esp_proposals = as_esp_proposals(where, "esp_proposals", d["esp_proposals"])
    if "start_action" in d:
        c.start_action = cast(StartAction, as_choice(where, "start_action", d["start_action"],
                                                   ("none", "start", "trap")))
    if "mode" in d:
        c.mode = cast(Mode, as_choice(where, "mode", d["mode"], ("tunnel",)))
    for key in ("rekey_time", "life_time"):
        if key in d:
            setattr(c, key, as_duration(where, key, d[key]))
    if c.life_time is not None and c.life_time <= c.rekey_time:
        raise LocalError(f"{where} life_time ({c.life_time:g} s) must be longer than rekey_time ({c.rekey_time:g} s)")
    if "replay_window" in d:
        c.replay_window = as_int(where, "replay_window", d["replay_window"])
    return c


# key -> check of the plain connection settings (each check returns the value to store)
_CONN_CHECKS: dict[str, Callable[[str, str, Any], Any]] = {
    "proposals": as_ike_proposals,
    "unique": lambda w, k, v: as_choice(w, k, v, ("replace", "keep", "no")),
    "vips": lambda w, k, v: as_addrs(w, k, v, subnets=False),
    "pools": as_subnets,
    "encap": as_bool,
    "fragmentation": as_bool,
    "mediation": as_bool,
    "mediated_by": as_str,
    "keyingtries": as_int,
    "local_port": as_port,
    "remote_port": as_port,
    "local_addrs": as_addrs,
    "remote_addrs": as_addrs,
    "fragment_size": lambda w, k, v: as_int(w, k, v, 256, 65535),
    **dict.fromkeys(("rekey_time", "dpd_delay", "keepalive_interval", "rekey_retry", "ike_rekey_retry"), as_duration),
}

# A mediation connection we initiate checks its server this often when idle: a restarted server answers
# with INVALID_IKE_SPI (RFC 7296 2.21.4) and the client registers again at once (docs/operations.md,
# "Recovery"). 20 s is the NAT keepalive interval a NATed client sends anyway.
MEDIATION_DPD_DELAY = 20.0

# the keys each table accepts (docs/configuration.md documents exactly these; tests compare them)
CONNECTION_KEYS = (*_CONN_CHECKS, "mediation_peer", "local", "remote", "retransmit", "children")
AUTH_KEYS = ("auth", "id", "signature", "certs", "eap_id", "eap_retries")
RETRANSMIT_KEYS = ("timeout", "base", "tries", "early_timeout", "early_base")
CHILD_KEYS = ("local_ts", "remote_ts", "esp_proposals", "start_action", "mode", "rekey_time", "life_time",
              "replay_window")
SECRET_KEYS = {"ike": ("id", "secret"), "eap": ("id", "secret"), "private": ("file",), "pubkey": ("file", "id"),
               "ca": ("file",)}


def connection(name: str, d: dict[str, Any], base: Path) -> IkeConfig:
    where = f"[connections.{name}]"
    d = as_table(where, d)
    check_keys(where, d, CONNECTION_KEYS)
    cfg = IkeConfig(name)
    for key, check in _CONN_CHECKS.items():
        if key in d:
            setattr(cfg, key, check(where, key, d[key]))
    if "mediation_peer" in d:
        cfg.mediation_peer = as_identity(where, "mediation_peer", d["mediation_peer"])
    cfg.local = _auth(d.get("local", {}), base, f"[connections.{name}.local]")
    cfg.remote = _auth(d.get("remote", {}), base, f"[connections.{name}.remote]")
    if "retransmit" in d:
        w = f"[connections.{name}.retransmit]"
        r = as_table(w, d["retransmit"])
        check_keys(w, r, RETRANSMIT_KEYS)
        dflt = RetransmitConfig()
        cfg.retransmit = RetransmitConfig(as_duration(w, "timeout", r.get("timeout", dflt.timeout)),
                                          as_number(w, "base", r.get("base", dflt.base), 1.0),
                                          as_int(w, "tries", r.get("tries", dflt.tries)),
                                          as_duration(w, "early_timeout", r.get("early_timeout", dflt.early_timeout)),
                                          as_number(w, "early_base", r.get("early_base", dflt.early_base), 1.01))
    cfg.children = [_child(n, c, name) for n, c in as_table(f"{where} children", d.get("children", {})).items()]
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
    target = next((a for a in cfg.remote_addrs if a not in ADDR_WILDCARDS), "%any")
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
    d = as_table("[secrets]", d)
    check_keys("[secrets]", d, set(SECRET_KEYS))
    for kind, entries in d.items():
        if not isinstance(entries, list):
            raise LocalError(f"[[secrets.{kind}]] must be an array of tables ([[secrets.{kind}]] blocks)")
        for e in entries:
            check_keys(f"[[secrets.{kind}]]", as_table(f"[[secrets.{kind}]]", e), SECRET_KEYS[kind])
            if kind not in ("ike", "eap") and "file" not in e:
                raise LocalError(f"[[secrets.{kind}]] needs file")
    creds = Credentials()
    for s in d.get("ike", []):
        if "secret" not in s:
            raise LocalError("[[secrets.ike]] needs secret")
        ids = s.get("id", [])
        ids = [ids] if isinstance(ids, str) else as_strs("[[secrets.ike]]", "id", ids)
        creds.add_psk(as_str("[[secrets.ike]]", "secret", s["secret"]),
                      *(as_identity("[[secrets.ike]]", "id", i) for i in ids))
    for s in d.get("eap", []):  # EAP passwords by EAP identity (RFC 7296 2.16, RFC 3748 5.1)
        if "secret" not in s:
            raise LocalError("[[secrets.eap]] needs secret")
        ids = s.get("id", [])
        ids = [ids] if isinstance(ids, str) else as_strs("[[secrets.eap]]", "id", ids)
        creds.add_eap_secret(as_str("[[secrets.eap]]", "secret", s["secret"]),
                             *(as_identity("[[secrets.eap]]", "id", i) for i in ids))
    for s in d.get("private", []):
        creds.private_keys.append(private_key_file("[[secrets.private]]", base, s["file"]))
    for s in d.get("pubkey", []):
        key = public_key_file("[[secrets.pubkey]]", base, s["file"])
        creds.add_public_key(key, as_identity("[[secrets.pubkey]]", "id", s["id"]) if "id" in s else None)
    for s in d.get("ca", []):
        creds.cas.append(certificate_file("[[secrets.ca]]", "file", base, s["file"]))
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
        as_table(f"[{section}]", raw.get(section, {}))
    base = p.parent
    st = _daemon(raw.get("daemon", {}))
    conns = [connection(n, c, base) for n, c in as_table("[connections]", raw.get("connections", {})).items()]
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
