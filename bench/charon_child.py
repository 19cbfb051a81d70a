"""bench/charon_initiator.py's realistic shape: each IKE_SA with one CHILD_SA, negotiated in IKE_AUTH.

Users' peers always ask for a CHILD_SA in IKE_AUTH (SA, TSi, TSr: RFC 7296 §1.2); the childless shape
(RFC 6023) leaves out the ESP proposal, the traffic selectors' narrowing and the data plane. Here every
initiator connection ``cN`` has a CHILD_SA ``net`` from its own /32 on alice's ``lo`` (``inner(N)``,
10.201.x.y) to the responder's 10.200.0.1/32 on bob's ``lo``; the responders take ``10.201.0.0/16`` as the
remote side and narrow it to the initiator's /32 (RFC 7296 §2.9), so every CHILD_SA has selectors and a
route of its own on the responder. The selectors are not the IKE addresses themselves: kernel-libipsec
refuses a route to the IKE peer's own address (it would carry the IKE traffic into the tunnel).

Both responders install the CHILD_SAs into their userspace ESP data planes: ours with ``dataplane =
"auto"`` (users' default; userspace ESP over TUN on a kernel without ESP), charon with kernel-libipsec
(strongSwan's userspace ESP over TUN). The initiator charon in alice needs kernel-libipsec as well. ESP
proposal aes128gcm16 on every side, no PFS (as the IKE proposal). The sides are ``ours-child`` and
``charon-child`` (any responder of charon_initiator.py with ``-child``), interleaved with the others, and with
``--before REV`` ``before-child``: REV's iked (its daemon from a ``git archive`` of REV) with this tree's
configuration of ``ours-child``, so REV may predate this shape.
Their ``held`` (the results table) counts the CHILD_SAs the responder holds INSTALLED with their route into
its TUN device at the end of the batch, where the childless sides count IKE_SAs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import statistics
import sys
from typing import Any

import results_io
from ike_setup_rate import CHARON_PLUGINS

from scenarios.lab.charon import Charon as CharonProc
from scenarios.lab.events import wait_files
from scenarios.lab.netns import wait_for

CHILD = "net"
ESP = "aes128gcm16"
SIDES = ("ours-child", "charon-child")
BEFORE = "before-child"  # ours at `--before REV`
SHAPES = ("childless", "child")
RESP_INNER = "10.200.0.1"
INIT_NET = "10.201.0.0/16"
# kernel-libipsec first: the first plugin that offers the kernel's IPsec interface serves it
PLUGINS = "kernel-libipsec " + CHARON_PLUGINS


def inner(i: int) -> str:
    """Identity ``c{i}``'s tunnel-inner address (on alice's ``lo``)."""
    return f"10.201.{i // 250}.{i % 250 + 1}"


def shapes(text: str) -> list[str]:
    """``--shape``'s value: a comma-separated subset of SHAPES."""
    out = [s for s in text.split(",") if s]
    bad = [s for s in out if s not in SHAPES]
    if bad or not out:
        raise ValueError(f"--shape {text!r}: one or more of {', '.join(SHAPES)}")
    return out


def sides(before: bool) -> list[str]:
    """The child shape's sides, with BEFORE when there is a ``--before`` tree."""
    return [*SIDES, *([BEFORE] if before else [])]


def before_lines(runs: list[Any], auth: str, rev: str | None, ours: str, before: str) -> list[str]:
    """Ours at `rev` (side `before`) beside ours now (side `ours`), interleaved in the same rounds: medians."""
    b = [r.cpu_ms for r in runs if r.auth == auth and r.impl == before and r.established]
    o = [r.cpu_ms for r in runs if r.auth == auth and r.impl == ours and r.established]
    if not b or not o:
        return []
    return [f"ours at {rev} (interleaved in the same rounds): {results_io.fmt_value(results_io.sample(b, 'ms'))}; "
            f"this tree / {rev}: {statistics.median(o) / statistics.median(b):.2f}x"]


def add_addresses(lab: Any, n: int) -> None:
    """The inner /32s on ``lo``: ``inner(0..n-1)`` in alice, RESP_INNER in bob (one ``ip -batch`` each)."""
    lab.run("alice", ["ip", "-batch", "-"], input="".join(f"addr add {inner(i)}/32 dev lo\n" for i in range(n)))
    lab.run("bob", ["ip", "addr", "add", f"{RESP_INNER}/32", "dev", "lo"])


