"""The documentation says what the code does: README.md, CONTRIBUTING.md and docs/*.md name files,
modules, scenarios, commands, environment variables and defaults that exist as they say.

- every repository path the docs name exists (`scenarios/run`, `bench/ike_flood.py`, `deploy/iked.service`);
- every dotted module they name (`core_ike.daemon.traps`, `python -m medmgr_web.client_manager`) exists,
  and the attribute after it (`core_ike.crypto.dh.KeyPool`) is defined there;
- the README's Scenarios table lists exactly the scenarios `scenarios/run` runs;
- the README's command table names every console script of pyproject.toml, and every `ikectl` and
  `ikeme-ipsec` subcommand;
- every environment variable the docs name is read by the code;
- the defaults in docs/configuration.md's key tables are the ones the loaders apply
  (tests/unit/daemon/test_docs_config.py checks that the keys are the same);
- `python -m` modules run something, `systemctl` names units of deploy/;
- docs/gateway.md's ipsec.conf keys are read, its SQL tables and columns are the schema's;
- docs/architecture.md names the packages and modules of .importlinter's sans-IO contract;
- sections cited by name (`docs/operations.md, "Event loop"`) or anchor (`operations.md#workers`) exist;
- the numbers docs/protocol.md and docs/operations.md give for the check lists and the retransmissions
  are the configuration's defaults;
- the ikectl tables of docs/configuration.md and docs/operations.md, and docs/gateway.md's ikeme-ipsec
  section, list every subcommand.
The generated Figures section of README.md (bench/readme_table.py) is left out: bench/ tests it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from core_ike.daemon import ctl
from core_ike.daemon.config import DaemonSettings, load
from core_ike.daemon.confvalues import duration
from core_ike.ike.config import RetransmitConfig
from gateway import ipsec_cmd

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "CONTRIBUTING.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
TOP = ("core_ike", "mediation_server", "mediation_client", "medmgr_web", "med_db", "gateway", "scenarios",
       "bench", "deploy", "tests", "scripts", "docs")
PATH = re.compile(r"(?<![\w/.-])((?:" + "|".join(TOP) + r")/[\w./<>*{}-]*)")
MODULE = re.compile(r"(?<![\w/.-])((?:" + "|".join(TOP[:7]) + r")(?:\.[A-Za-z_]\w*)+)")
# paths a doc names that are made by a run, or stand for a family of files
MADE = {"bench/results/NAME.txt", "bench/results/NAME.json"}


def doc_text(rel: str) -> str:
    text = (ROOT / rel).read_text(encoding="utf-8")
    if rel == "README.md":  # the generated figures: bench/readme_table.py --check
        head, rest = text.split("<!-- figures:begin", 1)
        text = head + rest.split("<!-- figures:end -->", 1)[1]
    return text


def where(rel: str, text: str, pos: int) -> str:
    return f"{rel}:{text.count(chr(10), 0, pos) + 1}"


def test_named_paths_exist() -> None:
    missing, seen = [], 0
    for rel in DOCS:
        text = doc_text(rel)
        for m in PATH.finditer(text):
            path = m.group(1).rstrip(".,:;)")
            if any(c in path for c in "<>*{}") or path in MADE:
                continue  # a pattern, not a file
            seen += 1
            if not (ROOT / path).exists():
                missing.append(f"{where(rel, text, m.start())}: {path}")
    assert seen > 100
    assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)


def _module_file(parts: list[str]) -> tuple[Path, int] | None:
    """The file of the longest importable prefix of `parts`, and that prefix's length."""
    for n in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:n])
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                return f, n
    return None


def test_named_modules_exist() -> None:
    bad, seen = [], 0
    for rel in DOCS:
        text = doc_text(rel)
        for m in MODULE.finditer(text):
            name = m.group(1)
            if name.endswith((".sqlite", ".md", ".mediation", ".client")):
                continue  # a file name; the section names of configuration.md's key tables
            seen += 1
            found = _module_file(name.split("."))
            if found is None:
                bad.append(f"{where(rel, text, m.start())}: no module {name}")
                continue
            path, n = found
            rest = name.split(".")[n:]
            if rest and not re.search(rf"\b{re.escape(rest[0])}\b", path.read_text(encoding="utf-8")):
                bad.append(f"{where(rel, text, m.start())}: {name}: no {rest[0]} in {path.relative_to(ROOT)}")
    assert seen > 20
    assert not bad, "\n".join(bad)


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_lists_every_scenario() -> None:
    table = _section(doc_text("README.md"), "Scenarios")
    listed = {name for row in table.splitlines() if row.startswith("| `")
              for name in re.findall(r"`([a-z][a-z0-9-]*)`", row.split("|")[1])}
    present = {p.parent.name for p in (ROOT / "scenarios").glob("*/scenario.py")}
    assert present, "no scenarios found"
    assert present - listed == set(), "scenarios the README does not list"
    assert listed - present == set(), "the README lists scenarios scenarios/run does not know"


