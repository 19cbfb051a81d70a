"""The daemons' own lines for ``bench/mediated_setup.py --trace``: a sitecustomize that gives their log
lines microseconds, and the step lines of one setup picked from a daemon's log with their times.

Run by itself, ``bench/mediated_trace.py --sim [--tree DIR ...] [--setups N] [--callgrind]``: the
deterministic cost of one public-peer setup (Python calls, instructions) in the in-process simulation
(`_sim_main` below), of this checkout and of other trees (e.g. ``git archive REV | tar -x -C DIR``); with
``--hops``, per hop of that setup the Python calls from a datagram's arrival to the first datagram the daemon
sends (the critical path's work) and in all (`_hops_child`)."""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRACE_STEPS = re.compile(r"ME_CONNECT|checklist \w+: (NONE|pair \d+: \w+ -> |selected|check \d+ from)|checks stopped|"
                         r"IKE_SA_INIT|IKE_AUTH|established|installed CHILD_SA|control: ")

# put first on the daemons' PYTHONPATH by --trace: their log lines carry microseconds (the shipped format
# has milliseconds, too coarse for steps a fraction of a millisecond apart)
MICROSECOND_LOGS = """\
import logging

_init = logging.Formatter.__init__


def _formatter(self, fmt=None, *args, **kwargs):
    if fmt and "%(msecs)03d" in fmt:
        fmt = fmt.replace("%(msecs)03d", "%(usecs)06d")
    _init(self, fmt, *args, **kwargs)


logging.Formatter.__init__ = _formatter
_record = logging.getLogRecordFactory()


def _factory(*args, **kwargs):
    r = _record(*args, **kwargs)
    r.usecs = int(r.created % 1 * 1e6)
    return r


logging.setLogRecordFactory(_factory)

try:  # the daemons' own formatter (core_ike/daemon/startup.py) writes milliseconds without a format string
    from core_ike.daemon import startup as _startup
except ImportError:
    _startup = None
if _startup is not None and hasattr(_startup, "TimedFormatter"):
    _format = _startup.TimedFormatter.format

    def _timed(self, record):
        s = _format(self, record)
        return s[:8] + f".{int(record.created % 1 * 1e6):06d}" + s[12:] if s[8:9] == "." else s

    _startup.TimedFormatter.format = _timed
"""


def site_dir(under: Path) -> str:
    """A new directory in ``under`` (the lab's: removed with it) holding MICROSECOND_LOGS as
    sitecustomize.py (to put first on the daemons' path)."""
    site = Path(tempfile.mkdtemp(prefix="medtrace-", dir=under))
    (site / "sitecustomize.py").write_text(MICROSECOND_LOGS)
    return str(site)


def step_lines(name: str, log: str, t0: float) -> list[tuple[float, str]]:
    """(time, text) of the TRACE_STEPS lines in daemon ``name``'s ``log``, in ms since ``t0`` (the
    namespaces share the host's clock; the lines carry the time of day, this day's)."""
    lt = time.localtime(t0)
    day = time.mktime((*lt[:3], 0, 0, 0, *lt[6:]))
    out: list[tuple[float, str]] = []
    for line in log.splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d\.\d+) (.*)", line)
        if m and TRACE_STEPS.search(m.group(4)):
            t = day + int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            out.append((t, f"{(t - t0) * 1000:8.2f} ms  {name:<6} {m.group(4)[:150]}"))
    return out


def cpu_ns(pids: list[int]) -> int:
    """CPU time the processes `pids` have run, all their threads, in ns (/proc/PID/task/TID/schedstat, first
    field: time on a CPU, proc(5)); a process gone counts nothing."""
    total = 0
    for pid in pids:
        tasks = Path(f"/proc/{pid}/task")
        with contextlib.suppress(OSError):
            for t in tasks.iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((t / "schedstat").read_text().split()[0])
    return total


# ====================================================================== deterministic cost of one setup
# `bench/mediated_trace.py --sim [--tree DIR ...] [--setups N] [--callgrind]`: the public-peer setup (bob on a
# public address, alice behind an EIM NAT, our server with its relay: one direct candidate pair) in the
# in-process simulation of tests/unit/me_ext/mex_net.py (fake clock, 0.5 ms per hop), the three engines'
# Python calls per setup (cProfile) from alice's connect() to both CHILD_SAs, logging at info through the
# daemons' own handler into /dev/null; with --callgrind also the instructions per setup (valgrind's
# callgrind: a run of N setups minus a run of none, over N). Each tree (default: this checkout; e.g. a
# `git archive` of another revision) runs in a child of its own. Repeat runs give the same figures.

