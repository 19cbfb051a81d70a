"""Drive our own daemons (iked, and the mediation daemons built on it) inside a lab namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core_ike.daemon.ctl import call
from scenarios.lab.events import Notifications, ProcessExited, wait_files
from scenarios.lab.netns import Lab

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class IkedError(RuntimeError):
    pass


class Iked:
    """`iked -c <toml>` in `host`; `ctl()` talks to its control socket (JSON lines).

    Started, it reports to :attr:`notes` as to systemd (sd_notify: READY=1 once it serves its control
    socket, RELOADING=1 / READY=1 around a reload, STOPPING=1). Waits for a state shown by `list` or
    `status` check again each time the daemon writes its log (every SA change logs a line at the
    default level info, written right after the event-loop callback that made it: docs/operations.md,
    Logging)."""

    module = "core_ike.daemon.main"
    state_backstop: float | None = None  # its log line follows the change (wait_daemons)

    def __init__(self, lab: Lab, host: str, toml: str, name: str = "iked",
                 files: dict[str, bytes | str] | None = None, module: str | None = None) -> None:
        """`module`: `mediation_server` / `mediation_client` run the mediation daemons instead."""
        self.lab, self.host, self.name = lab, host, name
        if module is not None:
            self.module = module
        self.dir = lab.host_dir(host) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ctl_path = str(self.dir / "ctl.sock")
        self.log_path = self.dir / "iked.log"
        for fname, data in (files or {}).items():
            p = self.dir / fname
            p.write_bytes(data if isinstance(data, bytes) else data.encode())
            if fname.endswith((".key", ".pem")):
                os.chmod(p, 0o600)
        self.template = toml
        self.conf_path = self.dir / "iked.toml"
        self.conf_path.write_text(toml.replace("@CTL@", self.ctl_path).replace("@DIR@", str(self.dir)))
        self.proc: Any = None
        self.notes: Notifications | None = None
        lab.at_detach(self._keep_notes)

    def _keep_notes(self) -> None:
        """Left running (``scenarios/run --keep``): a reader process takes over the notification socket,
        so a later reload or stop notifies as under systemd (docs/operations.md) and no line says that
        nobody reads; the notifications go to `notify.log` beside the log."""
        if self.proc is not None and self.proc.poll() is None and self.notes is not None:
            self.notes.keep_reading(
                lambda argv, fds: self.lab.popen(self.host, argv, self.dir / "notify.log", pass_fds=fds), self.proc.pid)

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None, tree: Path | None = None) -> Iked:
        """Start the daemon from this repository, or from the source tree `tree` (a benchmark's other
        side), checked to be the one Python imports."""
        if tree is not None:
            # PYTHONSAFEPATH: `python -m` would put the working directory (this tree) first on sys.path;
            # a daemon's workers inherit both
            env = {**(env or {}), "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
            src = subprocess.run([sys.executable, "-c", "import core_ike; print(core_ike.__file__)"],
                                 capture_output=True, text=True, env={**os.environ, **env}, check=True).stdout.strip()
            if not src.startswith(str(tree)):
                raise IkedError(f"{self.name} would load {src}, not the tree {tree}")
        if self.notes is not None:
            self.notes.close()
        self.notes = Notifications(self.dir / "notify.sock")
        env = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {}), **self.notes.env}
        self.proc = self.lab.popen(self.host, [sys.executable, "-m", self.module, "-c", str(self.conf_path)],
                                   self.log_path, env=env)
        self.notes.watch(self.proc)
        try:
            self.notes.wait("READY=1", timeout, what=self.name)
        except (ProcessExited, TimeoutError) as e:
            raise IkedError(f"{self.name} did not start: {e}\n{self.log_tail()}") from e
        return self

    def wait_state(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """``check()`` until it returns a truthy value, again after each line the daemon logs;
        IkedError when the daemon exits first, TimeoutError after `timeout` s."""
        try:
            return wait_files(check, timeout, [self.log_path], what=what,
                              procs=[self.proc] if self.proc is not None else [])
        except ProcessExited as e:
            raise IkedError(f"{e}\n{self.log_tail()}") from e

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> None:
        """Until the log holds `text` (at least `count` times)."""
        self.wait_state(lambda: self.log_text().count(text) >= count, timeout, f"{text!r} in {self.name}'s log")

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP, then wait for the daemon's READY=1 after its RELOADING=1 (sd_notify): the reload is
        done and its log lines are written."""
        assert self.notes is not None
        since = self.notes.mark()
        self.signal(signal.SIGHUP)
        after = self.notes.wait("RELOADING=1", timeout, since, what=self.name)
        self.notes.wait("READY=1", timeout, after, what=self.name)

    def ctl(self, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        return call(self.ctl_path, req, timeout)

    def up(self, conn: str, child: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        r = self.ctl({"cmd": "up", "conn": conn, "child": child, "timeout": timeout}, timeout=timeout + 5)
        if not r.get("ok"):
            raise IkedError(f"up {conn}: {r.get('error')}\n{self.log_tail()}")
        return r

    def status(self) -> dict[str, Any]:
        """The mediation daemons' `status` command."""
        r = self.ctl({"cmd": "status"})
        if not r.get("ok"):
            raise IkedError(f"status: {r.get('error')}")
        return r

    def list_sas(self) -> list[dict[str, Any]]:
        sas: list[dict[str, Any]] = self.ctl({"cmd": "list"})["sas"]
        return sas

    def wait_sas(self, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """``list`` until ``pred(sas)`` holds, checked again at each line the daemon logs; those SAs."""
        def check() -> tuple[list[dict[str, Any]]] | None:
            sas = self.list_sas()
            return (sas,) if pred(sas) else None  # a tuple: an empty list may be the awaited state

        return self.wait_state(check, timeout, f"{self.name} SA state")[0]

    def down_all(self) -> None:
        """``down`` every IKE_SA (the daemon DELETEs them; wait for :meth:`list_sas` to be empty)."""
        for sa in self.list_sas():
            self.ctl({"cmd": "down", "ike": sa["uniqueid"]})

    def wait_peers(self, identities: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The mediation server's ``status`` peers, once every one of ``identities`` is registered."""
        want = set(identities)

        def check() -> tuple[list[dict[str, Any]]] | None:
            peers: list[dict[str, Any]] = self.status()["peers"]
            return (peers,) if want <= {p["identity"] for p in peers} else None

        return self.wait_state(check, timeout, f"{sorted(want)} registered at {self.name}")[0]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout: float = 3.0) -> int | None:
        """SIGTERM (the daemon DELETEs its SAs first), SIGKILL after `timeout` s; returns the exit status."""
        rc = None
        if self.proc is not None:
            rc = self.lab.stop(self.proc, timeout)
            self.proc = None
        if self.notes is not None:
            self.notes.close()  # its lines stay (STOPPING=1)
        return rc

    def write_config(self, toml: str) -> None:
        """Replace the configuration file (then reload with SIGHUP or `reload`)."""
        self.conf_path.write_text(toml.replace("@CTL@", self.ctl_path).replace("@DIR@", str(self.dir)))

    def signal(self, sig: int) -> None:
        """Send `sig` to the daemon itself (not its `ip netns exec` parent's process group)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
