#!/usr/bin/env python3
"""IKE_SA_INIT flood with spoofed sources: can a legitimate initiator still get an IKE_SA?

Lab (three namespaces, built here): ``flood`` -- veth -- ``resp`` -- veth -- ``legit``.

- ``resp`` runs our iked as responder (PSK, default cookie thresholds, log level info, ``unique = "no"``);
  its default route points at ``flood``, so COOKIE answers to spoofed sources leave the host the way they
  would on a real network; ``flood`` drops them at its interface's ingress (nftables, netdev family,
  before IP input): on a real network an answer's cost ends at the sending NIC, over a veth pair the
  receiving namespace's IP input (route lookup, ICMP unreachable) would run inside the responder's
  sendmmsg and be charged to it;
- ``flood`` sends IKE_SA_INIT requests (SA, KE x25519, Nonce, two NAT-D notifies: 240 octets of IKE, as an
  initiator sends them) from ``--sources`` spoofed addresses in 100.64.0.0/10, each with its own SPIi and
  nonce, through a raw socket (IP_HDRINCL) in batches of ``--batch`` with sendmmsg(2) (via ctypes: no C
  to build), at ``--pps`` (0 = as fast as it can), for ``--duration`` seconds at most; it reports the
  rate it achieved;
- ``legit`` runs our iked as the legitimate initiator, by default with strongSwan's retransmission
  schedule (4 s, then 7.2 s ...: ``early_timeout = 0``, as charon would; ``--legit-retransmit default``
  for ours, which retransmits IKE_SA_INIT and IKE_AUTH from 0.25 s on; ``--legit charon``: a real strongSwan
  charon instead):
  ``--attempts`` times, during the flood, ``ikectl up legitN`` (a new IKE_SA each, childless), and
  counts those established within ``--deadline`` seconds.

Measured per run (a fresh responder each): the flood rate achieved, legitimate successes within the
deadline and their setup times, the responder's CPU (utime+stime over the flood, as % of one CPU) and
RSS (before, peak, after), what the kernel dropped at the responder's socket (``/proc/net/snmp`` of
``resp``: ``RcvbufErrors``), and the responder's ``ikectl stats`` counters.

``--tree DIR`` runs the responder from another source tree (e.g. ``git archive`` of an older commit)
and ``--before REV`` does that for REV next to this tree, for a before/after table.

    .venv/bin/python bench/ike_flood.py                            # 3 runs, 20 attempts each
    .venv/bin/python bench/ike_flood.py --before 52e1892 --out bench/results/ike_flood.txt
    .venv/bin/python bench/ike_flood.py flood-only --pps 0         # just the generator's rate
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = results_io.enter_repo(__file__)

PSK = "flood-bench-shared-secret-0123456789abcdef"
PROPOSAL = "aes128gcm16-prfsha256-x25519"
RESP_IP, LEGIT_IP = "192.0.2.2", "192.0.2.1"
RESP_FLOOD_IP, FLOOD_IP = "198.51.100.2", "198.51.100.1"
SPOOF_NET = 0x64400000  # 100.64.0.0/10 (RFC 6598): never a real peer here
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ====================================================================== the flood generator (in ``flood``)
def init_template() -> tuple[bytes, int, int]:
    """A real IKE_SA_INIT request (as our initiator builds it), the offsets of its KE and nonce data."""
    from core_ike.codec.message import Message, encode_message
    from core_ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
    from core_ike.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
    from core_ike.crypto.proposals import parse_proposals

    marker, ke = b"\xa5" * 32, b"\x5a" * 32
    props = parse_proposals(PROPOSAL, ProtocolId.IKE)
    msg = Message(b"\x11" * 8, b"\x00" * 8, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0,
                  [SaPayload(props), KePayload(31, ke), NoncePayload(marker),
                   NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20)),
                   NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, bytes(20))])
    data = encode_message(msg)[0]
    return data, data.index(ke), data.index(marker)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def build_packets(n: int, sources: int, dst: str, seed: int = 9) -> list[bytes]:
    """`n` IPv4/UDP/IKE_SA_INIT datagrams, source address i % sources in 100.64/10, own SPIi and nonce each.
    IP_HDRINCL: the kernel fills in the IP checksum and ID; a zero UDP checksum means none (RFC 768)."""
    import random

    rng = random.Random(seed)
    ike, kpos, npos = init_template()
    udp_len = 8 + len(ike)
    dst_b = socket.inet_aton(dst)
    out = []
    for i in range(n):
        src = struct.pack("!I", SPOOF_NET + 1 + (i % sources) % ((1 << 22) - 2))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst_b)
        udp = struct.pack("!HHHH", 500, 500, udp_len, 0)
        # random X25519 public values: valid points, so each costs a half-open responder a DH computation
        body = rng.randbytes(8) + ike[8:kpos] + rng.randbytes(32) + ike[kpos + 32:npos] + rng.randbytes(32) \
            + ike[npos + 32:]
        out.append(ip + udp + body)
    return out


def flood(spec: dict[str, Any]) -> dict[str, Any]:
    """Send spoofed IKE_SA_INITs to spec["dst"] (raw socket, sendmmsg batches) until spec["duration"]
    seconds or spec["count"] datagrams; paced to spec["pps"] (0: unpaced). Returns the achieved rate."""
    pkts = build_packets(int(spec["pool"]), int(spec["sources"]), spec["dst"])
    n, batch = len(pkts), int(spec["batch"])
    blob = ctypes.create_string_buffer(b"".join(pkts))
    base = ctypes.addressof(blob)
    iovs = (_IoVec * n)()
    msgs = (_MMsgHdr * (n + batch))()  # the pool twice over at the wrap: batches never split
    off = 0
    for i, p in enumerate(pkts):
        iovs[i].iov_base, iovs[i].iov_len = base + off, len(p)
        off += len(p)
    for i in range(n + batch):
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i % n])
        msgs[i].msg_hdr.msg_iovlen = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    sendmmsg = libc.sendmmsg
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IPPROTO_RAW implies IP_HDRINCL
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    s.connect((spec["dst"], 0))
    fd, size = s.fileno(), ctypes.sizeof(_MMsgHdr)
    mbase = ctypes.addressof(msgs)
    pps, count, duration = float(spec["pps"]), int(spec["count"]), float(spec["duration"])
    sent = errors = calls = 0
    pos = 0
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # the measurement is done: report
    t0 = time.monotonic()
    end = t0 + duration
    now = t0
    while sent < count and now < end and not stop:
        k = min(batch, count - sent)
        r = sendmmsg(fd, mbase + pos * size, k, 0)
        calls += 1
        if r < 0:
            errors += 1
            r = 0
        sent += r
        pos = (pos + r) % n
        now = time.monotonic()
        if pps > 0:
            ahead = t0 + sent / pps - now
            if ahead > 0.0005:
                time.sleep(ahead)
                now = time.monotonic()
    elapsed = time.monotonic() - t0
    s.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)  # includes building the pool before t0: an upper bound
    return {"sent": sent, "seconds": elapsed, "pps": sent / elapsed if elapsed > 0 else 0.0,
            "errors": errors, "calls": calls, "sources": int(spec["sources"]), "bytes": len(pkts[0]),
            "cpu": ru.ru_utime + ru.ru_stime}


# ====================================================================== the lab and the measurement
def build_lab() -> Any:
    from scenarios.lab import Lab, cleanup_orphans

    cleanup_orphans()
    lab = Lab()
    try:
        for h in ("flood", "resp", "legit"):
            lab.add_host(h)
        lab.link("flood", "eth0", "resp", "eth1", f"{FLOOD_IP}/24", f"{RESP_FLOOD_IP}/24")
        lab.link("legit", "eth0", "resp", "eth0", f"{LEGIT_IP}/24", f"{RESP_IP}/24")
        lab.route("resp", "default", FLOOD_IP)  # answers to the spoofed sources go back out
        lab.route("flood", "192.0.2.0/24", RESP_FLOOD_IP)  # the flood goes to the address the legit one uses
        # the answers to spoofed sources end at flood's interface, as at a NIC (see the module's docstring)
        lab.run("flood", ["nft", "-f", "-"], input=(
            "table netdev answers {\n chain ingress {\n  type filter hook ingress device eth0 priority 0;\n"
            "  ip daddr 100.64.0.0/10 drop\n }\n}\n"))
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
                    "net.ipv4.conf.eth1.rp_filter"):
            lab.sysctl("resp", key, 0)
    except BaseException:
        lab.close(passed=False)
        raise
    return lab


def responder_toml(log_level: str, extra: str = "") -> str:
    return (f'[daemon]\nlisten = ["{RESP_IP}"]\ncontrol = "@CTL@"\ndataplane = "none"\n'
            f'log_level = "{log_level}"\n{extra}\n'
            f'[[secrets.ike]]\nsecret = "{PSK}"\n'
            f'[connections.gw]\nlocal_addrs = ["{RESP_IP}"]\nremote_addrs = ["%any"]\nproposals = "{PROPOSAL}"\n'
            'unique = "no"\nlocal = { auth = "psk", id = "responder@bench" }\n'
            'remote = { auth = "psk", id = "%any" }\n')


def legit_toml(attempts: int, schedule: str) -> str:
    out = [f'[daemon]\nlisten = ["{LEGIT_IP}"]\ncontrol = "@CTL@"\ndataplane = "none"\nlog_level = "info"\n',
           f'[[secrets.ike]]\nsecret = "{PSK}"\n']
    for i in range(attempts):
        out.append(f'[connections.legit{i}]\nlocal_addrs = ["{LEGIT_IP}"]\nremote_addrs = ["{RESP_IP}"]\n'
                   f'proposals = "{PROPOSAL}"\nlocal = {{ auth = "psk", id = "legit{i}@bench" }}\n'
                   'remote = { auth = "psk", id = "responder@bench" }\n'
                   + ("retransmit = { early_timeout = 0 }\n" if schedule == "strongswan" else ""))
    return "\n".join(out)


CHARON_PLUGINS = ("random nonce aes sha1 sha2 hmac openssl gmp curve25519 pem pkcs1 pkcs8 x509 pubkey kdf "
                  "kernel-netlink socket-default vici")


class CharonLegit:
    """A real strongSwan charon as the legitimate initiator (its own retransmission schedule: 4 s, 7.2 s, ...):
    connections legit0.. without CHILD_SAs, each `up` a vici initiate of a new IKE_SA."""

    def __init__(self, lab: Any, attempts: int, name: str) -> None:
        from scenarios.lab.charon import Charon

        conns = "".join(
            f"  legit{i} {{\n    local_addrs = {LEGIT_IP}\n    remote_addrs = {RESP_IP}\n    proposals = {PROPOSAL}\n"
            f"    version = 2\n    local {{\n      auth = psk\n      id = legit{i}@bench\n    }}\n"
            "    remote {\n      auth = psk\n      id = responder@bench\n    }\n  }\n" for i in range(attempts))
        conf = f'connections {{\n{conns}}}\nsecrets {{\n  ike-1 {{\n    secret = "{PSK}"\n  }}\n}}\n'
        self.charon = Charon(lab, "legit", name=name, conf=conf, plugins=CHARON_PLUGINS)

    def start(self) -> None:
        self.charon.start()

    def stop(self) -> None:
        self.charon.stop()

    def up(self, i: int, deadline: float) -> bool:
        from scenarios.lab.charon import CharonError

        try:
            self.charon.initiate(ike=f"legit{i}", timeout=deadline)
        except CharonError:
            return False
        return True


class IkedLegit:
    def __init__(self, lab: Any, attempts: int, schedule: str, name: str) -> None:
        from scenarios.lab.iked import Iked

        self.iked = Iked(lab, "legit", legit_toml(attempts, schedule), name=name)

    def start(self) -> None:
        self.iked.start()

    def stop(self) -> None:
        self.iked.stop()

    def up(self, i: int, deadline: float) -> bool:
        try:
            r = self.iked.ctl({"cmd": "up", "conn": f"legit{i}", "timeout": deadline}, timeout=deadline + 5)
        except OSError:
            return False
        return bool(r.get("ok"))


def proc_cpu(pid: int) -> float:
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def find_pythons(root: int) -> list[int]:
    """Every python process under `root` (iked with workers: the supervisor and each worker)."""
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop(0)
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("python"):
                out.append(pid)
            todo += [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    if not out:
        raise RuntimeError(f"no python under {root}")
    return out


def find_python(root: int) -> int:
    return find_pythons(root)[0]


def _wait_workers(root: int, workers: int, timeout: float = 30.0) -> list[int]:
    """The supervisor and its `workers` processes once they all run (polled with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = find_pythons(root)
        if workers == 1 or len(pids) >= workers + 1 or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def udp_stats(lab: Any, host: str) -> dict[str, int]:
    lines = [ln.split() for ln in lab.run(host, ["cat", "/proc/net/snmp"]).stdout.splitlines()
             if ln.startswith("Udp:")]
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))


