"""Checks of single TOML values and the files they name (core_ike/daemon/config.py): each takes where
(the section), key and value, and returns the value to store or raises a LocalError whose one-line message
names the section, the key and the bad value."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from ..crypto.proposals import parse_esp_proposals, parse_ike_proposals
from ..errors import LocalError
from ..ike import ts as tsmod
from ..ike.creds import PrivateKey, PublicKey, load_private_key, load_public_key
from ..ike.identity import Identity

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


def as_duration(where: str, key: str, v: Any) -> float:
    try:
        return duration(v)
    except LocalError as e:
        raise LocalError(f"{where} {key}: {e}") from None


def as_str(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise LocalError(f"{where} {key}: expected a non-empty string, got {show(v)}")
    return v


def as_bool(where: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise LocalError(f"{where} {key}: expected true or false, got {show(v)}")
    return v


def as_int(where: str, key: str, v: Any, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        raise LocalError(f"{where} {key}: expected an integer {rng}, got {show(v)}")
    return v


def as_port(where: str, key: str, v: Any) -> int:
    return as_int(where, key, v, 0, 65535)


def as_number(where: str, key: str, v: Any, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v >= lo:
        raise LocalError(f"{where} {key}: expected a number >= {lo:g}, got {show(v)}")
    return float(v)


def as_choice(where: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise LocalError(f"{where} {key}: {show(v)} is not one of {', '.join(choices)}")
    return v


def as_strs(where: str, key: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise LocalError(f"{where} {key}: expected a list of strings, got {show(v)}")
    return list(v)


def as_table(where: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise LocalError(f"{where} must be a table, got {show(v)}")
    return v


def as_identity(where: str, key: str, v: Any) -> Identity:
    try:
        i = Identity.parse(as_str(where, key, v))
    except LocalError as e:
        raise LocalError(f"{where} {key}: {e}") from None
    if not i.is_any and not i.data:
        raise LocalError(f"{where} {key}: empty identity {show(v)}")
    return i


ADDR_WILDCARDS = ("%any", "%any4", "%any6")


def as_addrs(where: str, key: str, v: Any, subnets: bool = True) -> list[str]:
    """Addresses (and subnets, `%any`): host names are not resolved, so they are refused here."""
    out = as_strs(where, key, v)
    for a in out:
        if subnets and a in ADDR_WILDCARDS:
            continue
        try:
            ipaddress.ip_network(a, strict=False) if subnets else ipaddress.ip_address(a)
        except ValueError:
            what = "an address, a subnet or %any" if subnets else "an IP address"
            raise LocalError(f"{where} {key}: {show(a)} is not {what} (host names are not resolved)") from None
    return out


def as_subnets(where: str, key: str, v: Any) -> list[str]:
    out = as_strs(where, key, v)
    for a in out:
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            raise LocalError(f"{where} {key}: {show(a)} is not a subnet") from None
    return out


def proposals_check(parse: Callable[[str], object]) -> Callable[[str, str, Any], str]:
    """A check that parses a proposal string now, so a bad algorithm fails at load, not at `up`."""
    def check(where: str, key: str, v: Any) -> str:
        text = as_str(where, key, v)
        try:
            parse(text)
        except LocalError as e:
            raise LocalError(f"{where} {key}: {e}") from None
        return text
    return check


as_ike_proposals = proposals_check(parse_ike_proposals)
as_esp_proposals = proposals_check(parse_esp_proposals)


def as_selectors(where: str, key: str, v: Any) -> list[str]:
    out = as_strs(where, key, v)
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


def conf_path(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def read_conf_file(where: str, key: str, base: Path, name: Any) -> tuple[Path, bytes]:
    p = conf_path(base, as_str(where, key, name))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LocalError(f"{where} {key}: cannot read {p}: {e.strerror or e}") from None
    if not data.strip():
        raise LocalError(f"{where} {key}: {p} is empty")
    return p, data


def pem_kind(data: bytes) -> str:
    head = data.lstrip()[:64]
    return head.split(b"-----BEGIN ", 1)[1].split(b"-----", 1)[0].decode("ascii", "replace") \
        if head.startswith(b"-----BEGIN ") else ""


def private_key_file(where: str, base: Path, name: Any) -> PrivateKey:
    p, data = read_conf_file(where, "file", base, name)
    kind = pem_kind(data)
    if "ENCRYPTED" in kind or b"Proc-Type: 4,ENCRYPTED" in data[:200]:
        raise LocalError(f"{where} file: {p} is encrypted (store the private key without a passphrase)")
    if kind and "PRIVATE KEY" not in kind:
        raise LocalError(f"{where} file: {p} holds a {kind.lower()}, not a private key")
    try:
        return load_private_key(data)
    except LocalError as e:
        reason = str(e) if str(e).startswith("unsupported") else "not a PEM or DER private key (RSA, EC, Ed25519, Ed448)"
        raise LocalError(f"{where} file: {p}: {reason}") from None


def public_key_file(where: str, base: Path, name: Any) -> PublicKey:
    p, data = read_conf_file(where, "file", base, name)
    kind = pem_kind(data)
    if "PRIVATE KEY" in kind:
        raise LocalError(f"{where} file: {p} holds a private key; give the public key (openssl pkey -pubout)")
    try:
        return load_public_key(data)
    except LocalError as e:
        reason = str(e) if str(e).startswith("unsupported") else "not a PEM or DER public key or certificate"
        raise LocalError(f"{where} file: {p}: {reason}") from None


def certificate_file(where: str, key: str, base: Path, name: Any) -> x509.Certificate:
    p, data = read_conf_file(where, key, base, name)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise LocalError(f"{where} {key}: {p}: not a PEM certificate") from None
