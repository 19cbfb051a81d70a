"""iked as several worker processes (`[daemon] workers`; docs/operations.md, "Workers").

The supervisor (the process the user started) opens every IKE socket: per (address, port) one
SO_REUSEPORT group of three sockets per worker, in worker order, with the classic BPF program of
core_ike/io/transport.py that steers each datagram by IKE SPI (ESP by its SPI) to the worker owning
the IKE_SA. It then starts the workers (`python -m core_ike.daemon.workers`, each handed its own
sockets and a spec on stdin), keeps every socket open so the group's order never changes, restarts a
worker that dies, forwards SIGHUP and stops them on SIGTERM. Each worker is an iked runtime with its own
engine: its SPIs carry its index in their first octet, its unique IDs are index + 1 + k * workers, and
its cookie secret comes from a seed all workers share (any worker verifies any COOKIE; RFC 7296 2.6).

For `ikectl` the supervisor is one daemon: it serves the configured control socket and forwards each
request to the workers' private ones (CONTROL.wN): `list`, `stats` and `conns` are merged, `up` goes to
worker 0 (the one that initiates: its SPIs bring the answers back to it), `down` / `rekey` by unique id to
the worker that owns that id, by name to all, `reload` and `loglevel` to all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import LocalError
from ..io.transport import open_group

log = logging.getLogger("core_ike.daemon")
Addr = tuple[str, int]
RESTART_DELAY = 1.0  # seconds before a worker that died is started again (no busy loop of crashes)


def resolve_workers(value: int) -> int:
    """`[daemon] workers`: 0 ("auto") = the CPUs this process may run on."""
    if value:
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class WorkerSpec:
    """What a worker needs from its supervisor (sent as JSON on the worker's stdin)."""

    index: int
    count: int
    cookie_seed: bytes
    groups: dict[Addr, list[int]]  # its sockets (file descriptors) per (address, port)

    def control_path(self, control: str) -> str:
        return worker_control(control, self.index)

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "count": self.count, "cookie_seed": self.cookie_seed.hex(),
                           "groups": [[a, p, fds] for (a, p), fds in self.groups.items()]})

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        d = json.loads(text)
        return cls(int(d["index"]), int(d["count"]), bytes.fromhex(d["cookie_seed"]),
                   {(str(a), int(p)): [int(f) for f in fds] for a, p, fds in d["groups"]})

    def sockets(self) -> dict[Addr, list[socket.socket]]:
        return {key: [socket.socket(fileno=fd) for fd in fds] for key, fds in self.groups.items()}


def worker_control(control: str, index: int) -> str:
    return f"{control}.w{index}"


def check_workers(prog: str, workers: int, dataplane: str, multi: bool) -> None:
    """Start-up errors of `[daemon] workers` (LocalError, one line)."""
    if workers == 1:
        return
    if not multi:
        raise LocalError(f"[daemon] workers = {workers}: {prog} runs as one process (all its IKE_SAs share "
                         f"its state: the peer registry, mediation attempts); remove the key or set it to 1")
    if dataplane == "userspace" or (dataplane == "auto" and not _kernel_esp()):
        raise LocalError(f"[daemon] workers = {workers} needs dataplane = \"none\" or \"xfrm\": the userspace "
                         f"data plane is one TUN device served by one process (docs/operations.md, \"Workers\")")


def _kernel_esp() -> bool:
    from ..io.xfrm import kernel_supports_esp

    return bool(kernel_supports_esp())


# ---------------------------------------------------------------------------------------- supervisor


