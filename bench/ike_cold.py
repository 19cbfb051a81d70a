#!/usr/bin/env python3
"""A responder's cost per datagram from cold caches, deterministic: recorded IKE_SAs of the strongSwan charon
initiator replayed to our engine under valgrind's callgrind with a simulated last-level cache, by this tree
and by another (``--before REV|DIR``), PSK and RSA.

Why: with a real initiator our responder is idle between datagrams, so each datagram starts with caches
that other work has filled; the live CPU figures on a shared machine swing by about 20 %, too much to see a
change of a few per cent. Callgrind counts instructions and simulated cache misses, which repeat within
about 0.2 % from run to run. Each datagram is preceded by a read of a buffer larger than the simulated
last-level cache (``--evict``, outside the counted region: the simulation runs, the counters do not), so
that it runs from a cold cache as live; the replay runs once uncounted first (imports, first-call work).

Recording: bench/charon_initiator.py's ``record`` (a recording iked, bench/ike_cost.py, against a charon
initiator in network namespaces; needs root and strongSwan), or ``--recording DIR`` holding ``psk/`` and
``rsa/`` from an earlier run (each a ``datagrams.pickle`` and ``conf/``; written there when absent).

    bench/ike_cold.py --before 521e634 --out bench/results/ike_cold.txt
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = results_io.enter_repo(__file__)

LL_BYTES = 2 * 2**20  # the simulated last-level cache: 2 MB, 16-way, 64-octet lines
EVENTS = ("Ir", "ILmr", "DLmr", "DLmw")  # instructions; LL misses: instruction reads, data reads, data writes
REPLAY_FLAG = "--replay-child"
TOP_FUNCTIONS = 100  # functions kept per replay, by LL misses (self cost)
# the calls from Python into cryptography's Rust module (pyo3's generated entry points): their inclusive cost
# is each Python-level cryptography call's, with the OpenSSL code below it (and any Python it calls back)
ENTRY_POINT = re.compile(r"(?:<([\w:]+?)>|([\w:]+?))::__py(?:method|function)_(\w+)")


# ====================================================================== the replay (inside valgrind)
def _replay_child(tree: str, rec_dir: str, evict_mb: int, limit: int) -> int:
    """Runs in the process valgrind starts: the recording replayed as bench/ike_cost.py's `_replay` does
    (the engine built as iked builds it, seeded randomness), once uncounted, then once with each datagram
    run through a ctypes callback, so inside libffi's ffi_call, the one C function whose calls callgrind
    counts (--toggle-collect: an exported symbol, found in a stripped interpreter such as Debian's, where
    the interpreter's own static functions have no names); the eviction read happens between those calls,
    so its own instructions and misses are not counted."""
    import hashlib
    import pickle
    import time

    import ike_cost  # first: it puts this repository first on sys.path (results_io.enter_repo)

    sys.path.insert(0, tree)
    assert "core_ike" not in sys.modules
    import core_ike
    from core_ike.daemon import runtime
    from core_ike.daemon.config import load
    from core_ike.daemon.runtime import Daemon
    from core_ike.ike import events as ev

    tune_gc = getattr(runtime, "tune_gc", None)
    if not str(Path(core_ike.__file__).resolve()).startswith(str(Path(tree).resolve())):
        raise SystemExit(f"core_ike came from {core_ike.__file__}, not from {tree}")
    out = Path(rec_dir)
    rec = pickle.loads((out / "datagrams.pickle").read_bytes())["datagrams"][:limit or None]
    buf = bytes(evict_mb * 2**20)
    # the cache simulation starts here (valgrind runs with --instr-atstart=no): interpreter start-up and
    # imports run uninstrumented, several times faster; the uncounted pass below warms what they would have
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True, timeout=120)
    established = 0
    for counted in (False, True):
        undo = ike_cost._seeded_randomness("bench")
        try:
            d = Daemon(load(out / "conf" / "iked.toml"))
            eng, st = d.engine, {"now": 1000.0, "n": 0}
            eng.set_wall_clock(time.time(), st["now"])
            if tune_gc is not None:
                tune_gc()  # iked's collector settings, as it sets them once started (older trees have none)
            prepare = getattr(eng, "prepare", None)  # as the transport calls it (older trees have none)

            def step(_: Any, item: Any, eng: Any = eng, d: Any = d, st: dict[str, Any] = st,
                     prepare: Any = prepare) -> None:
                data, local, remote = item
                st["now"] += 1e-4
                eng.receive(data, local, remote, st["now"])
                eng.datagrams_to_send()
                while (e := eng.next_event()) is not None:
                    st["n"] += isinstance(e, ev.IkeSaEstablished)
                    d.on_event(e)
                if prepare is not None:
                    prepare()
                eng.get_timer()

            counted_step = _through_ffi(step)
            for item in rec:
                hashlib.md5(buf).digest()  # evicts the simulated caches, not counted
                (counted_step if counted else step)(None, item)
            established = st["n"]
        finally:
            undo()
    print(f"replayed {len(rec)} datagrams, established {established}", flush=True)
    return 0


def _through_ffi(step: Any) -> Any:
    """`step(None, item)` run inside libffi's ffi_call (a ctypes callback), the function callgrind counts;
    an exception, which ctypes would print and drop at the callback's edge, is raised after it."""
    import ctypes

    current: list[Any] = []
    failed: list[BaseException] = []

    def callback() -> None:
        try:
            step(None, current[0])
        except BaseException as e:  # noqa: BLE001 (raised again below, outside the callback)
            failed.append(e)

    c_callback = ctypes.CFUNCTYPE(None)(callback)

    def run(_: Any, item: Any) -> None:
        current[:] = [item]
        c_callback()
        if failed:
            raise failed.pop()

    return run


KEY_POOL_FLAG = "--key-pool-child"
KEY_POOL_WARM = 64  # wake-ups run uncounted first: the pool in its steady state


def _key_pool_child(tree: str, evict_mb: int, n: int) -> int:
    """Runs in the process valgrind starts: `n` IKE_SA_INIT wake-ups of a responder's key pool alone, as the
    engine drives it (one X25519 pair taken, then `Engine.prepare`'s refill), the pairs made as live (OpenSSL's
    CSPRNG, no seeded randomness), each wake-up from cold caches, counted through libffi's ffi_call as the
    replay; KEY_POOL_WARM wake-ups uncounted first."""
    import hashlib

    sys.path.insert(0, tree)
    from core_ike.constants import DhId
    from core_ike.crypto.dh import KeyPool
    from core_ike.sysrng import SystemRng

    pool, rng, buf = KeyPool(), SystemRng(), bytes(evict_mb * 2**20)

    def wake_up(_: Any, __: Any) -> None:
        pool.take(DhId.CURVE25519, rng)
        pool.refill(rng)

    counted = _through_ffi(wake_up)
    for _ in range(KEY_POOL_WARM):
        wake_up(None, None)
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True, timeout=120)
    for _ in range(n):
        hashlib.md5(buf).digest()  # evicts the simulated caches, not counted
        counted(None, None)
    print(f"key pool: {n} wake-ups", flush=True)
    return 0


