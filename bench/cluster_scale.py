#!/usr/bin/env python3
"""The cluster layer at scale: three server processes on one redis-server, each holding a third of the
peers (bench/registry_scale.py measures the IKE side of a registration; this one what the cluster adds).

Each "server" is a process with the server's own Registry and cluster core (mediation_server/cluster/),
carried by RedisBus exactly as the daemon carries them; a registration is `Registry.update_sa_id` plus
the "up" it announces (`Cluster.register`: numbered and published by the engine's script), and each other server takes it in (`Cluster.receive`, then the callbacks waiting
for it, `Registry.online_elsewhere`). Figures:

- propagation: seconds until every server knows every peer (its own plus the others'), and so
  registrations per second per server;
- memory: each server's resident memory growth per peer it knows (its own and the others');
- forwarding: round trips server 1 -> server 2 -> server 1 of an ME_CONNECT-sized forwarded request
  (`Cluster.forward_connect`, answered the same way) while every peer is known: median and p99;
- failover: redis-server killed and restarted; seconds until every server knows every peer again
  (each server's paced sync of its peers to the others, `Cluster.start_sync`: this grows with the
  peers); and a server process killed (SIGKILL): seconds until the others have forgotten its peers
  (a PUBLISH to it reaches no subscriber, or the sweep finds its channel empty).

Each round runs at `--small` peers too, so that memory per peer is compared between the two sizes.
The resident memory mixes a server's own peers (a third) and the others' (two thirds); each round also
traces (tracemalloc, in this process) the bytes of one own peer's registry record and of one entry of
the others' presence, at 100000 of each, which splits the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import results_io  # noqa: E402
from scenarios.lab.redisproc import RedisProcess  # noqa: E402

NAMES = ["ms1", "ms2", "ms3"]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def server_proc(name: str, url: str, peers: int, total: int, conn: Connection) -> None:
    asyncio.run(_server(name, url, peers, total, conn))


async def _server(name: str, url: str, peers: int, total: int, conn: Connection) -> None:  # noqa: PLR0915 - one command loop
    from mediation_server.cluster.core import Cluster, ForwardedConnect, PeerElsewhere, SyncAsked, SyncChunk
    from mediation_server.cluster.redis_bus import RedisBus
    from mediation_server.registry import Registry

    cluster = Cluster(name)
    registry = Registry()
    answers: dict[bytes, asyncio.Future[None]] = {}

    def deliver(data: bytes) -> None:
        ev = cluster.receive(data)
        if isinstance(ev, PeerElsewhere):
            registry.online_elsewhere(ev.identity, time.time())
        elif isinstance(ev, SyncChunk):
            for pe in ev.peers:
                registry.online_elsewhere(pe.identity, time.time())
        elif isinstance(ev, SyncAsked):
            cluster.server_gone(ev.server)
            synced([ev.server])  # to the server that said hello only
        elif isinstance(ev, ForwardedConnect):
            if ev.response:
                fut = answers.pop(ev.connect_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            else:  # the target's answer, back to the requester's server
                cluster.forward_connect(ev.origin, ev.requester, ev.target, response=True,
                                        connect_id=ev.connect_id, key=ev.key, endpoints=ev.endpoints)

    def here(identity: str) -> tuple[tuple[str, int] | None, int, bool] | None:
        rec = registry.lookup(identity)
        return (rec.endpoint, rec.order, False) if rec is not None else None

    def sequenced(n: int) -> None:  # as MediationServer.on_sequenced (no rival registrations here)
        ev = cluster.sequenced(n)
        if ev is not None:
            registry.set_order(ev.identity, ev.seq)

    def synced(servers: list[str]) -> None:  # as MediationServer.sync_to
        identities = [rec.identity for rec in registry.online_peers()]
        for server in servers:
            cluster.start_sync(server, identities, here)

    bus = RedisBus(url, cluster, deliver, synced, cluster.server_gone, retry=0.05, sequenced=sequenced)
    task = asyncio.create_task(bus.run())
    await bus.connected.wait()
    conn.send("ready")
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "register":
            rss0 = _rss()
            t0 = time.monotonic()
            for i in range(peers):
                ident = f"peer{i}@{name}.scale"
                registry.update_sa_id(ident, i, time.time(), endpoint=("192.0.2.1", 4500))
                cluster.register(ident, ("192.0.2.1", 4500))  # numbered by the engine (newest wins)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # let the publisher and the reader run
            while len(registry) + cluster.known() < total:
                await asyncio.sleep(0.01)  # polling for the others' announcements
            conn.send({"seconds": time.monotonic() - t0, "rss_per_peer": (_rss() - rss0) / total})
        elif cmd == "forward":
            rtts = []
            for i in range(1000):
                cid = i.to_bytes(4, "big")
                fut: asyncio.Future[None] = loop.create_future()
                answers[cid] = fut
                t0 = time.perf_counter()
                cluster.forward_connect("ms2", (3, b"peer0@ms1.scale"), "peer0@ms2.scale", response=False,
                                        connect_id=cid, key=b"k" * 16, endpoints=(b"e" * 16,) * 4)
                await asyncio.wait_for(fut, 10)
                rtts.append((time.perf_counter() - t0) * 1000)
            conn.send(rtts)
        elif cmd == "count":
            conn.send(len(registry) + cluster.known())
        elif cmd == "count_of":  # the peers of ms3 known here
            conn.send(cluster.held_by("ms3"))
        elif cmd == "stop":
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            conn.send("stopped")
            return


def traced_entries(n: int = 100_000) -> tuple[float, float]:
    """Bytes per own peer's registry record (identity, SA id and endpoint are the IKE SA's, not counted)
    and per entry of the others' presence (as received: identity included)."""
    import tracemalloc

    from mediation_server.cluster.core import Cluster
    from mediation_server.registry import Registry

    idents = [f"peer{i}@ms1.scale" for i in range(n)]
    sa_ids = list(range(1, n + 1))  # the IKE SAs' unique ids: theirs, not the registry's
    endpoint = ("192.0.2.1", 4500)
    first = 1_765_000_000_000_000  # a registration number as the engine's script gives them
    src = Cluster("ms2")
    for i in range(n):
        src.announce(f"peer{i}@ms2.scale", endpoint, first + i)
    msgs = [d for _, d in src.take_outbox()]
    tracemalloc.start()
    try:
        registry = Registry()
        t0 = tracemalloc.get_traced_memory()[0]
        for i, ident in enumerate(idents):
            registry.update_sa_id(ident, sa_ids[i], 1.7e9 + i, endpoint=endpoint)
            registry.set_order(ident, first + i)
        own = (tracemalloc.get_traced_memory()[0] - t0) / n
        cluster = Cluster("ms1")
        t0 = tracemalloc.get_traced_memory()[0]
        for d in msgs:
            cluster.receive(d)
        remote = (tracemalloc.get_traced_memory()[0] - t0) / n
    finally:
        tracemalloc.stop()
    return own, remote


