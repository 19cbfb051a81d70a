"""Run iked as a child process and wait for what it reports to its service manager (sd_notify, the
datagrams a systemd Type=notify-reload unit reads: docs/operations.md), not for files to appear."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core_ike.daemon.startup import EVENT_LOOP_ENV

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class IkedProcess:
    proc: subprocess.Popen[bytes]
    notify: socket.socket
    log: Path

    def wait_notification(self, want: str, timeout: float = 30.0) -> str:
        """Block until a notification holding the line `want` (e.g. "READY=1") arrives; the text of it."""
        self.notify.settimeout(timeout)
        while True:
            try:
                msg = self.notify.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"iked sent no {want} within {timeout} s:\n{self.log.read_text()}") from None
            if want in msg.splitlines():
                return msg


def notify_socket(where: Path) -> tuple[socket.socket, dict[str, str]]:
    """A service manager's notification socket in directory `where`, and the environment that names it
    to a daemon ($NOTIFY_SOCKET, sd_notify(3)) to add to the daemon's own."""
    path = where / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    s.bind(str(path))
    return s, {"NOTIFY_SOCKET": str(path)}


def wait_ready(proc: subprocess.Popen[Any], notify: socket.socket, timeout: float = 30.0,
               want: str = "READY=1") -> str:
    """Block until the daemon `proc` sends the line `want` on `notify` (the notification's text); an
    AssertionError with its output as soon as it exits instead, or when `timeout` passes."""
    pidfd = os.pidfd_open(proc.pid)  # readable once the process has exited
    try:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([notify, pidfd], [], [], max(0.0, deadline - time.monotonic()))
            if notify in ready:
                msg = notify.recv(4096).decode()
                if want in msg.splitlines():
                    return msg
            elif pidfd in ready:
                out, err = proc.communicate()
                raise AssertionError(f"exited with {proc.returncode} before {want}: {out or ''}{err or ''}")
            elif not ready:
                raise AssertionError(f"no {want} within {timeout} s")
    finally:
        os.close(pidfd)


@contextmanager
def iked(conf: Path, env: dict[str, str] | None = None) -> Iterator[IkedProcess]:
    """iked on `conf` (its working directory conf's, $IKEME_EVENT_LOOP only from `env`); yields once it reported READY=1, SIGTERMs it at the end
    (its exit status is left in ``proc.returncode``)."""
    work = conf.parent
    notify_path = work / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    full = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", EVENT_LOOP_ENV)}
    full.update(env or {})
    full["PYTHONPATH"] = str(ROOT)
    full["NOTIFY_SOCKET"] = str(notify_path)
    log = work / "iked.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "core_ike.daemon.main", "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, env=full, cwd=work)
    run = IkedProcess(proc, notify, log)
    try:
        run.wait_notification("READY=1")
        yield run
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        notify.close()