def key_pool_cost(tree: Path, n: int, evict_mb: int) -> dict[str, float]:
    """Instructions and LL misses per X25519 key pair taken from a responder's KeyPool (`_key_pool_child`)."""
    with tempfile.TemporaryDirectory(prefix="ike-cold-keys-") as work:
        cg = Path(work) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--LL={LL_BYTES},16,64", "--instr-atstart=no",
               "--collect-atstart=no", "--toggle-collect=ffi_call", f"--callgrind-out-file={cg}",
               sys.executable, str(Path(__file__).resolve()), KEY_POOL_FLAG, str(tree), str(evict_mb), str(n)]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
        text = cg.read_text(errors="replace") if cg.exists() else ""
        names, tot = re.search(r"^events: (.*)$", text, re.M), re.search(r"^(?:summary|totals): (.*)$", text, re.M)
        if p.returncode != 0 or names is None or tot is None:
            raise RuntimeError(f"key pool run by {tree} failed ({p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
    t = dict(zip(names.group(1).split(), (int(x) for x in tot.group(1).split()), strict=False))
    return {"instructions": t["Ir"] / n, "ll_misses": (t["ILmr"] + t["DLmr"] + t["DLmw"]) / n}


# ====================================================================== running and reading callgrind
def valgrind_missing() -> str | None:
    """Why this mode cannot run here (None when it can)."""
    gone = [t for t in ("valgrind", "callgrind_annotate", "callgrind_control") if not shutil.which(t)]
    return f"{' and '.join(gone)} not on PATH (Debian package valgrind)" if gone else None


def cold_replay(tree: Path, rec: Path, work: Path, evict_mb: int, limit: int = 0,
                ll_bytes: int = LL_BYTES, keep: Path | None = None) -> dict[str, Any]:
    """One callgrind replay of the first `limit` datagrams (0: all) of the recording `rec` by the source
    tree `tree`: totals and self cost per object and per function of the counted datagrams,
    {"datagrams", "established", "total": {event: n}, "objects": {obj: {...}}, "functions": {fn: {...}}};
    `keep`: where the callgrind output file is kept (for callgrind_annotate or kcachegrind)."""
    cg = work / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--LL={ll_bytes},16,64", "--instr-atstart=no", "--collect-atstart=no",
           "--toggle-collect=ffi_call", f"--callgrind-out-file={cg}",
           sys.executable, str(Path(__file__).resolve()), REPLAY_FLAG, str(tree), str(rec), str(evict_mb), str(limit)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
    m = re.search(r"replayed (\d+) datagrams, established (\d+)", p.stdout)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"callgrind replay by {tree} failed ({p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
    ann = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", f"--show={','.join(EVENTS)}",
                          str(cg)], capture_output=True, text=True, check=True).stdout
    objects: dict[str, dict[str, int]] = {}
    functions: dict[str, dict[str, int]] = {}
    for line in ann.splitlines():
        f = re.match(r"^\s*((?:(?:[\d,]+(?: \([^)]*\))?|\.)\s+){" + str(len(EVENTS)) + r"})(.*\S)\s*$", line)
        if f is None or "PROGRAM TOTALS" in line or ":" not in f.group(2):
            continue
        nums = re.findall(r"([\d,]+|\.)(?: \([^)]*\))?", f.group(1))[:len(EVENTS)]
        obj = re.search(r"\[([^\]]+)\]$", f.group(2))
        o = objects.setdefault(obj.group(1) if obj else "?", dict.fromkeys(EVENTS, 0))
        fn = functions.setdefault(f.group(2), dict.fromkeys(EVENTS, 0))
        for ev, x in zip(EVENTS, nums, strict=True):
            o[ev] += 0 if x == "." else int(x.replace(",", ""))
            fn[ev] += 0 if x == "." else int(x.replace(",", ""))
    total = {ev: sum(o[ev] for o in objects.values()) for ev in EVENTS}
    if not total["Ir"]:
        raise RuntimeError(f"callgrind counted no instruction in the replay by {tree} (no call of ffi_call "
                           "collected: is the ctypes callback still the counted region?)")
    entry: dict[str, dict[str, int]] = {}
    inclusive = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=yes",
                                f"--show={','.join(EVENTS)}", str(cg)], capture_output=True, text=True,
                               check=True).stdout
    for line in inclusive.splitlines():
        f = re.match(r"^\s*((?:(?:[\d,]+(?: \([^)]*\))?|\.)\s+){" + str(len(EVENTS)) + r"})(.*\S)\s*$", line)
        e = ENTRY_POINT.search(f.group(2)) if f is not None else None
        if f is None or e is None or "'" in f.group(2).split("[")[0]:  # callgrind's recursion copies: counted once
            continue
        # Class.method (a method) or module.function (a function), as Python calls it
        key = f"{(e.group(1) or e.group(2)).rsplit('::', 1)[-1]}.{e.group(3).removesuffix('__')}"
        nums = re.findall(r"([\d,]+|\.)(?: \([^)]*\))?", f.group(1))[:len(EVENTS)]
        d = entry.setdefault(key, dict.fromkeys(EVENTS, 0))
        for ev, x in zip(EVENTS, nums, strict=True):
            d[ev] += 0 if x == "." else int(x.replace(",", ""))
    if keep is not None:
        shutil.move(cg, keep)
    cg.unlink(missing_ok=True)
    return {"datagrams": int(m.group(1)), "established": int(m.group(2)), "total": total, "objects": objects,
            "functions": functions, "entry_points": entry}