class Supervisor:
    """Starts and watches the workers, serves the control socket for all of them."""

    def __init__(self, prog: str, config_path: str, cfg: Any, workers: int, log_level: str | None = None) -> None:
        self.prog = prog
        self.config_path = config_path
        self.cfg = cfg
        self.n = workers
        self.log_level = log_level
        self.groups: dict[Addr, list[socket.socket]] = {}
        self.seed = os.urandom(32)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.stopping = False
        self.started_at = time.monotonic()
        self.restarts = 0

    # ------------------------------------------------------------------ sockets and processes
    def open_sockets(self) -> None:
        st = self.cfg.settings
        from ..io.transport import local_addresses

        try:
            for addr in st.listen or local_addresses():
                for port in (st.port, st.natt_port):
                    g = open_group(addr, port, self.n, port == st.natt_port, st.receive_buffer)
                    self.groups[(addr, int(g[0].getsockname()[1]))] = g
        except LocalError:
            self.close_sockets()
            raise
        for addr, port in self.groups:
            log.info("listening on %s[%d] (%d workers)", addr, port, self.n)

    def close_sockets(self) -> None:
        for g in self.groups.values():
            for s in g:
                s.close()
        self.groups.clear()

    def spec(self, k: int) -> WorkerSpec:
        from ..io.transport import QUEUES

        return WorkerSpec(k, self.n, self.seed, {key: [s.fileno() for s in g[QUEUES * k: QUEUES * (k + 1)]]
                                                 for key, g in self.groups.items()})

    def start_worker(self, k: int) -> None:
        spec = self.spec(k)
        fds = [fd for fs in spec.groups.values() for fd in fs]
        cmd = [sys.executable, "-m", "core_ike.daemon.workers", "-c", self.config_path]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        env = {k2: v for k2, v in os.environ.items() if k2 != "NOTIFY_SOCKET"}  # readiness is ours to report
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=fds, env=env)
        assert p.stdin is not None
        p.stdin.write(spec.to_json().encode())
        p.stdin.close()
        self.procs[k] = p
        log.info("worker %d started (pid %d)", k, p.pid)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every worker serves its control socket (it has started its runtime), or one exits."""
        from .control import control_socket_in_use

        deadline = time.monotonic() + timeout
        pending = set(range(self.n))
        while pending:
            for k in list(pending):
                p = self.procs[k]
                if p is not None and p.poll() is not None:
                    raise LocalError(f"worker {k} exited during start-up (status {p.returncode}); see its log")
                if control_socket_in_use(worker_control(self.cfg.settings.control, k)):
                    pending.discard(k)
            if time.monotonic() > deadline:
                raise LocalError(f"workers {sorted(pending)} not ready after {timeout:g} s")
            if pending:
                await asyncio.sleep(0.05)  # polling the workers' control sockets, with the deadline above

    async def watch(self) -> None:
        """Restart a worker that exits while we run (its sockets stay in the group meanwhile: what
        arrives for it waits in its queues)."""
        while not self.stopping:
            for k, p in enumerate(self.procs):
                if p is not None and p.poll() is not None and not self.stopping:
                    log.error("worker %d (pid %d) exited with status %s; restarting it", k, p.pid, p.returncode)
                    self.restarts += 1
                    await asyncio.sleep(RESTART_DELAY)
                    if not self.stopping:
                        self.start_worker(k)
            await asyncio.sleep(0.5)  # child exits are polled; SIGCHLD handling would race the stop path

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    async def stop_all(self, timeout: float = 10.0) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            while p is not None and p.poll() is None:
                if time.monotonic() > deadline:
                    log.warning("worker pid %d did not stop within %g s; killing it", p.pid, timeout)
                    p.kill()
                    p.wait()
                    break
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ control
    async def ask(self, k: int, req: dict[str, Any], timeout: float = 70.0) -> dict[str, Any]:
        path = worker_control(self.cfg.settings.control, k)
        try:
            # a listing of many IKE_SAs is one long line: no 64 KiB limit (asyncio's default)
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=1 << 28), 5.0)
        except (OSError, TimeoutError) as e:
            return {"ok": False, "error": f"worker {k} does not answer ({e})"}
        try:
            writer.write(json.dumps(req).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), timeout)
        except (OSError, TimeoutError, ValueError) as e:  # ValueError: asyncio.LimitOverrunError
            return {"ok": False, "error": f"worker {k} did not answer ({e or 'timeout'})"}
        finally:
            writer.close()
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError:
            return {"ok": False, "error": f"worker {k} sent no reply"}
        return reply

    async def ask_all(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.ask(k, req) for k in range(self.n))))

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "list":
            replies = await self.ask_all(req)
            bad = [r for r in replies if not r.get("ok")]
            if bad:
                return bad[0]
            sas = sorted((sa for r in replies for sa in r.get("sas", [])), key=lambda s: int(s.get("uniqueid", 0)))
            return {"ok": True, "sas": sas}
        if cmd == "stats":
            replies = await self.ask_all(req)
            bad = [r for r in replies if not r.get("ok")]
            if bad:
                return bad[0]
            st = merge_stats([r["stats"] for r in replies])
            st.update({"daemon": self.prog, "uptime": round(time.monotonic() - self.started_at, 1),
                       "workers": self.n, "worker-restarts": self.restarts,
                       "connections": replies[0]["stats"].get("connections", 0)})
            return {"ok": True, "stats": st}
        if cmd in ("up", "conns") or cmd not in ("down", "rekey", "down-child", "rekey-child", "reload", "loglevel"):
            return await self.ask(0, req)
        owner = self._owner(req)
        if owner is not None:
            return await self.ask(owner, req)
        replies = await self.ask_all(req)
        if cmd in ("reload", "loglevel"):  # the same configuration in each: one answer, or the first error
            return next((r for r in replies if not r.get("ok")), replies[0])
        return combine(replies)

    def _owner(self, req: dict[str, Any]) -> int | None:
        """The worker whose unique IDs include the one named (EngineConfig.unique_id_stride)."""
        if req.get("cmd") in ("reload", "loglevel"):
            return None
        for key in ("ike", "child"):
            v = str(req.get(key) or "")
            if v.isdigit() and int(v) > 0:
                return (int(v) - 1) % self.n
        return None

    def stats_now(self) -> dict[str, Any]:
        """The merged stats for the metrics endpoint (called in the event loop's thread: the workers are
        asked over their control sockets directly)."""
        from .ctl import call

        parts: list[dict[str, Any]] = []
        for k in range(self.n):
            try:
                r = call(worker_control(self.cfg.settings.control, k), {"cmd": "stats"}, timeout=2.0)
            except (OSError, ValueError):
                continue
            if r.get("ok"):
                parts.append(r["stats"])
        st = merge_stats(parts)
        st.update({"daemon": self.prog, "uptime": round(time.monotonic() - self.started_at, 1)})
        return st

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        from .control import ControlServer
        from .lifecycle import sd_notify

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.signal_all(signal.SIGHUP))
        for k in range(self.n):
            self.start_worker(k)
        server = ControlServer(self.cfg.settings.control, self.handle)
        metrics: Any = None
        try:
            await self.wait_ready()
            await server.start()
            if self.cfg.settings.metrics:
                from .metrics import MetricsServer

                metrics = MetricsServer(self.cfg.settings.metrics, self.stats_now)
                await metrics.start()
            log.info("%s started with %d workers", self.prog, self.n)
            sd_notify("READY=1", f"STATUS={self.n} workers")
            watcher = asyncio.ensure_future(self.watch())
            await stop.wait()
            sd_notify("STOPPING=1")
            self.stopping = True
            watcher.cancel()
        finally:
            server.close()
            if metrics is not None:
                metrics.close()
            await self.stop_all()
            self.close_sockets()
        log.info("%s stopped", self.prog)


def merge_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the workers' `stats`: numbers add up, nested tables merge key by key, text keeps the first."""
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            if isinstance(v, bool) or not isinstance(v, int | float | dict):
                out.setdefault(k, v)
            elif isinstance(v, dict):
                out[k] = merge_stats([out.get(k, {}), v])
            else:
                out[k] = out.get(k, 0) + v
    return out