def initiator_children(i: int) -> str:
    """The swanctl ``children`` section of initiator connection ``c{i}``."""
    return (f"    children {{\n      {CHILD} {{\n        local_ts = {inner(i)}/32\n        remote_ts = {RESP_INNER}/32\n"
            f"        esp_proposals = {ESP}\n      }}\n    }}\n")


class ChildInitiator(CharonProc):
    """The initiator charon whose ``initiate`` asks for CHILD_SA ``net`` with the IKE_SA (in IKE_AUTH)."""

    def initiate(self, child: str | None = None, ike: str | None = None, timeout: float = 30.0,
                 wait: bool = True) -> list[str]:
        return super().initiate(child or CHILD, ike, timeout, wait)


def ours_conf(toml: str) -> str:
    """charon_initiator's iked configuration with users' default data plane and the CHILD_SA ``net``."""
    if 'dataplane = "none"' not in toml or "[connections.bench]" not in toml:
        raise ValueError("not the bench responder's configuration (bench/ike_setup_rate.py iked_responder_conf)")
    return (toml.replace('dataplane = "none"', 'dataplane = "auto"')
            + f'\n[connections.bench.children.{CHILD}]\nlocal_ts = ["{RESP_INNER}/32"]\nremote_ts = ["{INIT_NET}"]\n'
            f'esp_proposals = "{ESP}"\n')


def charon_conf(conf: str) -> str:
    """charon_initiator's swanctl.conf for the responder with the CHILD_SA ``net``."""
    anchor = "    childless = allow\n"
    if conf.count(anchor) != 1:
        raise ValueError("not the bench responder's swanctl.conf (one connection with childless = allow)")
    return conf.replace(anchor, anchor + f"    children {{\n      {CHILD} {{\n        local_ts = {RESP_INNER}/32\n"
                        f"        remote_ts = {INIT_NET}\n        esp_proposals = {ESP}\n      }}\n    }}\n")


