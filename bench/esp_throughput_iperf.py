#!/usr/bin/env python3
"""TCP throughput (iperf3) through an IKEv2 tunnel: our iked (userspace ESP over TUN) on both ends vs
strongSwan charon with kernel-libipsec on both ends, in the same two namespaces (``two_hosts``).

Usage (root): .venv/bin/python bench/esp_throughput_iperf.py [--seconds 10] [--modes ours-udp,ours-esp,charon]
              [--esp aes128gcm16] [--out bench/results/esp_throughput.txt]

Tunnel: an aes128gcm16 CHILD_SA (or the ESP proposal of ``--esp``, e.g. chacha20poly1305) between the inner addresses 10.10.1.1 (alice) and 10.10.2.1 (bob).
``ours-udp``: iked with ``encap = true`` (ESP-in-UDP on 4500, as charon+kernel-libipsec always does);
``ours-esp``: iked with plain ESP (IP protocol 50). For each mode iperf3 runs alice -> bob and bob -> alice
(``-R``); the CPU column is the ESP process (iked / charon) CPU time over the run / wall time, per side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.lab import Lab, cleanup_orphans, two_hosts  # noqa: E402
from scenarios.lab.charon import Charon  # noqa: E402
from scenarios.lab.iked import Iked  # noqa: E402
from scenarios.lab.netns import wait_for  # noqa: E402
from scenarios.lab.tunnels import charon_psk_conf, iked_psk_toml  # noqa: E402

A, B = "192.0.2.1", "192.0.2.2"
A_IN, B_IN = "10.10.1.1", "10.10.2.1"
PSK = "bench-secret-0123456789abcdef"
HZ = os.sysconf("SC_CLK_TCK")
BASE_ESP = "aes128gcm16"  # what iked_psk_toml / charon_psk_conf write


def iked_conf(me: str, peer: str, my_id: str, peer_id: str, lts: str, rts: str, encap: bool,
              esp: str = BASE_ESP) -> str:
    toml = iked_psk_toml(me, peer, my_id, peer_id, lts, rts, PSK, encap=encap, extra_daemon='log_level = "info"')
    return toml.replace(f'esp_proposals = "{BASE_ESP}"', f'esp_proposals = "{esp}"')


def charon_conf(me: str, peer: str, my_id: str, peer_id: str, lts: str, rts: str, esp: str = BASE_ESP) -> str:
    conf = charon_psk_conf(me, peer, my_id, peer_id, lts, rts, PSK)
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


def iperf(lab: Lab, seconds: float, reverse: bool, comms: tuple[str, ...]) -> tuple[float, float, float]:
    """(Mbit/s received, CPU% alice, CPU% bob) of one iperf3 TCP run alice -> bob (or -R)."""
    srv = lab.popen("bob", ["iperf3", "-s", "-1", "-B", B_IN], lab.dir / "iperf3-server.log")
    wait_for(lambda: f"{B_IN}:5201" in lab.run("bob", ["ss", "-ltn"], check=False).stdout, 5,
             interval=0.05, what="iperf3 -s")
    c0 = {h: cpu_ticks(lab, h, comms) for h in ("alice", "bob")}
    t0 = time.monotonic()
    argv = ["iperf3", "-c", B_IN, "-B", A_IN, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    res = lab.run("alice", argv, check=False, timeout=seconds + 30)
    wall = time.monotonic() - t0
    c1 = {h: cpu_ticks(lab, h, comms) for h in ("alice", "bob")}
    lab.stop(srv)
    try:
        data: Any = json.loads(res.stdout)
        bps = float(data["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 failed: {e}\n{res.stdout[-2000:]}\n{res.stderr}") from e
    cpu = {h: 100.0 * (c1[h] - c0[h]) / HZ / wall for h in c0}
    return bps / 1e6, cpu["alice"], cpu["bob"]


def run_mode(lab: Lab, mode: str, seconds: float, esp: str = BASE_ESP) -> dict[str, tuple[float, float, float]]:
    if mode.startswith("ours"):
        encap = mode == "ours-udp"
        a = Iked(lab, "alice", iked_conf(A, B, "alice@lab", "bob@lab", A_IN, B_IN, encap, esp), name=f"iked-{mode}")
        b = Iked(lab, "bob", iked_conf(B, A, "bob@lab", "alice@lab", B_IN, A_IN, encap, esp), name=f"iked-{mode}")
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
        if received != sent:
            raise RuntimeError(f"{mode}: tunnel does not pass ping\n{out}")
        return {"alice->bob": iperf(lab, seconds, False, comms), "bob->alice": iperf(lab, seconds, True, comms)}
    finally:
        for d in daemons:
            d.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--modes", default="ours-udp,ours-esp,charon")
    ap.add_argument("--esp", default=BASE_ESP, help="the CHILD_SA's ESP proposal (default: %(default)s)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "esp_throughput.txt"))
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("iperf3"):
        print("needs root and iperf3", file=sys.stderr)
        return 2
    cleanup_orphans()
    lab = two_hosts()
    results: dict[str, dict[str, tuple[float, float, float]]] = {}
    try:
        for mode in args.modes.split(","):
            results[mode] = run_mode(lab, mode, args.seconds, args.esp)
            print(mode, results[mode], flush=True)
    finally:
        lab.teardown()
    lines = [f"# iperf3 TCP through an {args.esp} CHILD_SA, two_hosts veth, {args.seconds:g} s per direction",
             f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.uname().release}, {os.cpu_count()} CPUs; "
             "CPU% = ESP process CPU time / wall time (100% = one core)",
             f"{'mode':<10} {'direction':<11} {'Mbit/s':>9} {'CPU% alice':>11} {'CPU% bob':>9}"]
    for mode, dirs in results.items():
        for d, (mbps, ca, cb) in dirs.items():
            lines.append(f"{mode:<10} {d:<11} {mbps:>9.1f} {ca:>11.0f} {cb:>9.0f}")
    if "charon" in results:
        lines.append("")
        for mode in results:
            if mode == "charon":
                continue
            for d in results[mode]:
                ratio = results[mode][d][0] / results["charon"][d][0]
                lines.append(f"ratio {mode}/charon {d}: {ratio:.2f}")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
