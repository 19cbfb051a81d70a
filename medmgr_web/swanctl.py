"""strongSwan swanctl.conf for a registered peer: the mediation connection to this server and one
mediated connection per peer it may reach, with the public key files they name.

swanctl.conf syntax (strongswan.conf format): one setting per line inside ``name { ... }`` sections,
``#`` starts a comment, so identities ``keyid:#<hex>`` are quoted.  Section names are used as key
paths by strongSwan (``connections.<name>.children.<name>``), so they hold letters, digits, ``-`` and
``_`` only.  The options are those of the swanctl.conf documentation (mediation, mediated_by,
mediation_peer, pubkeys, local_ts/remote_ts); docs/configuration.md lists their TOML equivalents.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from med_db.keyid import keyid_text

MEDIATION_CONN = "medsrv"
SERVER_KEY_FILE = "medsrv.pem"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class SnippetPeer:
    name: str                  # connection, child and key file name (see conn_names)
    keyid: bytes               # its ID_KEY_ID: identity at the mediation server and in the tunnel
    subnets: tuple[str, ...]   # traffic selectors behind it; empty = unknown ("dynamic")


def conn_names(aliases: Sequence[str]) -> list[str]:
    """Safe, unique swanctl section names for ``aliases`` (in order), never the mediation connection's."""
    used = {MEDIATION_CONN}
    out = []
    for alias in aliases:
        base = _UNSAFE.sub("_", alias) or "peer"
        name, n = base, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        out.append(name)
    return out


def parse_subnets(text: str) -> tuple[tuple[str, ...], str | None]:
    """Traffic selectors from a form field: CIDR subnets or addresses separated by commas or spaces.
    Returns (normalized subnets, error message or None)."""
    items = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if len(items) > 16:
        return (), "At most 16 subnets per peer."
    out: list[str] = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            shown = item if len(item) <= 60 else item[:60] + "\u2026"
            return (), f"\u201c{shown}\u201d is not a subnet in CIDR notation (e.g. 10.1.0.0/24 or 10.1.0.2/32)."
    return tuple(out), None


def _auth(side: str, keyid: bytes, pubkeys: str) -> str:
    """A `local` / `remote` section: raw public key, identified by its ID_KEY_ID (one setting a line)."""
    return (f"    {side} {{\n      auth = pubkey\n      id = \"{keyid_text(keyid)}\"\n"
            f"      pubkeys = {pubkeys}\n    }}")


def _ts(subnets: tuple[str, ...]) -> str:
    return ", ".join(subnets) if subnets else "dynamic"


def swanctl_conf(me: SnippetPeer, others: Sequence[SnippetPeer], ms_address: str, ms_port: int,
                 ms_keyid: bytes) -> str:
    """The whole swanctl.conf of peer ``me``; key files: ``pubkey/medsrv.pem`` (the server's),
    ``pubkey/<name>.pem`` (each peer's, own included) and ``me``'s private key in ``private/``."""
    port = f"\n    remote_port = {ms_port}" if ms_port != 500 else ""
    lines = [
        f"# swanctl.conf of {me.name} ({keyid_text(me.keyid)})",
        f"# key files: swanctl/private/{me.name}.pem ({me.name}'s private key, never leaves {me.name}),",
        f"#   swanctl/pubkey/{SERVER_KEY_FILE} and swanctl/pubkey/<name>.pem (the public keys below)",
        f"# start: swanctl --load-all; swanctl --initiate --ike {MEDIATION_CONN} (keep it up to be reachable)",
        "connections {",
        f"""  {MEDIATION_CONN} {{
    remote_addrs = {ms_address}{port}
    version = 2
    mediation = yes
{_auth("local", me.keyid, f"{me.name}.pem")}
{_auth("remote", ms_keyid, SERVER_KEY_FILE)}
  }}""",
    ]
    for other in others:
        note = ""
        if not me.subnets or not other.subnets:
            note = ("\n        # dynamic = the IKE addresses, which a NAT changes: enter the subnets on the "
                    "Help page")
        lines.append(f"""  {other.name} {{
    remote_addrs = %any
    version = 2
    mediated_by = {MEDIATION_CONN}
    mediation_peer = "{keyid_text(other.keyid)}"
{_auth("local", me.keyid, f"{me.name}.pem")}
{_auth("remote", other.keyid, f"{other.name}.pem")}
    children {{
      {other.name} {{{note}
        local_ts = {_ts(me.subnets)}
        remote_ts = {_ts(other.subnets)}
      }}
    }}
  }}""")
    lines.append("}")
    return "\n".join(lines) + "\n"
