#!/usr/bin/env python3
"""Responder CPU per IKE_SA with a real strongSwan initiator: our iked vs charon as the responder.

The load is what users' peers send: a strongSwan 5.9 charon in netns ``alice`` initiates ``--count``
IKE_SAs, each its own connection with its own identity (PSK: ``cN@bench``; RSA: a certificate and key
per IKE_SA, ``CN=cN`` from one CA, RSA-2048, sent in IKE_AUTH), with everything charon puts into its messages by
default: NAT-D, FRAGMENTATION_SUPPORTED, SIGNATURE_HASH_ALGORITHMS and REDIRECT_SUPPORTED in IKE_SA_INIT,
MOBIKE_SUPPORTED, INITIAL_CONTACT and the move to port 4500 (MOBIKE, RFC 4555 without NAT) in IKE_AUTH.
The IKE_SAs are childless (RFC 6023: no data plane on either side); ``--shape childless,child`` (the default)
adds the same with one CHILD_SA per IKE_SA in IKE_AUTH, installed in both responders' userspace ESP data planes
(``ours-child``, ``charon-child``: bench/charon_child.py), interleaved in the same rounds. ``--inflight``
initiations run at once (one vici ``initiate`` per thread, each waiting for its IKE_SA).

The responder in netns ``bob``, fresh for each measurement, after ``--warmup`` IKE_SAs: our iked (one worker,
users' default; log_level warning) or charon 5.9.8 (openssl before gmp, log level 0, 16 threads); and both
again at their default log levels (``ours-info``: info, ``charon-l1``: 1), interleaved in the same rounds.
Same settings both sides: proposal aes128gcm16-prfsha256-x25519, COOKIEs off on both (thresholds raised to
10^6: the load comes from one address, and both would otherwise demand COOKIEs of it), unique = never.
The figure: responder CPU (utime + stime of all its processes/threads, /proc) over the measured batch
divided by the IKE_SAs it established. Rounds interleave the responders (ours, charon, charon, ours ...).

A batch starts on a settled machine: once the last side's processes, TUN devices and routes are gone from
the lab (they are when its stop returns; the bench checks) and, for up to 2 s after the warm-up, once the
machine is idle. What the CPU time of a batch means still depends on how fast the machine runs meanwhile:
a process sharing the CPUs (another tenant of the host, a test run) slows the responder and the initiator
alike, by up to a third here. So the table gives the CPUs others kept busy during each batch, and the
figures the initiator's CPU per IKE_SA beside each responder: the same work (its key exchange, for RSA
mostly its signature arithmetic) whichever responder answers, a gauge of the machine's speed; where it
differs between two sides, so does the ground their figures stand on. ``--before``'s side runs right
after ours in each round, so that the A/B pair shares the machine's state.

    .venv/bin/python bench/charon_initiator.py --rounds 3 --out bench/results/charon_initiator.txt
    .venv/bin/python bench/charon_initiator.py --before HEAD~3 --rounds 3   # also ours at HEAD~3, interleaved
    .venv/bin/python bench/charon_initiator.py --profile /tmp/prof   # py-spy our responder too

``--before REV`` adds REV's iked (its daemon from a ``git archive`` of REV, this tree's configuration) to each
shape: ``before`` beside ``ours``, ``before-info`` beside ``ours-info`` (both at info: the A/B of what the log
costs at users' default), ``before-child`` beside ``ours-child``, interleaved in the same rounds.

``--profile`` samples our responder (``ours`` and ``ours-child``) with py-spy --native while it works (its CPU
figures then include the sampling's cost: profile and measure in separate runs); hotspots-ours-*.txt and
hotspots-ours-child-*.txt split the live process into the engine, the daemon's event handling and the event
loop with the transport.

Where our CPU goes (``--no-split`` skips it): after the rounds, one more batch per auth method against an
iked whose randomness (SPIs, nonces, IVs, X25519 keys) is seeded, which records every datagram its engine
receives and times its engine and its event handling with the thread's CPU clock: the process's CPU per
IKE_SA splits into the engine, the event handling and the rest (event loop, transport, socket calls, the
kernel). The bench then feeds that recording to an engine built the same way in its own process (twice,
the second run counted): the engine's cost in a tight loop, beside its cost in the live daemon
(bench/ike_cost.py: the recording iked, the replay and the crypto floor); and replays it with the log set
up as iked sets it up, at warning and at info, to give what the log at users' default costs per IKE_SA
without the live batches' noise (charon_split.log_cost_ab; with ``--before``, that tree's beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = results_io.enter_repo(__file__)
import charon_child  # noqa: E402
import charon_split  # noqa: E402
from charon_split import Split, py_spy, split_lines, write_hotspots  # noqa: E402
from ike_cost import RECORD_ENV, crypto_floor, openssl_rsa_sign_ms  # noqa: E402
from ike_setup_rate import CHARON_PLUGINS, CHARON_SETTINGS, find_pid, iked_responder_conf  # noqa: E402

PROPOSAL = "aes128gcm16-prfsha256-x25519"
PSK = "charon-initiator-bench-secret-0123456789"
RESP_IP, INIT_IP = "192.0.2.2", "192.0.2.1"
RESP_ID = "responder@bench"


def proc_cpu(pid: int) -> float:
    """CPU seconds of every thread of `pid` so far, from /proc/PID/task/*/schedstat (nanoseconds, where
    /proc/PID/stat counts 10 ms ticks)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((t / "schedstat").read_text().split()[0])
    return total / 1e9


def proc_user_sys(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` and all its threads (/proc/PID/stat, 10 ms ticks)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy so far (/proc/stat: every state but idle and iowait)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in f[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_idle(limit: float = 2.0, window: float = 0.2, busy: float = 0.25) -> float:
    """Wait (at most `limit` s) until the machine is idle but for `busy` CPUs over `window` s, and return
    the CPUs busy in the last window. The responder and the initiator sit idle between the warm-up and
    the batch: what runs then is someone else's (another benchmark, a test run, the kernel finishing the
    last side's teardown) and would share the CPUs, their caches and the memory bandwidth with the batch."""
    end = time.monotonic() + limit
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        time.sleep(window)
        load = (machine_busy() - b0) / (time.monotonic() - t0)
        if load <= busy or time.monotonic() >= end:
            return load


def _leftovers(lab: Any) -> list[str]:
    """What the last side left in the lab: processes in its namespaces, network devices other than lo
    and eth0 (a TUN device of a data plane), routes into them."""
    out = []
    for host in lab.hosts:
        pids = subprocess.run(["ip", "netns", "pids", lab.ns(host)], capture_output=True, text=True).stdout.split()
        if pids:
            out.append(f"{host}: processes {' '.join(pids)}")
        links = [ln.split(":")[1].strip().split("@")[0]
                 for ln in lab.run(host, ["ip", "-o", "link"]).stdout.splitlines() if ln.count(":") >= 2]
        extra = [ln for ln in links if ln not in ("lo", "eth0")]
        if extra:
            out.append(f"{host}: devices {' '.join(extra)}")
    return out


def _settle(lab: Any, timeout: float = 30.0) -> float:
    """Wait until the last side is gone from the lab (_leftovers: processes, TUN devices and their routes);
    the seconds waited. Stopping a side waits for its processes, and the kernel removes a TUN device with
    the process that held it, its routes with it: this holds the batch if that ever lags."""
    from scenarios.lab.netns import wait_for

    t0 = time.monotonic()
    try:
        # processes, devices and routes the kernel removes: nothing announces it, so a poll
        wait_for(lambda: not _leftovers(lab), timeout, interval=0.05, what="the last side's processes and devices")
    except TimeoutError as e:
        raise RuntimeError(f"the lab did not settle: {_leftovers(lab)}") from e
    return time.monotonic() - t0


@dataclass(frozen=True)
class Recorded:
    """A recorded batch: IKE_SAs established, and CPU seconds of the recording iked over the batch: all of
    it (its process, /proc), in the engine and in the daemon's event handling (thread CPU time)."""

    established: int
    process: float
    engine: float
    events: float
    seconds: float = 0.0  # wall time of the batch


def record(lab: Any, auth: str, pki: Pki, count: int, inflight: int, out: Path, id_type: str = "dn") -> Recorded:
    """`count` IKE_SAs from the charon initiator against a recording iked; the datagrams and the iked
    configuration directory go to `out`. `id_type`: the initiators' identities with RSA (see `initiator`)."""
    import shutil

    from scenarios.lab.events import wait_files

    resp = Ours(lab, auth, pki)
    resp.iked.module = "ike_cost"
    init = initiator(lab, auth, pki, count, f"rec-{auth}", threads=4 * inflight + 16, id_type=id_type)
    rec = out / "datagrams.pickle"
    resp.iked.start(env={"PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}", RECORD_ENV: str(rec)})
    try:
        init.start()
        pid = resp.pids()[0]
        cpu0, t0 = proc_cpu(pid), time.monotonic()
        n, _ = initiate_all(init, [f"c{i}" for i in range(count)], inflight, 60.0)
        process, seconds = proc_cpu(pid) - cpu0, time.monotonic() - t0
        os.kill(pid, signal.SIGUSR2)
        wait_files(rec.exists, 30, [rec], what="the recording")  # its creation is the event
        shutil.copytree(resp.iked.dir, out / "conf", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
    finally:
        with contextlib.suppress(Exception):
            init.stop()
        resp.stop()
    cpu = pickle.loads(rec.read_bytes())["cpu"]
    return Recorded(n, process, cpu["engine"], cpu["events"], seconds)


# ====================================================================== credentials
@dataclass
class Pki:
    ca_pem: bytes
    resp: tuple[bytes, bytes]  # key, certificate (PEM)
    clients: list[tuple[bytes, bytes]] = field(default_factory=list)


def make_pki(n: int) -> Pki:
    """A CA, the responder's certificate (CN=responder) and `n` client certificates (CN=cK), RSA-2048."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem(k: rsa.RSAPrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, serial: int) -> tuple[bytes, bytes]:
        k = key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(k.public_key())
             .serial_number(serial).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.bench")]), critical=False)
             .sign(ca_key, hashes.SHA256()))
        return pem(k), c.public_bytes(serialization.Encoding.PEM)

    return Pki(ca.public_bytes(serialization.Encoding.PEM), leaf("responder", 2),
               [leaf(f"c{i}", 10 + i) for i in range(n)])


# ====================================================================== the two responders
class Responder:
    impl = ""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pids(self) -> list[int]: raise NotImplementedError
    def held(self) -> int: raise NotImplementedError
    def settle(self, n: int) -> None: """Wait until work the `n` IKE_SAs leave after their last message is done."""


class Ours(Responder):
    impl = "ours"

    def __init__(self, lab: Any, auth: str, pki: Pki, log_level: str = "warning") -> None:
        from scenarios.lab.iked import Iked

        files: dict[str, bytes | str] = {}
        if auth == "psk":
            secrets = f'[[secrets.ike]]\nsecret = "{PSK}"\n'
            local = f'{{ auth = "psk", id = "{RESP_ID}" }}'
            remote = '{ auth = "psk", id = "%any" }'
        else:
            files.update({"resp.key": pki.resp[0], "resp.crt": pki.resp[1], "ca.crt": pki.ca_pem})
            secrets = '[[secrets.private]]\nfile = "resp.key"\n[[secrets.ca]]\nfile = "ca.crt"\n'
            local = '{ auth = "pubkey", id = "responder.bench", certs = ["resp.crt"] }'
            remote = '{ auth = "pubkey", id = "%any" }'
        conf = iked_responder_conf(secrets, local, remote, addr=RESP_IP, proposal=PROPOSAL, log_level=log_level)
        self.iked = Iked(lab, "bob", conf, name=f"iked-{auth}", files=files)

    tree: Path | None = None  # run from this source tree (`--before`), else this one

    def start(self) -> None:
        self.iked.start(tree=self.tree)

    def stop(self) -> None:
        self.iked.stop()

    def pids(self) -> list[int]:
        root = find_pid(self.iked.proc.pid, "python")
        kids = [int(k) for k in Path(f"/proc/{root}/task/{root}/children").read_text().split()]
        return [root, *kids]

    def held(self) -> int:
        return sum(1 for s in self.iked.list_sas() if s.get("state") == "ESTABLISHED")


class Charon(Responder):
    impl = "charon"

    def __init__(self, lab: Any, auth: str, pki: Pki, level: int = 0) -> None:
        from scenarios.lab.charon import Charon as CharonProc

        if auth == "psk":
            local = f"auth = psk\n      id = {RESP_ID}"
            remote = "auth = psk\n      id = %any"
            secrets = f'secrets {{\n  ike-bench {{\n    secret = "{PSK}"\n  }}\n}}\n'
        else:
            local = "auth = pubkey\n      id = responder.bench\n      certs = resp.crt"
            remote = "auth = pubkey\n      id = %any\n      cacerts = ca.crt"
            secrets = ""
        conf = (f"connections {{\n  bench {{\n    local_addrs = {RESP_IP}\n    proposals = {PROPOSAL}\n"
                f"    unique = never\n    rekey_time = 0\n    childless = allow\n"
                f"    local {{\n      {local}\n    }}\n    remote {{\n      {remote}\n    }}\n  }}\n}}\n{secrets}")
        self.charon = CharonProc(lab, "bob", name=f"charon-{auth}", conf=conf, settings=CHARON_SETTINGS,
                                 plugins=CHARON_PLUGINS, ike_level=level, log_levels={"default": level})
        if auth != "psk":
            self.charon.add_file("private", "resp.key", pki.resp[0])
            self.charon.add_file("x509", "resp.crt", pki.resp[1])
            self.charon.add_file("x509ca", "ca.crt", pki.ca_pem)

    def start(self) -> None:
        self.charon.start()

    def stop(self) -> None:
        self.charon.stop()

    def pids(self) -> list[int]:
        return [find_pid(self.charon.proc.pid, "charon")]

    def held(self) -> int:
        from scenarios.lab.charon import decode

        with contextlib.closing(self.charon.vici(timeout=30)) as s:
            stats = decode(s.stats())
        return int(stats["ikesas"]["total"])


# ====================================================================== the initiator (charon in alice)
def initiator(lab: Any, auth: str, pki: Pki, n: int, name: str, threads: int = 64, child: bool = False,
              id_type: str = "dn") -> Any:
    """charon with connections c0..c{n-1}, one identity each (swanctl defaults otherwise: MOBIKE,
    fragmentation, NAT-D; no CHILD_SA: `initiate` of the IKE_SA alone is childless, RFC 6023; with `child`
    each connection's CHILD_SA in IKE_AUTH and kernel-libipsec, bench/charon_child.py). With RSA, `id_type`
    "dn" sends the certificate's subject (ID_DER_ASN1_DN, swanctl's default without `id`), "fqdn" the
    certificate's dNSName cK.bench (ID_FQDN, bound to the certificate by its subjectAltName, RFC 4945 3.1)."""
    from scenarios.lab.charon import Charon as CharonProc

    conns = []
    for i in range(n):
        if auth == "psk":
            local = f"auth = psk\n      id = c{i}@bench"
            remote = f"auth = psk\n      id = {RESP_ID}"
        else:  # charon's default send_cert = ifasked: both responders send a CERTREQ in IKE_SA_INIT
            local = f"auth = pubkey\n      certs = c{i}.crt" + (f"\n      id = c{i}.bench" if id_type == "fqdn" else "")
            remote = "auth = pubkey\n      id = responder.bench\n      cacerts = ca.crt"
        conns.append(f"  c{i} {{\n    local_addrs = {INIT_IP}\n    remote_addrs = {RESP_IP}\n"
                     f"    proposals = {PROPOSAL}\n    version = 2\n    rekey_time = 0\n"
                     + f"    local {{\n      {local}\n    }}\n    remote {{\n      {remote}\n    }}\n"
                     + (charon_child.initiator_children(i) if child else "") + "  }\n")
    secrets = f'secrets {{\n  ike-1 {{\n    secret = "{PSK}"\n  }}\n}}\n' if auth == "psk" else ""
    cls = charon_child.ChildInitiator if child else CharonProc
    ch = cls(lab, "alice", name=name, conf="connections {\n" + "".join(conns) + "}\n" + secrets,
             # each waiting vici initiate holds one of charon's threads: many more than --inflight
             settings=f"threads = {threads}\nretransmit_tries = 3\n",
             plugins=charon_child.PLUGINS if child else CHARON_PLUGINS, ike_level=0, log_levels={"default": 0})
    if auth != "psk":
        ch.add_file("x509ca", "ca.crt", pki.ca_pem)
        for k, (key, cert) in enumerate(pki.clients):
            ch.add_file("private", f"c{k}.key", key)
            ch.add_file("x509", f"c{k}.crt", cert)
    return ch


def initiate_all(init: Any, names: list[str], inflight: int, timeout: float) -> tuple[int, list[str]]:
    """vici initiate of every name, `inflight` at a time (each call waits for its IKE_SA)."""
    from scenarios.lab.charon import CharonError

    todo = list(reversed(names))
    lock = threading.Lock()
    ok: list[str] = []
    failed: list[str] = []

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                name = todo.pop()
            try:
                init.initiate(ike=name, timeout=timeout)
                with lock:
                    ok.append(name)
            except CharonError as e:
                with lock:
                    failed.append(f"{name}: {str(e).splitlines()[0]}")

    threads = [threading.Thread(target=work) for _ in range(inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ok), failed


@dataclass
class Run:
    round: int
    impl: str
    auth: str
    established: int
    failed: list[str]
    seconds: float
    resp_cpu: float
    init_cpu: float
    held: int
    sys_share: float = 0.0  # of the responder's CPU, the part in the kernel (system time)
    others: float = 0.0  # CPUs busy over the batch with anything but the responder, the initiator and the bench
    waited: float = 0.0  # seconds the batch waited for a settled machine (_settle)

    @property
    def init_ms(self) -> float:
        return 1000.0 * self.init_cpu / max(1, self.established)

    @property
    def cpu_ms(self) -> float:
        return 1000.0 * self.resp_cpu / max(1, self.established)


@dataclass(frozen=True)
class Batch:
    """`count` measured IKE_SAs after `warmup` unmeasured ones, `inflight` initiations at a time."""

    count: int
    warmup: int
    inflight: int


def responder(lab: Any, impl: str, auth: str, pki: Pki, before: Path | None = None) -> Responder:
    """`impl`: ours / before (log_level warning; before: iked from the tree `before`), ours-info / before-info
    (info, users' default), charon (log level 0), charon-l1 (level 1, charon's default); any of them with
    `-child`: a CHILD_SA per IKE_SA (charon_child)."""
    resp: Responder
    if impl.endswith("-child"):
        return charon_child.side(responder(lab, impl.removesuffix("-child"), auth, pki, before))
    if impl in ("ours", "before", "ours-info", "before-info"):
        ours = Ours(lab, auth, pki, log_level="info" if impl.endswith("-info") else "warning")
        if impl.startswith("before"):
            if before is None:
                raise ValueError("the responder 'before' needs a tree (--before REV)")
            ours.tree = before
        resp = ours
    else:
        resp = Charon(lab, auth, pki, level=1 if impl == "charon-l1" else 0)
    resp.impl = impl
    return resp


def measure(lab: Any, resp: Responder, auth: str, pki: Pki, batch: Batch, run: int, profile: Path | None) -> Run:
    count, warmup, inflight = batch.count, batch.warmup, batch.inflight
    init = initiator(lab, auth, pki, warmup + count, f"init-{resp.impl}-{auth}-{run}", threads=4 * inflight + 16,
                     child=resp.impl.endswith("-child"))
    waited = _settle(lab)
    resp.start()
    spy = None
    try:
        init.start()
        pids = resp.pids()
        if warmup:
            initiate_all(init, [f"c{i}" for i in range(warmup)], inflight, 30.0)
        if profile is not None and resp.impl in ("ours", "ours-child"):
            spy = py_spy(pids[0], profile / f"{resp.impl}-{auth}-{run}.txt")
        ipid = find_pid(init.proc.pid, "charon")
        wait_idle()
        cpu0, icpu0 = sum(proc_cpu(p) for p in pids), proc_cpu(ipid)
        us0 = [proc_user_sys(p) for p in pids]
        busy0, own0 = machine_busy(), proc_cpu(os.getpid())
        t0 = time.monotonic()
        n, failed = initiate_all(init, [f"c{i}" for i in range(warmup, warmup + count)], inflight, 60.0)
        secs = time.monotonic() - t0
        resp.settle(warmup + n)
        cpu1, icpu1 = sum(proc_cpu(p) for p in pids), proc_cpu(ipid)
        busy1, own1 = machine_busy(), proc_cpu(os.getpid())
        us1 = [proc_user_sys(p) for p in pids]
        user = sum(b[0] - a[0] for a, b in zip(us0, us1, strict=True))
        system = sum(b[1] - a[1] for a, b in zip(us0, us1, strict=True))
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        held = resp.held()
    finally:
        with contextlib.suppress(Exception):
            init.stop()
        resp.stop()
    others = (busy1 - busy0) - (cpu1 - cpu0) - (icpu1 - icpu0) - (own1 - own0)
    return Run(run, resp.impl, auth, n, failed, secs, cpu1 - cpu0, icpu1 - icpu0, held,
               system / (user + system) if user + system > 0 else 0.0, max(0.0, others) / max(secs, 1e-3), waited)


def _floor_lines(auth: str, floor: dict[str, float], charon_ms: list[float],
                 ossl: tuple[float, str] | None) -> list[str]:
    """The crypto floor per IKE_SA next to the ratio, and for RSA what the private-key operation alone
    is of charon's total (the goal is 0.6x of charon's median)."""
    import statistics

    if not floor:
        return []
    total = sum(floor.values()) / 1000
    parts = ", ".join(f"{k} {v / 1000:.3f}" for k, v in floor.items())
    out = [f"crypto floor per IKE_SA (each operation alone with `cryptography`, CPU time, this machine): "
           f"{total:.3f} ms ({parts})"]
    if charon_ms:
        goal = 0.6 * statistics.median(charon_ms)
        out.append(f"0.6x of charon's median is {goal:.3f} ms: {goal - total:.3f} ms left above the crypto floor "
                   "for everything else (decoding, state, the event loop, the sockets and the kernel's UDP path)")
    if auth == "rsa":
        sign = floor.get("RSA-2048 sign", 0.0) / 1000
        line = f"RSA-2048 private-key operation alone: ours {sign:.3f} ms (`cryptography`)"
        if ossl is not None:
            line += (f", charon's {ossl[0]:.3f} ms ({ossl[1]} `openssl speed` CPU time: the openssl plugin, "
                     "loaded before gmp, signs)")
        if charon_ms:
            line += f"; {sign / statistics.median(charon_ms):.2f}x of charon's total per IKE_SA"
        out.append(line)
    return out


def _figures(a: Any, runs: list[Run], pki: Pki, split: dict[str, Split]) -> list[dict[str, Any]]:
    floor = crypto_floor(pki if "rsa" in a.auth.split(",") else None)
    ossl = openssl_rsa_sign_ms() if "rsa" in a.auth.split(",") else None
    figures = []
    for auth in a.auth.split(","):
        o = [r.cpu_ms for r in runs if r.auth == auth and r.impl == "ours" and r.established]
        c = [r.cpu_ms for r in runs if r.auth == auth and r.impl == "charon" and r.established]
        what = ("PSK, one identity per IKE_SA" if auth == "psk"
                else "RSA-2048 certificates from one CA, one identity per IKE_SA")
        f = results_io.figure(
            f"charon_initiator_cpu_{auth}", f"responder CPU per IKE_SA with a strongSwan initiator ({what})",
            results_io.sample(o, "ms"), results_io.sample(c, "ms"),
            differences=["same on both sides: childless IKE_SAs from charon 5.9.8 (NAT-D, fragmentation, "
                         "signature hash, redirect and MOBIKE notifies, float to 4500), " + PROPOSAL
                         + ", COOKIEs off (thresholds 10^6 on both), unique = never, no data plane",
                         "log levels: ours warning, charon 0: both at their quietest that still logs errors "
                         "(the defaults, info and 1, are the next figure); ours: one worker process (users' "
                         "default); charon: 16 threads on 2 CPUs (its CPU is the sum over threads)",
                         *_floor_lines(auth, floor.get(auth, {}), c, ossl),
                         *split_lines(split.get(auth), a.before),
                         *charon_child.before_lines(runs, auth, a.before, "ours", "before"),
                         *_gauge_lines(runs, auth, ("ours", "before", "charon"))],
            readme=True)
        f["crypto_floor_ms"] = {k: round(v / 1000, 4) for k, v in floor.get(auth, {}).items()}
        figures.append(f)
        oi = [r.cpu_ms for r in runs if r.auth == auth and r.impl == "ours-info" and r.established]
        cl = [r.cpu_ms for r in runs if r.auth == auth and r.impl == "charon-l1" and r.established]
        if oi and cl:
            figures.append(results_io.figure(
                f"charon_initiator_cpu_{auth}_default_logging",
                f"the same ({auth.upper()}) at both daemons' default log levels",
                results_io.sample(oi, "ms"), results_io.sample(cl, "ms"),
                differences=["ours: log_level info (users' default; to a file), charon: level 1 (its "
                             "default; to a file, line by line, where its default is syslog); the rest as above, "
                             "interleaved in the same rounds",
                             *charon_child.before_lines(runs, auth, a.before, "ours-info", "before-info")],
                readme=True))
        for f in charon_child.figures(a, auth, runs):
            f["differences"] += _gauge_lines(runs, auth, ("ours-child", charon_child.BEFORE, "charon-child"))
            figures.append(f)
    return [f for f in figures if f["ours"] or f["charon"]]  # --shape child: no childless figures


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--count", type=int, default=400, help="measured IKE_SAs per responder, auth and round")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--auth", default="psk,rsa")
    ap.add_argument("--impl", default="ours,charon,ours-info,charon-l1",
                    help="responders, interleaved: ours and charon at their quietest log levels that still log errors "
                    "(warning, 0), ours-info and charon-l1 at their default ones (info, 1)")
    ap.add_argument("--count-rsa", type=int, default=120, help="the same for RSA (a certificate per IKE_SA)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy our responder (collapsed stacks, hot spots)")
    ap.add_argument("--no-split", action="store_true", help="skip the record-and-replay of where our CPU goes")
    ap.add_argument("--before", metavar="REV", help="also run our responder from REV (git archive; or a directory "
                    "holding a source tree, e.g. a change's A side) in each shape (before, before-child), interleaved")
    ap.add_argument("--shape", type=charon_child.shapes, default="childless,child",
                    help="childless IKE_SAs (the --impl sides) and/or one CHILD_SA per IKE_SA (ours-child, charon-child)")
    results_io.add_args(ap, rounds=3)
    a = ap.parse_args(args_in)
    rounds = results_io.rounds_of(a)
    if a.quick:
        a.count, a.count_rsa, a.warmup = 20, 10, 4
    header = results_io.start_header(args_in, "bench/charon_initiator.py")
    prof = Path(a.profile) if a.profile else None
    if prof:
        prof.mkdir(parents=True, exist_ok=True)
    from scenarios.lab import cleanup_orphans, two_hosts

    cleanup_orphans()
    pki = make_pki(a.warmup + a.count_rsa if "rsa" in a.auth.split(",") else 0)
    runs: list[Run] = []
    sides = _sides(a)
    given = a.before is not None and Path(a.before).is_dir()  # a source tree as it is: kept afterwards
    before_tree = (Path(a.before).resolve() if given else results_io.git_tree(a.before, prefix="charon-initiator-before-")
                   ) if a.before else None
    try:
        with two_hosts(inner=False) as lab:
            if "child" in a.shape:
                charon_child.add_addresses(lab, a.warmup + max(a.count, a.count_rsa))
            for rnd, impl in results_io.interleave(rounds, sides):
                for auth in a.auth.split(","):
                    resp = responder(lab, impl, auth, pki, before_tree)
                    count = a.count if auth == "psk" else a.count_rsa
                    r = measure(lab, resp, auth, pki, Batch(count, a.warmup, a.inflight), rnd, prof)
                    runs.append(r)
                    print(f"  round {rnd + 1} {impl:6} {auth}: {r.established}/{count} in {r.seconds:.1f} s, responder "
                          f"CPU {r.cpu_ms:.3f} ms/IKE_SA, initiator {1000 * r.init_cpu / max(1, r.established):.3f} ms"
                          + (f", failed: {r.failed[:3]}" if r.failed else ""), file=sys.stderr, flush=True)
            split = {} if a.no_split or "ours" not in sides else charon_split.split(lab, pki, a, before_tree, record)
    finally:
        if before_tree is not None and not given:
            import shutil

            shutil.rmtree(before_tree, ignore_errors=True)
    figures = _figures(a, runs, pki, split)
    if prof:
        write_hotspots(prof)
    header = results_io.finish_header(header, a.quick, rounds)
    results_io.write_results(a.out, "charon_initiator", header, figures, "\n".join(_table(runs)))
    return 0


def _sides(a: Any) -> list[str]:
    """The sides in a round's order: --impl's (with before after ours and before-info after ours-info when
    there is a --before tree) for the childless shape, then the child shape's."""
    childless = _next_to(a.impl.split(","), "ours", "before" if a.before else None)
    childless = _next_to(childless, "ours-info", "before-info" if a.before and "ours-info" in childless else None)
    child = _next_to(charon_child.sides(False), "ours-child", charon_child.BEFORE if a.before else None)
    return (childless if "childless" in a.shape else []) + (child if "child" in a.shape else [])


def _next_to(sides: list[str], ours: str, before: str | None) -> list[str]:
    """`sides` with `before` right after `ours` (at the end without `ours`): the A/B pair of this tree and
    --before runs back to back in each round, so that a change in the machine's speed between batches
    (another tenant of the host, a test run) weighs on both alike."""
    if before is None:
        return sides
    out = [s for s in sides if s != before]
    return [*out[:out.index(ours) + 1], before, *out[out.index(ours) + 1:]] if ours in out else [*out, before]


def _gauge_lines(runs: list[Run], auth: str, sides: tuple[str, ...]) -> list[str]:
    """The initiator's CPU per IKE_SA beside each responder (the same work whichever responder answers:
    mostly its key exchange and, for RSA, the signature arithmetic), the gauge of how fast the machine ran
    during the batches, and the responder's CPU over it; the CPUs others kept busy during the batches."""
    import statistics

    def med(impl: str, f: Any) -> float | None:
        xs = [f(r) for r in runs if r.auth == auth and r.impl == impl and r.established]
        return statistics.median(xs) if xs else None

    have = [s for s in sides if med(s, lambda r: r.init_ms) is not None]
    if len(have) < 2:
        return []
    init = ", ".join(f"{s} {med(s, lambda r: r.init_ms):.2f}" for s in have)
    share = ", ".join(f"{s} {med(s, lambda r: r.cpu_ms / max(r.init_ms, 1e-9)):.3f}" for s in have)
    others = ", ".join(f"{s} {med(s, lambda r: r.others):.2f}" for s in have)
    return [f"the initiator's CPU per IKE_SA beside each responder (medians, ms; the same work whichever responder "
            f"answers, so it gauges how fast the machine ran during the batches): {init}; the responder's CPU over "
            f"the initiator's: {share}; CPUs kept busy by others during the batches (medians; each batch starts "
            f"once the last side's processes and devices are gone and, for up to 2 s, the machine is idle): {others}"]


def _table(runs: list[Run]) -> list[str]:
    lines = [f"{'round':5} {'auth':4} {'responder':12} {'IKE_SAs':>8} {'held':>6} {'seconds':>8} {'CPU ms/SA':>10} "
             f"{'initiator ms/SA':>16} {'system %':>9} {'others':>7}"]
    for r in runs:
        lines.append(f"{r.round + 1:5} {r.auth:4} {r.impl:12} {r.established:8d} "
                     f"{r.held:6d} {r.seconds:8.1f} {r.cpu_ms:10.3f} {r.init_ms:16.3f} "
                     f"{100 * r.sys_share:8.0f}% {r.others:7.2f}")
        if r.failed:
            lines.append(f"      failed: {len(r.failed)}: {r.failed[:3]}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