def group_of(obj: str) -> str:
    """The share an object counts in: the interpreter, cryptography's Rust module (which links its own
    OpenSSL's libcrypto statically), the system libcrypto (hashlib and hmac), or the rest."""
    name = obj.rsplit("/", 1)[-1]
    if name.startswith("_rust") and "cryptography" in obj:
        return "cryptography (bundled OpenSSL libcrypto)"
    if re.match(r"(lib)?python3[\d.]*(\.so.*)?$", name) or "lib-dynload" in obj:
        return "python"
    if name.startswith("libcrypto"):
        return "system libcrypto (hashlib, hmac)"
    return "the rest (libc, ld.so, other extension modules)"


def per_datagram(r: dict[str, Any]) -> dict[str, Any]:
    n = max(1, r["datagrams"])
    t = r["total"]
    groups: dict[str, dict[str, int]] = {}
    for obj, o in r["objects"].items():
        g = groups.setdefault(group_of(obj), dict.fromkeys(EVENTS, 0))
        for ev in EVENTS:
            g[ev] += o[ev]
    misses = t["ILmr"] + t["DLmr"] + t["DLmw"]
    shares = {g: {"instructions": round(v["Ir"] / max(1, t["Ir"]), 4),
                  "ll_misses": round((v["ILmr"] + v["DLmr"] + v["DLmw"]) / max(1, misses), 4)}
              for g, v in sorted(groups.items(), key=lambda kv: -kv[1]["Ir"])}
    top = sorted(r["functions"].items(), key=lambda kv: -(kv[1]["ILmr"] + kv[1]["DLmr"] + kv[1]["DLmw"]))
    functions = {fn: {"ll_misses_instr": v["ILmr"] / n, "ll_misses_data": (v["DLmr"] + v["DLmw"]) / n,
                      "instructions": v["Ir"] / n} for fn, v in top[:TOP_FUNCTIONS]}
    entry = {k: {"ll_misses": (v["ILmr"] + v["DLmr"] + v["DLmw"]) / n, "instructions": v["Ir"] / n}
             for k, v in sorted(r.get("entry_points", {}).items(), key=lambda kv: -(kv[1]["ILmr"] + kv[1]["DLmr"]
                                                                                 + kv[1]["DLmw"]))}
    return {"instructions": t["Ir"] / n, "ll_misses": misses / n, "ll_misses_instr": t["ILmr"] / n,
            "ll_misses_data": (t["DLmr"] + t["DLmw"]) / n, "shares": shares, "functions": functions,
            "entry_points": entry,
            "datagrams": r["datagrams"], "established": r["established"]}


