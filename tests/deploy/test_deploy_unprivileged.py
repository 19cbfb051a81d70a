"""The installed daemons run as an unprivileged user with exactly the capabilities their unit grants
(AmbientCapabilities= / CapabilityBoundingSet=, read from deploy/*.service, applied with setpriv as
systemd applies them), in a network namespace of their own: each tells its readiness over
$NOTIFY_SOCKET (Type=notify), answers on its control socket, re-reads its configuration on SIGHUP
(ExecReload=) and stops on SIGTERM; the mediation server creates its SQLite database; a mediation
client registers at a mediation server that way.
Without one of the capabilities the unit grants, a daemon does not start: the grants are needed,
not just harmless."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unitfiles import unit

from scenarios.lab import wait_for

USER, GROUP = "nobody", "nogroup"
SECRET = "a long secret for the deploy test"

CONFIGS = {
    "iked": """
[daemon]
listen = ["127.0.0.1"]
control = "{run}/iked.ctl"
dataplane = "userspace"
tun = "ipsec7"

[[secrets.ike]]
id = ["gw1@example.org", "gw2@example.org"]
secret = "{secret}"

[connections.site]
remote_addrs = ["127.0.0.9"]
local = {{ auth = "psk", id = "gw1@example.org" }}
remote = {{ auth = "psk", id = "gw2@example.org" }}