def _recv(a: Connection, procs: list[Any], timeout: float) -> Any:
    """The answer of one server process, or a clear error when it died or does not answer."""
    if not a.poll(timeout):
        dead = [(p.name, p.exitcode) for p in procs if not p.is_alive()]
        raise RuntimeError(f"a server process did not answer in {timeout:.0f} s (exited: {dead})")
    return a.recv()


def one_round(peers: int) -> dict[str, Any]:  # noqa: PLR0912, PLR0915 - one round, its steps in order
    base = Path(tempfile.mkdtemp(prefix="cluster-scale-"))
    redis = RedisProcess(base)
    redis.start()
    url = redis.url
    redis.wait_ready()
    ctx = mp.get_context("fork")  # before any event loop exists in this process
    pipes, procs = [], []
    try:
        per = peers // len(NAMES)
        for name in NAMES:
            a, b = ctx.Pipe()
            p = ctx.Process(target=server_proc, args=(name, url, per, per * len(NAMES), b))
            p.start()
            pipes.append(a)
            procs.append(p)
        for a in pipes:
            if not a.poll(60) or a.recv() != "ready":
                raise RuntimeError("a server did not start")
        print(f"  {peers} peers: registering", flush=True)
        for a in pipes:
            a.send("register")
        regs = [_recv(a, procs, 900) for a in pipes]
        print("  forwarding", flush=True)
        pipes[0].send("forward")
        rtts = _recv(pipes[0], procs, 120)
        print("  engine restart", flush=True)
        t0 = time.monotonic()
        redis.kill()
        redis.start()
        deadline = t0 + 600
        while True:
            counts = []
            for a in pipes:
                a.send("count")
                counts.append(_recv(a, procs, 60))
            if all(c == per * len(NAMES) for c in counts) and time.monotonic() - t0 > 0.2:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no resync after the engine restart: {counts}")
            time.sleep(0.05)  # polling with a deadline
        failover = time.monotonic() - t0
        print("  server ms3 killed", flush=True)
        t0 = time.monotonic()
        procs[2].kill()
        deadline = t0 + 120
        while True:
            counts = []
            for a in pipes[:2]:
                a.send("count_of")
                counts.append(_recv(a, procs[:2], 60))
            if counts == [0, 0]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ms3's peers still known: {counts}")
            time.sleep(0.05)  # polling with a deadline
        server_gone = time.monotonic() - t0
        for a in pipes[:2]:
            a.send("stop")
            a.recv()
        return {"regs": regs, "rtts": rtts, "failover": failover, "per": per, "server_gone": server_gone}
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        redis.kill()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results_io.add_args(ap, rounds=2)
    ap.add_argument("--peers", type=int, default=300_000)
    ap.add_argument("--small", type=int, default=30_000, help="the size memory per peer is compared with")
    args = ap.parse_args()
    rounds = results_io.rounds_of(args)
    peers = 3000 if args.quick else args.peers
    small = 300 if args.quick else args.small
    header = results_io.start_header()
    secs, rate, mem, rtt, p99, fo, gone, mem_small = [], [], [], [], [], [], [], []
    own_b, remote_b = [], []
    for r in range(rounds):
        own, remote = traced_entries()
        own_b.append(own)
        remote_b.append(remote)
        res_small = one_round(small)
        mem_small += [x["rss_per_peer"] for x in res_small["regs"]]
        res = one_round(peers)
        gone.append(res["server_gone"])
        s = max(x["seconds"] for x in res["regs"])
        secs.append(s)
        rate.append(res["per"] / s)
        mem += [x["rss_per_peer"] for x in res["regs"]]
        rtt += res["rtts"]
        p99.append(statistics.quantiles(res["rtts"], n=100)[98])
        fo.append(res["failover"])
        print(f"round {r}: {s:.1f} s, failover {res['failover']:.1f} s", flush=True)
    figures = [
        results_io.figure("cluster_propagation", f"{peers} peers across 3 servers: every server knows every peer",
                          results_io.sample(secs, "s"), readme=False,
                          differences=["cluster layer only: no IKE (bench/registry_scale.py measures that)",
                                       "three server processes and redis-server on this machine"]),
        results_io.figure("cluster_registrations_rate", "registrations per second per server (propagated)",
                          results_io.sample(rate, "/s", digits=0), better="higher", readme=False),
        results_io.figure("cluster_memory_per_peer", "resident memory growth per known peer, per server",
                          results_io.sample(mem, "B", digits=0), readme=True,
                          differences=["registry record plus the cluster's view of the others' peers",
                                       "cluster layer only: the IKE SA of a peer registered here is "
                                       "bench/registry_scale.py's figure"]),
        results_io.figure("cluster_memory_per_peer_small", f"the same at {small} peers",
                          results_io.sample(mem_small, "B", digits=0), readme=False),
        results_io.figure("cluster_memory_remote_entry", "traced bytes per peer of the other servers "
                          "(presence entry, identity included)", results_io.sample(remote_b, "B", digits=0),
                          readme=False, differences=["tracemalloc in the bench's process, 100000 entries"]),
        results_io.figure("cluster_memory_own_record", "traced bytes per own peer's registry record "
                          "(without the IKE SA's identity, SA id and endpoint)",
                          results_io.sample(own_b, "B", digits=0), readme=False,
                          differences=["tracemalloc in the bench's process, 100000 records"]),
        results_io.figure("cluster_forward_rtt", "forwarded ME_CONNECT server 1 -> 2 and its answer back",
                          results_io.sample(rtt, "ms"), readme=True,
                          differences=[f"with all {peers} peers known; one at a time",
                                       "what forwarding adds over a single server: at one server both "
                                       "hops are calls inside the process"]),
        results_io.figure("cluster_forward_p99", "p99 of the round trip, per round", results_io.sample(p99, "ms"),
                          readme=False),
        results_io.figure("cluster_failover", "redis-server killed and restarted until every server knows "
                          "every peer again", results_io.sample(fo, "s"), readme=False,
                          differences=["includes redis-server's start and the paced sync of all peers"]),
        results_io.figure("cluster_server_gone", "a server killed (SIGKILL) until the others forgot its peers",
                          results_io.sample(gone, "s"), readme=False,
                          differences=["engine side only: a client moves when its DPD gives up "
                                       "(scenarios/cluster measures that)"]),
    ]
    notes = [f"{rounds} round(s) of {peers} peers ({peers // 3} per server), each after one of {small}"]
    results_io.write_results(args.out, "cluster_scale", results_io.finish_header(header, args.quick, rounds),
                             figures, notes=notes)


if __name__ == "__main__":
    main()
