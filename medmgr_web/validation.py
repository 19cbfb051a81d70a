"""What the portals accept in their forms, in one place: names (logins, peer and connection aliases),
host names, ports, passwords, public keys, subnets and ID_KEY_IDs.

Each check is a function returning the value as stored plus an error message for the page (never an
exception for bad input), and ``Check`` turns one into a WTForms validator.  The templates' HTML
``pattern`` and ``maxlength`` attributes come from the same constants (``html_rules``), so the
browser's hint and the server's rule cannot drift apart; the server always checks again.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wtforms import Field, Form
from wtforms.validators import StopValidation

from med_db.keyid import KeyError_, parse_keyid, parse_peer_public_key

# Logins and aliases: they appear in swanctl.conf section names (swanctl.py maps the rest) and URLs.
NAME_CHARS = "A-Za-z0-9_@.\\-"
NAME_MAX = 64
NAME_RE = re.compile(f"[{NAME_CHARS}]{{1,{NAME_MAX}}}")
NAME_HINT = f"A-Z a-z 0-9 - _ @ . (at most {NAME_MAX} characters)"
HOST_CHARS = "A-Za-z0-9.\\-:\\[\\]"
HOST_MAX = 255
HOST_RE = re.compile(f"[{HOST_CHARS}]{{1,{HOST_MAX}}}")
PASSWORD_MAX = 1024
KEYID_LEN = 20
MAX_KEYIDS = 100  # per submission of the access form
_KEYID_SEP = re.compile(r"[\s,;]+")


def html_rules() -> dict[str, dict[str, str]]:
    """``pattern``/``maxlength`` attributes for the templates (a ``pattern`` is matched against the
    whole value, as ``fullmatch`` does here)."""
    return {
        "name": {"pattern": f"[{NAME_CHARS}]+", "maxlength": str(NAME_MAX)},
        "host": {"pattern": f"[{HOST_CHARS}]+", "maxlength": str(HOST_MAX)},
        "port": {"pattern": "[0-9]{1,5}", "maxlength": "5"},
    }


def check_name(value: str, what: str) -> str | None:
    """Error message for a login or alias, or None.  Full-match regex: never loops, never crashes."""
    if not value:
        return f"{what} is missing."
    if NAME_RE.fullmatch(value) is None:
        return f"{what} invalid, valid characters: {NAME_HINT}."
    return None


def check_new_password(password: str, confirm: str, min_length: int) -> str | None:
    if not password:
        return "Password is missing."
    if len(password) < min_length:
        return f"Password requires at least {min_length} characters."
    if len(password) > PASSWORD_MAX:
        return f"Password too long (at most {PASSWORD_MAX} characters)."
    if password != confirm:
        return "Password not confirmed."
    return None


def check_host(value: str) -> str | None:
    if not value:
        return "Server address is missing."
    if HOST_RE.fullmatch(value) is None:
        return "Server address invalid: use a host name or an IP address."
    return None


def parse_port(text: str) -> tuple[int, str | None]:
    port = int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else 0
    if not 1 <= port <= 65535:
        return 0, "Port must be a number between 1 and 65535."
    return port, None


def parse_public_key(text: str) -> tuple[tuple[bytes, bytes] | None, str | None]:
    """((DER SubjectPublicKeyInfo, keyid) or None, error message or None)."""
    try:
        return parse_peer_public_key(text), None
    except KeyError_ as exc:
        return None, str(exc)


def is_private_key(text: str) -> bool:
    """A pasted private key is never sent back to the browser."""
    return "PRIVATE KEY" in text


def parse_subnet(value: str, what: str) -> tuple[str | None, str | None]:
    """(normalized CIDR or None, error message or None).  Empty = dynamic (the tunnel address)."""
    if not value:
        return None, None
    try:
        return str(ipaddress.ip_network(value, strict=False)), None
    except ValueError:
        return None, f"{what} is not a valid subnet in CIDR notation (e.g. 10.1.0.0/24)."


def parse_id(text: str) -> int | None:
    """A row id from a URL: digits only, short enough for any database's INTEGER."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


@dataclass(frozen=True)
class KeyIdToken:
    shown: str           # the token as typed, shortened for messages
    keyid: bytes | None  # None: not an ID_KEY_ID


def parse_keyids(text: str) -> tuple[list[KeyIdToken], str | None]:
    """The ID_KEY_IDs typed into the access form (separated by spaces, commas or semicolons)."""
    tokens = [t for t in _KEYID_SEP.split(text) if t]
    if len(tokens) > MAX_KEYIDS:
        return [], f"Too many ID_KEY_IDs (at most {MAX_KEYIDS} at a time)."
    out: list[KeyIdToken] = []
    for token in tokens:
        shown = token if len(token) <= 80 else token[:80] + "\u2026"
        try:
            keyid = parse_keyid(token)
        except ValueError:
            keyid = b""
        out.append(KeyIdToken(shown, keyid if len(keyid) == KEYID_LEN else None))
    return out, None


KEYID_FORMAT_HINT = (f"expected {KEYID_LEN} bytes as keyid:# and 40 hex digits, or in colon-separated hex, "
                     "e.g. keyid:#ed90e6\u20262629 or ed:90:e6:\u2026:26:29.")


class Check:
    """A WTForms validator from a check function ``value -> error or None``; it stops the field's
    other validators on the first error (one message per field)."""

    def __init__(self, check: Callable[[str], str | None]) -> None:
        self.check = check

    def __call__(self, form: Form, field: Field) -> None:
        error = self.check(str(field.data or ""))
        if error:
            raise StopValidation(error)


def field_value(field: Any) -> str:
    return str(field.data or "")
