"""Start-up mistakes end the daemons the same way (docs/configuration.md, "Start-up checks and exit
status"): exit status 2, exactly one line on stderr naming what is wrong, no traceback, and no database
file left behind. Each case runs the real daemon as a subprocess with a control socket in a temp dir
and high ports, so nothing touches 500/4500; the success cases start a daemon on a database nobody
created yet, wait for its control socket and stop it with SIGTERM."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.unit.daemon.ikedproc import notify_socket, wait_ready

ROOT = Path(__file__).resolve().parents[3]
IKED, SERVER, CLIENT = "core_ike.daemon.main", "mediation_server", "mediation_client"
PROG = {IKED: "iked", SERVER: "mediation-server", CLIENT: "mediation-client"}

DAEMON = """[daemon]
listen = ["{listen}"]
port = {port}
natt_port = {natt}
control = "{dir}/ctl.sock"
dataplane = "none"
"""
PSK = """
[[secrets.ike]]
id = ["alice@lab", "bob@lab"]
secret = "startup-test-secret"
"""
CONN = """
[connections.home]
remote_addrs = ["192.0.2.2"]
local = { auth = "psk", id = "alice@lab" }
remote = { auth = "psk", id = "bob@lab" }
"""
CHILD = """
[connections.home.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
"""
SERVER_CONN = """
[connections.medsrv]
mediation = true
local = { auth = "psk", id = "carol@med" }
remote = { auth = "psk", id = "%any" }
"""


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


@dataclass(frozen=True)
class Case:
    name: str
    module: str
    toml: str  # {dir} {listen} {port} {natt} are filled in
    message: str  # the one line on stderr after "PROG: ", {dir} {port} {natt} filled in
    args: tuple[str, ...] = ()
    db: str = ""  # a database file that must not exist afterwards (nor its directory)
    then: str = ""  # the message is the line's beginning, this the end of it (a client library's words)


BASE = DAEMON + PSK + CONN + CHILD
CASES = [
    # ---------------------------------------------------------------- command line
    Case("log-level option", IKED, BASE, "argument --log-level: invalid choice: 'bogus' "
         "(choose from 'debug', 'info', 'warning', 'error')", ("--log-level", "bogus")),
    Case("config missing", IKED, BASE, "cannot read config {dir}/none.toml: No such file or directory",
         ("-c", "{dir}/none.toml")),
    Case("toml syntax", IKED, "[daemon]\nport = \n", "cannot read config {dir}/test.toml: "
         "Invalid value (at line 2, column 8)"),
    Case("unknown section", IKED, BASE + "[conections.x]\n", "unknown key 'conections' in config {dir}/test.toml "
         "(accepted: client, connections, daemon, mediation, secrets)"),
    # ---------------------------------------------------------------- [daemon]
    Case("log_level", IKED, BASE + "", '[daemon] log_level: "bogus" is not one of debug, info, warning, error'),
    Case("log_target", IKED, BASE, '[daemon] log_target: "syslog:nowhere" is not stderr, stdout, syslog, '
         "syslog:FACILITY or file:PATH"),
    Case("log file directory", IKED, BASE, "cannot write the log to {dir}/nodir/iked.log: No such file or directory"),
    Case("port type", IKED, BASE, '[daemon] port: expected an integer 0-65535, got "500"'),
    Case("listen host name", IKED, BASE,
         '[daemon] listen: "vpn.example.org" is not an IP address (host names are not resolved)'),
    Case("dataplane", IKED, BASE, '[daemon] dataplane: "kernel" is not one of auto, userspace, xfrm, none'),
    Case("control directory", IKED, BASE, "[daemon] control: directory {dir}/nodir does not exist"),
    # ---------------------------------------------------------------- connections
    Case("ike proposal", IKED, BASE, "[connections.home] proposals: unknown algorithm 'modp9999' in proposal "
         "'aes128-sha256-modp9999'"),
    Case("esp proposal", IKED, BASE, "[connections.home.children.net] esp_proposals: 'prfsha256': "
         "ESP proposals take no PRF"),
    Case("identity", IKED, BASE, "[connections.home.local] id: bad KEY_ID identity 'keyid:#zz'"),
    Case("traffic selector", IKED, BASE, '[connections.home.children.net] local_ts: bad traffic selector '
         '"10.1.0.0/33" (a subnet, an address or dynamic, optionally [proto/port])'),
    Case("duration", IKED, BASE, '[connections.home] rekey_time: bad duration "4x" '
         "(seconds, or a number followed by s, m, h or d)"),
    Case("remote host name", IKED, BASE, '[connections.home] remote_addrs: "vpn.example.org" is not an address, '
         "a subnet or %any (host names are not resolved)"),
    Case("mediated_by", CLIENT, BASE, '[connections.home] mediated_by: no connection "medsrv" in this file'),
    Case("psk without secret", IKED, BASE, "[[secrets.ike]] needs secret"),
    # ---------------------------------------------------------------- key and certificate files
    Case("private key missing", IKED, BASE, "[[secrets.private]] file: cannot read {dir}/missing.key: "
         "No such file or directory"),
    Case("private key garbage", IKED, BASE, "[[secrets.private]] file: {dir}/garbage.pem: not a PEM or DER "
         "private key (RSA, EC, Ed25519, Ed448)"),
    Case("private key is public", IKED, BASE, "[[secrets.private]] file: {dir}/peer.pub holds a public key, "
         "not a private key"),
    Case("private key empty", IKED, BASE, "[[secrets.private]] file: {dir}/empty.key is empty"),
    Case("public key is private", IKED, BASE, "[[secrets.pubkey]] file: {dir}/own.key holds a private key; "
         "give the public key (openssl pkey -pubout)"),
    Case("certificate garbage", IKED, BASE, "[connections.home.local] certs: {dir}/garbage.pem: not a PEM certificate"),
    Case("ca unreadable", IKED, BASE, "[[secrets.ca]] file: cannot read {dir}: Is a directory"),
    # ---------------------------------------------------------------- binding the IKE sockets
    Case("address not on this host", IKED, BASE, "cannot listen on {listen}[{port}]: Cannot assign requested "
         "address (the host has no such address)"),
    Case("port in use", IKED, BASE, "cannot listen on 127.0.0.1[{natt}]: Address already in use "
         "(another program, such as charon or a second daemon, uses it)"),
    Case("control socket in use", IKED, BASE, "control socket {dir}/ctl.sock is in use by another running daemon"),
    Case("metrics port in use", IKED, BASE, "cannot serve metrics on 127.0.0.1[{natt}]: Address already in use"),
    Case("server port in use", SERVER, DAEMON + PSK + SERVER_CONN, "cannot listen on 127.0.0.1[{natt}]: "
         "Address already in use (another program, such as charon or a second daemon, uses it)"),
    # ---------------------------------------------------------------- databases
    Case("server db directory", SERVER, DAEMON + PSK + SERVER_CONN + '[mediation]\ndatabase = '
         '"sqlite:///{dir}/nodir/med_db.sqlite"\n', "[mediation] database: cannot open "
         "sqlite:///{dir}/nodir/med_db.sqlite: directory {dir}/nodir does not exist", db="nodir/med_db.sqlite"),
    Case("server db not sqlite", SERVER, DAEMON + PSK + SERVER_CONN + '[mediation]\ndatabase = '
         '"sqlite:///{dir}/garbage.pem"\n', "[mediation] database: cannot open sqlite:///{dir}/garbage.pem: "
         "file is not a database"),
    Case("server db unreachable", SERVER, DAEMON + PSK + SERVER_CONN + '[mediation]\ndatabase = '
         '"postgresql://ikeme:secret@127.0.0.1:1/med_db"\n', "[mediation] database: cannot open "
         "postgresql://ikeme:***@127.0.0.1:1/med_db: connection failed: ",
         then="Connection refused Is the server running on that host and accepting TCP/IP connections?"),
    Case("mediation not a table", SERVER, "mediation = 5\n" + DAEMON + PSK + SERVER_CONN, "[mediation] must be a table, got 5"),
    Case("mediation value type", SERVER, DAEMON + PSK + SERVER_CONN + "[mediation]\nconnect_rate = [5]\n",
         "[mediation] connect_rate: expected a number >= 0, got [5]"),
    Case("mediation database type", SERVER, DAEMON + PSK + SERVER_CONN + "[mediation]\ndatabase = 5\n",
         "[mediation] database: expected a non-empty string, got 5"),
    Case("mediation database path", SERVER, DAEMON + PSK + SERVER_CONN + '[mediation]\ndatabase = "med.db"\n',
         '[mediation] database: "med.db" is not a database URL (sqlite:////PATH, postgresql://USER@HOST/DB, '
         "mysql://USER@HOST/DB)"),
    Case("mediation policy", SERVER, DAEMON + PSK + SERVER_CONN + '[mediation]\npolicy = "everyone"\n',
         '[mediation] policy: "everyone" is not one of all, same-owner, allow-list, grants'),
    Case("relay ports", SERVER, DAEMON + PSK + SERVER_CONN + '[mediation]\nrelay_ports = "9-3"\n',
         "[mediation] relay_ports: '9-3' is not a port range LOW-HIGH (e.g. \"50000-50999\")"),
    Case("client value type", CLIENT, DAEMON + '[client]\nfinish_wait = "soon"\n',
         '[client] finish_wait: expected a number >= 0, got "soon"'),
    Case("client db directory", CLIENT, DAEMON + '[client]\ndatabase = "sqlite:///{dir}/nodir/client.sqlite"\n',
         "[client] database: cannot open sqlite:///{dir}/nodir/client.sqlite: directory {dir}/nodir does not exist",
         db="nodir/client.sqlite"),
]

# what each case changes in its TOML (by name; the default TOML of a case is valid)
EDITS: dict[str, tuple[str, str]] = {
    "log_level": ('dataplane = "none"\n', 'dataplane = "none"\nlog_level = "bogus"\n'),
    "log_target": ('dataplane = "none"\n', 'dataplane = "none"\nlog_target = "syslog:nowhere"\n'),
    "log file directory": ('dataplane = "none"\n', 'dataplane = "none"\nlog_target = "file:{dir}/nodir/iked.log"\n'),
    "port type": ("port = {port}", 'port = "500"'),
    "listen host name": ('listen = ["{listen}"]', 'listen = ["vpn.example.org"]'),
    "dataplane": ('dataplane = "none"', 'dataplane = "kernel"'),
    "control directory": ('control = "{dir}/ctl.sock"', 'control = "{dir}/nodir/ctl.sock"'),
    "metrics port in use": ('control = "{dir}/ctl.sock"', 'control = "{dir}/ctl.sock"\nmetrics = "127.0.0.1:{natt}"'),
    "ike proposal": ('remote_addrs = ["192.0.2.2"]\n', 'remote_addrs = ["192.0.2.2"]\n'
                     'proposals = "aes128-sha256-modp9999"\n'),
    "esp proposal": ('remote_ts = ["10.2.0.0/24"]\n', 'remote_ts = ["10.2.0.0/24"]\n'
                     'esp_proposals = "aes128gcm16-prfsha256"\n'),
    "identity": ('id = "alice@lab" }', 'id = "keyid:#zz" }'),
    "traffic selector": ('local_ts = ["10.1.0.0/24"]', 'local_ts = ["10.1.0.0/33"]'),
    "duration": ('remote_addrs = ["192.0.2.2"]\n', 'remote_addrs = ["192.0.2.2"]\nrekey_time = "4x"\n'),
    "remote host name": ('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["vpn.example.org"]'),
    "mediated_by": ('remote_addrs = ["192.0.2.2"]\n', 'remote_addrs = ["%any"]\nmediated_by = "medsrv"\n'
                    'mediation_peer = "bob@med"\n'),
    "psk without secret": ('secret = "startup-test-secret"\n', ""),
    "private key missing": ("[[secrets.ike]]", '[[secrets.private]]\nfile = "missing.key"\n[[secrets.ike]]'),
    "private key garbage": ("[[secrets.ike]]", '[[secrets.private]]\nfile = "garbage.pem"\n[[secrets.ike]]'),
    "private key is public": ("[[secrets.ike]]", '[[secrets.private]]\nfile = "peer.pub"\n[[secrets.ike]]'),
    "private key empty": ("[[secrets.ike]]", '[[secrets.private]]\nfile = "empty.key"\n[[secrets.ike]]'),
    "public key is private": ("[[secrets.ike]]", '[[secrets.pubkey]]\nfile = "own.key"\n[[secrets.ike]]'),
    "certificate garbage": ('id = "alice@lab" }', 'id = "alice@lab", certs = ["garbage.pem"] }'),
    "ca unreadable": ("[[secrets.ike]]", '[[secrets.ca]]\nfile = "{dir}"\n[[secrets.ike]]'),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _absent_address() -> str:
    """A documentation address (RFC 5737) this host does not have."""
    for host in range(254, 200, -1):
        addr = str(ipaddress.ip_address("192.0.2.0") + host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr, 0))
            except OSError:
                return addr
    raise AssertionError("every tried 192.0.2.x address is local")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Key files good and bad, as the cases name them."""
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "own.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "peer.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "garbage.pem").write_text("this is not a key, a certificate or a database\n" * 20)
    (tmp_path / "empty.key").write_bytes(b"")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "startup test")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "MED_DB_URL")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 someone else already holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_startup_mistake_is_one_line(case: Case, workdir: Path, held_port: int) -> None:
    port, natt = _free_port(), _free_port()
    if "port in use" in case.name and "metrics" not in case.name:
        natt = held_port
    held: list[socket.socket] = []
    if case.name == "metrics port in use":  # a TCP listener on the port the metrics want
        held.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        held[0].bind(("127.0.0.1", 0))
        held[0].listen()
        natt = held[0].getsockname()[1]
    if case.name == "control socket in use":  # another daemon answers on the control socket
        held.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        held[0].bind(str(workdir / "ctl.sock"))
        held[0].listen()
    listen = _absent_address() if case.name == "address not on this host" else "127.0.0.1"
    fill = {"dir": str(workdir), "listen": listen, "port": str(port), "natt": str(natt)}
    text = case.toml
    if case.name in EDITS:
        text = _replace(text, *EDITS[case.name])
    for k, v in fill.items():
        text = text.replace("{" + k + "}", v)
    conf = workdir / "test.toml"
    conf.write_text(text)
    args = [a.format(**fill) for a in case.args]
    if "-c" not in args:
        args = ["-c", str(conf), *args]
    try:
        r = subprocess.run(_argv(case.module, *args), capture_output=True, text=True, timeout=60, env=_env(),
                           cwd=workdir)
    finally:
        for h in held:
            h.close()
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode == 2, out
    want = f"{PROG[case.module]}: {case.message.format(**fill)}"
    if case.then:
        assert len(r.stderr.splitlines()) == 1, out
        assert r.stderr.startswith(want) and r.stderr.rstrip("\n").endswith(case.then), out
    else:
        assert r.stderr.splitlines() == [want]
    assert r.stdout == ""
    if case.db:
        assert not (workdir / case.db).exists() and not (workdir / case.db).parent.exists()
    # no socket left behind; the other daemon's socket is left alone
    assert (workdir / "ctl.sock").exists() == (case.name == "control socket in use")