def _sim_net(tree: str, send_now: bool = False) -> tuple[Any, Any, Any, Any]:
    """(mex_net, the simulated net, alice, bob) of the public-peer setup from `tree`, both peers registered;
    with `send_now` the peers' and the server's immediate sends put their datagrams on the wire at once, as
    the daemons' do (mediation_client/daemon.py, mediation_server/daemon.py)."""
    import logging
    import sys
    sys.path[:0] = [tree, f"{tree}/tests/unit/me_ext"]
    import mex_net as mx  # type: ignore[import-not-found]

    from core_ike.daemon.logrecords import cheap_records
    from core_ike.daemon.startup import log_handler
    from mediation_server.datarelay import RelayConfig
    logging.getLogger().addHandler(log_handler("file:/dev/null", "sim"))
    logging.getLogger().setLevel(logging.INFO)
    cheap_records()
    net = mx.make_net(latency=0.0005, relay=RelayConfig(ports=(50000, 50999)))
    net.nodes["bob"].nat = None  # bob on a public address
    mx.register(net)
    if send_now:
        for n in net.nodes.values():
            put = (lambda node: lambda d, local, remote: net.put(node, d, local, remote))(n)
            if hasattr(n.ext, "config"):
                n.ext.config.send_now = put
            else:
                n.ext.send_now = put
    return mx, net, net.nodes["alice"], net.nodes["bob"]


def _sim_setup(net: Any, alice: Any, bob: Any, prof: Any = None) -> None:
    """One mediated setup from alice's connect() to both CHILD_SAs (profiled by `prof`, a cProfile.Profile,
    when given), then its IKE_SA deleted and the relay freed."""
    from core_ike.ike import events as ev
    seen = [len(alice.events), len(bob.events)]

    def both() -> bool:  # only the events since the last look are read
        for i, node in enumerate((alice, bob)):
            if seen[i] >= 0:
                new = node.events[seen[i]:]
                seen[i] = -1 if any(type(e) is ev.ChildSaEstablished for _, e in new) else len(node.events)
        return seen == [-1, -1]
    if prof is not None:
        prof.enable()
    alice.ext.connect("bob", net.now)
    net.run(5.0, until=both)
    if prof is not None:
        prof.disable()
    assert seen == [-1, -1], "no mediated CHILD_SA on both peers"
    sa = next(s for s in alice.engine.ike_sas() if s.config.name == "bob" and s.established)
    alice.engine.terminate(sa, net.now)
    net.run(20.0)  # the DELETE, and the unused relay freed (its timeout is 15 s)


def _sim_child(tree: str, setups: int, profile: bool) -> None:
    import cProfile
    import pstats
    _, net, alice, bob = _sim_net(tree)
    for _ in range(3):
        _sim_setup(net, alice, bob)
    prof = cProfile.Profile() if profile else None
    for _ in range(setups):
        _sim_setup(net, alice, bob, prof)
    if prof is not None:
        print(f"{pstats.Stats(prof).total_calls / setups:.1f}")  # type: ignore[attr-defined]


_KINDS = {240: "ME_CONNECT", 34: "IKE_SA_INIT", 35: "IKE_AUTH", 37: "INFORMATIONAL"}


def _kind(data: bytes) -> str:
    """An IKE datagram's exchange and direction (a connectivity check: plaintext INFORMATIONAL, SPIs 0)."""
    d = data[4:] if data[:4] == bytes(4) else data
    if len(d) < 28:
        return "?"
    kind = "check" if d[18] == 37 and d[:16] == bytes(16) else _KINDS.get(d[18], str(d[18]))
    return f"{kind} {'response' if d[19] & 0x20 else 'request'}"


