"""Run iked as a child process and wait for what it reports to its service manager (sd_notify, the
datagrams a systemd Type=notify-reload unit reads: docs/operations.md), not for files to appear."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
