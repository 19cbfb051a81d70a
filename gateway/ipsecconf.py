"""Classic strongSwan configuration: `ipsec.conf` (config setup, conn sections) and `ipsec.secrets`.

The syntax is the one of ipsec.conf(5) and ipsec.secrets(5): sections start in the first column
(`config setup`, `conn NAME`, `ca NAME`), their parameters are indented `key=value` lines, `#` starts a
comment, values may be double-quoted, `include PATTERN` reads more files. A conn inherits the keys of
`conn %default` and of the conns named by `also=` (recursively, in order); its own keys win.
`load_files` turns both files into the daemon's connection and credential objects
(gateway/ipsecconvert.py); docs/gateway.md lists every key and what it becomes.
"""

from __future__ import annotations

import glob
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from core_ike.errors import LocalError
from core_ike.ike.config import IkeConfig
from core_ike.ike.creds import Credentials

SECTION_KINDS = ("config", "conn", "ca")
MAX_INCLUDE_DEPTH = 10


@dataclass
class Section:
    kind: str  # config | conn | ca
    name: str
    keys: dict[str, str] = field(default_factory=dict)
    where: str = ""  # FILE:LINE of its header


@dataclass
class IpsecConf:
    setup: dict[str, str] = field(default_factory=dict)
    conns: dict[str, Section] = field(default_factory=dict)  # in file order, %default included
    cas: dict[str, Section] = field(default_factory=dict)


def _strip_comment(line: str) -> str:
    """`#` starts a comment outside double quotes."""
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            break
        out.append(ch)
    return "".join(out).rstrip()


def _value(raw: str, where: str) -> str:
    v = raw.strip()
    if v.startswith('"'):
        if not v.endswith('"') or len(v) < 2:
            raise LocalError(f"{where}: unterminated quoted value {v!r}")
        return v[1:-1]
    return v


def _include(pattern: str, base: Path, where: str) -> list[Path]:
    p = pattern if Path(pattern).is_absolute() else str(base / pattern)
    found = sorted(glob.glob(p))
    if not found and not glob.has_magic(p):
        raise LocalError(f"{where}: include {pattern}: no such file")
    return [Path(f) for f in found]


def parse_conf(text: str, name: str = "ipsec.conf", base: Path | None = None, _depth: int = 0,
               into: IpsecConf | None = None) -> IpsecConf:
    conf = into if into is not None else IpsecConf()
    base = base or Path(".")
    current: Section | None = None
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{name}:{n}"
        body = _strip_comment(line)
        if not body.strip():
            continue
        if not body[0].isspace():
            current = _top_level(conf, body, base, where, _depth)
            continue
        if current is None:
            raise LocalError(f"{where}: parameter outside a section: {body.strip()!r}")
        _assign(current, body, where)
    return conf