class ChildSide:
    """A responder of charon_initiator.py (``Ours`` or ``Charon``) configured for a CHILD_SA per IKE_SA;
    ``held`` counts the CHILD_SAs it holds installed with their route into its TUN device."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.impl = f"{base.impl}-child"
        if hasattr(base, "iked"):
            base.iked.template = ours_conf(base.iked.template)
            base.iked.write_config(base.iked.template)
            self.lab = base.iked.lab
        else:
            base.charon.conf = charon_conf(base.charon.conf)
            base.charon.plugins = PLUGINS
            self.lab = base.charon.lab

    def start(self) -> None:
        self.base.start()

    def stop(self) -> None:
        self.base.stop()

    def pids(self) -> list[int]:
        pids: list[int] = self.base.pids()
        return pids

    def settle(self, n: int) -> None:
        """Wait (up to 10 s) until bob routes `n` initiator /32s into the TUN device. Both responders install
        a CHILD_SA, its route included, before the IKE_AUTH response that completes it leaves (RFC 7296 §1.2),
        so the initiator's last ``initiate`` returning finds them in place; a responder that installs after
        its response (an iked from an older ``--before`` tree) still owes that work to the batch. The routes
        are read from the kernel, which costs the responder no CPU."""
        with contextlib.suppress(TimeoutError):
            # the kernel's routes (read with netlink dumps; nothing here subscribes to their changes): a poll
            wait_for(lambda: len(self.tun_routes()) >= n, 10.0, interval=0.02, what=f"{n} routes into the TUN")

    def children(self) -> list[tuple[str, list[str]]]:
        """(state, remote traffic selectors) of every CHILD_SA: ``ikectl list`` / vici ``list-sas``."""
        if hasattr(self.base, "iked"):
            return [(c["state"], list(c["remote-ts"])) for sa in self.base.iked.list_sas()
                    for c in sa.get("child-sas", [])]
        return [(c["state"], list(c.get("remote-ts", []))) for c in self.base.charon.child_sas()]

    def tun_routes(self) -> set[ipaddress.IPv4Network]:
        """Destinations inside INIT_NET that bob routes into a device other than ``lo`` (any table)."""
        out = set()
        text = self.lab.run("bob", ["ip", "-4", "-o", "route", "show", "table", "all"]).stdout
        for line in text.splitlines():
            f = line.split()
            if not f or "dev" not in f or f[f.index("dev") + 1] == "lo":
                continue
            with_len = f[0] if "/" in f[0] else f"{f[0]}/32"
            try:
                net = ipaddress.ip_network(with_len)
            except ValueError:
                continue
            if net.subnet_of(ipaddress.ip_network(INIT_NET)):
                out.add(net)
        return out

    def held(self) -> int:
        """CHILD_SAs INSTALLED whose one remote selector (the initiator's /32) has its route."""
        routes = self.tun_routes()
        return sum(1 for state, ts in self.children()
                   if state == "INSTALLED" and len(ts) == 1 and ipaddress.ip_network(ts[0]) in routes)


def side(base: Any) -> Any:
    """``base`` (a responder of charon_initiator.py) as the child shape's side ``{base.impl}-child``."""
    return ChildSide(base)


def figures(a: Any, auth: str, runs: list[Any]) -> list[dict[str, Any]]:
    """The child shape's figure for ``auth`` (none when it did not run): ours-child against charon-child,
    with ours at ``--before`` (BEFORE) beside ours-child when it ran."""
    o = [r for r in runs if r.auth == auth and r.impl == "ours-child" and r.established]
    c = [r for r in runs if r.auth == auth and r.impl == "charon-child" and r.established]
    b = [r for r in runs if r.auth == auth and r.impl == BEFORE and r.established]
    if not o and not c:
        return []

    def held(rs: list[Any]) -> str:
        return ", ".join(f"{r.held} of {a.warmup + r.established}" for r in rs)

    f = results_io.figure(
        f"charon_initiator_cpu_{auth}_child",
        f"the same ({auth.upper()}) with one CHILD_SA per IKE_SA, installed in both responders' userspace ESP",
        results_io.sample([r.cpu_ms for r in o], "ms"), results_io.sample([r.cpu_ms for r in c], "ms"),
        differences=[
            "same on both sides: the childless figure's initiator, IKE proposal, COOKIEs, unique and log levels "
            "(ours warning, charon 0), plus one CHILD_SA per IKE_SA in IKE_AUTH (SA, TSi, TSr): ESP " + ESP
            + ", no PFS, tunnel mode, default lifetimes; traffic selectors from the initiator's own /32 on its lo "
            f"(one per identity, in {INIT_NET}) to the responder's {RESP_INNER}/32 on lo (the responders' remote_ts "
            f"{INIT_NET}, narrowed to the /32), interleaved in the same rounds",
            "data planes: ours dataplane = \"auto\" (users' default: userspace ESP over its TUN device, this kernel "
            "has no ESP): per CHILD_SA two SAs and two policies in the process and a route to the initiator's /32 "
            "into its TUN device (netlink, main table); charon: kernel-libipsec (strongSwan's userspace ESP over "
            "TUN, kernel-netlink loaded after it): per CHILD_SA two SAs and policies in libipsec and a route to the "
            "/32 into its TUN device (table 220)",
            "ESP in UDP on both (RFC 3948): kernel-libipsec needs UDP encapsulation, so the initiator's NAT-D "
            "claims a NAT (both responders see one) and so does charon's as the responder (ours' NAT-D is true); "
            "the initiator charon also runs kernel-libipsec (its TUN device and a route per CHILD_SA; its CPU is "
            "not in the figure)",
            "both install a CHILD_SA (SAs, policies, route) before the IKE_AUTH response that completes it "
            "leaves; the CPU is read once every CHILD_SA's route is in place (an iked from an older --before tree "
            "may install after its response)",
            f"both responders hold every CHILD_SA of the batch until its end ({a.warmup} warmup + the measured "
            "ones): work per CHILD_SA that grows with the number held weighs more with a larger --count",
            f"CHILD_SAs installed with their route, per run, at the end of the batch (warmup included): ours "
            f"{held(o) or '-'}; charon {held(c) or '-'}"
            + (f"; ours at {a.before} {held(b)}" if b else ""),
            *before_lines(runs, auth, a.before, "ours-child", BEFORE),
        ],
        readme=True)
    f["child_sas_held"] = {"ours": [[r.held, a.warmup + r.established] for r in o],
                           "charon": [[r.held, a.warmup + r.established] for r in c],
                           **({"before": [[r.held, a.warmup + r.established] for r in b]} if b else {})}
    if _vs_childless(runs, auth, "ours", o) != "-" and _vs_childless(runs, auth, "charon", c) != "-":
        f["differences"].append(f"each side with its CHILD_SAs / itself childless in the same rounds (medians): "
                                f"ours {_vs_childless(runs, auth, 'ours', o)}, charon "
                                f"{_vs_childless(runs, auth, 'charon', c)}")
    return [f]


def _vs_childless(runs: list[Any], auth: str, impl: str, child: list[Any]) -> str:
    base = [r.cpu_ms for r in runs if r.auth == auth and r.impl == impl and r.established]
    if not base or not child:
        return "-"
    return f"{statistics.median(r.cpu_ms for r in child) / statistics.median(base):.2f}x"


# ====================================================================== where the child shape's CPU goes
# ``python bench/charon_child.py [--before REV]``: one batch of the child shape against a recording iked
# (bench/ike_cost.py: seeded randomness, the datagrams its engine receives), then those datagrams replayed
# to an engine with users' default data plane, its TUN device and netlink in a network namespace of its
# own (the SAs, policies and routes installed for real), by this tree and by REV alternately, each in its
# own process: the engine and the event handling (the CHILD_SAs' installation) per IKE_SA, CPU time.

def record(auth: str, count: int, out: Any) -> float:
    """`count` IKE_SAs with a CHILD_SA each from the charon initiator against a recording iked; the
    datagrams and its configuration go to `out`; the recording iked's process CPU ms per IKE_SA."""
    import os
    import shutil
    import signal

    import charon_initiator as ci
    from ike_cost import RECORD_ENV

    from scenarios.lab import cleanup_orphans, two_hosts

    cleanup_orphans()
    pki = ci.make_pki(count if auth == "rsa" else 0)
    with two_hosts(inner=False) as lab:
        add_addresses(lab, count)
        base = ci.Ours(lab, auth, pki)
        resp = side(base)
        base.iked.module = "ike_cost"
        init = ci.initiator(lab, auth, pki, count, f"rec-{auth}", threads=32, child=True)
        rec = out / "datagrams.pickle"
        base.iked.start(env={"PYTHONPATH": f"{ci.ROOT}:{ci.ROOT / 'bench'}", RECORD_ENV: str(rec)})
        try:
            init.start()
            pid = base.pids()[0]
            cpu0 = ci.proc_cpu(pid)
            n, failed = ci.initiate_all(init, [f"c{i}" for i in range(count)], 4, 60.0)
            resp.settle(n)
            ms = 1000 * (ci.proc_cpu(pid) - cpu0) / max(1, n)
            if n != count:
                raise RuntimeError(f"{count - n} IKE_SAs failed: {failed[:3]}")
            os.kill(pid, signal.SIGUSR2)
            wait_files(rec.exists, 30, [rec], what="the recording")  # its creation is the event
            shutil.copytree(base.iked.dir, out / "conf", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
        finally:
            with contextlib.suppress(Exception):
                init.stop()
            base.stop()
    return ms


def ike_sa_of(data: bytes) -> bytes:
    """The IKE SA a recorded datagram belongs to: its IKE SPIi (RFC 7296 §3.1; recorded as Engine.receive
    gets it, the non-ESP marker of RFC 3948 §2.2 already stripped)."""
    return data[:8]


def warming(rec: list[Any], warm: int) -> set[bytes]:
    """The first `warm` IKE_SAs of the recording (`ike_sa_of`). The replays feed the whole recording to
    one daemon, in the order received (its seeded randomness then gives the keys the initiator saw), and
    count the datagrams of the other IKE_SAs only: IKE_SAs (identities, certificates, selectors) the
    process has not seen, as every IKE_SA of the live batch is, with an interpreter the first ones warmed;
    counting a second pass of the same IKE_SAs would find whatever a process keeps per peer already there."""
    first: set[bytes] = set()
    for data, _, _ in rec:
        if len(first) == warm:
            break
        first.add(ike_sa_of(data))
    return first


def warm_count(count: int) -> int:
    """IKE_SAs of a recording of `count` replayed to warm the interpreter (the others are counted)."""
    return count // 4


def _replay_here(out: Any, profile: str = "") -> dict[str, float]:  # noqa: PLR0915 - one replay, its timers
    """In a fresh network namespace: the recording fed to an engine built as iked builds it with its
    userspace data plane (TUN device, netlink); CPU ms per IKE_SA of the IKE_SAs after the first
    `warm_count` (`warming`): all of it, the engine, the event handling. `profile`: a file for cProfile's
    statistics of those (its figures then include cProfile's own cost)."""
    import asyncio
    import cProfile
    import pickle
    import time

    import ike_cost as ic

    from core_ike.daemon.config import load
    from core_ike.daemon.glue import DataPlaneGlue, engine_child_deleter
    from core_ike.daemon.runtime import Daemon, make_dataplane, tune_gc
    from core_ike.ike import events as ev

    rec = pickle.loads((out / "datagrams.pickle").read_bytes())["datagrams"]
    warm = warming(rec, warm_count(int((out / "count").read_text())))

    async def run() -> dict[str, float]:
        undo = ic._seeded_randomness("bench")
        try:
            d = Daemon(load(out / "conf" / "iked.toml"))
            dp = make_dataplane("auto", "ccreplay0", d.transport, 4500)
            dp.start(asyncio.get_running_loop())
            d.dp, d.glue = dp, DataPlaneGlue(dp, engine_child_deleter(d.engine))
            d.engine.extensions.append(d.glue)
            eng, n, now, total, engine, events = d.engine, 0, 1000.0, 0.0, 0.0, 0.0
            eng.set_wall_clock(time.time(), now)
            tune_gc()  # as iked (core_ike/daemon/runtime.py)
            clock, process = time.thread_time, time.process_time
            prof = cProfile.Profile() if profile else None
            for data, local, remote in rec:
                counted = ike_sa_of(data) not in warm
                if counted and prof is not None:
                    prof.enable()
                now += 1e-4
                t0 = process()
                a = clock()
                eng.receive(data, local, remote, now)
                eng.datagrams_to_send()
                b = clock()
                while (e := eng.next_event()) is not None:
                    n += counted and isinstance(e, ev.IkeSaEstablished)
                    d.on_event(e)
                c = clock()
                eng.prepare()
                eng.get_timer()
                if counted:
                    total, engine, events = total + process() - t0, engine + b - a, events + c - b
                    if prof is not None:
                        prof.disable()
            if prof is not None:
                prof.dump_stats(profile)
            k = 1000 / max(1, n)
            result = {"total": k * total, "engine": k * engine, "events": k * events, "n": n}
            dp.close()
            return result
        finally:
            undo()

    return asyncio.run(run())


def replay(tree: Any, out: Any, profile: str = "") -> dict[str, float] | None:
    """`_replay_here` by the tree `tree` in a network namespace of its own; None when it failed."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    ns = f"ccreplay{os.getpid() % 100000}"
    here = Path(__file__).resolve().parent
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        code = ("import sys, json; from pathlib import Path; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
                "import core_ike; assert core_ike.__file__.startswith(sys.argv[1]); import charon_child as c; "
                "print(json.dumps(c._replay_here(Path(sys.argv[3]), sys.argv[4])))")
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, str(tree), str(here), str(out),
                            profile],
                           capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"}, timeout=600)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    if p.returncode != 0:
        print(f"  replay by {tree} failed: {p.stderr.strip()[-400:]}")
        return None
    result: dict[str, float] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


# ====================================================================== the child path from cold caches
# ``python bench/charon_child.py --recording DIR --cold [--before REV]``: the recording replayed under
# valgrind's callgrind with a simulated last-level cache evicted before each datagram (bench/ike_cold.py's
# method), with users' default data plane (TUN device, netlink) in a network namespace of its own; counted:
# each datagram's engine work with the event handling (``step``), or the event handling alone (``events``:
# the CHILD_SAs' installation), deterministic.


def _cold_here(tree: str, rec_dir: str, evict_mb: int, limit: int, what: str) -> int:  # noqa: PLR0915 - one replay, as _replay_here
    """Runs under valgrind in the namespace: `_replay_here`'s engine and data plane fed the recording, the
    first `limit` datagrams (0: all) of the IKE_SAs after the first `warm_count` counted (`warming`; each
    datagram, or its events, inside libffi's ffi_call), the others not."""
    import asyncio
    import hashlib
    import pickle
    import subprocess
    import time
    from pathlib import Path

    import ike_cold
    import ike_cost as ic

    from core_ike.daemon.config import load
    from core_ike.daemon.glue import DataPlaneGlue, engine_child_deleter
    from core_ike.daemon.runtime import Daemon, make_dataplane, tune_gc
    from core_ike.ike import events as ev

    out = Path(rec_dir)
    rec = pickle.loads((out / "datagrams.pickle").read_bytes())["datagrams"]
    warm = warming(rec, warm_count(int((out / "count").read_text())))
    buf = bytes(evict_mb * 2**20)
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True, timeout=120)

    async def run() -> tuple[int, int]:
        undo = ic._seeded_randomness("bench")
        try:
            d = Daemon(load(out / "conf" / "iked.toml"))
            dp = make_dataplane("auto", "cccold0", d.transport, 4500)
            dp.start(asyncio.get_running_loop())
            d.dp, d.glue = dp, DataPlaneGlue(dp, engine_child_deleter(d.engine))
            d.engine.extensions.append(d.glue)
            eng, st = d.engine, {"now": 1000.0, "n": 0, "counted": False}
            eng.set_wall_clock(time.time(), st["now"])
            tune_gc()

            def events(_: Any, item: Any) -> None:
                while (e := eng.next_event()) is not None:
                    st["n"] += st["counted"] and isinstance(e, ev.IkeSaEstablished)
                    d.on_event(e)

            counted_events = ike_cold._through_ffi(events)

            def step(_: Any, item: Any) -> None:
                data, local, remote = item
                st["now"] += 1e-4
                eng.receive(data, local, remote, st["now"])
                eng.datagrams_to_send()
                (counted_events if st["counted"] and what == "events" else events)(None, item)
                eng.prepare()
                eng.get_timer()

            counted_step = ike_cold._through_ffi(step)
            k = 0
            for item in rec:
                st["counted"] = ike_sa_of(item[0]) not in warm
                if st["counted"] and k == limit > 0:
                    break
                k += st["counted"]
                hashlib.md5(buf).digest()  # evicts the simulated caches, not counted
                (counted_step if st["counted"] and what == "step" else step)(None, item)
            dp.close()
            return k, st["n"]
        finally:
            undo()

    k, n = asyncio.run(run())
    print(f"replayed {k} datagrams, established {n}", flush=True)
    return 0


def cold(tree: Any, rec: Any, limit: int, what: str, evict_mb: int = 4, keep: Any = None) -> dict[str, float]:
    """`_cold_here` by `tree` in a namespace of its own under callgrind: instructions and LL misses per
    datagram of the counted region; `keep`: a path for callgrind's output (callgrind_annotate)."""
    import re
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parent
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import core_ike; "
            "assert core_ike.__file__.startswith(sys.argv[1]); import charon_child as c; "
            "sys.exit(c._cold_here(sys.argv[1], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]))")
    ns = f"cccold{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory(prefix="charon-child-cold-") as w:
            cg = Path(w) / "callgrind.out"
            cmd = ["ip", "netns", "exec", ns, "valgrind", "--tool=callgrind", "--cache-sim=yes",
                   "--LL=2097152,16,64", "--instr-atstart=no", "--collect-atstart=no", "--toggle-collect=ffi_call",
                   f"--callgrind-out-file={cg}", sys.executable, "-c", code, str(tree), str(here), str(rec),
                   str(evict_mb), str(limit), what]
            p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"},
                               timeout=3600)
            m = re.search(r"replayed (\d+) datagrams, established (\d+)", p.stdout)
            if p.returncode != 0 or m is None:
                raise RuntimeError(f"cold replay by {tree} failed: {(p.stdout + p.stderr)[-1500:]}")
            ann = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no",
                                  "--show=Ir,ILmr,DLmr,DLmw", str(cg)], capture_output=True, text=True,
                                 check=True).stdout
            if keep is not None:
                shutil.copy(cg, keep)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    tot = next(line for line in ann.splitlines() if "PROGRAM TOTALS" in line)
    ir, ilm, dlmr, dlmw = (int(x.replace(",", "")) for x in re.findall(r"[\d,]+(?= \(|\s)", tot)[:4])
    k = int(m.group(1))
    return {"instructions": ir / k, "ll_misses": (ilm + dlmr + dlmw) / k, "ll_misses_instr": ilm / k,
            "datagrams": k, "established": int(m.group(2))}


