"""The shipped Apache 2.4 config (deploy/apache-medmgr.conf, mod_proxy_fcgi) in front of the real launchers.

The test renders the shipped file (only its socket directory ``/run/medmgr`` is replaced by a temp dir),
wraps it in a minimal server config (127.0.0.1:<free port>, pid file, logs, mutex and runtime dir in the
temp dir, ``User www-data`` as Apache refuses root) and starts ``apache2 -k start``.  The portals run as
the systemd units run them: unix sockets with mode 660, group www-data, in a www-data-readable directory.
"""

from __future__ import annotations

import grp
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scenarios.lab.events import wait_files
from tests.guards import require
from tests.web.medweb_client import WebClient
from tests.web.webtools import ADMIN_PASSWORD, REFERENCE_PEM, REPO, free_port

pytestmark = pytest.mark.web

APACHE = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")
SHIPPED = REPO / "deploy" / "apache-medmgr.conf"
SHIPPED_SOCKET_DIR = "/run/medmgr"
APACHE_USER = "www-data"
PASSWORD = "correct horse battery"


def render_shipped(socket_dir: Path) -> str:
    text = SHIPPED.read_text()
    assert text.count(f"unix:{SHIPPED_SOCKET_DIR}/") == 3, "shipped config no longer uses /run/medmgr sockets"
    return text.replace(f"{SHIPPED_SOCKET_DIR}/", f"{socket_dir}/")


