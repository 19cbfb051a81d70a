"""A throwaway redis-server on a free loopback port, without persistence: the cluster's engine for the
tests and benchmarks that run the cluster layer outside network namespaces."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import time
from pathlib import Path


class RedisProcess:
    def __init__(self, base: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        # redis-server reports its readiness as a systemd service does (sd_notify(3) READY=1 once it
        # accepts connections, with `--supervised systemd`): wait_ready() reads that
        self._notify_path = base / "redis-notify.sock"
        self._notify: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self._notify is None:
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._notify.bind(str(self._notify_path))
            self._notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # what an earlier run sent, unread: not this run's readiness
                self._notify.recv(4096)
        env = {**os.environ, "NOTIFY_SOCKET": str(self._notify_path)}
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", str(self.base), "--supervised", "systemd"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until redis-server notifies READY=1 (it accepts connections); RuntimeError if it exits first or
        `timeout` passes."""
        assert self.proc is not None and self._notify is not None, "start() first"
        notify = self._notify.fileno()
        pidfd = os.pidfd_open(self.proc.pid)  # readable once redis-server has exited
        try:
            deadline = time.monotonic() + timeout
            while True:
                ready, _, _ = select.select([notify, pidfd], [], [], max(0.0, deadline - time.monotonic()))
                if notify in ready:
                    with contextlib.suppress(BlockingIOError):
                        if "READY=1" in self._notify.recv(4096).decode(errors="replace").splitlines():
                            return
                elif pidfd in ready:
                    raise RuntimeError(f"redis-server exited with {self.proc.wait()} before it was ready")
                elif not ready:
                    raise RuntimeError(f"redis-server did not report READY=1 within {timeout} s")
        finally:
            os.close(pidfd)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """Kill the server and close the notification socket."""
        self.kill()
        if self._notify is not None:
            self._notify.close()
            self._notify = None
            self._notify_path.unlink(missing_ok=True)
