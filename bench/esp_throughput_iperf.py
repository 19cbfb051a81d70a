#!/usr/bin/env python3
"""TCP throughput (iperf3) through an IKEv2 tunnel: our iked (userspace ESP over TUN) on both ends vs
strongSwan charon with kernel-libipsec (strongSwan's userspace ESP fallback: this kernel has no ESP) on
both ends, in the same two namespaces (``two_hosts``, one veth link), ESP-in-UDP on both sides.

Usage (root):
    bench/esp_throughput_iperf.py [--quick] [--rounds 3] [--seconds 6] [--sides ...] [--esp aes128gcm16]
                                  [--out bench/results/esp_throughput_iperf.txt]

Sides: ``charon`` and ``ours:STEPS`` where STEPS is the ``[daemon] esp_offload`` value (docs/configuration.md):
``none`` (one TUN read, one seal, one send per packet; the transport's reads), ``tso`` (TSO super-packets
from the TUN device, cut into segments by us), ``tso,gso`` (+ one UDP_SEGMENT send per run of ESP packets),
``tso,gso,gro`` (+ UDP_GRO reads), ``tso,gso,gro,coalesce`` (+ decrypted segments coalesced into one TUN
write), ``...,seal_batch`` (+ a super-packet's segments cut with numpy and sealed into one buffer, sent as
slices of it), ``all`` (+ ``open_batch``: a GRO read decrypted into one buffer and merged there: users' default);
``tso,mmsg``: ``tso`` with recvmmsg reads and sendmmsg sends (the ``mmsg`` step works only where GRO or GSO is off;
``all`` leaves it out). Each round runs every side once, alternating the order (results_io.interleave); each side
gets a fresh pair of daemons, iperf3 runs alice -> bob and bob -> alice (``-R``). A side ending in ``@boost``
runs the daemons and iperf3 at autogroup nice -15 (/proc/PID/autogroup: the scheduler shares the CPUs between
sessions, and every daemon runs in a session of its own): the other sessions' work on the shared machine yields
to them, which shows what the code moves when it gets the CPUs. CPU = the ESP
process's CPU time over the run / wall time (100 % = one core), on the sending and the receiving host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io  # noqa: E402

from scenarios.lab import Lab, cleanup_orphans, two_hosts  # noqa: E402
from scenarios.lab.charon import Charon  # noqa: E402
from scenarios.lab.iked import Iked  # noqa: E402
from scenarios.lab.netns import wait_for  # noqa: E402
from scenarios.lab.tunnels import Tunnel, charon_psk_conf, iked_psk_toml  # noqa: E402

A, B = "192.0.2.1", "192.0.2.2"
A_IN, B_IN = "10.10.1.1", "10.10.2.1"
PSK = "bench-secret-0123456789abcdef"
HZ = os.sysconf("SC_CLK_TCK")
BASE_ESP = "aes128gcm16"  # what iked_psk_toml / charon_psk_conf write
DEFAULT_SIDES = ("none,tso,tso+mmsg,tso+gso,tso+gso+gro,tso+gso+gro+coalesce,tso+gso+gro+coalesce+seal_batch,all,charon,"
                 "all@boost,charon@boost")
BOOST = -15  # autogroup nice of the daemons and iperf3 on the @boost sides
DIRECTIONS = ("alice->bob", "bob->alice")


def iked_conf(me: str, peer: str, my_id: str, peer_id: str, lts: str, rts: str, esp: str = BASE_ESP,
              offload: str = "all") -> str:
    toml = iked_psk_toml(Tunnel(me, peer, my_id, peer_id, lts, rts, PSK), encap=True,
                         extra_daemon=f'log_level = "info"\nesp_offload = "{offload}"')
    return toml.replace(f'esp_proposals = "{BASE_ESP}"', f'esp_proposals = "{esp}"')


def charon_conf(me: str, peer: str, my_id: str, peer_id: str, lts: str, rts: str, esp: str = BASE_ESP) -> str:
    conf = charon_psk_conf(Tunnel(me, peer, my_id, peer_id, lts, rts, PSK))
    return conf.replace(f"esp_proposals = {BASE_ESP}", f"esp_proposals = {esp}")


def cpu_ticks(lab: Lab, host: str, comms: tuple[str, ...]) -> int:
    """utime+stime (clock ticks) of the processes in ``host`` whose comm starts with one of ``comms``."""
    pids = lab.run(None, ["ip", "netns", "pids", lab.ns(host)], check=False).stdout.split()
    total = 0
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if not comm.startswith(comms):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


def boost(lab: Lab, comms: tuple[str, ...], nice: int) -> None:
    """Set the autogroup nice of the processes in both hosts whose comm starts with one of ``comms``."""
    for host in ("alice", "bob"):
        for pid in lab.run(None, ["ip", "netns", "pids", lab.ns(host)], check=False).stdout.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip().startswith(comms):
                    Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            except OSError:
                continue


def iperf(lab: Lab, seconds: float, reverse: bool, comms: tuple[str, ...], nice: int = 0) -> dict[str, float]:
    """One iperf3 TCP run alice -> bob (or -R): Mbit/s received, retransmits, CPU % per host. With ``nice``,
    iperf3 runs at that autogroup nice (the client is our child: our own session's autogroup, reset after)."""
    srv = lab.popen("bob", ["iperf3", "-s", "-1", "-B", B_IN], lab.dir / "iperf3-server.log")
    # iperf3 -s announces nothing it flushes to a file: its listening port is polled
    wait_for(lambda: f"{B_IN}:5201" in lab.run("bob", ["ss", "-ltn"], check=False).stdout, 5,
             interval=0.05, what="iperf3 -s")
    if nice:
        boost(lab, ("iperf3",), nice)
        Path("/proc/self/autogroup").write_text(str(nice))
    try:
        return _iperf_run(lab, seconds, reverse, comms, srv)
    finally:
        if nice:
            Path("/proc/self/autogroup").write_text("0")


def _iperf_run(lab: Lab, seconds: float, reverse: bool, comms: tuple[str, ...], srv: Any) -> dict[str, float]:
    c0 = {h: cpu_ticks(lab, h, comms) for h in ("alice", "bob")}
    m0 = machine_ticks()
    t0 = time.monotonic()
    argv = ["iperf3", "-c", B_IN, "-B", A_IN, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    res = lab.run("alice", argv, check=False, timeout=seconds + 30)
    wall = time.monotonic() - t0
    c1 = {h: cpu_ticks(lab, h, comms) for h in ("alice", "bob")}
    m1 = machine_ticks()
    lab.stop(srv)
    try:
        data: Any = json.loads(res.stdout)
        bps = float(data["end"]["sum_received"]["bits_per_second"])
        retrans = float(data["end"]["sum_sent"].get("retransmits", 0))
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 failed: {e}\n{res.stdout[-2000:]}\n{res.stderr}") from e
    cpu = {h: 100.0 * (c1[h] - c0[h]) / HZ / wall for h in c0}
    sender, receiver = ("bob", "alice") if reverse else ("alice", "bob")
    busy, total = m1[0] - m0[0], m1[1] - m0[1]
    return {"mbps": bps / 1e6, "retrans": retrans, "cpu_tx": cpu[sender], "cpu_rx": cpu[receiver],
            "machine_busy": 100.0 * busy / max(1, total) * (os.cpu_count() or 1),
            "load": float(Path("/proc/loadavg").read_text().split()[0])}


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU of the machine (/proc/stat): what all processes used."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def us_per_packet(r: dict[str, float], key: str, mss: int) -> float:
    """CPU microseconds the ESP process on one host used per TCP segment (`mss` octets of payload)."""
    pps = r["mbps"] * 1e6 / 8 / mss
    return r[key] / 100 * 1e6 / max(pps, 1e-9)


def tun_mtu(lab: Lab, host: str) -> str:
    out = lab.run(host, ["ip", "-o", "link", "show"], check=False).stdout
    for line in out.splitlines():
        if "ipsec" in line or "tun" in line:
            parts = line.split()
            if "mtu" in parts:
                return parts[parts.index("mtu") + 1]
    return "?"


def run_side(lab: Lab, side: str, seconds: float, esp: str) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    info: dict[str, Any] = {}
    nice = BOOST if side.endswith("@boost") else 0
    side = side.removesuffix("@boost")
    if side.startswith("ours"):
        steps = side.split(":", 1)[1]
        a = Iked(lab, "alice", iked_conf(A, B, "alice@lab", "bob@lab", A_IN, B_IN, esp, steps), name="iked-bench")
        b = Iked(lab, "bob", iked_conf(B, A, "bob@lab", "alice@lab", B_IN, A_IN, esp, steps), name="iked-bench")
        daemons: list[Any] = [a, b]
        comms: tuple[str, ...] = ("python",)
        a.start()
        b.start()
        a.up("net", "net")
        b.wait_sas(lambda s: len(s) == 1 and s[0]["child-sas"])
    else:
        a2 = Charon(lab, "alice", name="charon", conf=charon_conf(A, B, "alice@lab", "bob@lab", A_IN, B_IN, esp))
        b2 = Charon(lab, "bob", name="charon", conf=charon_conf(B, A, "bob@lab", "alice@lab", B_IN, A_IN, esp))
        daemons = [a2, b2]
        comms = ("charon",)
        a2.start()
        b2.start()
        a2.initiate(child="net", ike="net", timeout=15)
        b2.wait_child("net", timeout=5)
    try:
        sent, received, out = lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.05)
        if received != sent:  # once more: on the loaded shared machine a reply can be lost
            sent, received, out = lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.05)
        if received != sent:
            raise RuntimeError(f"{side}: tunnel does not pass ping\n{out}")
        info["tun_mtu"] = tun_mtu(lab, "alice")
        if nice:
            boost(lab, comms, nice)
        res = {"alice->bob": iperf(lab, seconds, False, comms, nice), "bob->alice": iperf(lab, seconds, True, comms, nice)}
        if side.startswith("ours"):
            st = daemons[0].ctl({"cmd": "stats"}).get("stats", {})
            info["dataplane_alice"] = st.get("dataplane", {})
        return res, info
    finally:
        for d in daemons:
            d.stop()