def combine(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer from every worker's: success when one of them acted (each knows only its IKE_SAs)."""
    ok = [r for r in replies if r.get("ok")]
    if not ok:
        errors = [str(r.get("error", "")) for r in replies]
        real = [e for e in errors if not e.startswith(("no IKE_SA", "no CHILD_SA"))]
        return {"ok": False, "error": (real or errors or ["no worker answered"])[0]}
    merged: dict[str, Any] = {"ok": True}
    for r in ok:
        for k, v in r.items():
            if isinstance(v, list):
                merged[k] = [*merged.get(k, []), *v]
            else:
                merged.setdefault(k, v)
    return merged


def run_supervisor(prog: str, config_path: str, cfg: Any, workers: int, log_level: str | None) -> int:
    """iked with `workers` > 1 (after the configuration was checked): exit status as run_main's."""
    from .startup import run_daemon

    sup = Supervisor(prog, config_path, cfg, workers, log_level)
    return run_daemon(prog, sup.run, sup.close_sockets, start=sup.open_sockets, event_loop=cfg.settings.event_loop)


# ---------------------------------------------------------------------------------------- worker


CURRENT: WorkerSpec | None = None  # set in a worker process: the runtime takes its sockets, tag and seed


def worker_main(argv: list[str] | None = None) -> int:
    """A worker: iked's own entry point (the same configuration sources and checks), run on the sockets
    and with the spec its supervisor gave it on stdin."""
    import argparse

    from core_ike.daemon import workers as registered

    ap = argparse.ArgumentParser(prog="iked-worker")
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--log-level")
    args = ap.parse_args(argv)
    # run as `python -m`, this module is __main__: the runtime reads the spec from the imported one
    registered.CURRENT = registered.WorkerSpec.from_json(sys.stdin.read())
    from core_ike.daemon.main import main

    return main(["-c", args.config, *(["--log-level", args.log_level] if args.log_level else [])])


if __name__ == "__main__":
    sys.exit(worker_main())
