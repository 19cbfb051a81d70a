#!/usr/bin/env python3
"""Which engine carries the cluster's forwarding: PostgreSQL LISTEN/NOTIFY, NATS or Redis pub/sub.

Each engine runs as a private process on 127.0.0.1 with its Debian package's defaults (PostgreSQL 15
from a fresh initdb, nats-server 2.9, redis-server 7.0 without persistence). Two figures per engine:

- forwarding: "server 1" publishes an ME_CONNECT-sized message (256 bytes) on server 2's channel; a
  second process ("server 2") receives it and publishes it back on server 1's channel, the path of an
  ME_CONNECT to a peer at another server and of its answer. One message at a time; the figure is the
  round trip (request and answer) in ms;
- failover: the engine process is killed (SIGKILL) and started again at once; the figure is the time
  from the kill until a round trip works again, both "servers" reconnecting by themselves (a retry
  every 50 ms; NATS with its client's own reconnect at the same interval).

Engines alternate within each round (interleave). Clients: psycopg 3 (async), nats-py, redis-py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import results_io

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ENGINES = ["postgresql", "nats", "redis"]
PAYLOAD = 256  # an ME_CONNECT with ID_PEER, a nonce, 4 endpoints and its routing identity
RETRY = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ====================================================================== engine processes
class Engine:
    def __init__(self, kind: str, base: Path) -> None:
        self.kind, self.base, self.port = kind, base, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        if kind == "postgresql":
            pw = pwd.getpwnam("postgres")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            self.data = base / "pg"
            os.chown(base, self.uid, self.gid)
            subprocess.run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                            "-E", "UTF8", "--locale=C"], check=True, capture_output=True, user=self.uid,
                           group=self.gid)

    @property
    def url(self) -> str:
        return {"postgresql": f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                "nats": f"nats://127.0.0.1:{self.port}", "redis": f"redis://127.0.0.1:{self.port}"}[self.kind]

    def start(self) -> None:
        if self.kind == "postgresql":
            cmd = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.base),
                   "-c", "listen_addresses=127.0.0.1"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         user=self.uid, group=self.gid)
        elif self.kind == "nats":
            self.proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                                          "--save", "", "--appendonly", "no", "--dir", str(self.base)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


# ====================================================================== clients (one per "server")
class Bus:
    """Publish on a channel; receive a channel's messages through `on_message`; reconnect forever."""

    def __init__(self, kind: str, url: str, listen: str, on_message: Callable[[bytes], None]) -> None:
        self.kind, self.url, self.listen, self.on_message = kind, url, listen, on_message
        self.pub: Any = None
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        if self.kind == "nats":
            import nats

            async def cb(msg: Any) -> None:
                self.on_message(msg.data)

            async def reconnected() -> None:
                self.subscribed.set()

            self.pub = await nats.connect(servers=[self.url], reconnect_time_wait=RETRY,
                                          max_reconnect_attempts=-1, allow_reconnect=True,
                                          reconnected_cb=reconnected, connect_timeout=1)
            await self.pub.subscribe(self.listen, cb=cb)
            await self.pub.flush()
            self.subscribed.set()
            return
        self._task = asyncio.create_task(self._listen_loop())
        await self.subscribed.wait()

    async def _listen_loop(self) -> None:
        while True:
            try:
                if self.kind == "redis":
                    import redis.asyncio as aioredis

                    r = aioredis.Redis.from_url(self.url, socket_connect_timeout=1)
                    ps = r.pubsub()
                    await ps.subscribe(self.listen)
                    self.subscribed.set()
                    while True:
                        m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if m is not None:
                            self.on_message(m["data"])
                else:
                    import psycopg

                    async with await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                     connect_timeout=1) as conn:
                        await conn.execute(f"LISTEN {self.listen}")
                        self.subscribed.set()
                        async for n in conn.notifies():
                            self.on_message(n.payload.encode())
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the engine is down: retry
                self.subscribed.clear()
                await asyncio.sleep(RETRY)

    async def publish(self, channel: str, data: bytes) -> None:
        if self.kind == "nats":
            if self.pub is None:  # a probe: one connection, no reconnecting
                import nats

                self.pub = await nats.connect(servers=[self.url], allow_reconnect=False, connect_timeout=1)
            await self.pub.publish(channel, data)
            return
        if self.pub is None:
            if self.kind == "redis":
                import redis.asyncio as aioredis

                self.pub = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
            else:
                import psycopg

                self.pub = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=1)
        try:
            if self.kind == "redis":
                await self.pub.publish(channel, data)
            else:
                await self.pub.execute("SELECT pg_notify(%s, %s)", (channel, data.decode()))
        except Exception:
            with contextlib.suppress(Exception):
                await self.pub.close() if self.kind == "postgresql" else await self.pub.aclose()
            self.pub = None
            raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.pub is not None:
            with contextlib.suppress(Exception):
                if self.kind == "nats":
                    await self.pub.close()
                elif self.kind == "redis":
                    await self.pub.aclose()
                else:
                    await self.pub.close()