def label_of(side: str) -> str:
    if side.endswith("@boost"):
        return label_of(side.removesuffix("@boost")).split(" (")[0] + f", autogroup nice {BOOST}"
    if side == "charon":
        return "charon (kernel-libipsec)"
    steps = side.split(":", 1)[1]
    return {"none": "ours, no offload", "all": "ours, all offloads (default)"}.get(steps, f"ours, {steps}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results_io.add_args(ap, rounds=3)
    ap.add_argument("--seconds", type=float, default=None, help="iperf3 time per direction (default 6, 2 with --quick)")
    ap.add_argument("--sides", default=DEFAULT_SIDES,
                    help="comma-separated: 'charon' or an esp_offload value with '+' between steps "
                         "(default: %(default)s; with --quick: none,all,charon)")
    ap.add_argument("--esp", default=BASE_ESP, help="the CHILD_SA's ESP proposal (default: %(default)s)")
    args = ap.parse_args(argv)
    rounds = results_io.rounds_of(args)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 6.0)
    text = "none,all,charon" if args.quick and args.sides == DEFAULT_SIDES else args.sides
    sides = [s if s.startswith("charon") else "ours:" + s.replace("+", ",") for s in text.split(",") if s]
    if os.geteuid() != 0 or not shutil.which("iperf3"):
        print("needs root and iperf3", file=sys.stderr)
        return 2
    header = results_io.start_header(argv if argv is not None else sys.argv[1:])
    cleanup_orphans()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {s: [] for s in sides}
    infos: dict[str, dict[str, Any]] = {}
    with two_hosts() as lab:
        for r, side in results_io.interleave(rounds, sides):
            res, info = run_side(lab, side, seconds, args.esp)
            runs[side].append(res)
            infos[side] = info
            print(f"round {r + 1} {side}: " + ", ".join(
                f"{d} {v['mbps']:.0f} Mbit/s (CPU tx {v['cpu_tx']:.0f} % rx {v['cpu_rx']:.0f} %, "
                f"{v['retrans']:.0f} retransmits)" for d, v in res.items()), flush=True)
    header = results_io.finish_header(header, args.quick, rounds)
    return report(args, header, sides, runs, infos, seconds)


