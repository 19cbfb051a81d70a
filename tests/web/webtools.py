"""What the web/DB tests share (their fixtures in conftest.py): a real PostgreSQL and MariaDB, a real lighttpd
with the portals behind it, headless Chromium, the waits. Imported as ``tests.web.webtools``, as the other
test folders' helper modules are, so one pytest run can hold every test folder."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scenarios.lab.events import wait_files

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")
LIGHTTPD = Path("/usr/sbin/lighttpd")

_db_counter = itertools.count()

# The RSA-2048 key of strongSwan's medsrv test data (test.sql); its keyid is ed90e64f...2629.
REFERENCE_PEM = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzZRsIp99UrIdoctThOfc
r2Up92BTSlY1Xv1J6Hqcbx3dX/MDvX60nCPeA63Eh0VvQetfkpR73I/42+RD+NES
4NosmBRefE0c0Vzd0IV39NTz0KLh2jwIyUzYGXWHUZMeepckzEPXOhG44XaiaLTN
u/OZXLCXI6vJv8R3wl5xSkZhqEwHi+dATYmGvlXyBDfjprJ4o8yJrsCFlB8aGq+v
SyKuFG/kaE1VZ9wwZYoyCH0BuYUVBwyxZTMRy2EC+CqDxjjCp5mF27lgB1Lpy8Jy
AUpcVHtKtZEww6lIZYv/eUtvICz5WTn/pzsQUh8FwGDOyxX4WX7ZXXK55AXuMfG1
2QIDAQAB
-----END PUBLIC KEY-----
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def socket_activated(cmd: list[str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """Start `cmd` with a TCP socket on 127.0.0.1:`port` already listening, handed over as systemd
    socket activation does (sd_listen_fds(3): fd 3, LISTEN_FDS=1, LISTEN_PID its pid, kept by `exec`):
    connections queue from the start, so the caller need not wait for the server's own bind. bash moves
    the descriptor (dash takes no descriptor above 9)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        fd = listener.fileno()
        move = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "
        return subprocess.Popen(["/bin/bash", "-c", move + 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "bash", *cmd],
                                pass_fds=(fd,), cwd=cwd)


def notified(notify: socket.socket, proc: subprocess.Popen[Any], want: str, timeout: float) -> bool:
    """Whether `proc` sends the line `want` (sd_notify(3), e.g. "READY=1") on `notify` within `timeout`
    s; False as soon as it exits instead."""
    pidfd = os.pidfd_open(proc.pid)  # readable once the process has exited
    try:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([notify.fileno(), pidfd], [], [], max(0.0, deadline - time.monotonic()))
            if notify.fileno() in ready:
                if want in notify.recv(4096).decode(errors="replace").splitlines():
                    return True
            elif not ready or pidfd in ready:
                return False
    finally:
        os.close(pidfd)


# ------------------------------------------------------------------ PostgreSQL


class PgServer:
    """A throw-away PostgreSQL cluster (unix socket only), run as the ``postgres`` user."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.sock = base / "sock"
        self.port = free_port()

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, text=True, timeout=120
        )

    def start(self) -> None:
        pw = pwd.getpwnam("postgres")
        self.sock.mkdir()
        for p in (self.base, self.sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        opts = f"-k {self.sock} -p {self.port} -c listen_addresses='' -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                  str(self.base / "pg.log"), "-w", "start")

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                        "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.sock}&port={self.port}"

    def new_database(self) -> str:
        """Create a fresh database and return its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_db_counter)}"
        with psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


# ------------------------------------------------------------------ MariaDB


