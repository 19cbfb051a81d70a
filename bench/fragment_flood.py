#!/usr/bin/env python3
"""IKE fragment flood: incomplete RFC 7383 fragment sets against half-open IKE_SAs, and what
they cost the responder's memory.

An attacker engine completes IKE_SA_INIT with a real responder :class:`core_ike.ike.engine.Engine` (so it
holds the keys and its fragments pass the ICV), never sends IKE_AUTH, and then sends ``--sets`` fragment
sets of ``--set-kib`` KiB each: fragments 2..N (N <= 32) of an IKE_AUTH request whose fragment 1 never
comes. Everything runs in one process with a fake clock; the datagrams go straight to
``Engine.receive`` (no sockets), generated one set at a time (the attacker keeps nothing).

Scenarios:

- ``mids`` (default): one half-open IKE_SA, set *i* carries Message ID *i* (1, 2, 3, ...);
- ``sas``: ``--sas`` half-open IKE_SAs, each gets sets at the Message ID it expects (inside the window),
  round robin: what the engine-wide budget is for.

Measured: VmRSS after setup and after the flood (``gc.collect()`` first), the plaintext octets the engine
holds in incomplete reassemblies (walked), its accounted octets (``Engine.frag_budget``: current and peak),
the ``drop-fragment-*`` counters, the responder's time in ``Engine.receive``; then the clock moves past the
half-open timeout and the same is measured again. Each run is a fresh process; ``--before REV`` also runs
the flood against ``git archive REV`` of this repository, for a before/after table.

    bench/fragment_flood.py --scenario mids                    # 6000 sets of 62 KiB, one half-open IKE_SA
    bench/fragment_flood.py --before a4837d6^                  # ... and the same before the fix
    bench/fragment_flood.py --scenario sas --sas 1500 --sets 1500
    bench/fragment_flood.py --out bench/results/fragment_flood.txt    # both scenarios, 3 rounds each
    bench/fragment_flood.py --quick                                   # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
if _VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])

PSK = "fragment-flood-shared-secret-0123456789"
VICTIM, ATTACKER = "192.0.2.2", "192.0.2.1"
MIB = 1024 * 1024
sys.path.insert(0, str(ROOT / "bench"))

import results_io  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rng_kw(engine_cls: Any) -> dict[str, Any]:
    """The Engine's random source where it takes one (a --before tree may predate that input)."""
    p = inspect.signature(engine_cls).parameters.get("rng")
    if p is None or p.default is not inspect.Parameter.empty:
        return {}
    try:
        from core_ike.sysrng import SystemRng
    except ImportError:
        from core_ike.io.sysrng import SystemRng  # type: ignore[no-redef]
    return {"rng": SystemRng()}


def receiver(sa: Any) -> Any:
    """An IKE_SA's fragment receiver (in its task manager, or on the SA in older trees), or None."""
    tm = getattr(sa, "tm", None)
    return getattr(tm, "fragments", None) if tm is not None else getattr(sa, "fragments", None)