async def echo_main(kind: str, url: str) -> None:
    """ "Server 2": every message on to2 goes back on to1."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    bus = Bus(kind, url, "to2", queue.put_nowait)
    await bus.start()
    print("ready", flush=True)
    while True:
        data = await queue.get()
        while True:
            try:
                await bus.publish("to1", data)
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(RETRY)


# ====================================================================== measurements
class Pair:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.waiting: dict[bytes, asyncio.Future[None]] = {}
        self.bus = Bus(engine.kind, engine.url, "to1", self._got)
        self.echo: asyncio.subprocess.Process | None = None

    def _got(self, data: bytes) -> None:
        fut = self.waiting.pop(data[:12], None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def __aenter__(self) -> Pair:
        self.echo = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--echo", self.engine.kind, self.engine.url, stdout=subprocess.PIPE)
        assert self.echo.stdout is not None
        line = await asyncio.wait_for(self.echo.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"{self.engine.kind}: the echo process did not start")
        await self.bus.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.close()
        if self.echo is not None:
            self.echo.kill()
            await self.echo.wait()

    async def round_trip(self, n: int, timeout: float) -> float:
        tag = f"{n:012d}".encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[tag] = fut
        t0 = time.perf_counter()
        await self.bus.publish("to2", tag + b"x" * (PAYLOAD - len(tag)))
        await asyncio.wait_for(fut, timeout)
        return (time.perf_counter() - t0) * 1000


async def _wait_up(kind: str, url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        bus = Bus(kind, url, "up", lambda _d: None)
        try:
            await asyncio.wait_for(bus.publish("up", b"x"), 1)
            await bus.close()
            return
        except Exception:  # noqa: BLE001
            await bus.close()
            await asyncio.sleep(RETRY)
    raise RuntimeError(f"{kind} did not start")


async def measure(kind: str, base: Path, messages: int, failovers: int) -> tuple[list[float], list[float]]:
    engine = Engine(kind, base)
    engine.start()
    try:
        await _wait_up(kind, engine.url, time.monotonic() + 60)
        async with Pair(engine) as pair:
            for i in range(20):  # warm-up
                await pair.round_trip(i, 10)
            lat = [await pair.round_trip(1000 + i, 10) for i in range(messages)]
            fo = []
            seq = 10**6
            for _ in range(failovers):
                t_kill = time.perf_counter()
                engine.kill()
                engine.start()
                while True:
                    seq += 1
                    try:
                        await pair.round_trip(seq, 0.5)
                        break
                    except Exception:  # noqa: BLE001 - not yet
                        await asyncio.sleep(RETRY)
                    if time.perf_counter() - t_kill > 120:
                        raise RuntimeError(f"{kind}: no forwarding 120 s after the restart")
                fo.append((time.perf_counter() - t_kill) * 1000)
        return lat, fo
    finally:
        engine.kill()


async def main_async(args: argparse.Namespace) -> None:
    rounds = results_io.rounds_of(args)
    messages = 50 if args.quick else args.messages
    failovers = 1 if args.quick else 2
    header = results_io.start_header()
    lat: dict[str, list[float]] = {k: [] for k in ENGINES}
    fo: dict[str, list[float]] = {k: [] for k in ENGINES}
    for r, kind in results_io.interleave(rounds, ENGINES):
        base = Path(tempfile.mkdtemp(prefix=f"cluster-engine-{kind}-"))
        try:
            a, b = await measure(kind, base, messages, failovers)
            lat[kind] += a
            fo[kind] += b
            print(f"round {r} {kind}: median {sorted(a)[len(a) // 2]:.3f} ms, failover {b}", flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    figures = []
    for kind in ENGINES:
        figures.append(results_io.figure(
            f"forward_rtt_{kind}", f"{kind}: ME_CONNECT to server 2 and its answer back (round trip)",
            results_io.sample(lat[kind], "ms"), readme=False,
            differences=["engine on 127.0.0.1, both servers on this machine",
                         "PostgreSQL: NOTIFY via SELECT pg_notify in autocommit, fsync on (its default)"
                         if kind == "postgresql" else "no persistence, Debian defaults"]))
        figures.append(results_io.figure(
            f"failover_{kind}", f"{kind}: engine killed and restarted until a round trip works again",
            results_io.sample(fo[kind], "ms"), readme=False,
            differences=["includes the engine's own start; clients retry every 50 ms"]))
    notes = [f"{messages} round trips per engine per round, one at a time, {PAYLOAD}-byte payload; "
             f"{failovers} kill/restart per engine per round", "engines alternate within each round"]
    results_io.write_results(args.out, "cluster_engine", results_io.finish_header(header, args.quick, rounds),
                             figures, notes=notes)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--echo":
        asyncio.run(echo_main(sys.argv[2], sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results_io.add_args(ap, rounds=3)
    ap.add_argument("--messages", type=int, default=1000)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