class MyServer:
    """A throw-away MariaDB server: private data directory, unix socket only (--skip-networking),
    run as the ``mysql`` user; root logs in over the socket without a password."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.sock = base / "mysqld.sock"
        self.log = base / "mariadbd.log"
        self.notify = base / "notify.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pw = pwd.getpwnam("mysql")
        os.chown(self.base, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [str(MARIADB_INSTALL_DB), "--no-defaults", f"--datadir={self.data}", "--user=mysql",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
            check=True, capture_output=True, timeout=120, cwd=self.base,
        )
        # mariadbd tells a service manager when it takes connections (sd_notify(3) READY=1 to
        # $NOTIFY_SOCKET, sent as the mysql user): the test is that service manager
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify:
            notify.bind(str(self.notify))
            os.chmod(self.notify, 0o666)
            self.proc = subprocess.Popen(
                [str(MARIADBD), "--no-defaults", f"--datadir={self.data}", f"--socket={self.sock}",
                 "--skip-networking", "--user=mysql", f"--pid-file={self.base / 'mariadbd.pid'}",
                 f"--log-error={self.log}", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                 "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--skip-name-resolve"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.base,
                env={**os.environ, "NOTIFY_SOCKET": str(self.notify)},
            )
            if not notified(notify, self.proc, "READY=1", 60):
                raise RuntimeError(f"mariadbd did not start: {self.log.read_text(errors='replace')[-2000:]}")
        assert self._ping()

    def _connect(self) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=str(self.sock), user="root", autocommit=True)

    def _ping(self) -> bool:
        import pymysql

        try:
            self._connect().close()
            return True
        except (pymysql.MySQLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # SIGTERM to our child, by PID: clean shutdown
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def url(self, dbname: str) -> str:
        return f"mysql://root@localhost/{dbname}?unix_socket={self.sock}"

    def new_database(self) -> str:
        """Create a fresh database and return its URL (``mysql://``: med_db picks PyMySQL)."""
        name = f"t{os.getpid()}_{next(_db_counter)}"
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        return self.url(name)


def new_database(request: pytest.FixtureRequest, url: str, tmp_path: Path, name: str = "second") -> str:
    """Another empty database on the same backend as ``url``."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / (name + '.sqlite')}"
    server = request.getfixturevalue("my_server" if url.startswith("mysql") else "pg_server")
    return server.new_database()  # type: ignore[no-any-return]


# ------------------------------------------------------------------ lighttpd + FastCGI portals

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "client-admin-pw"
LIM_ARGS = ["--throttle-account", "3", "--throttle-address", "6", "--throttle-window", "60",
            "--throttle-delay-max", "0.2"]
SHORT_TIMEOUT = 300  # idle timeout of the /strict instance, seconds (tests age its sessions in the database)
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium driven by Playwright (the browser tests; ``require("chromium")`` first)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def watched_page(ctx: Any, failed: list[str]) -> Any:
    """A new page of the browser context ``ctx`` that adds to ``failed`` what a user would see broken: a
    missing asset (CSS, JS, icon: a sub-resource answering an error) or a script error. Form pages
    answering 400 are expected, so documents are not counted."""
    page = ctx.new_page()
    page.on("response", lambda r: failed.append(r.url)
            if r.status >= 400 and r.request.resource_type != "document" else None)
    page.on("pageerror", lambda e: failed.append(str(e)))
    return page


def log_in(page: Any, login_url: str, password: str, landing: str, login: str | None = None) -> None:
    """Log in on a portal's login page (``login`` None: the client manager's, a password alone) and wait
    for the page it leads to (a glob such as ``**/peer/list``)."""
    page.goto(login_url)
    if login is not None:
        page.fill("#login", login)
    page.fill("#password", password)
    page.click("button[name=submit]")
    page.wait_for_url(landing)
_addresses = itertools.count(1)


def fresh_address() -> str:
    """A loopback source address no other test of this run uses (all of 127/8 is local), so that each
    test has its own client address as far as the portals' login throttling is concerned."""
    n = next(_addresses)
    return f"127.{100 + os.getpid() % 100}.{n // 250}.{n % 250 + 1}"