def start_flood(lab: Any, spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", lab.ns("flood"), sys.executable, __file__, "flood",
                             json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_run(lab: Any, a: argparse.Namespace, tree: Path, run: int) -> dict[str, Any]:
    from scenarios.lab.iked import Iked

    workers = int(getattr(a, "workers_now", 1))
    extra = a.responder_extra + (f"\nworkers = {workers}" if workers != 1 else "")
    resp = Iked(lab, "resp", responder_toml(a.log_level, extra), name=f"resp{run}-w{workers}-{tree.name}")
    legit: CharonLegit | IkedLegit = (
        CharonLegit(lab, a.attempts, f"charon{run}-w{workers}-{tree.name}") if a.legit == "charon"
        else IkedLegit(lab, a.attempts, "default" if a.legit == "ours-default" else a.legit_retransmit,
                       f"legit{run}-w{workers}-{tree.name}"))
    resp.start(tree=tree)
    legit.start()
    out: dict[str, Any] = {"tree": str(tree), "workers": workers, "legit": a.legit}
    try:
        pids = _wait_workers(resp.proc.pid, workers)
        udp0 = udp_stats(lab, "resp")
        rss0, cpu0 = sum(proc_rss_kib(p) for p in pids), sum(proc_cpu(p) for p in pids)
        sys0 = sum(proc_cpu_split(p)[1] for p in pids)
        spec = {"dst": RESP_IP, "pps": a.pps, "duration": a.duration, "count": a.count,
                "sources": a.sources, "pool": min(a.pool, max(a.sources, 1024)), "batch": a.batch}
        fl = start_flood(lab, spec) if a.pps >= 0 else None
        t_flood = time.monotonic()
        time.sleep(a.settle)  # the flood reaches its rate, cookies engage
        times: list[float | None] = []
        rss_peak = rss0
        for i in range(a.attempts):
            t = time.monotonic()
            ok = legit.up(i, a.deadline)
            dt = time.monotonic() - t
            times.append(dt if ok and dt <= a.deadline else None)
            rss_peak = max(rss_peak, sum(proc_rss_kib(p) for p in pids))
            time.sleep(a.gap)
        in_flood = time.monotonic() - t_flood
        fres: dict[str, Any] = {}
        if fl is not None:
            fl.send_signal(signal.SIGTERM)
            so, se = fl.communicate(timeout=a.duration + 60)
            if fl.returncode != 0:
                raise RuntimeError(f"flood failed: {se[-2000:]}")
            fres = json.loads(so.strip().splitlines()[-1])
        cpu1 = sum(proc_cpu(p) for p in pids)
        sys1 = sum(proc_cpu_split(p)[1] for p in pids)
        flood_secs = float(fres.get("seconds", in_flood))
        rss1 = sum(proc_rss_kib(p) for p in pids)
        udp1 = udp_stats(lab, "resp")
        stats = resp.ctl({"cmd": "stats"}).get("stats", {})
        out.update({
            "flood": fres, "times": times, "ok": sum(1 for x in times if x is not None),
            "cpu_pct": 100.0 * (cpu1 - cpu0) / max(flood_secs, in_flood),
            "sys_share": (sys1 - sys0) / (cpu1 - cpu0) if cpu1 > cpu0 else 0.0,
            "gen_cpu_pct": 100.0 * float(fres.get("cpu", 0.0)) / flood_secs if flood_secs else 0.0,
            "flood_secs": flood_secs,
            "rss0": rss0, "rss_peak": max(rss_peak, rss1), "rss1": rss1,
            "udp": {k: udp1[k] - udp0.get(k, 0) for k in ("InDatagrams", "RcvbufErrors", "InErrors",
                                                           "OutDatagrams", "SndbufErrors")},
            "counters": stats.get("counters", {}), "half_open": stats.get("half-open"),
        })
    finally:
        legit.stop()
        resp.stop()
    return out


def _q(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def report(label: str, runs: list[dict[str, Any]], a: argparse.Namespace, first: int = 0) -> list[str]:
    lines = []
    for i, r in enumerate(runs, first):
        f = r["flood"]
        ts = [x for x in r["times"] if x is not None]
        c = r["counters"]
        drops = {k: v for k, v in c.items() if k.startswith("drop-")}
        lines.append(
            f"{label} run {i + 1}: flood {f.get('pps', 0) / 1000:6.1f} kpps ({f.get('sent', 0)} sent, generator CPU "
            f"{r.get('gen_cpu_pct', 0):3.0f}%) legit {r['ok']:2d}/{len(r['times'])} in {a.deadline:.0f} s, "
            f"setup s {_q(ts)}; responder CPU {r['cpu_pct']:3.0f}% ({100 * r.get('sys_share', 0):.0f}% of it in "
            f"the kernel), COOKIEs/s {_cookie_rate(r) / 1000:.1f}k, "
            f"RSS MiB {r['rss0'] / 1024:.1f}/{r['rss_peak'] / 1024:.1f}/{r['rss1'] / 1024:.1f}; "
            f"kernel: {r['udp']['InDatagrams']} delivered, {r['udp']['RcvbufErrors']} rcvbuf drops; "
            f"cookies-sent {c.get('cookies-sent', 0)} {drops or ''}")
    return lines


def _cookie_rate(r: dict[str, Any]) -> float:
    secs = float(r.get("flood_secs") or r["flood"].get("seconds") or 0.0)
    return float(r["counters"].get("cookies-sent", 0)) / secs if secs else 0.0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("mode", nargs="?", default="measure", choices=["measure", "flood-only"])
    ap.add_argument("--pps", type=float, default=0, help="flood rate target; 0 = as fast as it can, -1 = no flood")
    ap.add_argument("--duration", type=float, default=150.0,
                    help="the flood stops after this many seconds at most (else when the attempts are done)")
    ap.add_argument("--count", type=int, default=10**9, help="... or after this many datagrams")
    ap.add_argument("--sources", type=int, default=65536, help="distinct spoofed source addresses")
    ap.add_argument("--pool", type=int, default=65536, help="distinct prebuilt datagrams (cycled)")
    ap.add_argument("--batch", type=int, default=256, help="datagrams per sendmmsg call")
    ap.add_argument("--attempts", type=int, default=20)
    ap.add_argument("--deadline", type=float, default=5.0)
    ap.add_argument("--gap", type=float, default=0.3, help="pause between legitimate attempts")
    ap.add_argument("--settle", type=float, default=2.0, help="flood time before the first attempt")
    ap.add_argument("--legit", choices=["ours", "charon", "ours-default"], nargs="+", default=["ours", "charon"],
                    help="the legitimate initiator(s): our iked (with --legit-retransmit), a real strongSwan "
                    "charon (strongSwan's schedule), our iked with its default retransmissions (ours-default); "
                    "several are interleaved run by run")
    ap.add_argument("--before-legit", choices=["ours", "charon", "ours-default"], nargs="+",
                    help="with --before: the legitimate initiators run against the older tree (default: --legit)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="the responder's [daemon] workers; several are interleaved run by run")
    ap.add_argument("--legit-retransmit", choices=["strongswan", "default"], default="strongswan",
                    help="the legitimate initiator's retransmissions: strongSwan's (4 s, then 7.2 s, ...: "
                    "early_timeout = 0) or our default (early ones from 0.25 s)")
    ap.add_argument("--log-level", default="info", help="the responder's log_level")
    ap.add_argument("--responder-extra", default="", help="extra [daemon] lines for the responder")
    ap.add_argument("--tree", default=str(ROOT), help="run the responder from this source tree")
    ap.add_argument("--before", metavar="REV", help="also run the responder from `git archive REV`")
    return ap


def _remove_before_trees(trees: list[tuple[str, Path]]) -> None:
    for label, tree in trees:
        if label.startswith("before"):
            shutil.rmtree(tree, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["flood"]:
        print(json.dumps(flood(json.loads(args_in[1]))))
        return 0
    ap = _parser()
    results_io.add_args(ap, rounds=3)
    a = ap.parse_args(args_in)
    rounds = results_io.rounds_of(a)
    if a.quick:
        a.pps, a.sources, a.pool, a.attempts, a.duration, a.settle = 20000.0, 4096, 4096, 3, 30.0, 1.0
    header = results_io.start_header(args_in, "bench/ike_flood.py")
    trees: list[tuple[str, Path]] = \
        [(f"before {a.before}", results_io.git_tree(a.before, prefix="ikeflood-"))] if a.before else []
    try:
        with build_lab() as lab:
            if a.mode == "flood-only":
                spec = {"dst": RESP_IP, "pps": a.pps, "duration": a.duration, "count": a.count,
                        "sources": a.sources, "pool": min(a.pool, max(a.sources, 1024)), "batch": a.batch}
                udp0 = udp_stats(lab, "resp")
                p = start_flood(lab, spec)
                so, se = p.communicate(timeout=a.duration + 60)
                udp1 = udp_stats(lab, "resp")
                print(so.strip() or se)
                print({k: udp1[k] - udp0[k] for k in ("InDatagrams", "NoPorts", "InErrors")})
                return 0
            trees.append(("this tree" if Path(a.tree) == ROOT else f"tree {a.tree}", Path(a.tree)))
            sides = [(t, lg, w) for t in range(len(trees)) for lg in a.legit for w in a.workers
                     if not (trees[t][0].startswith("before") and a.before_legit and lg not in a.before_legit)]
            names = {sd: f"{'before ' if trees[sd[0]][0].startswith('before') else ''}{sd[1]:12} w{sd[2]}" for sd in sides}
            results: dict[tuple[int, str, int], list[dict[str, Any]]] = {sd: [] for sd in sides}
            for run, name in results_io.interleave(rounds, [names[sd] for sd in sides]):
                sd = next(k for k, v in names.items() if v == name)
                a.workers_now, a.legit_now = sd[2], sd[1]
                r = one_run(lab, argparse.Namespace(**{**vars(a), "legit": sd[1]}), trees[sd[0]][1], run)
                results[sd].append(r)
                print(report(name, [r], a, run)[0], flush=True)
    finally:
        _remove_before_trees(trees)
    text = [f"IKE_SA_INIT flood with spoofed sources: {a.sources} source addresses, flood target "
            f"{'max' if a.pps == 0 else f'{a.pps:.0f} pps'}, sendmmsg batches of {a.batch} via a raw socket, one "
            f"generator process; {a.attempts} legitimate childless IKE_SAs per run (PSK, {PROPOSAL}): `ours` = "
            f"our iked with {a.legit_retransmit} retransmissions, `charon` = strongSwan charon (4 s, 7.2 s, ...), "
            "`ours-default` = our iked with its default retransmissions (IKE_SA_INIT again after 0.25 s, then 1.2 "
            "times longer each time); "
            f"success = established within {a.deadline:.0f} s; responder log_level {a.log_level}, "
            f"default cookie thresholds, `wN` = [daemon] workers = N"
            + (f"; responder extra: {a.responder_extra!r}" if a.responder_extra else "")
            + "; trees: " + ", ".join(f"{lb} = {t}" for lb, t in trees), ""]
    figures = []
    for sd in sides:
        runs = results[sd]
        text += report(names[sd], runs, a)
        ok = sum(r["ok"] for r in runs)
        n = sum(len(r["times"]) for r in runs)
        before = trees[sd[0]][0].startswith("before")
        key = sd[1].replace("-", "_")
        who = "our iked (strongSwan's schedule)" if sd[1] == "ours" and a.legit_retransmit == "strongswan" else (
            "our iked (our default schedule)" if sd[1] in ("ours", "ours-default") else "strongSwan charon")
        diffs = [f"flood {_q([r['flood'].get('pps', 0) / 1000 for r in runs])} kpps from one generator process "
                 f"using {_q([r.get('gen_cpu_pct', 0) for r in runs])} % of a CPU on the same 2-CPU machine",
                 f"responder: {sd[2]} worker(s), CPU {_q([r['cpu_pct'] for r in runs])} % of one CPU, "
                 f"COOKIEs/s {_q([_cookie_rate(r) / 1000 for r in runs])}k, "
                 f"{_q([100 * r.get('sys_share', 0) for r in runs])} % of that CPU in the kernel",
                 f"answered {_q([100 * _cookie_rate(r) / r['flood']['pps'] for r in runs if r['flood'].get('pps')])} "
                 "% of the flood's datagrams (a first IKE_SA_INIT gets in about as often)"]
        figures.append(results_io.figure(
            f"flood_legit_{key}_w{sd[2]}" + ("_before" if before else ""),
            f"legitimate IKE_SA within {a.deadline:.0f} s during an IKE_SA_INIT flood, {who}, workers = {sd[2]}"
            + (" (before)" if before else ""),
            results_io.count(ok, n, f"within {a.deadline:.0f} s"), None, better="higher", differences=diffs,
            readme=not before and sd[2] == max(a.workers)))
        figures.append(results_io.figure(
            f"flood_cookies_{key}_w{sd[2]}" + ("_before" if before else ""),
            f"COOKIE answers per second under that flood, workers = {sd[2]}" + (" (before)" if before else ""),
            results_io.sample([_cookie_rate(r) for r in runs], "/s"), None, better="higher", readme=False))
        figures.append(results_io.figure(
            f"flood_cookies_per_cpu_{key}_w{sd[2]}" + ("_before" if before else ""),
            f"COOKIE answers per CPU-second of the responder's processes, workers = {sd[2]}"
            + (" (before)" if before else ""),
            results_io.sample([_cookie_rate(r) / (r["cpu_pct"] / 100.0) for r in runs if r["cpu_pct"] > 0], "/s"),
            None, better="higher", readme=False,
            differences=["what the responder answers with one CPU of its own: with N workers, each on its own core, "
                         "N times this (the kernel spreads the flood over the workers by the initiator's SPI)"]))
    header = results_io.finish_header(header, a.quick, rounds)
    results_io.write_results(a.out, "ike_flood", header, figures, "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
