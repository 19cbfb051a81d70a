#!/usr/bin/env python3
"""How many registered peers one mediation server holds: memory per peer and CPU on keepalives.

Everything runs in a network namespace of its own (``ip netns``), so all traffic stays on its loopback:

- our ``mediation_server`` (its own process) listens on 127.0.0.1 [500, 4500] with a ``[mediation]``
  connection (remote id ``%any``) and one PSK without identities;
- ``--procs`` load-generator processes, each a sans-IO :class:`core_ike.ike.engine.Engine` with the
  :class:`core_ike.me.client.MediationClient` extension (N(ME_MEDIATION) in IKE_SA_INIT, srflx request in
  IKE_AUTH) behind a :class:`core_ike.io.transport.UdpTransport` bound to ``--addrs`` loopback addresses
  127.<1+proc>.x.y. Each simulated peer has its own identity (``peer<proc>-<i>@scale``), IKE SPIs and
  mediation IKE_SA; at most ``--window`` registrations per process are in flight.

Stages (``--peers 10000,100000``): register up to the count, then measure the server's VmRSS
(``/proc/<pid>/status``) and, over ``--measure`` seconds each, its CPU (``/proc/<pid>/stat``) while idle,
while every peer sends a NAT keepalive every ``--keepalive`` s (1 byte to port 4500, what a peer behind a
NAT sends) and while every peer sends a DPD (empty INFORMATIONAL, answered by the server) every ``--dpd`` s.
``--max-seconds`` caps the registration time of a stage; a capped stage is measured at what it reached and the
report extrapolates to the target, labelled as such.

    bench/registry_scale.py                                  # 10k and 100k peers, 3 rounds
    bench/registry_scale.py --quick                          # smoke: 200 peers, 1 round
    bench/registry_scale.py --out bench/results/registry_scale.txt   # and registry_scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = results_io.enter_repo(__file__)

SERVER = "127.0.0.1"
PSK = "registry-scale-shared-secret-0123456789"
TICK = 0.05  # keepalive / DPD pacing granularity in the generators


def server_toml(ctl: str, log_level: str, unique: str) -> str:
    return f"""[daemon]
listen = ["{SERVER}"]
control = "{ctl}"
dataplane = "none"
log_level = "{log_level}"
cookie_threshold = 1000000

[mediation]
policy = "all"

[[secrets.ike]]
secret = "{PSK}"

