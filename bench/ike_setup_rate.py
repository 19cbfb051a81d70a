#!/usr/bin/env python3
"""IKE_SA setup rate, responder CPU per IKE_SA and responder memory per IKE_SA: our iked vs charon.

What is measured: *childless* IKE_SAs (RFC 6023; IKE_SA_INIT + IKE_AUTH, no CHILD_SA, so no data plane is
involved on either side), proposal aes128gcm16-prfsha256-x25519, authentication PSK and RSA-2048 raw
public keys (ID_KEY_ID). Two namespaces (``two_hosts``): the load driver in alice, the responder in bob.
Each (auth, responder) pair gets a fresh responder; both responders are driven by the same driver in the
same run:

- the driver (``driver`` subcommand, run inside alice) keeps ``--inflight`` setups in flight, every IKE_SA
  with its own SPIs and (PSK) its own identity, sent from ``--source-ips`` addresses round-robin (like many
  clients; it keeps the per-IP half-open count under the responders' per-IP COOKIE thresholds).
  ``--driver template`` (the default, bench/ike_template_driver.py) sends the sans-IO ``Engine``
  initiator's own messages, kept as templates, and computes per IKE_SA only what an initiator must (DH,
  keys, AUTH, SK payload): about a third of the Engine's CPU per IKE_SA with PSK, so that the responder's
  workers, not the driver, take most of the 2 CPUs; ``--driver engine`` (bench/ike_driver.py) runs the
  ``Engine`` per IKE_SA. ``--drivers 2`` splits the load over two driver processes if one saturates (the
  driver reports its own CPU per SA and how busy it was);
- ``--impl pair-wN`` measures ours with workers = 1 and with workers = N in the same batch (two addresses
  on bob, IKE_SAs sent 1 : N, so that each worker process carries the same rate at the same moment):
  the CPU-normalised capacity ratio without the two batches' different load levels and moments
  (measure_pair);
- a warm-up batch (``--warmup``) first, then the measured ``--count`` SAs, which are kept: the responder
  holds all of them when its RSS is read;
- responder CPU = utime+stime of the responder process (/proc/<pid>/stat, all threads) over the measured
  batch; memory = VmRSS delta / SAs;
- our iked: ``dataplane = "none"``, log level warning, cookie threshold raised, ``unique = "no"``;
- charon 5.9.8: kernel-netlink without kernel-libipsec (no CHILD_SAs, so no TUN), openssl loaded before
  gmp (faster RSA), logging default 0,
  ``unique = never``, cookie/block thresholds raised, ``threads = 16``, IKE_SA hash table 4096 x 16
  segments (strongSwan's advice for many SAs; its default is one bucket).

Usage (root): ``.venv/bin/python bench/ike_setup_rate.py [--count 2000] [--inflight 32]``.
Writes the table to stdout; ``--out bench/results/ike_setup_rate.txt`` also writes it there, with its .json.
``--before REV`` (or a source tree's directory) also runs our responder from REV beside each of ours, interleaved;
``--driver-cpus`` / ``--responder-cpus`` pin the driver and the responder's processes to CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

import results_io  # noqa: E402
from ike_driver import PROPOSAL, PSK, RESP_IP, RESP_PSK_ID, drive  # noqa: E402
from ike_setup_report import capacity_figures, driver_text, figures_of, table  # noqa: E402, F401

DRIVERS = ("template", "engine")  # bench/ike_template_driver.py (the default), bench/ike_driver.py

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ====================================================================== the orchestration (root namespace)
@dataclass
class Result:
    impl: str
    auth: str
    count: int
    established: int  # as the driver saw them
    held: int  # as the responder lists them after the batch (warm-up included)
    seconds: float
    resp_cpu: float  # seconds over the measured batch
    rss_delta_kib: float
    driver_cpu: float
    drivers: int
    worker_cpu: list[float] = dataclasses.field(default_factory=list)  # per worker process (ours, workers > 1)
    # context switches of the responder's processes over the batch: voluntary (it slept: one wake-up each)
    # and involuntary (it was preempted: another process wanted its CPU), and moves to another CPU (each
    # leaves its cached state behind)
    switches: tuple[int, int, int] = (0, 0, 0)

    @property
    def capacity(self) -> float:
        """CPU-normalised capacity (IKE_SAs per second): the batch over the CPU time of the busiest process,
        the rate if each process had a core of its own (one process: established / its CPU seconds)."""
        busiest = max(self.worker_cpu) if self.worker_cpu else self.resp_cpu
        return self.established / busiest if busiest > 0 else 0.0

    @property
    def rate(self) -> float:
        return self.established / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms(self) -> float:
        return 1000.0 * self.resp_cpu / max(1, self.established)

    @property
    def kib(self) -> float:
        return self.rss_delta_kib / max(1, self.established)

    @property
    def driver_ms(self) -> float:
        return 1000.0 * self.driver_cpu / max(1, self.established)

    @property
    def driver_busy(self) -> float:
        return self.driver_cpu / (self.seconds * self.drivers) if self.seconds > 0 else 0.0


def proc_cpu(pid: int) -> float:
    """CPU seconds of every thread of `pid`: /proc/PID/task/*/schedstat counts nanoseconds (where
    /proc/PID/stat counts 10 ms ticks, too coarse for one worker's share of a batch)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((t / "schedstat").read_text().split()[0])
    return total / 1e9


def proc_switches(pid: int) -> tuple[int, int, int]:
    """(voluntary, involuntary) context switches and CPU migrations of every thread of `pid`
    (/proc/PID/status, /proc/PID/sched)."""
    vol = invol = moves = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (t / "sched").read_text().splitlines():
                if line.startswith("se.nr_migrations"):
                    moves += int(line.split()[-1])
            for line in (t / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol += int(line.split()[1])
    return vol, invol, moves


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def find_pid(root: int, comm: str) -> int:
    """`root` or its first descendant whose /proc/<pid>/comm starts with `comm`."""
    todo = [root]
    while todo:
        pid = todo.pop(0)
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith(comm):
                return pid
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            todo += [int(k) for k in kids]
    raise RuntimeError(f"no process {comm!r} under {root}")


class Responder:
    impl = ""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int: raise NotImplementedError

    def pids(self) -> list[int]:
        """The responder's processes whose CPU counts (the first is the one pid() names)."""
        return [self.pid()]

    def workers(self) -> list[int]:
        """The processes that do the work when there are several (ours with workers > 1), else []."""
        return []
    def held(self) -> int: raise NotImplementedError


# the kernel's sched_prio_to_weight for nice -10..0 (kernel/sched/core.c): a nice value's CPU weight
NICE_WEIGHTS = {-10: 9548, -9: 7620, -8: 6100, -7: 4904, -6: 3906, -5: 3121, -4: 2501, -3: 1991, -2: 1586,
                -1: 1277, 0: 1024}


def autogroup_nice(processes: int) -> int:
    """The nice value whose weight is nearest `processes` times nice 0's (-3 for 2: 1991 / 1024)."""
    return min(NICE_WEIGHTS, key=lambda n: abs(NICE_WEIGHTS[n] - 1024 * processes))


def set_autogroup_weight(pid: int, processes: int) -> int | None:
    """Give the autogroup (session) of `pid` about `processes` times a single process's CPU weight under
    contention, by its autogroup nice value (/proc/PID/autogroup; sched(7), "The autogroup feature").
    The lab starts each daemon in a session of its own, and the scheduler shares the CPUs between
    sessions first: the N workers of one daemon would otherwise share what a single-process daemon gets
    alone whenever the machine has other work (and this one is shared). Returns the nice value set, or
    None where there is no autogroup."""
    nice = autogroup_nice(processes)
    path = Path(f"/proc/{pid}/autogroup")
    if not Path("/proc/sys/kernel/sched_autogroup_enabled").exists() or not path.exists():
        return None
    if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
        return None
    path.write_text(str(nice))
    return nice


def iked_responder_conf(secrets: str, local: str, remote: str, *, workers: int | None = None,
                        addr: str = RESP_IP, proposal: str = PROPOSAL, log_level: str = "warning") -> str:
    """iked's TOML as the benchmarks' responder on ``addr``: no data plane, COOKIEs off as on charon's side
    (its cookie_threshold and cookie_threshold_ip are raised alike), ``secrets`` (TOML tables), and one
    connection ``bench`` from any address with the ``local`` and ``remote`` auth tables."""
    daemon = (f'[daemon]\nlisten = ["{addr}"]\ncontrol = "@CTL@"\ndataplane = "none"\nlog_level = "{log_level}"\n'
              'cookie_threshold = 1000000\ncookie_threshold_ip = 1000000\n')
    if workers is not None:
        daemon += f"workers = {workers}\n"
    conn = (f'[connections.bench]\nlocal_addrs = ["{addr}"]\nremote_addrs = ["%any"]\n'
            f'proposals = "{proposal}"\nunique = "no"\nlocal = {local}\nremote = {remote}\n')
    return "\n".join([daemon, secrets, conn])


class OursResponder(Responder):
    impl = "ours"

    def __init__(self, lab: Any, auth: str, keys: dict[str, Any], workers: int = 1, tree: Path | None = None,
                 addr: str = RESP_IP) -> None:
        from scenarios.lab.iked import Iked

        self.n_workers = workers
        self.tree = tree  # run from this source tree (`--before`), else this one
        side = "ours" if tree is None else "before"
        self.impl = side if workers == 1 else f"{side}-w{workers}"
        files: dict[str, bytes | str] = {}
        if auth == "psk":
            secrets = f'[[secrets.ike]]\nsecret = "{PSK}"\n'
            local = f'{{ auth = "psk", id = "{RESP_PSK_ID}" }}'
            remote = '{ auth = "psk", id = "%any" }'
        else:
            files["resp.key"] = keys["resp"].private_pem
            files["driver.pub"] = keys["driver"].public_pem
            secrets = '[[secrets.private]]\nfile = "resp.key"\n[[secrets.pubkey]]\nfile = "driver.pub"\n'
            local = f'{{ auth = "pubkey", id = "{keys["resp"].identity}" }}'
            remote = f'{{ auth = "pubkey", id = "{keys["driver"].identity}" }}'
        self.addr = addr
        name = f"iked-{auth}" if addr == RESP_IP else f"iked-{auth}-{addr.rsplit('.', 1)[1]}"
        self.iked = Iked(lab, "bob", iked_responder_conf(secrets, local, remote, workers=workers, addr=addr),
                         name=name, files=files)

    def start(self) -> None:
        self.iked.start(tree=self.tree)
        if self.n_workers > 1:
            set_autogroup_weight(self.pid(), self.n_workers)

    def stop(self) -> None:
        self.iked.stop()

    def pid(self) -> int:
        return find_pid(self.iked.proc.pid, "python")

    def pids(self) -> list[int]:
        root = self.pid()
        deadline = time.monotonic() + 30
        while True:  # the supervisor and its workers, once all run
            kids = [int(k) for k in Path(f"/proc/{root}/task/{root}/children").read_text().split()]
            if len(kids) >= (self.n_workers if self.n_workers > 1 else 0) or time.monotonic() > deadline:
                return [root, *kids]
            time.sleep(0.05)

    def workers(self) -> list[int]:
        return self.pids()[1:]

    def held(self) -> int:
        return sum(1 for s in self.iked.list_sas() if s.get("state") == "ESTABLISHED")


# the lab's plugin list without kernel-libipsec, openssl before gmp: the first loaded plugin serves a
# feature, and openssl's RSA is faster than gmp's (RSA responder 1.08 vs 1.25 ms per IKE_SA here)
CHARON_PLUGINS = ("random nonce aes sha1 sha2 hmac openssl gmp curve25519 pem pkcs1 pkcs8 x509 pubkey kdf "
                  "kernel-netlink socket-default vici")
CHARON_SETTINGS = """threads = 16
cookie_threshold = 1000000
cookie_threshold_ip = 1000000
block_threshold = 1000000
init_limit_half_open = 0
ikesa_table_size = 4096
ikesa_table_segments = 16
retransmit_tries = 2
"""


class CharonResponder(Responder):
    impl = "charon"

    def __init__(self, lab: Any, auth: str, keys: dict[str, Any], plugins: str | None = None) -> None:
        from scenarios.lab.charon import Charon
        from scenarios.lab.creds import install_keypair

        if auth == "psk":
            local = f"auth = psk\n      id = {RESP_PSK_ID}"
            remote = "auth = psk\n      id = %any"
            secrets = f'secrets {{\n  ike-bench {{\n    secret = "{PSK}"\n  }}\n}}\n'
        else:
            local = f"auth = pubkey\n      id = {keys['resp'].swanctl_id}\n      pubkeys = resp.pem"
            remote = f"auth = pubkey\n      id = {keys['driver'].swanctl_id}\n      pubkeys = driver.pem"
            secrets = ""
        conf = (f"connections {{\n  bench {{\n    local_addrs = {RESP_IP}\n    proposals = {PROPOSAL}\n"
                f"    unique = never\n    rekey_time = 0\n    childless = allow\n"
                f"    local {{\n      {local}\n    }}\n    remote {{\n      {remote}\n    }}\n  }}\n}}\n{secrets}")
        plugins = plugins or CHARON_PLUGINS
        self.charon = Charon(lab, "bob", name=f"charon-{auth}", conf=conf, settings=CHARON_SETTINGS,
                             plugins=plugins, ike_level=0, log_levels={"default": 0})
        if auth != "psk":
            install_keypair(self.charon, "resp", keys["resp"], own=True)
            install_keypair(self.charon, "driver", keys["driver"], own=False)

    def start(self) -> None:
        self.charon.start()

    def stop(self) -> None:
        self.charon.stop()

    def pid(self) -> int:
        return find_pid(self.charon.proc.pid, "charon")

    def held(self) -> int:
        from scenarios.lab.charon import decode

        with contextlib.closing(self.charon.vici(timeout=30)) as s:
            stats = decode(s.stats())
        return int(stats["ikesas"]["total"])


@dataclass(frozen=True)
class Load:
    """What the drivers do: `count` measured IKE_SAs after `warmup` unmeasured ones, `inflight` setups
    at a time spread over `drivers` processes, each batch within `timeout` seconds."""

    count: int = 2000
    inflight: int = 32
    drivers: int = 1
    warmup: int = 50
    timeout: float = 300.0
    # CPUs (sched_setaffinity): the drivers' and the responder's (worker k on the k-th modulo the count);
    # empty = wherever the scheduler puts them
    driver_cpus: tuple[int, ...] = ()
    responder_cpus: tuple[int, ...] = ()
    # "template": the Engine's messages as templates, the per-IKE_SA crypto only (ike_template_driver);
    # "engine": the sans-IO Engine per IKE_SA (ike_driver)
    driver: str = "template"


@dataclass(frozen=True)
class Rig:
    """Where the drivers run: the lab, their source addresses (on alice) and their key files."""

    lab: Any
    ips: list[str]
    keydir: Path


def _run_drivers(rig: Rig, auth: str, count: int, load: Load, prefix: str,
                 remotes: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The drivers' results for `count` IKE_SAs; `remotes` (template driver): responder address -> weight, IKE_SAs
    sent to all of them at once in those shares (else all to RESP_IP)."""
    drivers, inflight, timeout, ips, keydir = load.drivers, load.inflight, load.timeout, rig.ips, rig.keydir
    procs = []
    for j in range(drivers):
        n = count // drivers + (1 if j < count % drivers else 0)
        spec = {"auth": auth, "count": n, "inflight": max(1, inflight // drivers), "ips": ips[j::drivers],
                "remote": RESP_IP, "prefix": f"{prefix}d{j}n", "timeout": timeout,
                "key": str(keydir / "driver.key"), "peer_pub": str(keydir / "resp.pub"),
                "my_id": "", "driver": load.driver}
        if remotes:
            spec.update(remotes=list(remotes), weights=list(remotes.values()))
        if auth != "psk":
            spec["my_id"] = (keydir / "driver.id").read_text()
        pin = ["taskset", "-c", ",".join(map(str, load.driver_cpus))] if load.driver_cpus else []
        argv = [*pin, "ip", "netns", "exec", rig.lab.ns("alice"), sys.executable, str(Path(__file__).resolve()),
                "driver", json.dumps(spec)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}))
    out = []
    for p in procs:
        so, se = p.communicate(timeout=timeout + 30)
        if p.returncode != 0:
            raise RuntimeError(f"driver failed rc={p.returncode}: {se[-2000:]}")
        out.append(json.loads(so.strip().splitlines()[-1]))
    return out


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample `pid` with py-spy (collapsed stacks, per-function lines) while the batch runs."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print("py-spy not installed in the venv; no profile", file=sys.stderr)
        return None
    proc = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--format", "raw", "--rate", "1000",
                             "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach before the load starts
    return proc


def hot_spots(raw: Path, top: int = 15) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not n_s.isdigit():
            continue
        n = int(n_s)
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                  for f in stack.split(";")]
        total += n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    out = [f"py-spy samples: {total}", "self %  function"]
    out += [f"{100 * v / total:5.1f}  {k}" for k, v in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]]
    out += ["incl %  function"]
    out += [f"{100 * v / total:5.1f}  {k}" for k, v in sorted(incl.items(), key=lambda kv: -kv[1])[:top * 2]]
    return "\n".join(out) + "\n"


def measure(rig: Rig, resp: Responder, auth: str, load: Load, profile: Path | None = None) -> Result:
    resp.start()
    try:
        pid = resp.pid()
        pids, wpids = resp.pids(), resp.workers()
        if load.responder_cpus:
            cpus = load.responder_cpus
            for k, p in enumerate(wpids or pids):
                for t in Path(f"/proc/{p}/task").iterdir():
                    os.sched_setaffinity(int(t.name), {cpus[k % len(cpus)]})
        if load.warmup:
            _run_drivers(rig, auth, load.warmup, load, f"w{resp.impl}")
        spy = _py_spy(pid, profile / f"{resp.impl}-{auth}.txt") if profile and resp.impl == "ours" else None
        time.sleep(0.3)
        cpu0, rss0 = sum(proc_cpu(p) for p in pids), sum(proc_rss_kib(p) for p in pids)
        w0 = [proc_cpu(p) for p in wpids]
        sw0 = [proc_switches(p) for p in pids]
        runs = _run_drivers(rig, auth, load.count, load, f"m{resp.impl}")
        cpu1 = sum(proc_cpu(p) for p in pids)
        sw1 = [proc_switches(p) for p in pids]
        sw = [sum(b[i] - a[i] for a, b in zip(sw0, sw1, strict=True)) for i in range(3)]
        switches = (sw[0], sw[1], sw[2])
        wcpu = [proc_cpu(p) - c for p, c in zip(wpids, w0, strict=True)]
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        time.sleep(0.3)
        rss1 = sum(proc_rss_kib(p) for p in pids)
        held = resp.held()
    finally:
        resp.stop()
    est = sum(r["established"] for r in runs)
    secs = max(r["t_end"] for r in runs) - min(r["t_start"] for r in runs)
    _say_failures(runs, f"{resp.impl}/{auth}")
    return Result(resp.impl, auth, load.count, est, held, secs, cpu1 - cpu0, float(rss1 - rss0),
                  sum(r["cpu"] for r in runs), load.drivers, wcpu, switches)


def _say_failures(runs: list[dict[str, Any]], what: str) -> None:
    """The drivers' failed IKE_SAs by reason, summed over `runs` (on stderr, when there are any)."""
    fails: dict[str, int] = {}
    for run in runs:
        for k, v in run["reasons"].items():
            fails[k] = fails.get(k, 0) + v
    if fails:
        print(f"  {what}: failures {fails}", file=sys.stderr)


def _progress(r: Result) -> None:
    n = max(1, r.established)
    print(f"  {r.impl:8} {r.auth}: {r.established} SAs, {r.rate:.0f}/s, CPU {r.cpu_ms:.3f} ms/SA, "
          f"capacity {r.capacity:.0f}/s, wake-ups/SA {r.switches[0] / n:.2f}, preempted/SA {r.switches[1] / n:.2f}, "
          f"migrations/SA {r.switches[2] / n:.2f}"
          + (f", workers CPU s {[round(c, 3) for c in r.worker_cpu]}" if r.worker_cpu else ""),
          file=sys.stderr, flush=True)


PAIR_IP = "192.0.2.3"  # the second responder's address on bob (paired measurements)


def measure_pair(rig: Rig, resps: list[OursResponder], auth: str, load: Load) -> list[Result]:
    """Our responders with workers = 1 and workers = N measured in the same batch: one driver sends IKE_SAs to
    both at once, 1 to the single process for each N to the N workers, so that every worker process carries
    the same rate at the same time, under the same load of the machine (the ratio of their CPU-normalised
    capacities then compares a worker of N with a single process, not two moments or two load levels)."""
    if load.driver != "template":
        raise ValueError("a paired measurement needs the template driver (--driver template)")
    weights = {r.addr: r.n_workers for r in resps}
    for r in resps:
        r.start()
    try:
        pids = {r.addr: r.pids() for r in resps}
        wpids = {r.addr: r.workers() if r.n_workers > 1 else [] for r in resps}
        if load.warmup:
            _run_drivers(rig, auth, load.warmup * len(resps), load, "wpair", weights)
        time.sleep(0.3)
        cpu0 = {a: [proc_cpu(p) for p in ps] for a, ps in pids.items()}
        w0 = {a: [proc_cpu(p) for p in ps] for a, ps in wpids.items()}
        sw0 = {a: [proc_switches(p) for p in ps] for a, ps in pids.items()}
        rss0 = {a: sum(proc_rss_kib(p) for p in ps) for a, ps in pids.items()}
        total = load.count * sum(weights.values())
        runs = _run_drivers(rig, auth, total, load, "mpair", weights)
        cpu1 = {a: [proc_cpu(p) for p in ps] for a, ps in pids.items()}
        w1 = {a: [proc_cpu(p) for p in ps] for a, ps in wpids.items()}
        sw1 = {a: [proc_switches(p) for p in ps] for a, ps in pids.items()}
        time.sleep(0.3)
        rss1 = {a: sum(proc_rss_kib(p) for p in ps) for a, ps in pids.items()}
        held = {r.addr: r.held() for r in resps}
    finally:
        for r in resps:
            r.stop()
    secs = max(r["t_end"] for r in runs) - min(r["t_start"] for r in runs)
    _say_failures(runs, f"pair/{auth}")
    out = []
    driver_cpu = sum(r["cpu"] for r in runs)
    for r in resps:
        a = r.addr
        est = sum(run["per_remote"].get(a, 0) for run in runs)
        sw = [sum(b[i] - x[i] for x, b in zip(sw0[a], sw1[a], strict=True)) for i in range(3)]
        out.append(Result(f"pair-w{r.n_workers}", auth, est, est, held[a], secs, sum(cpu1[a]) - sum(cpu0[a]),
                          float(rss1[a] - rss0[a]), driver_cpu * est / max(1, total), load.drivers,
                          [y - x for x, y in zip(w0[a], w1[a], strict=True)], (sw[0], sw[1], sw[2])))
    return out


def run_bench(load: Load = Load(), auths: Sequence[str] = ("psk", "rsa"), impls: Sequence[str] = ("ours", "charon"),
              source_ips: int = 16, profile: Path | None = None, charon_plugins: str | None = None,
              rounds: int = 1, before: Path | None = None) -> list[Result]:
    """`impls`: "ours", "ours-wN" (ours with [daemon] workers = N), "before", "before-wN" (the same from the
    tree `before`), "charon", "pair-wN" (ours with workers = 1 and with workers = N measured in one batch,
    measure_pair: results "pair-w1" and "pair-wN"); interleaved round by round (results_io.interleave), each
    auth in turn, a fresh responder for each measurement."""
    from scenarios.lab import cleanup_orphans, two_hosts
    from scenarios.lab.creds import rsa_keypair

    cleanup_orphans()
    results: list[Result] = []
    with two_hosts(inner=False) as lab:
        ips = [f"192.0.2.{100 + i}" for i in range(source_ips)]
        for ip in ips:
            lab.addr("alice", "eth0", f"{ip}/24")
        if any(i.startswith("pair-w") for i in impls):
            lab.addr("bob", "eth0", f"{PAIR_IP}/24")
        keys = {"resp": rsa_keypair(), "driver": rsa_keypair()}
        keydir = lab.host_dir("alice") / "bench-keys"
        keydir.mkdir(parents=True, exist_ok=True)
        (keydir / "driver.key").write_bytes(keys["driver"].private_pem)
        os.chmod(keydir / "driver.key", 0o600)
        (keydir / "resp.pub").write_bytes(keys["resp"].public_pem)
        (keydir / "driver.id").write_text(keys["driver"].identity)
        for _round, impl in results_io.interleave(rounds, list(impls)):
            for auth in auths:
                if impl.startswith("pair-w"):
                    pair = [OursResponder(lab, auth, keys, 1),
                            OursResponder(lab, auth, keys, int(impl.partition("-w")[2]), addr=PAIR_IP)]
                    for r in measure_pair(Rig(lab, ips, keydir), pair, auth, load):
                        _progress(r)
                        results.append(r)
                    continue
                resp: Responder
                if impl.startswith(("ours", "before")):
                    if impl.startswith("before") and before is None:
                        raise ValueError(f"the responder {impl!r} needs a tree (--before REV)")
                    resp = OursResponder(lab, auth, keys, int(impl.partition("-w")[2] or 1),
                                         before if impl.startswith("before") else None)
                else:
                    resp = CharonResponder(lab, auth, keys, charon_plugins)
                r = measure(Rig(lab, ips, keydir), resp, auth, load, profile)
                _progress(r)
                results.append(r)
    return results


def run_driver(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``driver`` subcommand (in the driver's namespace): spec["driver"] picks the driver."""
    if spec.get("driver", "engine") == "template":
        from ike_template_driver import drive as drive_templates

        return drive_templates(spec)
    return drive(spec)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["driver"]:
        print(json.dumps(run_driver(json.loads(args_in[1]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=2000, help="measured IKE_SAs per responder and auth")
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--drivers", type=int, default=1)
    ap.add_argument("--driver", choices=DRIVERS, default="template",
                    help="template: the Engine's own messages as templates, per IKE_SA only what an initiator must "
                    "compute (bench/ike_template_driver.py, about a third of the Engine's CPU per IKE_SA); engine: "
                    "the sans-IO Engine per IKE_SA (bench/ike_driver.py)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--source-ips", type=int, default=16)
    ap.add_argument("--auth", default="psk,rsa")
    ap.add_argument("--impl", default="ours,ours-w2,pair-w2,charon",
                    help="responders, interleaved: ours, ours-wN (workers = N), pair-wN (workers = 1 and N in one "
                    "batch: the capacity figure), charon")
    ap.add_argument("--driver-cpus", default="", help="CPUs the drivers run on (comma-separated; default any)")
    ap.add_argument("--responder-cpus", default="", help="CPUs the responder runs on, worker k on the k-th "
                    "(modulo their count; default any)")
    ap.add_argument("--before", metavar="REV", help="also run our responder from REV (git archive; or a source "
                    "tree's directory) as `before` beside each `ours` or `ours-wN` of --impl, interleaved")
    ap.add_argument("--profile", metavar="DIR", help="py-spy our responder during the measured batches "
                    "(needs `pip install py-spy` in the venv); collapsed stacks and hot spots go to DIR")
    ap.add_argument("--charon-plugins", default=None,
                    help="charon's plugin load list (default: the lab's, without kernel-libipsec; the order "
                    "decides which plugin serves a feature, e.g. gmp or openssl for RSA)")
    results_io.add_args(ap, rounds=3)
    a = ap.parse_args(args_in)
    rounds = results_io.rounds_of(a)
    if a.quick:
        a.count, a.warmup = 60, 10
    header = results_io.start_header(args_in, "bench/ike_setup_rate.py")
    prof = Path(a.profile) if a.profile else None
    if prof:
        prof.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    impls = a.impl.split(",")
    given = a.before is not None and Path(a.before).is_dir()  # a source tree as it is, else a revision
    before = Path(a.before).resolve() if given else (
        results_io.git_tree(a.before, prefix="ike-setup-rate-before-") if a.before else None)
    if before is not None:
        impls += [i.replace("ours", "before", 1) for i in impls if i.startswith("ours")]
    try:
        cpus = ({"driver_cpus": tuple(int(c) for c in a.driver_cpus.split(",") if c),
                 "responder_cpus": tuple(int(c) for c in a.responder_cpus.split(",") if c)})
        res = run_bench(Load(a.count, a.inflight, a.drivers, a.warmup, **cpus, driver=a.driver), a.auth.split(","), impls,
                        a.source_ips, profile=prof, charon_plugins=a.charon_plugins, rounds=rounds, before=before)
    finally:
        if before is not None and not given:
            shutil.rmtree(before, ignore_errors=True)
    text = table(res, a.inflight, a.drivers, a.warmup, (load0, os.getloadavg()[0]), a.driver)
    if a.charon_plugins:
        text += f"charon plugins: {a.charon_plugins}\n"
    if prof:
        for f in sorted(prof.glob("ours-*.txt")):
            hs = hot_spots(f)
            (prof / f"hotspots-{f.stem}.txt").write_text(hs)
            text += f"\nprofile of our responder, {f.stem}:\n{hs}"
    header = results_io.finish_header(header, a.quick, rounds)
    results_io.write_results(a.out, "ike_setup_rate", header, figures_of(res, a.inflight, a.driver), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