@pytest.mark.parametrize("module,section,tables", [
    (SERVER, "mediation", {"peer", "me_callback", "mediation_grant", "user"}),
    (CLIENT, "client", {"client_config", "mediation_server_config", "connection"}),
])
def test_daemon_creates_the_database(module: str, section: str, tables: set[str], workdir: Path) -> None:
    """Started before the portal, a daemon creates the med_db tables itself, the same ones the portal
    creates; it runs, stops cleanly on SIGTERM, and starts again on the database it made."""
    db = workdir / "new.sqlite"
    text = DAEMON.format(dir=workdir, listen="127.0.0.1", port=_free_port(), natt=_free_port())
    text += f'\n[{section}]\ndatabase = "sqlite:///{db}"\n'
    if module == SERVER:
        text += PSK + SERVER_CONN
    conf = workdir / "test.toml"
    conf.write_text(text)
    notify, env = notify_socket(workdir)
    with notify:
        for run in ("first", "second"):
            proc = subprocess.Popen(_argv(module, "-c", str(conf)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=_env() | env, cwd=workdir)
            try:
                wait_ready(proc, notify)  # READY=1: up, its signal handlers in place
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            assert proc.returncode == 0, err
            assert "Traceback" not in out + err
            created = f"created the med_db tables in sqlite:///{db}"
            assert (created in err) == (run == "first"), err
            assert "started" in err and "stopped" in err
            with sqlite3.connect(db) as c:
                names = {row[0] for row in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert tables <= names
            assert oct(db.stat().st_mode & 0o777) == "0o600"  # the client's private key will live there


def test_under_journald_lines_carry_priorities(workdir: Path, held_port: int) -> None:
    """Started by systemd (stderr is the journal stream): log lines and the failure line carry their
    syslog priority and no time stamp of their own (journald adds it)."""
    db = workdir / "med_db.sqlite"
    text = DAEMON.format(dir=workdir, listen="127.0.0.1", port=_free_port(), natt=held_port)
    conf = workdir / "test.toml"
    conf.write_text(text + PSK + SERVER_CONN + f'[mediation]\ndatabase = "sqlite:///{db}"\n')
    journal = workdir / "journal"
    with open(journal, "w") as err:
        st = os.fstat(err.fileno())
        env = {**_env(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        r = subprocess.run(_argv(SERVER, "-c", str(conf)), stdout=subprocess.PIPE, stderr=err, text=True,
                           timeout=60, env=env, cwd=workdir)
    lines = journal.read_text().splitlines()
    assert r.returncode == 2
    assert lines[0] == f"<6>[med_db] created the med_db tables in sqlite:///{db} (schema.sql)"
    assert lines[-1] == (f"<3>mediation-server: cannot listen on 127.0.0.1[{held_port}]: Address already in use "
                         "(another program, such as charon or a second daemon, uses it)")
    assert all(line.startswith(("<6>", "<3>")) for line in lines), lines