class Portal:
    """lighttpd on 127.0.0.1:<port> in front of five FastCGI backends started with the real launchers:
    /srv (two server manager processes on one database, taken in turn), /srv2 (the second of them
    alone), /cli (client
    manager), /strict (server manager with tight throttling: 6 failures per address, delays after 3
    per account, at most 0.2 s; and a shorter session timeout, for the security tests), /dcli (client
    manager with ``--daemon-socket <base>/medcli.ctl``, where a test may put a stand-in for the
    mediation client's control socket), /lim (two server manager processes ``lim`` and ``lim2`` on
    one database, taken in turn, throttled as /strict: :data:`LIM_ARGS`)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.apps: dict[str, subprocess.Popen[bytes]] = {}
        self.cmds: dict[str, list[str]] = {}
        self.ms_pem = REFERENCE_PEM
        self.daemon_socket = base / "medcli.ctl"

    def _start_app(self, name: str, module: str, extra: list[str], db: str | None = None) -> Path:
        sock = self.base / f"{name}.sock"
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        cmd = [os.environ.get("PYTHON", str(REPO / ".venv/bin/python")), "-m", module, "--socket", str(sock),
               "--db", f"sqlite:///{self.base / ((db or name) + '.sqlite')}", *extra]
        self.cmds[name] = cmd
        self.apps[name] = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(self.apps[name])
        return sock

    def restart(self, name: str) -> None:
        """Stop app ``name`` (SIGTERM to our own child, by PID) and start it again on its socket."""
        old = self.apps[name]
        old.terminate()
        old.wait(timeout=30)
        sock = self.base / f"{name}.sock"
        sock.unlink(missing_ok=True)
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
        self.apps[name] = subprocess.Popen(self.cmds[name], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.procs[self.procs.index(old)] = self.apps[name]
        # flup announces nothing but its socket file, created once it listens
        wait_files(sock.exists, 30, [sock], what=f"{name} FastCGI socket after the restart", procs=[self.apps[name]])

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def stats(self, name: str) -> dict[str, int]:
        """The counters of app ``name`` (sessions, throttling): SIGUSR1 makes it log them."""
        seen = self.log(name).count("portal stats:")
        self.apps[name].send_signal(signal.SIGUSR1)  # our own child, by PID
        # the app's only answer to SIGUSR1 is that log line, in the file its stdout goes to
        wait_files(lambda: self.log(name).count("portal stats:") > seen, 10, [self.base / f"{name}.log"],
                   what=f"{name} stats", procs=[self.apps[name]])
        line = self.log(name).split("portal stats:")[-1].splitlines()[0]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}

    def start(self) -> None:
        (self.base / "www").mkdir()
        (self.base / "ms.pem").write_text(self.ms_pem)
        import sys

        hash_out = subprocess.run([sys.executable, "-m", "medmgr_web.client_manager", "hash-password"],
                                  input=ADMIN_PASSWORD + "\n", capture_output=True, text=True, check=True,
                                  cwd=REPO)
        (self.base / "admin.hash").write_text(hash_out.stdout)
        srv_args = ["--ms-address", "ms.example.net", "--ms-public-key", str(self.base / "ms.pem"),
                    "--throttle-address", "1000"]
        srv = self._start_app("srv", "medmgr_web.server_manager", srv_args)
        # it creates the database and its tables
        wait_files(srv.exists, 30, [srv], what="the first FastCGI socket", procs=[self.apps["srv"]])
        socks = {
            "srv": srv,
            "srv2": self._start_app("srv2", "medmgr_web.server_manager", srv_args, db="srv"),
            "cli": self._start_app("cli", "medmgr_web.client_manager", [
                "--admin-hash-file", str(self.base / "admin.hash"), "--throttle-address", "1000"]),
            "strict": self._start_app("strict", "medmgr_web.server_manager", [
                "--throttle-account", "3", "--throttle-address", "6", "--throttle-window", "60",
                "--throttle-delay-max", "0.2", "--session-timeout", str(SHORT_TIMEOUT)]),
            "dcli": self._start_app("dcli", "medmgr_web.client_manager", [
                "--admin-hash-file", str(self.base / "admin.hash"), "--throttle-address", "1000",
                "--daemon-socket", str(self.daemon_socket)]),
        }
        # /lim: two server manager processes on one database with tight throttling (as /strict's),
        # for the test that their counts are shared; the second starts once the first made the tables
        socks["lim"] = self._start_app("lim", "medmgr_web.server_manager", LIM_ARGS)
        wait_files(socks["lim"].exists, 30, [socks["lim"]], what="the /lim FastCGI socket", procs=[self.apps["lim"]])
        socks["lim2"] = self._start_app("lim2", "medmgr_web.server_manager", LIM_ARGS, db="lim")
        wait_files(lambda: all(s.exists() for s in socks.values()), 30, socks.values(), what="FastCGI sockets",
                   procs=self.apps.values())
        # /srv is both server manager processes, taken in turn: every test through /srv has its
        # requests served by one or the other, so a login, its session and its CSRF tokens must hold
        # in both (sessions and the signing key live in the database)
        backends = {name: [sock] for name, sock in socks.items()}
        backends["srv"].append(socks["srv2"])
        backends["lim"].append(backends.pop("lim2")[0])
        fcgi = ",\n".join(
            f'  "/{name}" => (' + ", ".join(f'( "socket" => "{sock}", "check-local" => "disable" )'
                                           for sock in sockets) + ")"
            for name, sockets in backends.items()
        )
        conf = self.base / "lighttpd.conf"
        conf.write_text(f"""
server.modules += ( "mod_fastcgi" )
server.document-root = "{self.base / 'www'}"
server.bind = "127.0.0.1"
server.port = {self.port}
server.pid-file = "{self.base / 'lighttpd.pid'}"
server.errorlog = "{self.base / 'lighttpd-error.log'}"
server.systemd-socket-activation = "enable"
fastcgi.balance = "round-robin"
fastcgi.server = (
{fcgi}
)
""")
        subprocess.run([str(LIGHTTPD), "-tt", "-f", str(conf)], check=True, capture_output=True)
        self.procs.append(socket_activated([str(LIGHTTPD), "-D", "-f", str(conf)], self.port, self.base))

    def stop(self) -> None:
        for proc in reversed(self.procs):  # our own children, by PID
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