def _hops_child(tree: str, setups: int) -> None:
    """Per hop of the setup (a datagram delivered to a daemon), the Python calls (function and built-in
    calls, sys.setprofile's count: the same on every run) until the first datagram it sends and until the
    hop's end, median over `setups`. The daemons' immediate sends are wired (`_sim_net`); what the engine
    queued leaves at the hop's end (the daemons send it after forwarding the engine's events, which the
    simulation does not have: those calls come on top live)."""
    import sys
    mx, net, alice, bob = _sim_net(tree, send_now=True)
    put, receive = mx.Net.put, mx.Net._receive
    count = [0]
    hop: dict[str, Any] | None = None
    hops: list[dict[str, Any]] = []

    def counter(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            count[0] += 1

    def timed_put(self: Any, node: Any, data: bytes, local: Any, remote: Any) -> None:
        if hop is not None and hop["first"] is None and hop["node"] == node.name:
            hop["first"], hop["out"] = count[0], _kind(data)
        put(self, node, data, local, remote)

    def measured(node: str, what: str, fn: Callable[[], Any]) -> Any:
        """fn() as one hop of `node`, started by `what`; the engine's queued datagrams leave at its end."""
        nonlocal hop
        if not measuring:
            return fn()
        hop = {"node": node, "in": what, "first": None, "out": "-"}
        count[0] = 0
        sys.setprofile(counter)
        try:
            result = fn()
            queued = net.nodes[node].engine.datagrams_to_send()
        finally:
            sys.setprofile(None)
        for d, local, remote in queued:
            timed_put(net, net.nodes[node], d, local, remote)
        hop["total"] = count[0]
        hops.append(hop)
        hop = None
        return result

    def timed_receive(self: Any, n: Any, data: bytes, src: Any, local: Any) -> None:
        measured(n.name, _kind(data), lambda: receive(self, n, data, src, local))
    connect = alice.ext.connect

    def timed_connect(name: str, now: float) -> Any:  # the control call's hop: `up` to the ME_CONNECT
        return measured("alice", "connect()", lambda: connect(name, now))
    alice.ext.connect = timed_connect
    mx.Net.put, mx.Net._receive = timed_put, timed_receive
    measuring = False
    for _ in range(3):
        _sim_setup(net, alice, bob)
    runs: list[list[dict[str, Any]]] = []
    for _ in range(setups):
        measuring = True
        hops.clear()
        _sim_setup(net, alice, bob)  # the DELETE after the CHILD_SAs is measured too: left out below
        measuring = False
        runs.append(list(hops))
    _print_hops(runs)


def _print_hops(runs: list[list[dict[str, Any]]]) -> None:
    """The hops of `runs` (each a setup's hops in order, up to its first INFORMATIONAL), medians per hop."""
    import statistics
    per: dict[str, list[tuple[int, int]]] = {}
    for hops in runs:
        for h in hops:
            if h["in"].startswith("INFORMATIONAL"):
                break
            per.setdefault(f"{h['node']:<6} {h['in']:<20} -> {h['out']:<20}", []).append(
                (h["first"] if h["first"] is not None else h["total"], h["total"]))
    for key, v in per.items():
        print(f"{key} n={len(v):3d}  calls to the first send {statistics.median(x for x, _ in v):7.0f}, "
              f"in all {statistics.median(y for _, y in v):7.0f}")


def _sim_main(args: list[str]) -> int:
    import argparse
    import os
    import subprocess
    import sys
    ap = argparse.ArgumentParser(prog="mediated_trace.py --sim")
    ap.add_argument("--tree", action="append", help="a checkout to measure (repeatable; default this one)")
    ap.add_argument("--setups", type=int, default=20)
    ap.add_argument("--callgrind", action="store_true", help="also instructions per setup (valgrind)")
    ap.add_argument("--hops", action="store_true",
                    help="per hop, the Python calls from a datagram's arrival to the first datagram sent (the "
                         "critical path's work), and in all")
    a = ap.parse_args(args)
    here = str(Path(__file__).resolve().parent.parent)
    me = [sys.executable, str(Path(__file__).resolve())]
    os.environ["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every child: the counts repeat closer
    for tree in [str(Path(t).resolve()) for t in a.tree or [here]]:
        if a.hops:
            print(f"{tree}:", flush=True)
            subprocess.run([*me, "--hops-child", tree, str(a.setups)], check=True)
            continue
        calls = subprocess.run([*me, "--sim-child", tree, str(a.setups), "profile"], check=True, text=True,
                               capture_output=True).stdout.split()[-1]
        line = f"{tree}: {calls} calls per setup"
        if a.callgrind:
            ir = []
            for n in (0, a.setups):
                with tempfile.TemporaryDirectory() as d:
                    out = os.path.join(d, "cg.out")
                    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *me,
                                    "--sim-child", tree, str(n), "plain"], check=True, capture_output=True)
                    ir.append(int(next(x for x in Path(out).read_text().splitlines()
                                       if x.startswith(("summary:", "totals:"))).split()[1]))
            line += f", {(ir[1] - ir[0]) / a.setups / 1e6:.3f}M instructions per setup"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["--sim-child"]:
        _sim_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "profile")
    elif sys.argv[1:2] == ["--hops-child"]:
        _hops_child(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--sim"]:
        sys.exit(_sim_main(sys.argv[2:]))
    else:
        print("usage: bench/mediated_trace.py --sim [--tree DIR ...] [--setups N] [--callgrind | --hops]")