[connections.site.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
""",
    "mediation-server": """
[daemon]
listen = ["10.77.0.1"]
control = "{run}/mediation-server.ctl"
dataplane = "none"

[mediation]
database = "sqlite:///{state}/med_db.sqlite"
relay = true
relay_ports = "50000-50009"

[[secrets.ike]]
id = ["carol@med", "alice@med"]
secret = "{secret}"

[connections.medsrv]
mediation = true
local = {{ auth = "psk", id = "carol@med" }}
remote = {{ auth = "psk", id = "%any" }}
""",
    "mediation-client": """
[daemon]
listen = ["10.77.0.2"]
control = "{run}/mediation-client.ctl"
dataplane = "userspace"
tun = "ipsec8"

[client]
server_timeout = "30s"

[[secrets.ike]]
id = ["alice@med", "carol@med"]
secret = "{secret}"

[connections.medsrv]
remote_addrs = ["10.77.0.1"]
mediation = true
local = {{ auth = "psk", id = "alice@med" }}
remote = {{ auth = "psk", id = "carol@med" }}
""",
}
TUN = {"iked": "ipsec7", "mediation-client": "ipsec8"}
# two namespaces joined by a veth pair: the server (and iked) in the first, the client in the second
NETNS = {"iked": 0, "mediation-server": 0, "mediation-client": 1}


def _cap_arg(caps: set[str]) -> str:
    return ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(caps))])


def _cap_mask(caps: set[str]) -> int:
    numbers = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
    return sum(1 << numbers[c] for c in caps)


class Env:
    def __init__(self, installed: Path, netns: list[str], base: Path) -> None:
        self.installed, self.netns, self.base = installed, netns, base
        self.run = base / "run"  # stands in for /run/ikeme
        self.state = base / "state"  # ... and /var/lib/ikeme
        self.procs: list[subprocess.Popen[str]] = []

    def ctl(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.installed / "opt/ikeme/bin/ikectl"), "-s", str(self.run / f"{name}.ctl"),
                               *args], capture_output=True, text=True, timeout=30)

    def start(self, name: str, caps: set[str]) -> tuple[subprocess.Popen[str], socket.socket]:
        conf = self.base / f"{name}.toml"
        conf.write_text(CONFIGS[name].format(run=self.run, state=self.state, secret=SECRET))
        conf.chmod(0o644)
        notify_path = self.base / f"{name}.notify"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify_path.chmod(0o666)
        cmd = ["ip", "netns", "exec", self.netns[NETNS[name]], "setpriv", "--reuid", USER, "--regid", GROUP, "--clear-groups",
               "--no-new-privs", f"--inh-caps={_cap_arg(caps)}", f"--ambient-caps={_cap_arg(caps)}",
               f"--bounding-set={_cap_arg(caps)}", "--",
               str(self.installed / "opt/ikeme/bin" / name), "-c", str(conf)]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": str(notify_path)}
        proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        self.procs.append(proc)
        return proc, notify


def _notifications(notify: socket.socket, proc: subprocess.Popen[str], want: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        notify.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            seen += notify.recv(4096).decode() + "\n"
        if want in seen.splitlines():
            return seen
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"exited with {proc.returncode} before {want}: {out[-3000:]}")
    raise AssertionError(f"no {want} within {timeout}s (got {seen!r})")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture
def env(installed: Path) -> Iterator[Env]:
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is missing")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.fail(f"no user {USER}")
    netns = [f"ikdeploy{os.getpid()}s", f"ikdeploy{os.getpid()}c"]
    for ns in netns:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    base = Path(tempfile.mkdtemp(prefix="ikeme-unpriv-", dir="/var/tmp"))
    e = Env(installed, netns, base)
    try:
        base.chmod(0o755)
        subprocess.run(["ip", "-n", netns[0], "link", "add", "v0", "type", "veth", "peer", "name", "v1",
                        "netns", netns[1]], check=True)
        for i, ns in enumerate(netns):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"10.77.0.{i + 1}/24", "dev", f"v{i}"], check=True)
            for dev in ("lo", f"v{i}"):
                subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        for d in (e.run, e.state):
            d.mkdir(mode=0o750)
            shutil.chown(d, USER, GROUP)
        yield e
    finally:
        for p in e.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for ns in netns:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _daemon_pid(wrapper: subprocess.Popen[str]) -> int:
    """ip netns exec and setpriv exec in turn: the Popen pid is the daemon's."""
    return wrapper.pid


@pytest.mark.parametrize("name", ["iked", "mediation-server", "mediation-client"])
def test_daemon_runs_with_its_units_capabilities(env: Env, name: str) -> None:
    caps = unit(f"{name}.service").words("AmbientCapabilities")
    proc, notify = env.start(name, caps)
    _notifications(notify, proc, "READY=1")
    st = _status(_daemon_pid(proc))
    nobody = pwd.getpwnam(USER).pw_uid
    assert st["Uid"].split()[0] == str(nobody) and st["NoNewPrivs"] == "1"
    assert int(st["CapEff"], 16) == _cap_mask(caps) == int(st["CapAmb"], 16) == int(st["CapBnd"], 16)
    r = env.ctl(name, "--json", "conns")
    assert r.returncode == 0, r.stderr
    if name == "mediation-server":  # it made its database from the installed schema
        db = env.state / "med_db.sqlite"
        assert db.stat().st_uid == pwd.getpwnam(USER).pw_uid and db.stat().st_size > 0
    if name in TUN:
        link = subprocess.run(["ip", "-n", env.netns[NETNS[name]], "-o", "link", "show", TUN[name]], capture_output=True,
                              text=True)
        assert link.returncode == 0 and "UP" in link.stdout, link.stdout + link.stderr
    os.kill(proc.pid, signal.SIGHUP)  # what ExecReload=/bin/kill -HUP $MAINPID sends
    assert "RELOADING=1" in _notifications(notify, proc, "READY=1").splitlines()
    out = _stop(proc)
    assert "reload" in out.lower(), out[-3000:]


@pytest.mark.parametrize("missing", ["CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"])
def test_iked_needs_the_capabilities_it_is_given(env: Env, missing: str) -> None:
    caps = unit("iked.service").words("AmbientCapabilities") - {missing}
    proc, _ = env.start("iked", caps)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out[-3000:]
    # the daemon's own words name what failed and why
    assert ("[500]" in out) if missing == "CAP_NET_BIND_SERVICE" else \
        (f"cannot create TUN device {TUN['iked']}: Operation not permitted (needs CAP_NET_ADMIN)" in out), out


def test_client_registers_at_the_server_both_unprivileged(env: Env) -> None:
    server, s_notify = env.start("mediation-server", unit("mediation-server.service").words("AmbientCapabilities"))
    _notifications(s_notify, server, "READY=1")
    client, c_notify = env.start("mediation-client", unit("mediation-client.service").words("AmbientCapabilities"))
    _notifications(c_notify, client, "READY=1")
    listed: list[str] = []

    def registered() -> bool:
        r = env.ctl("mediation-client", "--json", "list")
        listed[:] = [r.stdout, r.stderr]
        sas = json.loads(r.stdout).get("sas", []) if r.returncode == 0 else []
        return any(sa.get("name") == "medsrv" and sa.get("state") == "ESTABLISHED" for sa in sas)

    try:
        # the daemons log into pipes read at the end, and nothing else tells of the SA: ikectl is polled
        wait_for(registered, 30, interval=0.2, what="the client's mediation SA ESTABLISHED")
    except TimeoutError as e:
        raise AssertionError(f"{e}: {listed}") from None
    status = env.ctl("mediation-server", "status")
    assert status.returncode == 0 and "alice@med" in status.stdout, status.stdout + status.stderr
    _stop(client)
    _stop(server)