def main() -> int:
    import argparse
    import shutil
    import tempfile
    from pathlib import Path

    ap = argparse.ArgumentParser(description="where the child shape's CPU goes: record one batch, replay it A/B")
    ap.add_argument("--auth", default="psk")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--before", metavar="REV", help="replay by REV (git archive; or a directory holding a source "
                    "tree, e.g. a change's A side) too, alternating")
    ap.add_argument("--keep", metavar="DIR", help="keep the recording (datagrams, configuration) in DIR")
    ap.add_argument("--recording", metavar="DIR", help="replay the recording kept in DIR (no live batch)")
    ap.add_argument("--profile", metavar="FILE", help="cProfile one more replay by this tree into FILE")
    ap.add_argument("--cold", choices=("step", "events"), help="instead: --datagrams of the recording's IKE_SAs after "
                    "the first quarter (which warm the interpreter) under callgrind from cold caches (step: engine "
                    "with event handling, events: event handling alone)")
    ap.add_argument("--datagrams", type=int, default=200, help="with --cold: datagrams replayed (0: all)")
    a = ap.parse_args()
    root = results_io.enter_repo(__file__)
    given = a.before is not None and Path(a.before).is_dir()  # a source tree as it is: kept afterwards
    before = (Path(a.before).resolve() if given
              else results_io.git_tree(a.before, prefix="charon-child-before-") if a.before else None)
    try:
        with tempfile.TemporaryDirectory(prefix="charon-child-") as d:
            out = Path(a.recording or a.keep or d)
            if a.recording:
                a.count = int((out / "count").read_text())
            else:
                out.mkdir(parents=True, exist_ok=True)
                live = record(a.auth, a.count, out)
                (out / "count").write_text(f"{a.count}\n")
                print(f"recorded {a.count} IKE_SAs ({a.auth}, one CHILD_SA each): the recording iked's process "
                      f"{live:.3f} ms per IKE_SA")
            if a.cold:
                for rnd, name in results_io.interleave(a.rounds, ["this tree", *([a.before] if before else [])]):
                    keep = Path(a.keep) / f"callgrind.{a.cold}.{'this' if name == 'this tree' else 'before'}.{rnd + 1}" \
                        if a.keep else None
                    c = cold(root if name == "this tree" else before, out, a.datagrams, a.cold, keep=keep)
                    print(f"  round {rnd + 1} {name} cold {a.cold}: {c['instructions']:.0f} instructions, "
                          f"{c['ll_misses']:.1f} LL misses ({c['ll_misses_instr']:.1f} instruction) per datagram, "
                          f"{c['datagrams']} datagrams, {c['established']} IKE_SAs", flush=True)
                return 0
            runs: dict[str, list[dict[str, float]]] = {"this tree": [], a.before or "": []}
            for _, name in results_io.interleave(a.rounds, ["this tree", *([a.before] if before else [])]):
                r = replay(root if name == "this tree" else before, out)
                if r is not None and r["n"] == a.count - warm_count(a.count):
                    runs[name].append(r)
            for name, rs in runs.items():
                if rs:
                    parts = ", ".join(f"{k} {results_io.fmt_value(results_io.sample([r[k] for r in rs], 'ms'))}"
                                      for k in ("total", "engine", "events"))
                    print(f"replayed by {name}, per IKE_SA: {parts}")
            if a.profile:
                r = replay(root, out, str(Path(a.profile).resolve()))
                print(f"profiled replay by this tree (cProfile's cost included): {r} -> {a.profile}")
    finally:
        if before is not None and not given:
            shutil.rmtree(before, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