def _subcommands(ap: argparse.ArgumentParser) -> set[str]:
    subs = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subs[0].choices)


def test_readme_names_every_command_and_subcommand() -> None:
    text = _section(doc_text("README.md"), "What runs")
    rows = {re.findall(r"`([a-z-]+)", row.split("|")[1])[0]: row for row in text.splitlines()
            if row.startswith("| `")}
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    named = set()
    for row in rows.values():
        named |= set(re.findall(r"`([a-z][a-z-]+)", row.split("|")[1]))
    assert scripts - named == set(), "console scripts the README's command table leaves out"
    assert set(rows) - scripts == set(), "commands in the README that pyproject.toml does not install"
    for prog, ap in (("ikectl", ctl.parser()), ("ikeme-ipsec", ipsec_cmd.parser())):
        row = rows[prog]
        words = set(re.findall(r"[a-z]+", row))
        assert _subcommands(ap) - words == set(), f"{prog} subcommands the README leaves out"


def test_named_environment_variables_are_read() -> None:
    code = "\n".join(p.read_text(encoding="utf-8") for top in (*TOP[:7], "tests", "scripts")
                     for p in (ROOT / top).rglob("*") if p.suffix in (".py", ".sh") and p.is_file())
    code += (ROOT / "scenarios" / "run").read_text() + (ROOT / "bench" / "run_all").read_text()
    code += "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "deploy").glob("*.service"))
    names = set()
    for rel in DOCS:
        names |= set(re.findall(r"\$([A-Z][A-Z0-9_]{3,})\b", doc_text(rel)))
        names |= set(re.findall(r"`(IKEME_[A-Z0-9_]+)`", doc_text(rel)))
    names -= {"IKEME_NAT_BEHAVIOUR"}  # a notify's name (docs/protocol.md §11.17), not a variable
    assert {"IKECTL_SOCKET", "MED_DB_URL", "IKEME_EVENT_LOOP"} <= names
    missing = sorted(n for n in names if not re.search(rf"['\"$]{{?{n}\b", code))
    assert not missing, f"environment variables the docs name and no code reads: {missing}"


# -- docs/configuration.md's defaults -----------------------------------------------------------------

CONF = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
LITERAL = re.compile(r"`([^`]+)`(?: \([^)]*\))?")


def _defaults(section: str) -> dict[str, str]:
    lines = CONF.splitlines()
    i = lines.index(f"<!-- keys: {section} -->")
    out = {}
    for row in lines[i + 3:]:
        if not row.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
        out[cells[0].strip("`")] = cells[2]
    return out


def _value(cell: str, like: Any) -> Any:
    """The default a cell states, or KeyError when it states one in words ("none", "every local address")."""
    m = LITERAL.fullmatch(cell)
    if m is None:
        if cell in ("none", "unset", "off") and like is None:
            return None
        raise KeyError(cell)
    try:
        v = tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        v = m.group(1)
    if isinstance(v, dict):
        raise KeyError(cell)  # a table (`local`, `retransmit`): its keys have their own rows
    if isinstance(v, str) and isinstance(like, (int, float)) and not isinstance(like, bool):
        return duration(v)  # "4h", "10m"
    return v


def _compare(section: str, code: dict[str, Any], least: int = 4) -> list[str]:
    bad, compared = [], 0
    for key, cell in _defaults(section).items():
        if key not in code:
            continue
        try:
            doc = _value(cell, code[key])
        except KeyError:
            continue
        compared += 1
        if doc != code[key]:
            bad.append(f"{section}.{key}: docs/configuration.md says {cell}, the code {code[key]!r}")
    assert compared >= least, f"{section}: only {compared} defaults compared"
    return bad