def _top_level(conf: IpsecConf, body: str, base: Path, where: str, depth: int) -> Section | None:
    """A line starting in column 0: `include`, `version` or a section header; the section that the
    following indented lines belong to (None after include and version)."""
    words = body.split()
    if words[0] == "include":
        if len(words) != 2:
            raise LocalError(f"{where}: include needs one file name or pattern")
        if depth >= MAX_INCLUDE_DEPTH:
            raise LocalError(f"{where}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
        for f in _include(words[1], base, where):
            parse_conf(_read(f), str(f), f.parent, depth + 1, conf)
        return None
    if words[0] == "version":
        return None
    if words[0] not in SECTION_KINDS or len(words) != 2:
        raise LocalError(f"{where}: expected 'config setup', 'conn NAME' or 'ca NAME', got {body.strip()!r}")
    kind, sname = words
    if kind == "config":
        if sname != "setup":
            raise LocalError(f"{where}: unknown section 'config {sname}' (only 'config setup')")
        return Section("config", "setup", conf.setup, where)
    table = conf.conns if kind == "conn" else conf.cas
    if sname in table:
        raise LocalError(f"{where}: {kind} {sname!r} is defined twice (first at {table[sname].where})")
    table[sname] = Section(kind, sname, {}, where)
    return table[sname]


def _assign(current: Section, body: str, where: str) -> None:
    """An indented `key=value` line of `current`; `also` may repeat and accumulates."""
    key, eq, val = body.strip().partition("=")
    key = key.strip()
    if not eq or not key:
        raise LocalError(f"{where}: expected key=value, got {body.strip()!r}")
    if key in current.keys and key != "also":
        raise LocalError(f"{where}: {key} is set twice in {current.kind} {current.name!r}")
    v = _value(val, where)
    current.keys[key] = f"{current.keys[key]} {v}" if key == "also" and key in current.keys else v


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LocalError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None


def read_conf(path: str | Path) -> IpsecConf:
    p = Path(path)
    return parse_conf(_read(p), str(p), p.parent)


def resolved(conf: IpsecConf, name: str) -> dict[str, str]:
    """The keys of conn `name` after `%default` and `also=` (ipsec.conf(5): the conn's own keys win,
    then those of the also= conns in order, then %default)."""
    out: dict[str, str] = dict(conf.conns["%default"].keys) if "%default" in conf.conns else {}
    out.pop("also", None)
    out.update(_also(conf, name, []))
    return out


def _also(conf: IpsecConf, name: str, chain: list[str]) -> dict[str, str]:
    if name in chain:
        raise LocalError(f"conn {name!r}: also= loop ({' -> '.join([*chain, name])})")
    sec = conf.conns.get(name)
    if sec is None:
        raise LocalError(f"conn {chain[-1]!r}: also={name}: no such conn")
    out: dict[str, str] = {}
    for other in sec.keys.get("also", "").split():
        out.update(_also(conf, other, [*chain, name]))
    out.update({k: v for k, v in sec.keys.items() if k != "also"})
    return out


# ---------------------------------------------------------------------------------------- secrets


@dataclass
class Secret:
    kind: str  # PSK | RSA | ECDSA | PKCS8 | EAP | XAUTH | NTLM | PIN | P12
    ids: list[str]
    value: str  # the secret (PSK/EAP), or the key file name (RSA/ECDSA/PKCS8)
    passphrase: str | None = None
    where: str = ""


SECRET_KINDS = ("PSK", "RSA", "ECDSA", "BLISS", "PKCS8", "PKCS12", "P12", "EAP", "XAUTH", "NTLM", "PIN")


def _logical_lines(text: str, name: str) -> list[tuple[str, str]]:
    """ipsec.secrets: an entry goes on in indented lines after its first one, and after a line that
    ends with a backslash."""
    out: list[tuple[str, str]] = []
    joined = False
    for n, line in enumerate(text.splitlines(), 1):
        body = _strip_comment(line)
        if not body.strip():
            continue
        cont = body.endswith("\\")
        body = body[:-1] if cont else body
        if (joined or body[0].isspace()) and out:
            out[-1] = (out[-1][0], (out[-1][1] + " " + body.strip()).strip())
        else:
            out.append((f"{name}:{n}", body.strip()))
        joined = cont
    return out


def secret_value(raw: str, where: str) -> bytes:
    """A quoted string, `0x` hex or `0s` base64 (ipsec.secrets(5))."""
    import base64
    import binascii

    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return raw[1:-1].encode()
    try:
        if raw.lower().startswith("0x"):
            return bytes.fromhex(raw[2:])
        if raw.startswith("0s"):
            return base64.b64decode(raw[2:], validate=True)
    except (ValueError, binascii.Error):
        raise LocalError(f"{where}: bad secret encoding {raw[:4]!r}...") from None
    if not raw or any(c.isspace() for c in raw):
        raise LocalError(f"{where}: the secret must be quoted, 0x hex or 0s base64")
    return raw.encode()


def parse_secrets(text: str, name: str = "ipsec.secrets", base: Path | None = None,
                  _depth: int = 0) -> list[Secret]:
    base = base or Path(".")
    out: list[Secret] = []
    for where, line in _logical_lines(text, name):
        if line.startswith("include "):
            if _depth >= MAX_INCLUDE_DEPTH:
                raise LocalError(f"{where}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
            for f in _include(line.split(None, 1)[1].strip(), base, where):
                out += parse_secrets(_read(f), str(f), f.parent, _depth + 1)
            continue
        head, sep, rest = _split_colon(line)
        if not sep:
            raise LocalError(f"{where}: expected '[IDS] : TYPE secret', got {line[:40]!r}")
        try:
            ids = shlex.split(head)
            words = shlex.split(rest, posix=False)
        except ValueError as e:
            raise LocalError(f"{where}: {e}") from None
        if not words or words[0].upper() not in SECRET_KINDS:
            raise LocalError(f"{where}: unknown secret type {(words or [''])[0]!r} (one of {', '.join(SECRET_KINDS)})")
        kind = words[0].upper()
        if len(words) < 2:
            raise LocalError(f"{where}: {kind} needs a value")
        if kind in ("RSA", "ECDSA", "PKCS8", "BLISS"):
            fname = words[1].strip('"')
            pw = words[2].strip('"') if len(words) > 2 else None
            out.append(Secret(kind, ids, fname, pw, where))
        else:
            out.append(Secret(kind, ids, " ".join(words[1:]), None, where))
    return out


def _split_colon(line: str) -> tuple[str, str, str]:
    """The `:` that separates the ids from the secret: the first one outside quotes followed by a
    space or the end (an IPv6 address or a DN may hold colons)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == ":" and not quoted and (i + 1 == len(line) or line[i + 1].isspace()) \
                and (i == 0 or line[i - 1] != ":"):
            return line[:i], ":", line[i + 1:]
    return line, "", ""


def read_secrets(path: str | Path) -> list[Secret]:
    p = Path(path)
    return parse_secrets(_read(p), str(p), p.parent)


def load_files(conf_path: str | Path, secrets_path: str | Path | None = None,
               local_addresses: list[str] | None = None) -> tuple[list[IkeConfig], Credentials]:
    """Connections of `ipsec.conf` (auto=add|start|route) and the credentials of `ipsec.secrets`
    (default: ipsec.secrets beside ipsec.conf, when there is one)."""
    from .ipsecconvert import convert_cas, convert_conf, convert_secrets

    conf_p = Path(conf_path)
    conf = read_conf(conf_p)
    sec_p = Path(secrets_path) if secrets_path else conf_p.with_name("ipsec.secrets")
    secrets = read_secrets(sec_p) if secrets_path or sec_p.exists() else []
    creds = convert_secrets(secrets, sec_p.parent)
    creds.cas.extend(convert_cas(conf, conf_p.parent))
    return convert_conf(conf, conf_p.parent, local_addresses), creds