def values(runs: list[dict[str, dict[str, float]]], key: str) -> list[float]:
    return [r[d][key] for r in runs for d in DIRECTIONS]


def report(args: Any, header: dict[str, Any], sides: list[str], runs: dict[str, list[dict[str, dict[str, float]]]],
           infos: dict[str, dict[str, Any]], seconds: float) -> int:
    differences = [
        "charon: kernel-libipsec, strongSwan's userspace ESP fallback (this kernel has no ESP/XFRM); "
        "ours: the userspace data plane, users' defaults (all offloads on)",
        f"same CHILD_SA both sides: {args.esp}, ESP-in-UDP on port 4500, one veth link between two namespaces",
        "ours: one Python process per host; charon: kernel-libipsec's threads",
        f"TUN MTU: ours {infos.get(next((s for s in sides if s.startswith('ours')), ''), {}).get('tun_mtu', '?')}, "
        f"charon {infos.get('charon', {}).get('tun_mtu', '?')}",
        "iperf3 client and server and both daemons share the machine's 2 CPUs (and other sessions' work)",
    ]
    ours_main = "ours:all" if "ours:all" in runs else next((s for s in sides if s.startswith("ours")), None)
    figs = []
    ch = runs.get("charon") or []
    if ours_main:
        o = runs[ours_main]
        figs.append(results_io.figure(
            "esp_tcp_throughput", "ESP TCP throughput through a tunnel (iperf3, both directions)",
            results_io.sample(values(o, "mbps"), "Mbit/s", 1), results_io.sample(values(ch, "mbps"), "Mbit/s", 1),
            better="higher", differences=differences, readme=True))
        for key, what in (("cpu_tx", "sending"), ("cpu_rx", "receiving")):
            figs.append(results_io.figure(
                f"esp_{key}", f"CPU of the ESP process on the {what} host (100 % = one core)",
                results_io.sample(values(o, key), "%", 1), results_io.sample(values(ch, key), "%", 1),
                better=None, differences=["the same runs as the throughput figure"], readme=False))
        eff_o = [r[d]["mbps"] / max(1e-9, (r[d]["cpu_tx"] + r[d]["cpu_rx"]) / 100) for r in o for d in DIRECTIONS]
        eff_c = [r[d]["mbps"] / max(1e-9, (r[d]["cpu_tx"] + r[d]["cpu_rx"]) / 100) for r in ch for d in DIRECTIONS]
        figs.append(results_io.figure(
            "esp_mbps_per_core", "throughput per core the two ESP processes use (Mbit/s / (CPU tx + rx))",
            results_io.sample(eff_o, "Mbit/s per core", 1), results_io.sample(eff_c, "Mbit/s per core", 1),
            better="higher", differences=["less sensitive to the machine's load than Mbit/s"], readme=False))
    if runs.get("ours:all@boost") and runs.get("charon@boost"):
        figs.append(results_io.figure(
            "esp_tcp_throughput_boost", "ESP TCP throughput through a tunnel when the daemons get the CPUs "
            f"(daemons and iperf3 at autogroup nice {BOOST})",
            results_io.sample(values(runs["ours:all@boost"], "mbps"), "Mbit/s", 1),
            results_io.sample(values(runs["charon@boost"], "mbps"), "Mbit/s", 1), better="higher",
            differences=[f"both sides' daemons and iperf3 at autogroup nice {BOOST}: the other sessions on the "
                         "machine yield the CPUs to them; otherwise as the throughput figure above"], readme=False))
    for side in sides:
        if side in ("charon", ours_main) or side.endswith("@boost"):
            continue
        figs.append(results_io.figure(
            f"esp_tcp_{side.split(':', 1)[1].replace(',', '_')}", f"ESP TCP throughput, {label_of(side)}",
            results_io.sample(values(runs[side], "mbps"), "Mbit/s", 1), None, better="higher",
            differences=[f"esp_offload = {side.split(':', 1)[1]}; other sides in the table above"], readme=False))
    lines = [f"iperf3 TCP, {seconds:g} s per direction, {len(next(iter(runs.values())))} round(s); "
             "medians over both directions and all rounds (min-max)",
             f"{'side':<40} {'Mbit/s':>22} {'CPU tx %':>9} {'CPU rx %':>9} {'Mbit/s/core':>12} {'retrans':>8} "
             f"{'us/pkt tx':>10} {'us/pkt rx':>10} {'machine %':>10} {'load':>5}"]
    mss = int(infos.get(next((s for s in sides if s.startswith("ours")), ""), {}).get("tun_mtu", 1400)) - 52
    for side in sides:
        rs = runs[side]
        mb = results_io.sample(values(rs, "mbps"), "", 1)
        if not mb:
            continue
        eff = [r[d]["mbps"] / max(1e-9, (r[d]["cpu_tx"] + r[d]["cpu_rx"]) / 100) for r in rs for d in DIRECTIONS]
        med = results_io.sample(eff, "", 0)
        tx = results_io.sample(values(rs, "cpu_tx"), "", 0)
        rx = results_io.sample(values(rs, "cpu_rx"), "", 0)
        rt = results_io.sample(values(rs, "retrans"), "", 0)
        assert med and tx and rx and rt
        us = {k: statistics.median(us_per_packet(r[d], k, mss) for r in rs for d in DIRECTIONS) for k in ("cpu_tx", "cpu_rx")}
        busy = statistics.median(r[d].get("machine_busy", 0.0) for r in rs for d in DIRECTIONS)
        load = statistics.median(r[d].get("load", 0.0) for r in rs for d in DIRECTIONS)
        lines.append(f"{label_of(side):<40} {mb['median']:>7.0f} ({mb['min']:.0f}-{mb['max']:.0f}){'':>4} "
                     f"{tx['median']:>9.0f} {rx['median']:>9.0f} {med['median']:>12.0f} {rt['median']:>8.0f} "
                     f"{us['cpu_tx']:>10.2f} {us['cpu_rx']:>10.2f} {busy:>10.0f} {load:>5.1f}")
    notes = [
        "the machine's 2 CPUs are shared by iperf3's client and server, both daemons and whatever else runs "
        "(the load average above): each ESP process gets only part of a core, so Mbit/s depends on that "
        "load; Mbit/s per core (throughput / CPU the two ESP processes used) depends on it less",
        "steps ([daemon] esp_offload, core_ike/io/fastpath.py): none = one TUN read, one seal and one sendto per "
        "packet, one TUN write per decrypted packet; tso = TSO super-packets read from the TUN device "
        "(IFF_VNET_HDR, TUNSETOFFLOAD) and cut into MSS-sized segments by us, one ESP packet each; gso = the "
        "ESP packets of a super-packet leave in one sendmsg (UDP_SEGMENT; the TUN device's gso_max_segs keeps a "
        "super-packet within what one send carries: 44 segments at MTU 1400); gro = UDP_GRO reads; coalesce = "
        "decrypted segments of one connection written as one GSO packet; seal_batch = a super-packet's "
        "segments cut with numpy into one buffer and sealed into another (one AEAD *_into call each), sent as "
        "slices of it; open_batch = a GRO read taken whole (recvmsg_into), decrypted into one buffer and merged "
        "there (core_ike/io/batchsteps.py); mmsg = recvmmsg reads where UDP_GRO is off, sendmmsg sends where "
        "UDP_SEGMENT is off (not in 'all'); all = every step but mmsg (the default)",
        "us/pkt tx, rx = CPU microseconds of the ESP process on the sending, receiving host per TCP segment "
        f"({mss} octets of payload: TUN MTU - 52), its system calls' kernel work included; machine % = what "
        "every process on the machine used during the run (200 % = both CPUs); load = the 1-minute load average "
        "at the end of the run",
        "the Python cost per packet without I/O is in bench/results/esp_throughput.txt",
        f"'autogroup nice {BOOST}' sides (@boost): the kernel shares the CPUs between sessions (autogroups) before "
        "processes, every daemon runs in a session of its own and each other session on the machine counts as "
        "much as one daemon; at that autogroup nice the daemons and iperf3 get the CPUs first (same setting on "
        "both sides) and the figure shows what each implementation moves then; the other sides show what it moves "
        "with an equal share",
        "retransmits of ours without TSO: the TUN device's transmit queue (500 packets) overflows while "
        "the ESP process waits for a CPU (its 'TX dropped' count equals the sender's retransmits); with TSO a "
        "queue entry is a super-packet of up to 64 KiB and none were dropped",
        "charon's CPU is its whole process (kernel-libipsec's threads included); ours is iked's process; "
        "both include the kernel work done in their system calls (TUN and UDP)",
    ] + [f"{side}: data plane counters on alice after both directions: {infos[side]['dataplane_alice']}"
         for side in sides if infos.get(side, {}).get("dataplane_alice")]
    results_io.write_results(args.out, "esp_throughput_iperf", header, figs, "\n".join(lines), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