# ====================================================================== the flood (one process)
class Flood:
    """A responder engine (the victim) and an attacker engine with `n_sas` half-open IKE_SAs to it."""

    def __init__(self, n_sas: int, engine_kw: dict[str, Any]) -> None:
        from core_ike.ike.config import AuthConfig, IkeConfig
        from core_ike.ike.creds import Credentials
        from core_ike.ike.engine import Engine, EngineConfig
        from core_ike.ike.identity import Identity

        creds_v, creds_a = Credentials(), Credentials()
        for c in (creds_v, creds_a):
            c.add_psk(PSK, "attacker@flood", "victim@flood")
        auth_a = (AuthConfig("psk", Identity.parse("attacker@flood")), AuthConfig("psk", Identity.parse("victim@flood")))
        cfg_a = IkeConfig("flood", local_addrs=[ATTACKER], remote_addrs=[VICTIM], local=auth_a[0], remote=auth_a[1],
                          proposals="aes128gcm16-prfsha256-x25519")
        cfg_v = IkeConfig("gw", local_addrs=[VICTIM], remote_addrs=["%any"], local=auth_a[1], remote=auth_a[0],
                          proposals="aes128gcm16-prfsha256-x25519")
        # a real attacker answers COOKIEs (it has a real address); the bench skips that round trip
        kw = {"cookie_threshold": 10**9, "cookie_threshold_ip": 10**9, **engine_kw}
        rng = rng_kw(Engine)
        self.victim = Engine([cfg_v], creds_v, EngineConfig(**kw), **rng)
        self.attacker = Engine([cfg_a], creds_a, EngineConfig(), **rng)
        self.now = 1000.0
        self.receive_s = 0.0
        self.pairs: list[tuple[Any, Any]] = []  # (attacker's SA, victim's SA)
        for _ in range(n_sas):
            sa = self.attacker.initiate("flood", now=self.now, remote=(VICTIM, 500))
            self._pump()
            (vsa,) = [s for s in self.victim.ike_sas() if s.spi_i == sa.spi_i]
            assert sa.out_prot is not None and vsa.in_prot is not None and not vsa.established
            self.pairs.append((sa, vsa))

    def _pump(self) -> None:
        """IKE_SA_INIT both ways; the attacker's IKE_AUTH is never delivered."""
        for _ in range(4):
            for data, _local, remote in self.attacker.datagrams_to_send():
                if data[18] == 34:  # IKE_SA_INIT
                    self.victim.receive(data, remote, (ATTACKER, 500), self.now)
                    self.victim.prepare()  # as the transport does once the replies left (keys, KeyPool)
            for data, _local, remote in self.victim.datagrams_to_send():
                self.attacker.receive(data, remote, (VICTIM, 500), self.now)

    def one_set(self, sa: Any, vsa: Any, mid: int, set_bytes: int, frag_size: int) -> int:
        """Fragments 2..N of an IKE_AUTH request of `set_bytes` octets; returns the datagrams sent."""
        from core_ike.codec.message import encode_message
        from core_ike.codec.payloads import VendorIdPayload

        msg = sa.new_message(35, False, mid)  # IKE_AUTH
        msg.payloads.append(VendorIdPayload(bytes(set_bytes)))
        frags = encode_message(msg, sa.out_prot, frag_size)[1:]
        t = time.perf_counter()
        for d in frags:
            self.victim.receive(d, vsa.local, vsa.remote, self.now)
        self.receive_s += time.perf_counter() - t
        self.victim.datagrams_to_send()  # nothing is expected; keep the list empty anyway
        return len(frags)

    def held(self) -> dict[str, int]:
        """Plaintext octets and messages in incomplete reassemblies (works before and after the fix)."""
        octets = messages = 0
        for s in self.victim.ike_sas():
            r = getattr(receiver(s), "reassembler", None) or getattr(s, "reassembler", None)
            for part in getattr(r, "_partials", {}).values():
                messages += 1
                octets += sum(len(p) for p in part.parts.values())
        budget = getattr(self.victim, "frag_budget", None)
        return {"plaintext": octets, "messages": messages,
                "accounted": budget.used if budget is not None else -1,
                "accounted_peak": budget.peak if budget is not None else -1}

    def expire(self) -> None:
        """Move the clock past the half-open timeout, firing the victim's timers."""
        end = self.now + self.victim.cfg.half_open_timeout + 1
        while (t := self.victim.get_timer()) is not None and t <= end:
            self.now = max(self.now, t)
            self.victim.handle_timer(self.now)
        self.now = end