# ====================================================================== recording
def recording_name(auth: str, id_type: str) -> str:
    """The folder of a recording: AUTH, or AUTH-ID_TYPE for RSA with identities other than the DN."""
    return auth if auth == "psk" or id_type == "dn" else f"{auth}-{id_type}"


def ensure_recordings(auths: list[str], count: int, inflight: int, into: Path, id_type: str = "dn") -> dict[str, Path]:
    """`into`/AUTH (`recording_name`), recorded from the charon initiator unless a recording is already there;
    `id_type`: the RSA initiators' identities (bench/charon_initiator.py's `initiator`)."""
    need = [a for a in auths if not (into / recording_name(a, id_type) / "datagrams.pickle").exists()]
    if need:
        import charon_initiator as ci

        from scenarios.lab import cleanup_orphans, two_hosts

        cleanup_orphans()
        pki = ci.make_pki(count if "rsa" in need else 0)
        with two_hosts(prefix="ikecold", inner=False) as lab:
            for auth in need:
                (into / recording_name(auth, id_type)).mkdir(parents=True, exist_ok=True)
                r = ci.record(lab, auth, pki, count, inflight, into / recording_name(auth, id_type), id_type=id_type)
                print(f"  recorded {auth}: {r.established}/{count} IKE_SAs", file=sys.stderr, flush=True)
                if r.established != count:
                    raise RuntimeError(f"recording {auth}: {r.established} of {count} IKE_SAs established")
    return {a: into / recording_name(a, id_type) for a in auths}


# ====================================================================== report
NOTE = ("What it measures: per datagram received, the instructions and the simulated last-level cache misses "
        "(instruction reads, data reads and writes) of our engine and the daemon's event handling (as "
        "bench/ike_cost.py's replay: no sockets, no log handler), each datagram starting from a cache that a "
        "read of a larger buffer has evicted, as a responder idle between datagrams wakes up; deterministic "
        "(repeat runs agree within about 0.2 %). What it does not measure: wall or CPU time (a simulated cache "
        "with a fixed geometry, no real memory latency, branch prediction, prefetch or TLB, no kernel, "
        "socket or event loop work); it is a proxy for the cold wake-up cost, for comparing two trees.")


def _label(auth: str, what: str, side: str) -> str:
    return f"{what} per datagram, {auth.upper()}, {side} (callgrind, cold {LL_BYTES // 2**20} MB LL)"