def _field_defaults(cls: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _get_defaults(path: Path, names: set[str]) -> dict[str, Any]:
    """`d.get("key", <literal>)` of the dicts `names` in a loader module: key -> the default."""
    out: dict[str, Any] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id in names
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            try:
                value = ast.literal_eval(node.args[1])
            except ValueError:
                continue
            assert out.get(node.args[0].value, value) == value, f"{path}: two defaults for {node.args[0].value}"
            out[node.args[0].value] = value
    return out


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A connection with one CHILD_SA and nothing else set: what the loader fills in."""
    path = tmp_path_factory.mktemp("conf") / "iked.toml"
    path.write_text('[connections.c]\n[connections.c.children.net]\n[[secrets.ike]]\nsecret = "s"\n')
    return load(path).connections[0]


def test_daemon_defaults_are_documented() -> None:
    assert not _compare("iked.daemon", _field_defaults(DaemonSettings))


def test_retransmit_defaults_are_documented() -> None:
    assert not _compare("iked.retransmit", _field_defaults(RetransmitConfig))


def test_connection_and_child_defaults_are_documented(loaded: Any) -> None:
    conn = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)}
    child = loaded.children[0]
    auth = loaded.local
    bad = _compare("iked.connection", conn)
    bad += _compare("iked.child", {f.name: getattr(child, f.name) for f in dataclasses.fields(child)})
    bad += _compare("iked.auth", {k: getattr(auth, k) for k in ("auth", "signature", "eap_retries")}, 3)
    assert not bad, "\n".join(bad)


def test_mediation_defaults_are_documented() -> None:
    server = _get_defaults(ROOT / "mediation_server" / "daemon.py", {"med"})
    client = _get_defaults(ROOT / "mediation_client" / "daemon.py", {"c", "client"})
    bad = _compare("mediation_server.mediation", server) + _compare("mediation_client.client", client)
    assert not bad, "\n".join(bad)


def test_the_default_reader_reads_cells() -> None:
    assert _value("`10m`", 600) == 600 and _value("`2097152` (2 MiB)", 1) == 2097152
    assert _value('`"50000-50999"`', "") == "50000-50999" and _value("`true`", True) is True
    assert _value("`auto`", "auto") == "auto" and _value("none", None) is None
    with pytest.raises(KeyError):
        _value("every local address", [])


# -- docs/gateway.md: ipsec.conf keys and the SQL configuration's tables and columns -------------------

GATEWAY = (ROOT / "docs" / "gateway.md").read_text(encoding="utf-8")


def _rows(part: str) -> list[list[str]]:
    return [[c.strip() for c in row.strip().split("|")[1:-1]] for row in part.splitlines() if row.startswith("| `")]


def test_ipsec_conf_keys_are_read() -> None:
    from gateway.ipsecconvert import CA_KEYS, CONN_KEYS, SETUP_KEYS

    part = GATEWAY.split("## ipsec.conf and ipsec.secrets", 1)[1].split("\n## ", 1)[0]
    named = {k for cells in _rows(part) for k in re.findall(r"`([a-z_0-9]+)`", cells[0])}
    assert {"auto", "leftsubnet", "rightsourceip", "eap_identity", "uniqueids", "cacert"} <= named
    assert named - (set(CONN_KEYS) | SETUP_KEYS | CA_KEYS) == set(), "ipsec.conf keys the loader refuses"


def test_sql_tables_and_columns_exist() -> None:
    from gateway.sqlconf.models import Base

    tables = {name: set(t.columns.keys()) for name, t in Base.metadata.tables.items()}
    part = GATEWAY.split("How rows become connections", 1)[1].split("\n\n", 2)[1]
    bad, checked = [], 0
    for cells in _rows(part):
        names = re.findall(r"`([a-z_]+)`", cells[0])
        mine = [n for n in names if n in tables]
        assert mine, f"no table of the schema in {cells[0]!r}"
        columns = set().union(*(tables[t] for t in mine))
        for name in [n for n in names if n not in tables] + re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", cells[1]):
            checked += 1
            table, _, column = name.rpartition(".")
            if not (column in tables.get(table, ()) if table else name in columns or name in tables):
                bad.append(f"{cells[0]}: {name}")
    assert checked > 20
    assert not bad, "named in docs/gateway.md, not in gateway/sqlconf/models.py:\n" + "\n".join(bad)


def test_python_m_commands_run_something() -> None:
    """`python -m NAME` in the docs: NAME is a package with __main__.py or a module with a main guard."""
    bad, seen = [], set()
    for rel in [*DOCS, "deploy/README-medmgr.md"]:
        seen |= set(re.findall(r"python3? -m ((?:" + "|".join(TOP[:7]) + r")[\w.]*)", doc_text(rel)))
    for name in sorted(seen):
        base = ROOT.joinpath(*name.split("."))
        if (base / "__main__.py").is_file():
            continue
        module = base.with_suffix(".py")
        if not (module.is_file() and 'if __name__ == "__main__"' in module.read_text(encoding="utf-8")):
            bad.append(name)
    assert len(seen) >= 5
    assert not bad, f"`python -m` of modules that run nothing: {bad}"


def test_systemctl_units_exist() -> None:
    """The units `systemctl VERB UNIT ...` and `journalctl -u UNIT` name are the ones in deploy/."""
    ours = {p.stem for p in (ROOT / "deploy").glob("*.service")}
    system = {"lighttpd", "apache2", "postgresql", "mariadb", "systemd-journald"}
    named: set[str] = set()
    for rel in [*DOCS, "deploy/README-medmgr.md"]:
        for m in re.finditer(r"systemctl (?:enable --now|enable|disable|start|stop|restart|try-restart|reload|edit|status)"
                             r"((?: [a-z][a-z0-9-]*(?:\.service)?)+)", doc_text(rel)):
            named |= {u.removesuffix(".service") for u in m.group(1).split()}
        named |= set(re.findall(r"journalctl -u ([a-z][a-z0-9-]*)", doc_text(rel)))
    assert {"iked", "medmgr-sa"} <= named
    assert named - ours - system == set(), "units the docs name that deploy/ does not have"


def test_architecture_names_the_sans_io_packages() -> None:
    """docs/architecture.md's "import contracts" names every package the sans-IO contract of .importlinter
    covers, and every module it forbids them."""
    import configparser

    ini = configparser.ConfigParser()
    ini.read(ROOT / ".importlinter")
    contract = ini["importlinter:contract:sans-io"]
    text = doc_text("docs/architecture.md").split("`.importlinter` holds this", 1)[1].split("\n- ", 2)[1]
    sources = {m.rpartition(".")[2] for m in contract["source_modules"].split()}
    assert sources - set(re.findall(r"`(?:core_ike\.)?(\w+)`", text)) == set()
    forbidden = {m for m in contract["forbidden_modules"].split() if "." not in m and m != "med_db"}
    assert {m.lower() for m in forbidden} - {w.lower() for w in re.findall(r"`?(\w+)`?", text)} == set()


# -- named sections: `docs/operations.md, "Event loop"` and `[x](operations.md#event-loop)` ---------------

SECTION_NAME = re.compile(r"((?:docs/[\w-]+|deploy/README-medmgr|README|CONTRIBUTING|bench/README|scenarios/lab/README)\.md)"
                          r"`?,?\s+\"([^\"$]{3,80})\"")
ANCHOR = re.compile(r"\]\(((?:[\w./-]+)?\.md)#([\w-]+)\)")


def _titles(rel: str) -> list[str]:
    """The headings of a Markdown file and its bold bullet leads (`- **Presence** ...`), plain text."""
    text = (ROOT / rel).read_text(encoding="utf-8")
    found = re.findall(r"^#{1,4} (.+)$", text, re.MULTILINE) + re.findall(r"^\s*(?:- |\d+\. )\*\*([^*]+)\*\*", text, re.MULTILINE)
    return [" ".join(t.replace("`", "").split()) for t in found]


def _slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation out, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_named_sections_exist() -> None:
    bad, seen = [], 0
    for rel in repo_texts():
        text = (ROOT / rel).read_text(encoding="utf-8")
        for m in SECTION_NAME.finditer(text):
            doc, name = m.group(1), " ".join(m.group(2).split())
            if not (ROOT / doc).is_file():
                continue  # tests/unit/test_repo_self_contained.py reports a missing file
            seen += 1
            if not any(t.lower().startswith(name.lower()) for t in _titles(doc)):
                bad.append(f"{where(rel, text, m.start())}: {doc} \"{name}\"")
        for m in ANCHOR.finditer(text):
            doc = (Path(rel).parent / m.group(1)).as_posix()
            if not (ROOT / doc).is_file():
                continue
            seen += 1
            if m.group(2) not in {_slug(t) for t in _titles(doc)}:
                bad.append(f"{where(rel, text, m.start())}: {doc}#{m.group(2)}")
    assert seen > 50
    assert not bad, "no such section:\n" + "\n".join(bad)


def repo_texts() -> list[str]:
    """Tracked text files (and new ones git does not ignore) that may cite a section."""
    import subprocess

    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode().split("\0")
    keep = (".py", ".md", ".toml", ".sh", ".service", ".conf", ".env", ".html", ".sql")
    return sorted(p for p in out if p.endswith(keep) and not p.startswith("bench/results/") and (ROOT / p).is_file())


# -- docs/protocol.md: the check list's numbers are CheckListConfig's defaults ----------------------------

@pytest.mark.parametrize(("phrase", "field", "value"), [
    ("T is 5 ms", "pacing", 0.005),
    ("the first checks of up to 4 pairs leave at once", "initial_burst", 4),
    ("no wait exceeds `rto_max` (1 s)", "rto_max", 1.0),
    ("nor is shorter than 50 ms per pair", "rto_per_pair", 0.05),
    ("at most 100 pairs", "max_pairs", 100),
    ("16 remote endpoints", "max_remote_endpoints", 16),
    ("8 learnt remote peer-reflexive ones", "max_learnt_remote", 8),
    ("8 checks held while the keys are not known", "max_early_checks", 8),
    ("never longer\nthan 50 ms after the first success (`finish_wait`)", "finish_wait", 0.05),
    ("margin (5 ms", "finish_margin", 0.005),
    ("A RELAYED best pair waits `relay_wait` (1 s)", "relay_wait", 1.0),
    ("at most `relay_delay_max` 0.25 s", "relay_delay_max", 0.25),
    ("gives up after `responder_timeout` (60 s)", "responder_timeout", 60.0),
])
def test_protocol_numbers_are_the_defaults(phrase: str, field: str, value: float) -> None:
    from core_ike.me.checktypes import CheckListConfig

    text = " ".join(doc_text("docs/protocol.md").split())
    assert " ".join(phrase.split()) in text, f"docs/protocol.md no longer says {phrase!r}"
    assert getattr(CheckListConfig(), field) == value, f"CheckListConfig.{field}: docs/protocol.md says {value}"


def test_operations_retransmission_numbers_are_the_defaults() -> None:
    """docs/operations.md, "Loss": the early schedule's count and span, and how long an ME_CONNECT is
    retransmitted, from RetransmitConfig's defaults (docs/configuration.md has the same in its table)."""
    from core_ike.ike.config import RetransmitConfig

    text = " ".join(doc_text("docs/operations.md").split())
    r = RetransmitConfig()
    early = f"({r.early_steps()} early retransmissions in the first {round(r.early_span())} s)"
    assert early in text, f"docs/operations.md should say {early}"
    assert f"after {r.early_timeout:g} s, then {r.early_base:g} times longer" in text
    assert f"({r.timeout:g} s * {r.base:g}^n, {r.tries} more)" in text
    assert f"as long as its schedule lasts ({round(r.give_up_after(True))} s)" in text


@pytest.mark.parametrize(("rel", "heading"), [("docs/configuration.md", "Control: `ikectl`"),
                                              ("docs/operations.md", "`ikectl`")])
def test_ikectl_tables_list_every_subcommand(rel: str, heading: str) -> None:
    table = _section(doc_text(rel), heading)
    listed = {w for row in table.splitlines() if row.startswith("| `")
              for w in re.findall(r"`([a-z]+)[ `]", row.split("|")[1])}
    assert _subcommands(ctl.parser()) - listed == set(), f"ikectl subcommands {rel} does not list"


def test_gateway_names_every_ikeme_ipsec_subcommand() -> None:
    part = _section(GATEWAY, "`ikeme-ipsec`").split("```", 1)[0]
    named = set(re.findall(r"`(?:ikeme-ipsec )?([a-z]+)[ `]", part))
    assert _subcommands(ipsec_cmd.parser()) - named == set(), "ikeme-ipsec subcommands docs/gateway.md leaves out"