def run(scenario: str, sets: int, set_kib: float, frag_size: int, n_sas: int, rate: float,
        engine_kw: dict[str, Any]) -> dict[str, Any]:
    """One flood in this process; returns the figures."""
    import core_ike

    flood = Flood(n_sas if scenario == "sas" else 1, engine_kw)
    gc.collect()
    out: dict[str, Any] = {"scenario": scenario, "sets": sets, "set_kib": set_kib, "sas": len(flood.pairs),
                           "src": str(Path(core_ike.__file__).resolve().parents[1]),
                           "rss_setup": rss_mib()}
    set_bytes = int(set_kib * 1024)
    datagrams = 0
    held_max = 0
    t0 = time.perf_counter()
    for i in range(sets):
        if scenario == "sas":
            sa, vsa = flood.pairs[i % len(flood.pairs)]
            mid = vsa.peer_mid  # the Message ID it expects: inside the window
        else:
            sa, vsa = flood.pairs[0]
            mid = 1 + i
        datagrams += flood.one_set(sa, vsa, mid, set_bytes, frag_size)
        flood.now += 1.0 / rate
        if i % 500 == 0:
            held_max = max(held_max, flood.held()["plaintext"])
    out["seconds"] = time.perf_counter() - t0
    out["receive_s"] = flood.receive_s
    out["datagrams"] = datagrams
    out["sim_seconds"] = sets / rate
    gc.collect()
    out["rss_flood"] = rss_mib()
    out["held_flood"] = flood.held()
    out["held_plaintext_max"] = max(held_max, out["held_flood"]["plaintext"])
    out["counters"] = {k: v for k, v in sorted(flood.victim.counters.items()) if k.startswith("drop-")}
    flood.expire()
    gc.collect()
    out["rss_expired"] = rss_mib()
    out["held_expired"] = flood.held()
    out["half_open_left"] = flood.victim.half_open
    return out


# ====================================================================== orchestration
def _child(args: argparse.Namespace, src: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--src", str(src), "--scenario", args.scenario,
           "--sets", str(args.sets), "--set-kib", str(args.set_kib), "--frag-size", str(args.frag_size),
           "--sas", str(args.sas), "--rate", str(args.rate)]
    for k in ("frag_max_per_sa", "frag_max_total"):
        if getattr(args, k) is not None:
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"flood run against {src} failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def export(rev: str, into: Path) -> Path:
    """`git archive REV` of this repository, unpacked (the working tree stays untouched)."""
    return results_io.git_tree(rev, into / "tree")


def _kib(n: int) -> str:
    return "n/a" if n < 0 else f"{n / 1024:.0f}"


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = (f"{'tree':<10} {'sets':>5} {'SAs':>4} {'datagrams':>9} {'RSS setup':>9} {'RSS flood':>9} "
            f"{'growth':>7} {'RSS expired':>11} {'held KiB':>8} {'acct KiB':>8} {'acct peak':>9} "
            f"{'recv s':>6}   (RSS in MiB)")
    out = [head]
    for name, r in rows:
        out.append(f"{name:<10} {r['sets']:>5} {r['sas']:>4} {r['datagrams']:>9} {r['rss_setup']:>9.1f} "
                   f"{r['rss_flood']:>9.1f} {r['rss_flood'] - r['rss_setup']:>7.1f} {r['rss_expired']:>11.1f} "
                   f"{r['held_flood']['plaintext'] / 1024:>8.0f} {_kib(r['held_flood']['accounted']):>8} "
                   f"{_kib(r['held_flood']['accounted_peak']):>9} {r['receive_s']:>6.1f}")
    for name, r in rows:
        drops = ", ".join(f"{k}={v}" for k, v in r["counters"].items()) or "none counted"
        out.append(f"{name}: drops: {drops}; after the half-open timeout: {r['held_expired']['plaintext']} "
                   f"octets held, {r['half_open_left']} half-open")
    return "\n".join(out)