def report(a: Any, res: dict[str, dict[str, list[dict[str, Any]]]], before_name: str | None) -> tuple[
        list[dict[str, Any]], str]:
    figures: list[dict[str, Any]] = []
    lines = ["per datagram (medians over rounds); shares of instructions / of LL misses per object group"]
    for auth, sides in res.items():
        for side, runs in sides.items():
            if not runs:
                continue
            name = "this tree" if side == "ours" else f"before ({before_name})"
            pd = runs[len(runs) // 2]
            lines.append(f"{auth.upper():4} {name}: {pd['datagrams']} datagrams, {pd['established']} IKE_SAs; "
                         f"instructions {pd['instructions']:.0f}, LL misses {pd['ll_misses']:.0f} "
                         f"(instruction {pd['ll_misses_instr']:.0f}, data {pd['ll_misses_data']:.0f})")
            for g, s in pd["shares"].items():
                lines.append(f"       {g:48} {100 * s['instructions']:5.1f} % / {100 * s['ll_misses']:5.1f} %")
            if a.entry_points:
                lines.append("       cryptography calls by LL misses per datagram (inclusive: the OpenSSL code below "
                             "each, and Python it calls back): misses; instructions")
                for fn, v in list(pd["entry_points"].items())[:a.entry_points]:
                    lines.append(f"       {v['ll_misses']:7.1f}; {v['instructions']:10.0f}  {fn}")
            if a.functions:
                lines.append("       functions by LL misses per datagram (self): instruction + data = misses; instructions")
                for fn, v in list(pd["functions"].items())[:a.functions]:
                    lines.append(f"       {v['ll_misses_instr']:7.1f} + {v['ll_misses_data']:7.1f} = "
                                 f"{v['ll_misses_instr'] + v['ll_misses_data']:7.1f}; {v['instructions']:8.0f}  {fn}")
        ours, bef = sides.get("ours", []), sides.get("before", [])
        for key, what, unit in (("instructions", "instructions", "instructions"),
                                ("ll_misses", "LL misses", "misses"),
                                ("ll_misses_instr", "LL instruction-read misses", "misses"),
                                ("ll_misses_data", "LL data misses", "misses")):
            so = results_io.sample([r[key] for r in ours], unit, 1)
            sb = results_io.sample([r[key] for r in bef], unit, 1)
            ratio = so["median"] / sb["median"] if so and sb and sb["median"] else None
            f = results_io.figure(f"ike_cold_{auth}_{key}", _label(auth, what, "this tree"), so, None, "lower",
                                  [f"ratio: this tree / {before_name}, same recording and settings"] if ratio else [],
                                  readme=False, ratio=ratio)
            if key == "instructions":
                f["shares"] = ours[len(ours) // 2]["shares"] if ours else None
                f["entry_points"] = ours[len(ours) // 2]["entry_points"] if ours else None
            figures.append(f)
            if bef:
                fb = results_io.figure(f"ike_cold_{auth}_{key}_before", _label(auth, what, f"before {before_name}"),
                                       sb, None, "lower", readme=False)
                if key == "instructions":
                    fb["shares"] = bef[len(bef) // 2]["shares"]
                    fb["entry_points"] = bef[len(bef) // 2]["entry_points"]
                figures.append(fb)
    return figures, "\n".join(lines)


def _before_tree(before: str | None) -> tuple[Path | None, bool]:
    """The --before tree (a directory given, or REV unpacked into a temporary one) and whether it was given."""
    if before is None:
        return None, False
    if Path(before).is_dir():
        return Path(before).resolve(), True
    return results_io.git_tree(before, prefix="ike-cold-before-"), False


def _key_pool_main(a: Any, rounds: int) -> int:
    if why := valgrind_missing():
        print(f"ike_cold: skipped: {why}", file=sys.stderr)
        return 3
    before, given = _before_tree(a.before)
    try:
        for rnd, side in results_io.interleave(rounds, ["ours", "before"] if before else ["ours"]):
            tree = ROOT if side == "ours" else before
            assert tree is not None
            c = key_pool_cost(tree, a.key_pool, a.evict)
            print(f"round {rnd + 1} {side}: {c['instructions']:.0f} instructions, {c['ll_misses']:.0f} LL misses "
                  f"per X25519 key pair taken ({a.key_pool} wake-ups)", flush=True)
    finally:
        if before is not None and not given:
            shutil.rmtree(before, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--auth", default="psk,rsa")
    ap.add_argument("--count", type=int, default=100, help="IKE_SAs recorded per auth (when recording)")
    ap.add_argument("--inflight", type=int, default=4, help="IKE_SAs the charon initiator keeps in flight (recording)")
    ap.add_argument("--recording", type=Path, help="reuse DIR/psk, DIR/rsa (recorded there when absent)")
    ap.add_argument("--id-type", choices=("dn", "fqdn"), default="dn",
                    help="the RSA initiators' identities: their certificates' subject DN (ID_DER_ASN1_DN) or their "
                         "dNSName subjectAltName (ID_FQDN; recorded in DIR/rsa-fqdn)")
    ap.add_argument("--before", metavar="REV|DIR", help="also replay by REV (git archive) or a source tree DIR")
    ap.add_argument("--datagrams", type=int, default=300,
                    help="replay the recording's first N datagrams (0: all; under callgrind about 0.3 s each)")
    ap.add_argument("--evict", type=int, default=4, help="MB read between datagrams (larger than the LL cache)")
    ap.add_argument("--entry-points", type=int, default=0, metavar="N",
                    help="also list the N calls into cryptography with the most LL misses per datagram (inclusive)")
    ap.add_argument("--functions", type=int, default=0, metavar="N",
                    help=f"also list the N functions with the most LL misses per datagram (self cost; N <= {TOP_FUNCTIONS})")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep callgrind's output files in DIR (callgrind.AUTH.SIDE.ROUND; callgrind_annotate)")
    ap.add_argument("--key-pool", type=int, default=0, metavar="N",
                    help="instead of the replay: N IKE_SA_INIT wake-ups of a responder's key pool alone (an X25519 "
                         "pair taken, then the refill; made as live, not seeded), cold caches before each: "
                         "instructions and LL misses per pair, by this tree and --before, interleaved (N a multiple of "
                         "the pool's batch, 8: each batch's cold start counted as often as live)")
    results_io.add_args(ap, rounds=1)
    a = ap.parse_args(args_in)
    rounds = results_io.rounds_of(a)
    if a.key_pool:
        return _key_pool_main(a, rounds)
    if a.quick:
        a.count, a.datagrams = min(a.count, 4), min(a.datagrams or 8, 8)
    if why := valgrind_missing():
        print(f"ike_cold: skipped: {why}", file=sys.stderr)
        return 3
    header = results_io.start_header(args_in, "bench/ike_cold.py")
    work = Path(tempfile.mkdtemp(prefix="ike-cold-"))
    before, given = _before_tree(a.before)
    try:
        recs = ensure_recordings(a.auth.split(","), a.count, a.inflight, a.recording or work / "rec", a.id_type)
        res: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for auth in recs:
            rec_dir, auth = recs[auth], recording_name(auth, a.id_type)  # figures named rsa-fqdn apart from rsa's
            res[auth] = {"ours": [], "before": []}
            for rnd, side in results_io.interleave(rounds, ["ours", "before"] if before else ["ours"]):
                tree = ROOT if side == "ours" else before
                assert tree is not None
                keep = None
                if a.keep is not None:
                    a.keep.mkdir(parents=True, exist_ok=True)
                    keep = a.keep / f"callgrind.{auth}.{side}.{rnd + 1}"
                pd = per_datagram(cold_replay(tree, rec_dir, work, a.evict, a.datagrams, keep=keep))
                res[auth][side].append(pd)
                print(f"  round {rnd + 1} {auth} {side}: {pd['instructions']:.0f} instructions, "
                      f"{pd['ll_misses']:.0f} LL misses per datagram", file=sys.stderr, flush=True)
            for side in res[auth]:
                res[auth][side].sort(key=lambda r: r["instructions"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if before is not None and not given:
            shutil.rmtree(before, ignore_errors=True)
    bname = None if a.before is None else (str(before) if given else a.before)
    figures, text = report(a, res, bname)
    notes = [NOTE, f"simulated LL: {LL_BYTES // 2**20} MB, 16-way, 64-octet lines; {a.evict} MB read before each "
             "datagram; the replay runs once uncounted first; both trees replay the same recording with the same "
             f"seeded randomness; RSA initiators' identities: {a.id_type}", f"trees: this tree {header['commit']}" + (f", before {bname}" if bname else "")]
    header = results_io.finish_header(header, a.quick, rounds)
    results_io.write_results(a.out, "ike_cold", header, figures, text, notes)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == REPLAY_FLAG:
        sys.exit(_replay_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    if len(sys.argv) == 5 and sys.argv[1] == KEY_POOL_FLAG:
        sys.exit(_key_pool_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    sys.exit(main())