[connections.medsrv]
local_addrs = ["{SERVER}"]
mediation = true
local = {{ auth = "psk", id = "medsrv@scale" }}
remote = {{ auth = "psk", id = "%any" }}
unique = "{unique}"
"""


# ====================================================================== load generator (child process)
class Generator:
    """Many simulated mediation clients in one engine; commands from the parent over a Pipe."""

    def __init__(self, idx: int, n_addrs: int, window: int) -> None:
        from core_ike.ike.creds import Credentials
        from core_ike.ike.engine import Engine, EngineConfig
        from core_ike.io.transport import UdpTransport
        from core_ike.me.client import MediationClient, MediationClientConfig

        self.idx, self.window = idx, window
        self.addrs = [f"127.{1 + idx}.{k // 250}.{k % 250 + 1}" for k in range(n_addrs)]
        creds = Credentials()
        creds.add_psk(PSK)
        from fragment_flood import rng_kw

        self.engine = Engine([], creds, EngineConfig(), **rng_kw(Engine))
        # load-generator shortcuts around O(n)-per-SA scans of the engine (fine for a few SAs, quadratic for
        # 50k): every simulated peer has its own config, so each SA is a first contact
        self.engine.is_first_contact = lambda sa: True  # type: ignore[method-assign]
        self.by_id: dict[int, Any] = {}  # unique id -> IkeSa (Engine.find_sa scans)
        self.client = MediationClient(self.engine, MediationClientConfig(srflx_always=True,
                                                                         host_addresses=list))
        self.transport = UdpTransport(self.engine, self.addrs, [500, 4500], on_event=self.on_event)
        self.started = 0
        self.inflight = 0
        self.established: list[Any] = []  # IkeSa objects of registered peers
        self.failed = 0
        self.target = 0
        self.reached: asyncio.Event | None = None
        self.keepalive = 0.0
        self.dpd = 0.0
        self.sent_keepalives = 0
        self.sent_dpds = 0

    def start_one(self, now: float) -> None:
        from core_ike.ike.config import AuthConfig, IkeConfig
        from core_ike.ike.identity import ANY, Identity
        from core_ike.ike.tasks.ike_auth import IkeAuth
        from core_ike.ike.tasks.ike_init import IkeInit

        i = self.started
        cfg = IkeConfig(name=f"med{self.idx}-{i}", local_addrs=[self.addrs[i % len(self.addrs)]],
                        remote_addrs=[SERVER], mediation=True, proposals="aes128gcm16-prfsha256-x25519",
                        local=AuthConfig("psk", Identity.parse(f"peer{self.idx}-{i}@scale")),
                        remote=AuthConfig("psk", ANY), rekey_time=0.0, keepalive_interval=0.0,
                        unique="no")  # "replace" scans every SA at each establishment
        # what Engine.initiate does, without its scan over every SA (O(n) per call at this scale)
        sa = self.engine.new_initiator(cfg)
        sa.queue.append(IkeInit())
        sa.queue.append(IkeAuth())
        self.by_id[sa.unique_id] = sa
        sa.initiate_next(now)
        self.started += 1
        self.inflight += 1

    def fill(self) -> None:
        now = time.monotonic()
        self.engine.now = now
        while self.inflight < self.window and self.started < self.target:
            self.start_one(now)

    def on_event(self, e: object) -> None:
        from core_ike.ike import events as ev

        if isinstance(e, ev.IkeSaEstablished):
            self.inflight -= 1
            sa = self.by_id.pop(e.unique_id, None)
            if sa is not None:
                self.established.append(sa)
        elif isinstance(e, ev.IkeSaFailed):
            self.by_id.pop(e.unique_id, None)
            self.inflight -= 1
            self.failed += 1
        else:
            return
        self.fill()
        if self.reached is not None and self.inflight == 0 and self.started >= self.target:
            self.reached.set()

    async def liveness(self) -> None:
        """Every peer: one NAT keepalive per `keepalive` s and/or one DPD per `dpd` s, spread evenly."""
        from core_ike.ike.tasks.informational import Dpd

        ka_pos = dpd_pos = 0
        ka_credit = dpd_credit = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            dt, last = now - last, now
            n = len(self.established)
            if not n:
                continue
            if self.keepalive > 0:
                ka_credit += n * dt / self.keepalive
                while ka_credit >= 1:
                    ka_credit -= 1
                    sa = self.established[ka_pos % n]
                    ka_pos += 1
                    s = self.transport.socket_for(sa.local)
                    if s is not None:
                        try:
                            s.sendto(b"\xff", sa.remote)
                            self.sent_keepalives += 1
                        except OSError:
                            pass
            if self.dpd > 0:
                self.engine.now = now
                dpd_credit += n * dt / self.dpd
                while dpd_credit >= 1:
                    dpd_credit -= 1
                    sa = self.established[dpd_pos % n]
                    dpd_pos += 1
                    if sa.outstanding is None:
                        sa.queue_task(Dpd(), now)
                        self.sent_dpds += 1
                self.transport.flush()

    async def run(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        self.transport.start(loop)
        live = loop.create_task(self.liveness())
        cmds: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: cmds.put_nowait(conn.recv()))
        try:
            while True:
                cmd = await cmds.get()
                if cmd["cmd"] == "register":
                    self.target = int(cmd["target"])
                    self.reached = asyncio.Event()
                    t0 = time.monotonic()
                    self.fill()
                    self.transport.flush()
                    capped = False
                    try:
                        await asyncio.wait_for(self.reached.wait(), float(cmd["max_seconds"]))
                    except TimeoutError:
                        capped = True
                        self.target = self.started  # stop starting new ones, let the in-flight finish
                        await asyncio.sleep(5.0)
                    conn.send({"established": len(self.established), "failed": self.failed,
                               "started": self.started, "seconds": time.monotonic() - t0, "capped": capped})
                elif cmd["cmd"] == "liveness":
                    self.keepalive, self.dpd = float(cmd["keepalive"]), float(cmd["dpd"])
                    self.sent_keepalives = self.sent_dpds = 0
                    conn.send({"ok": True})
                elif cmd["cmd"] == "counters":
                    conn.send({"keepalives": self.sent_keepalives, "dpds": self.sent_dpds,
                               "established": len(self.established), "failed": self.failed})
                elif cmd["cmd"] == "stop":
                    conn.send({"ok": True})
                    return
        finally:
            live.cancel()
            loop.remove_reader(conn.fileno())
            self.transport.close()


def generator_main(idx: int, n_addrs: int, window: int, conn: Connection) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    gen = Generator(idx, n_addrs, window)
    asyncio.run(gen.run(conn))


# ====================================================================== measurement (parent, inside the netns)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


@dataclass
class Stage:
    target: int
    established: int = 0
    failed: int = 0
    seconds: float = 0.0
    capped: bool = False
    rss_kib: int = 0
    cpu_idle: float = 0.0  # server CPU seconds per second
    cpu_keepalive: float = 0.0
    keepalive_rate: float = 0.0  # packets/s actually sent
    cpu_dpd: float = 0.0
    dpd_rate: float = 0.0
    reg_rate: float = 0.0  # registrations per second in this stage
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="regscale-"))
        self.ctl = str(self.dir / "ctl.sock")
        self.server: subprocess.Popen[bytes] | None = None
        self.gens: list[tuple[mp.Process, Connection]] = []

    def start_server(self) -> int:
        conf = self.dir / "server.toml"
        conf.write_text(server_toml(self.ctl, self.args.server_log_level, self.args.unique))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.server = subprocess.Popen([sys.executable, "-m", "mediation_server", "-c", str(conf)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.ctl):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mediation_server did not start:\n{(self.dir / 'server.log').read_text()}")
            time.sleep(0.05)
        time.sleep(0.3)
        return self.server.pid

    def ctl_cmd(self, req: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.ctl)
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        out: dict[str, Any] = json.loads(buf)
        return out

    def start_generators(self) -> None:
        ctx = mp.get_context("fork")
        for i in range(self.args.procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=generator_main, args=(i, self.args.addrs, self.args.window, child), daemon=True)
            p.start()
            self.gens.append((p, parent))

    def ask_all(self, req: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        for _, c in self.gens:
            c.send(req)
        out = []
        for p, c in self.gens:
            if not c.poll(timeout):
                raise RuntimeError(f"generator {p.pid} did not answer {req['cmd']}")
            out.append(c.recv())
        return out

    def cpu_window(self, pid: int, seconds: float) -> float:
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)

    def liveness(self, keepalive: float, dpd: float) -> None:
        self.ask_all({"cmd": "liveness", "keepalive": keepalive, "dpd": dpd}, 30)

    def sent(self) -> tuple[int, int]:
        rs = self.ask_all({"cmd": "counters"}, 30)
        return sum(r["keepalives"] for r in rs), sum(r["dpds"] for r in rs)

    def run(self) -> tuple[int, list[Stage]]:
        a = self.args
        pid = self.start_server()
        base = rss_kib(pid)
        spy = None
        if a.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-r", "50",
                                    "-p", str(pid), "-f", "raw", "-o", a.profile], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.start_generators()
        stages: list[Stage] = []
        prev = 0
        for target in a.peers:
            st = Stage(target)
            per = -(-target // a.procs)
            t0 = time.monotonic()
            rs = self.ask_all({"cmd": "register", "target": per, "max_seconds": a.max_seconds},
                              a.max_seconds + 60)
            st.seconds = time.monotonic() - t0
            if spy is not None:  # registrations only
                spy.send_signal(2)
                spy.wait(30)
                spy = None
            st.established = sum(r["established"] for r in rs)
            st.failed = sum(r["failed"] for r in rs)
            st.capped = any(r["capped"] for r in rs)
            st.reg_rate = (st.established - prev) / st.seconds if st.seconds > 0 else 0.0
            prev = st.established
            online = len(self.ctl_cmd({"cmd": "status"})["peers"])
            if online != st.established:
                st.notes.append(f"server lists {online} online peers, generators count {st.established}")
            time.sleep(1.0)
            st.rss_kib = rss_kib(pid)
            self.liveness(0, 0)
            st.cpu_idle = self.cpu_window(pid, a.measure)
            if a.keepalive > 0:
                self.liveness(a.keepalive, 0)
                time.sleep(TICK * 4)
                self.sent()  # reset is done by `liveness`; settle one tick
                k0 = self.sent()[0]
                t1 = time.monotonic()
                st.cpu_keepalive = self.cpu_window(pid, a.measure)
                st.keepalive_rate = (self.sent()[0] - k0) / (time.monotonic() - t1)
            if a.dpd > 0:
                self.liveness(0, a.dpd)
                time.sleep(TICK * 4)
                d0 = self.sent()[1]
                t1 = time.monotonic()
                st.cpu_dpd = self.cpu_window(pid, a.measure)
                st.dpd_rate = (self.sent()[1] - d0) / (time.monotonic() - t1)
            self.liveness(0, 0)
            stages.append(st)
            print(f"  stage {target}: {st.established} registered ({st.failed} failed) in {st.seconds:.1f} s, "
                  f"RSS {st.rss_kib / 1024:.1f} MiB", flush=True)
            if st.capped:
                break
        return base, stages

    def stop(self) -> None:
        for _, c in self.gens:
            with contextlib.suppress(OSError):
                c.send({"cmd": "stop"})
        for p, _ in self.gens:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def report(args: argparse.Namespace, base: int, stages: list[Stage], load: tuple[float, float],
           total: float) -> str:
    out = ["registry scale: registered peers held by one mediation_server (PSK, ME_MEDIATION + srflx request, "
           "mediation SAs on 127.0.0.1[4500] in a private netns)",
           f"{getattr(args, 'started_at', '')} (start)  {os.cpu_count()} cores shared by the server and {args.procs} "
           f"generator process(es); load average {load[0]:.2f} before, {load[1]:.2f} after (other jobs share the "
           f"machine); server log level {args.server_log_level}; window {args.window}/generator; "
           f"server unique = {args.unique}",
           f"server RSS before registrations: {base / 1024:.1f} MiB; CPU windows {args.measure:g} s; keepalive "
           f"every {args.keepalive:g} s per peer, DPD every {args.dpd:g} s per peer", "",
           f"{'peers':>8} {'failed':>6} {'reg/s':>7} {'RSS MiB':>8} {'KiB/peer':>9} {'cpu idle':>9} "
           f"{'ka pkt/s':>9} {'cpu ka':>7} {'dpd/s':>7} {'cpu dpd':>8}   (cpu = server CPU s per s)"]
    for s in stages:
        per = (s.rss_kib - base) / s.established if s.established else 0.0
        out.append(f"{s.established:>8} {s.failed:>6} {s.reg_rate:>7.0f} {s.rss_kib / 1024:>8.1f} {per:>9.2f} "
                   f"{s.cpu_idle:>9.3f} {s.keepalive_rate:>9.0f} {s.cpu_keepalive:>7.3f} {s.dpd_rate:>7.0f} "
                   f"{s.cpu_dpd:>8.3f}" + ("   (registration capped)" if s.capped else ""))
        out += [f"         {n}" for n in s.notes]
    if stages:
        last = stages[-1]
        per = (last.rss_kib - base) / last.established if last.established else 0.0
        for target in args.peers:
            if target > last.established and per > 0:
                est = (base + per * target) / 1024
                ka = (last.cpu_keepalive - last.cpu_idle) / last.established * target if last.established else 0
                out.append(f"EXTRAPOLATED (linear from {last.established} peers, not measured): {target} peers "
                           f"-> RSS about {est:.0f} MiB, keepalive CPU about {ka:.3f} s/s above idle, "
                           f"registration about {target / max(last.reg_rate, 1e-9):.0f} s at {last.reg_rate:.0f}/s")
    out.append(f"total {total:.1f} s")
    return "\n".join(out)


def differences(args: argparse.Namespace) -> list[str]:
    out = [f"server cookie_threshold raised to 1000000 (default 30): {args.procs} x {args.window} registrations "
           "in flight would otherwise each take a COOKIE round trip",
           f"{args.procs} load-generator process(es) share the {os.cpu_count()} cores with the server"]
    if args.server_log_level != "info":
        out.append(f"server log_level {args.server_log_level} (default info: a line per registration)")
    if args.unique != "replace":
        out.append(f"server connection unique = {args.unique} (default replace)")
    return out


def figures(args: argparse.Namespace, rounds: list[tuple[int, list[Stage]]]) -> list[dict[str, Any]]:
    figs = []
    top = max(args.peers)
    for target in args.peers:
        stages = [(base, st) for base, sts in rounds for st in sts if st.target == target and st.established]
        if not stages:
            continue
        per = [(st.rss_kib - base) / st.established for base, st in stages]
        capped = any(st.capped for _, st in stages)
        what = f"{target} registered peers" + (" (registration capped: fewer reached)" if capped else "")
        readme = target == top
        figs.append(results_io.figure(f"registry_{target}_kib_per_peer",
                                      f"mediation server memory per registered peer, {what}",
                                      results_io.sample(per, "KiB", 2), readme=readme, differences=differences(args)))
        figs.append(results_io.figure(f"registry_{target}_rss", f"mediation server RSS, {what}",
                                      results_io.sample([st.rss_kib / 1024 for _, st in stages], "MiB", 1),
                                      readme=False))
        prev = max((p for p in args.peers if p < target), default=0)
        figs.append(results_io.figure(f"registry_{target}_reg_rate",
                                      f"registrations per second into one mediation server, from {prev} to {what}",
                                      results_io.sample([st.reg_rate for _, st in stages], "/s", 0),
                                      better="higher", readme=readme, differences=differences(args)))
        if args.keepalive > 0:
            figs.append(results_io.figure(
                f"registry_{target}_cpu_keepalive",
                f"server CPU with a NAT keepalive per peer every {args.keepalive:g} s, {what}",
                results_io.sample([st.cpu_keepalive for _, st in stages], "CPU s/s", 3), readme=False))
        if args.dpd > 0:
            figs.append(results_io.figure(
                f"registry_{target}_cpu_dpd", f"server CPU with a DPD per peer every {args.dpd:g} s, {what}",
                results_io.sample([st.cpu_dpd for _, st in stages], "CPU s/s", 3), readme=False))
    return figs


def inner_main(args: argparse.Namespace) -> int:
    header = results_io.start_header([a for a in sys.argv[1:] if a != "--in-netns"], script="bench/registry_scale.py")
    n_rounds = results_io.rounds_of(args)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    rounds: list[tuple[int, list[Stage]]] = []
    texts = []
    for i in range(n_rounds):
        load0 = os.getloadavg()
        args.started_at = time.strftime("%Y-%m-%d %H:%M")
        started = time.monotonic()
        bench = Bench(args)
        try:
            base, stages = bench.run()
        finally:
            bench.stop()
        rounds.append((base, stages))
        texts.append(f"round {i + 1}: " + report(args, base, stages, (load0[0], os.getloadavg()[0]),
                                                  time.monotonic() - started))
    header = results_io.finish_header(header, args.quick, n_rounds)
    results_io.write_results(args.out, "registry_scale", header, figures(args, rounds), "\n\n".join(texts))
    return 0 if rounds and all(st.established > 0 for _, sts in rounds for st in sts) else 1


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--peers", type=lambda s: sorted(int(x) for x in s.split(",")),
                    help="registered-peer stages (default 10000,100000; 200 with --quick)")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--addrs", type=int, default=64, help="loopback source addresses per generator")
    ap.add_argument("--window", type=int, default=64, help="registrations in flight per generator")
    ap.add_argument("--keepalive", type=float, help="NAT keepalive interval per peer (0: skip; default 20, 2 --quick)")
    ap.add_argument("--dpd", type=float, help="DPD interval per peer (0: skip; default 60, 2 with --quick)")
    ap.add_argument("--measure", type=float, help="seconds per CPU window (default 10, 1 with --quick)")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="registration time cap per stage")
    ap.add_argument("--server-log-level", default="warning")
    ap.add_argument("--unique", default="replace",
                    help="the server connection's uniqueness policy (users' default: replace)")
    ap.add_argument("--profile", help="py-spy the server during the first registration stage (collapsed stacks)")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    results_io.add_args(ap, rounds=3)
    a = ap.parse_args(argv)
    a.peers = a.peers or ([200] if a.quick else [10000, 100000])
    for k, full, quick in (("keepalive", 20.0, 2.0), ("dpd", 60.0, 2.0), ("measure", 10.0, 1.0)):
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.in_netns:
        return inner_main(args)
    ns = f"regscale-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        argv2 = list(sys.argv[1:] if argv is None else argv)
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--in-netns", *argv2]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
