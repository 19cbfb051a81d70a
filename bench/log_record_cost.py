#!/usr/bin/env python3
"""What one info line costs from the call site to the file, per IKE_SA (the 14 lines a strongSwan initiator's
IKE_SA without a CHILD_SA logs, docs/operations.md "Logging"), the log set up as iked sets it up (a file,
core_ike.daemon.main.setup_logging), inside a uvloop event loop: the IKE_SA_INIT's six lines in one loop
callback, the IKE_AUTH's eight in the next, each batch written after its callback as live. By this tree and
by another (``--before REV|DIR``), each in its own process, alternating ``--rounds`` times; the least CPU time
of ``--runs`` runs per process (interference only ever adds time). ``--count-only``: one pass and nothing
else, in this process at ``--level``, for callgrind's instruction count of the loop callbacks (the two that
log, the handler's write after each): ``valgrind --tool=callgrind --toggle-collect=__pyx_f_6uvloop_4loop_6Handle__run
python bench/log_record_cost.py --count-only --ike-sas N``, over N; at ``--level warning``, the floor (the
calls that log nothing and the loop's own work)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import asyncio, json, logging, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import core_ike
assert core_ike.__file__.startswith(sys.argv[1]), core_ike.__file__
import uvloop
from core_ike.daemon.main import setup_logging
n, runs, count_only = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] != "0"
levels = ("info", "warning") if not count_only else (sys.argv[4],)
log = logging.getLogger("core_ike.ike")
INIT = [
    ("received packet: from %s[%d] to %s[%d] (%d bytes)", ("192.0.2.1", 500, "192.0.2.2", 500, 232)),
    ("%s[%d] is initiating an IKE_SA", ("192.0.2.1", 500)),
    ("parsed %s %s %d [ %s ]", ("IKE_SA_INIT", "request", 0, "SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) N(HASH_ALG) N(REDIR_SUP)")),
    ("selected proposal: %s", ("AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",)),
    ("generating %s %s %d [ %s ]", ("IKE_SA_INIT", "response", 0, "SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) N(HASH_ALG)")),
    ("sending packet: from %s[%d] to %s[%d] (%d bytes)", ("192.0.2.2", 500, "192.0.2.1", 500, 224)),
]
AUTH = [
    ("received packet: from %s[%d] to %s[%d] (%d bytes)", ("192.0.2.1", 4500, "192.0.2.2", 4500, 176)),
    ("parsed %s %s %d [ %s ]", ("IKE_AUTH", "request", 1, "IDi N(INIT_CONTACT) IDr AUTH N(MOBIKE_SUP) N(NO_ADD_ADDR) N(EAP_ONLY) N(16420)")),
    ("looking for peer configs matching %s[%s]...%s[%s]: selected '%s'", ("192.0.2.2", "responder@bench", "192.0.2.1", "c0@bench", "bench")),
    ("authentication of '%s' with %s successful", ("c0@bench", "pre-shared key")),
    ("authentication of '%s' (myself) with %s", ("responder@bench", "pre-shared key")),
    ("IKE_SA %s[%d] established between %s[%s]...%s[%s]", ("bench", 1, "192.0.2.2", "responder@bench", "192.0.2.1", "c0@bench")),
    ("generating %s %s %d [ %s ]", ("IKE_AUTH", "response", 1, "IDr AUTH")),
    ("sending packet: from %s[%d] to %s[%d] (%d bytes)", ("192.0.2.2", 4500, "192.0.2.1", 4500, 124)),
]
info = log.info

def lines(batch):
    for msg, args in batch:
        info(msg, *args)

async def one_run():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [n]
    def auth():
        lines(AUTH)
        left[0] -= 1
        if left[0] > 0:
            loop.call_soon(init)
        else:
            loop.call_soon(done.set_result, None)
    def init():
        lines(INIT)
        loop.call_soon(auth)
    # the same loop turns without a line: what the loop costs alone, taken off below
    t0 = time.process_time()
    loop.call_soon(init)
    await done
    return time.process_time() - t0

with tempfile.TemporaryDirectory() as d:
    setup_logging("info", f"file:{d}/iked.log")
    best = []
    for level in levels:
        logging.getLogger().setLevel(level.upper())
        got = []
        for _ in range(1 if count_only else runs):
            got.append(uvloop.run(one_run()))
        best.append(min(got))
        if count_only:
            break
    for h in logging.getLogger().handlers:
        h.flush()
    written = sum(1 for _ in open(f"{d}/iked.log"))
    assert written >= n * 14 or levels == ("warning",), written
print(json.dumps({"us_per_ike_sa": 1e6 * (best[0] - best[-1]) / n if not count_only else None}))
"""


def run(tree: Path, n: int, runs: int) -> float:
    p = subprocess.run([sys.executable, "-c", _CHILD, str(tree), str(n), str(runs), "0"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONSAFEPATH": "1"}, check=True)
    return float(json.loads(p.stdout.strip().splitlines()[-1])["us_per_ike_sa"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--before", metavar="REV|DIR")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ike-sas", type=int, default=2000)
    ap.add_argument("--count-only", action="store_true")
    ap.add_argument("--level", default="info", choices=("info", "warning"))
    a = ap.parse_args(argv)
    if a.count_only:  # in this process, which callgrind counts (it follows no child process by default)
        sys.argv = ["-c", str(ROOT), str(a.ike_sas), "1", a.level]
        exec(compile(_CHILD, "log_record_cost", "exec"), {"__name__": "__log_record_cost__"})
        return 0
    with tempfile.TemporaryDirectory(prefix="log-record-cost-") as tmp:
        sides = {"this tree": ROOT}
        if a.before:
            before = Path(a.before)
            if not before.is_dir():
                before = Path(tmp) / "before"
                before.mkdir()
                arch = subprocess.run(["git", "-C", str(ROOT), "archive", a.before], capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", str(before)], input=arch.stdout, check=True)
            sides[f"before ({a.before})"] = before
        res: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(a.rounds):
            for k, tree in sides.items():
                res[k].append(run(tree, a.ike_sas, a.runs))
        for k, v in res.items():
            print(f"{k}: {statistics.median(v):.1f} us per IKE_SA (min {min(v):.1f}, max {max(v):.1f}, n={len(v)}; "
                  f"{statistics.median(v) / 14:.2f} us per line)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