def _figures(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> list[dict[str, Any]]:
    figs = []
    if runs.get("mids"):
        rs = runs["mids"]
        figs.append(results_io.figure(
            "fragment_flood_mids_rss", f"RSS growth under {rs[0]['sets']} incomplete IKE fragment sets of "
            f"{args.set_kib:g} KiB against one half-open IKE_SA (Message IDs 1, 2, 3, ...)",
            results_io.sample([r["rss_flood"] - r["rss_setup"] for r in rs], "MiB", 1),
            differences=["in-process: Engine.receive fed directly, fake clock; strongSwan not measured"]))
        figs.append(results_io.figure(
            "fragment_flood_mids_held", "fragment plaintext held at the end of that flood",
            results_io.sample([r["held_flood"]["plaintext"] / 1024 for r in rs], "KiB", 0), readme=False))
    if runs.get("sas"):
        rs = runs["sas"]
        figs.append(results_io.figure(
            "fragment_flood_sas_peak", f"accounted reassembly octets, peak, {rs[0]['sets']} sets over "
            f"{rs[0]['sas']} half-open IKE_SAs (each at its expected Message ID; frag_max_total "
            f"{(args.frag_max_total or 64 * MIB) / MIB:g} MiB)",
            results_io.sample([r["held_flood"]["accounted_peak"] / 1024 for r in rs], "KiB", 0),
            differences=["in-process: Engine.receive fed directly, fake clock; strongSwan not measured"]))
        figs.append(results_io.figure(
            "fragment_flood_sas_rss", "RSS growth in that flood",
            results_io.sample([r["rss_flood"] - r["rss_setup"] for r in rs], "MiB", 1), readme=False))
    return figs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--scenario", choices=("mids", "sas", "both"), default="both")
    ap.add_argument("--sets", type=int, help="incomplete fragment sets sent (default 6000 mids, 3000 sas)")
    ap.add_argument("--set-kib", type=float, default=62.0, help="size of each set (fragments 2..N)")
    ap.add_argument("--frag-size", type=int, default=2100, help="IKE datagram size of the fragments")
    ap.add_argument("--sas", type=int, help="half-open IKE_SAs (scenario sas; default 1500)")
    ap.add_argument("--rate", type=float, default=1000.0, help="sets per simulated second (fake clock)")
    ap.add_argument("--frag-max-per-sa", dest="frag_max_per_sa", type=int, help="EngineConfig override")
    ap.add_argument("--frag-max-total", dest="frag_max_total", type=int, help="EngineConfig override")
    ap.add_argument("--before", metavar="REV", help="also run against `git archive REV` (e.g. the commit before a fix)")
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    results_io.add_args(ap, rounds=3)
    args = ap.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(args.src))
        # drop lines are formatted as in a daemon, then discarded
        logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115 - open while the child runs
        kw = {k: getattr(args, k) for k in ("frag_max_per_sa", "frag_max_total") if getattr(args, k) is not None}
        print(json.dumps(run(args.scenario, args.sets, args.set_kib, args.frag_size, args.sas, args.rate, kw)))
        return
    header = results_io.start_header(argv)
    rounds = results_io.rounds_of(args)
    scenarios = ("mids", "sas") if args.scenario == "both" else (args.scenario,)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    text: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        before_src = export(args.before, Path(tmp)) if args.before else None
        for scenario in scenarios:
            sargs = argparse.Namespace(**vars(args))
            sargs.scenario = scenario
            sargs.sets = args.sets or ((200 if args.quick else 6000) if scenario == "mids" else (100 if args.quick else 3000))
            sargs.sas = args.sas or (50 if args.quick else 1500)
            rows: list[tuple[str, dict[str, Any]]] = []
            if before_src is not None:
                rows.append(("before", _child(sargs, before_src)))
            for i in range(rounds):
                r = _child(sargs, ROOT)
                runs[scenario].append(r)
                rows.append((f"round {i + 1}", r))
            text += [f"fragment flood ({scenario}): {sargs.sets} incomplete sets of {args.set_kib:g} KiB "
                     f"(fragments 2..N of {args.frag_size}-octet datagrams) "
                     + ("against one half-open IKE_SA, Message IDs 1, 2, 3, ..." if scenario == "mids"
                        else f"over {sargs.sas} half-open IKE_SAs, each at its expected Message ID")
                     + f"; {args.rate:g} sets per simulated second; in-process, Engine.receive fed directly"
                     + (f"; before = {args.before}" if args.before else ""),
                     table(rows), ""]
    header = results_io.finish_header(header, args.quick, rounds)
    results_io.write_results(args.out, "fragment_flood", header, _figures(runs, args), "\n".join(text))


if __name__ == "__main__":
    main()
