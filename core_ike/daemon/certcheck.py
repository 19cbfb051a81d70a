"""The validity periods of the certificates the configuration gives us, checked when it is loaded.

Our own certificate and the chain we send with it (`[connections.NAME.local] certs`): outside its
validity period (RFC 5280 4.1.2.5) every peer refuses it (RFC 5280 6.1.3 (a)(2)), so the daemon
does not start with it, and a reload that brings it is refused (the running configuration stays).
Within WARN_DAYS of its end, a warning says when it expires (docs/operations.md, "Certificates").

The CAs we trust (`[[secrets.ca]]`): outside its period one is only a warning, because a renewed CA of
the same name and key may stand beside it while the old one is phased out (the engine accepts a
chain when one of them is valid at the time of use, core_ike/ike/creds.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

from ..errors import LocalError

WARN_DAYS = 30  # a warning this many days before our certificate or a CA expires


def _date(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _path(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def _problem(cert: x509.Certificate, now: dt.datetime) -> tuple[str, bool]:
    """(what is wrong, whether it is fatal for our own certificate); ("", False) when nothing is."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    period = f"valid from {_date(start)} until {_date(end)}"
    if now > end:
        return f"expired on {_date(end)} ({period})", True
    if now < start:
        return f"is not valid yet ({period})", True
    left = end - now
    if left < dt.timedelta(days=WARN_DAYS):
        days = left.days
        when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        return f"expires {when}, on {_date(end)}", False
    return "", False


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def check_certificates(raw: dict[str, Any], connections: list[Any], cas: list[x509.Certificate], base: Path,
                       now: dt.datetime | None = None) -> list[str]:
    """Warnings for the certificates of a loaded configuration (`raw`: its TOML document; `connections`
    and `cas` as config.load built them from it, in its order; `base`: the directory relative file names
    start from). LocalError naming the connection, the file and the dates when one of our own
    certificates is outside its validity period at `now` (default: the current time)."""
    now = now or dt.datetime.now(dt.UTC)
    warnings: list[str] = []
    for conn in connections:
        names = ((raw.get("connections") or {}).get(conn.name) or {}).get("local", {}).get("certs", [])
        for i, cert in enumerate(conn.local.certs):
            file = _path(base, str(names[i])) if i < len(names) else Path("?")
            what, fatal = _problem(cert, now)
            if not what:
                continue
            kind = "our certificate" if i == 0 else "a certificate of our chain"
            text = f"[connections.{conn.name}.local] certs: {file}: {kind} {_subject(cert)} {what}"
            if fatal:
                raise LocalError(text)
            warnings.append(text)
    ca_files = [e.get("file", "?") for e in (raw.get("secrets") or {}).get("ca", []) if isinstance(e, dict)]
    for i, cert in enumerate(cas):
        what, _ = _problem(cert, now)
        if what:
            file = _path(base, str(ca_files[i])) if i < len(ca_files) else Path("?")
            warnings.append(f"[[secrets.ca]] file: {file}: CA certificate {_subject(cert)} {what}")
    return warnings