class ApachePortal:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.run = base / "run"  # like systemd's RuntimeDirectory=medmgr (0750, group www-data)
        self.pidfile = base / "apache2.pid"
        self.conf = base / "apache2.conf"
        self.apps: list[subprocess.Popen[bytes]] = []
        self.apache_started = False

    def _start_app(self, name: str, module: str, extra: list[str]) -> Path:
        sock = self.run / f"{name}.sock"
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        cmd = [os.environ.get("PYTHON", str(REPO / ".venv/bin/python")), "-m", module, "--socket", str(sock),
               "--socket-mode", "660", "--db", f"sqlite:///{self.base / (name + '.sqlite')}", *extra]
        self.apps.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        return sock

    def start(self) -> None:
        gid = grp.getgrnam(APACHE_USER).gr_gid
        os.chmod(self.base, 0o711)
        self.run.mkdir()
        os.chown(self.run, -1, gid)
        os.chmod(self.run, 0o750)
        (self.base / "ms.pem").write_text(REFERENCE_PEM)
        hash_out = subprocess.run([sys.executable, "-m", "medmgr_web.client_manager", "hash-password"],
                                  input=ADMIN_PASSWORD + "\n", capture_output=True, text=True, check=True,
                                  cwd=REPO)
        (self.base / "admin.hash").write_text(hash_out.stdout)
        socks = [
            self._start_app("server-manager", "medmgr_web.server_manager", [
                "--ms-address", "ms.example.net", "--ms-public-key", str(self.base / "ms.pem")]),
            self._start_app("client-manager", "medmgr_web.client_manager", [
                "--admin-hash-file", str(self.base / "admin.hash")]),
            # the SA manager with no iked behind it: its pages say so
            self._start_app("sa-manager", "medmgr_web.sa_manager", ["--control", str(self.base / "no-iked.ctl")]),
        ]
        wait_files(lambda: all(s.exists() for s in socks), 30, socks, what="FastCGI sockets", procs=self.apps)
        for s in socks:  # what Group=www-data does for the systemd units
            os.chown(s, -1, gid)

        modules = "\n".join(f"LoadModule {m}_module {MODULES / f'mod_{m}.so'}"
                            for m in ("mpm_event", "authz_core", "authz_host", "proxy", "proxy_fcgi"))
        self.conf.write_text(f"""{modules}
ServerName 127.0.0.1
ServerRoot "{self.base}"
DefaultRuntimeDir "{self.base}"
PidFile "{self.pidfile}"
Mutex file:{self.base} default
ErrorLog "{self.base / 'apache-error.log'}"
LogLevel warn
User {APACHE_USER}
Group {APACHE_USER}
Listen 127.0.0.1:{self.port}
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
DocumentRoot "{self.base}"
<Directory />
    Require all denied
</Directory>
<VirtualHost 127.0.0.1:{self.port}>
# ---- rendered from deploy/apache-medmgr.conf
{render_shipped(self.run)}
# ----
</VirtualHost>
""")
        check = subprocess.run([str(APACHE), "-t", "-f", str(self.conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        subprocess.run([str(APACHE), "-f", str(self.conf), "-k", "start"], check=True, capture_output=True,
                       timeout=30)
        self.apache_started = True

        # apache2 -k start returns before its daemon listens; the daemon writes its PidFile once the
        # listeners are open (the MPM's run, after the open_logs hook that sets them up)
        wait_files(self.pidfile.exists, 15, [self.pidfile], what="apache2's PidFile")

    def _apache_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self.apache_started:
            pid = self._apache_pid()
            if pid is not None:
                try:
                    pidfd = os.pidfd_open(pid)  # readable once it has exited (it is not our child: -k start)
                except ProcessLookupError:
                    pidfd = None
                if pidfd is not None:
                    try:
                        signal.pidfd_send_signal(pidfd, signal.SIGTERM)  # the parent we started; it stops its children
                        if not select.select([pidfd], [], [], 10)[0]:
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    finally:
                        os.close(pidfd)
        for proc in self.apps:  # our own children, by PID
            proc.terminate()
        for proc in self.apps:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def apache() -> Iterator[ApachePortal]:
    require("apache2", "root", why="apache2 starts as root and switches to www-data")
    try:
        grp.getgrnam(APACHE_USER)
    except KeyError:
        pytest.skip("no www-data group")
    base = Path(tempfile.mkdtemp(prefix="medapache-"))
    p = ApachePortal(base)
    try:
        p.start()
        yield p
    except BaseException:
        log = base / "apache-error.log"
        if log.exists():
            sys.stderr.write(log.read_text(errors="replace")[-3000:])
        raise
    finally:
        p.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_server_manager_register_login_peer(apache: ApachePortal) -> None:
    c = WebClient(apache.url + "/medsrv")
    r = c.get("user/login")
    assert r.status == 200 and "Username" in r.text() and 'action="/medsrv/user/login"' in r.body
    r = c.submit("user/add", "user/add", {
        "new_login": "alice", "new_password": PASSWORD, "confirm_password": PASSWORD})
    assert r.status == 200 and "Welcome, alice" in r.text() and "Your peers" in r.text()
    # log out and in again (redirects carry SCRIPT_NAME=/medsrv)
    r = c.post("user/logout", {"csrf": r.csrf()})
    assert "Log in" in r.text()
    redirect = c.get("peer/list", follow=False)
    assert redirect.status in (302, 303) and redirect.location.endswith("/medsrv/user/login")
    r = c.submit("user/login", "user/login", {"login": "alice", "password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text()
    r = c.submit("peer/add", "peer/add", {"alias": "sidv150", "public_key": REFERENCE_PEM})
    assert r.status == 200
    assert "ed:90:e6:4f:ec:a2:1f:4b:68:97:99:24:22:e0:de:21:b9:d6:26:29" in r.text()
    # PATH_INFO routing: /medsrv/peer/list and /medsrv/peer/edit/<id> reach the right handlers
    r = c.get("peer/list")
    assert r.status == 200 and "sidv150" in r.text() and "alice" in r.text()
    (pid,) = re.findall(r'/medsrv/peer/edit/(\d+)"', r.body)
    r = c.get(f"peer/edit/{pid}")
    assert r.status == 200 and "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzZRsIp99UrIdoctThOfc" in r.body
    r = c.get("user/help")  # the mediation server's key, configured on the launcher
    assert r.status == 200 and "keyid:#ed90e64feca21f4b6897992422e0de21b9d62629" in r.text()
    assert c.get("no/such/page", follow=False).status == 404


def test_client_manager_login_page_and_static(apache: ApachePortal) -> None:
    c = WebClient(apache.url + "/medcli")
    r = c.get("user/login")
    # the client manager itself (not the server manager: both backends must be distinct proxy workers)
    assert r.status == 200 and "Client manager" in r.text() and "Administrator password" in r.text()
    assert "/medcli/static/" in r.body and 'action="/medcli/user/login"' in r.body
    css = c.get("static/style.css")
    assert css.status == 200 and "text/css" in css.headers.get("content-type", "")
    assert c.get("static/app.js").status == 200
    r = c.submit("user/login", "user/login", {"password": ADMIN_PASSWORD})
    assert r.status == 200 and "Connections" in r.text()
    # Require local in the shipped <Location "/medcli/"> lets 127.0.0.1 through
    r = c.get("connection/list")
    assert r.status == 200 and "Connections" in r.text()


def test_sa_manager_behind_its_own_location(apache: ApachePortal) -> None:
    subprocess.run([sys.executable, "-m", "medmgr_web.sa_manager", "--add-operator", "op", "--db",
                    f"sqlite:///{apache.base / 'sa-manager.sqlite'}"], input=PASSWORD + "\n", text=True, check=True,
                   capture_output=True, cwd=REPO)
    c = WebClient(apache.url + "/medsa")
    r = c.get("user/login")
    assert r.status == 200 and "SA Manager" in r.text() and 'action="/medsa/user/login"' in r.body
    r = c.submit("user/login", "user/login", {"login": "op", "password": PASSWORD})
    assert r.status == 503 and "Security associations" in r.text() and "iked cannot be reached at" in r.text()
    assert c.get("conn/list").status == 503

