"""docs/configuration.md stays honest: its key tables match what the loaders read, every documented
example value loads, every ```toml block is a complete configuration that loads, and the portal
launchers' option tables match their argparse options."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core_ike.crypto.proposals import parse_esp_proposals, parse_ike_proposals
from core_ike.daemon import config as iked_config
from core_ike.daemon.config import DaemonConfig, DaemonSettings, load
from core_ike.ike import ts as tsmod
from mediation_client import daemon as client_daemon
from mediation_server import daemon as server_daemon

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "configuration.md").read_text()

# where the doc's absolute example paths live; the tests put them into a tmp dir
_ABS_DIRS = ("/var/lib/ikeme/", "/etc/ikeme/")

SECTIONS: dict[str, tuple[str, ...]] = {
    "iked.daemon": tuple(f.name for f in dataclasses.fields(DaemonSettings)),
    **{f"iked.secrets.{kind}": keys for kind, keys in iked_config.SECRET_KEYS.items()},
    "iked.connection": iked_config.CONNECTION_KEYS,
    "iked.auth": iked_config.AUTH_KEYS,
    "iked.retransmit": iked_config.RETRANSMIT_KEYS,
    "iked.child": iked_config.CHILD_KEYS,
    "mediation_server.mediation": server_daemon.MEDIATION_KEYS,
    "mediation_client.client": client_daemon.CLIENT_KEYS,
}


def _tables(marker: str) -> dict[str, dict[str, list[str]]]:
    """`<!-- MARKER: NAME -->` followed by a Markdown table -> {NAME: {first-column name: cells}}."""
    out: dict[str, dict[str, list[str]]] = {}
    lines = DOC.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(rf"<!-- {marker}: (\S+) -->", line.strip())
        if not m:
            continue
        rows: dict[str, list[str]] = {}
        for row in lines[i + 3:]:  # skip the header and the |---| line
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
            key = re.fullmatch(r"`([^`]+)`", cells[0])
            assert key, f"{m.group(1)}: first column must be a key in backticks: {row!r}"
            assert key.group(1) not in rows, f"{m.group(1)}: {key.group(1)} documented twice"
            rows[key.group(1)] = cells
        out[m.group(1)] = rows
    return out


KEYS = _tables("keys")


def _example(cells: list[str]) -> str:
    m = re.fullmatch(r"`([^`]+)`", cells[3])
    assert m, f"example column of {cells[0]} must be one TOML value in backticks: {cells[3]!r}"
    return m.group(1)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Every file the doc's examples name, in tmp_path (also standing in for /var/lib/ikeme, /etc/ikeme)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "docs test")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    for n in ("alice.key", "server.key"):
        (tmp_path / n).write_bytes(pem)
    (tmp_path / "bob.pub").write_bytes(pub)
    for n in ("ca.pem", "cert.pem"):
        (tmp_path / n).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    from med_db.engine import create_all, make_engine

    for db in ("med_db.sqlite", "client.sqlite"):
        create_all(make_engine(f"sqlite:///{tmp_path / db}"))
    return tmp_path


def _localize(text: str, base: Path) -> str:
    for d in _ABS_DIRS:
        text = text.replace(d, f"{base}/")
    return text


def _load(text: str, base: Path) -> tuple[DaemonConfig, dict[str, Any]]:
    path = base / "test.toml"
    path.write_text(_localize(text, base))
    return load(path), tomllib.loads(path.read_text())


def _load_server(text: str, base: Path) -> DaemonConfig:
    cfg, raw = _load(text, base)
    med = raw.get("mediation", {})
    server_daemon.relay_config(med)
    server_daemon._registry(med, cfg)
    return cfg


def _load_client(text: str, base: Path) -> DaemonConfig:
    cfg, raw = _load(text, base)
    client = raw.get("client", {})
    client_daemon.client_config(client)
    if client.get("database"):
        client_daemon.load_db_connections(str(client["database"]), cfg)
    return cfg


# section -> TOML around `KEY = VALUE` and the loader to run it through
_WRAP: dict[str, tuple[str, Callable[[str, Path], Any]]] = {
    "iked.daemon": ("[daemon]\n{kv}\n", lambda t, b: _load(t, b)),
    "iked.secrets.ike": ('[[secrets.ike]]\nsecret = "s"\n{kv}\n', lambda t, b: _load(t, b)),
    "iked.secrets.eap": ('[[secrets.eap]]\nsecret = "s"\n{kv}\n', lambda t, b: _load(t, b)),
    "iked.secrets.private": ('[[secrets.private]]\nfile = "alice.key"\n{kv}\n', lambda t, b: _load(t, b)),
    "iked.secrets.pubkey": ('[[secrets.pubkey]]\nfile = "bob.pub"\n{kv}\n', lambda t, b: _load(t, b)),
    "iked.secrets.ca": ('[[secrets.ca]]\nfile = "ca.pem"\n{kv}\n', lambda t, b: _load(t, b)),
    # a mediation connection for `mediated_by` to name (the loader checks that it exists)
    "iked.connection": ('[connections.medsrv]\nmediation = true\n[connections.c]\n{kv}\n', lambda t, b: _load(t, b)),
    "iked.auth": ("[connections.c.local]\n{kv}\n", lambda t, b: _load(t, b)),
    "iked.retransmit": ("[connections.c.retransmit]\n{kv}\n", lambda t, b: _load(t, b)),
    "iked.child": ("[connections.c.children.net]\n{kv}\n", lambda t, b: _load(t, b)),
    "mediation_server.mediation": ("[mediation]\n{kv}\n", _load_server),
    "mediation_client.client": ("[client]\n{kv}\n", _load_client),
}


# keys that are only valid together with another one (the loader refuses them alone)
_COMPANIONS = {"mediated_by": 'mediation_peer = "bob@med"\n'}


def test_every_section_is_documented() -> None:
    assert set(KEYS) == set(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_documented_keys_are_exactly_the_accepted_keys(section: str) -> None:
    documented = set(KEYS.get(section, {}))
    accepted = set(SECTIONS[section])
    assert documented - accepted == set(), f"documented but not accepted in {section}"
    assert accepted - documented == set(), f"accepted but not documented in {section}"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_documented_examples_load(section: str, files: Path) -> None:
    template, loader = _WRAP[section]
    for key, cells in KEYS[section].items():
        text = template.format(kv=_COMPANIONS.get(key, "") + f"{key} = {_example(cells)}")
        lines = text.splitlines()  # a required key set by the template gives way to the documented one
        text = "\n".join(ln for i, ln in enumerate(lines) if not (ln.startswith(f"{key} = ") and i < len(lines) - 1))
        loader(text + "\n", files)


def _read_keys(fn: ast.AST, names: set[str]) -> set[str]:
    """String keys a loader function reads from the dicts `names`: `d.get("k")`, `d["k"]`, `"k" in d`,
    `for key in ("a", "b")`."""
    found: set[str] = set()

    def ours(n: ast.expr) -> bool:
        return isinstance(n, ast.Name) and n.id in names

    for node in ast.walk(fn):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and ours(node.func.value)
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and ours(node.value) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            found.add(node.slice.value)
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) \
                and isinstance(node.left.value, str) and isinstance(node.ops[0], ast.In) and ours(node.comparators[0]):
            found.add(node.left.value)
        elif isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple):
            found |= {e.value for e in node.iter.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return found


def _functions(module: Any) -> dict[str, ast.AST]:
    tree = ast.parse(Path(module.__file__).read_text())
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_key_tuples_cover_what_the_loaders_read() -> None:
    """The exposed key tuples must not fall behind the loader code they describe."""
    f = _functions(iked_config)
    secret_keys = {k for keys in iked_config.SECRET_KEYS.values() for k in keys} | set(iked_config.SECRET_KEYS)
    checks = {
        "_auth": set(iked_config.AUTH_KEYS),
        "_child": set(iked_config.CHILD_KEYS),
        "connection": set(iked_config.CONNECTION_KEYS) | set(iked_config.RETRANSMIT_KEYS),
        "secrets": secret_keys,
    }
    for name, keys in checks.items():
        assert _read_keys(f[name], {"d", "r", "s"}) - keys == set(), name
    fs = _functions(server_daemon)
    server_reads = _read_keys(fs["relay_config"], {"med"}) | _read_keys(fs["_registry"], {"med"})
    assert server_reads - set(server_daemon.MEDIATION_KEYS) == set()
    fc = _functions(client_daemon)
    client_reads = _read_keys(fc["client_config"], {"c"}) | _read_keys(fc["__init__"], {"client"})
    assert client_reads - set(client_daemon.CLIENT_KEYS) == set()


def _toml_blocks() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", DOC, re.S | re.M)


def test_there_are_complete_examples() -> None:
    blocks = _toml_blocks()
    assert len(blocks) >= 5
    assert any("[mediation]" in b and "database" in b for b in blocks)
    assert any("[client]" in b and "database" in b for b in blocks)
    assert any("[client]" in b and "mediated_by" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(_toml_blocks())))
def test_complete_examples_load(index: int, files: Path) -> None:
    text = _toml_blocks()[index]
    if "[mediation]" in text:
        cfg = _load_server(text, files)
    elif "[client]" in text:
        cfg = _load_client(text, files)
    else:
        cfg, _ = _load(text, files)
    assert cfg.connections or "database" in text
    for c in cfg.connections:  # proposals and selectors are parsed later, at use: check them here
        parse_ike_proposals(c.proposals)
        for ch in c.children:
            parse_esp_proposals(ch.esp_proposals)
            for t in ch.local_ts + ch.remote_ts:
                tsmod.parse(t, "192.0.2.1")


def _options(module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    import importlib

    monkeypatch.setenv("COLUMNS", "1000")  # no wrapped option names in the help text
    mod = importlib.import_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        mod.main(argv)
    return set(re.findall(r"(--[a-z][a-z-]+)", out.getvalue())) - {"--help"}


def test_portal_launcher_options_are_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = _tables("options")
    common = set(opts["medmgr_web.launcher"])
    server = _options("medmgr_web.server_manager", ["--help"], monkeypatch)
    client = _options("medmgr_web.client_manager", ["--help"], monkeypatch)
    assert server - common == set(opts["medmgr_web.server_manager"])
    assert client - common == set(opts["medmgr_web.client_manager"])
    sa = _options("medmgr_web.sa_manager", ["--help"], monkeypatch)
    assert sa - common == set(opts["medmgr_web.sa_manager"])
    assert server & client == common
