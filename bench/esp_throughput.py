#!/usr/bin/env python3
"""The userspace ESP data plane's Python cost per packet, without I/O: what each stage of the path costs
in CPU time (time.process_time, so other processes' load counts less than in wall time).

Usage: bench/esp_throughput.py [--quick] [--rounds 5] [--out bench/results/esp_throughput.txt]

Stages, per 1400-octet inner packet (an MSS-sized TCP segment of a 1400-octet TUN MTU):
- ``segment``: cutting a 64 KiB TSO super-packet into segments with their headers and checksums
  (core_ike/io/offload.py), per segment;
- ``seal`` / ``open``: ESP encapsulation / decapsulation (core_ike/esp, ``open`` in batches as the data
  plane does), for each transform;
- ``coalesce``: checking and merging decrypted segments into one GSO write, per segment;
- the ``seal_batch`` and ``open_batch`` steps (core_ike/io/batchsteps.py): ``segment_into`` (the
  super-packet cut into one buffer with numpy), ``seal_into`` (sealed into one buffer, one AEAD call per
  segment), ``open_into`` (one GRO read's ESP packets decrypted into one buffer), ``merge_run`` (checked
  and merged there), per segment, aes128gcm16.
Sending costs segment + seal (segment_into + seal_into with seal_batch), receiving open + coalesce
(open_into + merge_run with open_batch); the syscalls and the kernel's work are not in these figures
(bench/esp_throughput_iperf.py measures the whole path).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io  # noqa: E402

from core_ike.constants import EncrId, IntegId  # noqa: E402
from core_ike.esp import EspSa, InboundSad, key_lengths  # noqa: E402
from core_ike.io.offload import F_NEEDS_CSUM, GSO_TCPV4, Coalescer, VnetHdr, merge_run, segment, segment_into  # noqa: E402

SUITES = [
    ("aes128gcm16", EncrId.AES_GCM_16, 128, IntegId.NONE),
    ("aes256gcm16", EncrId.AES_GCM_16, 256, IntegId.NONE),
    ("chacha20poly1305", EncrId.CHACHA20_POLY1305, 256, IntegId.NONE),
    ("aes128-sha256", EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
]
MSS = 1348  # 1400 - 20 (IPv4) - 32 (TCP with timestamps)
SEGS = 47  # a 64 KiB super-packet


def super_packet() -> tuple[bytes, VnetHdr]:
    """A TSO frame as the kernel hands it over: IPv4 + TCP with timestamps, 47 MSS of payload."""
    opts = b"\x01\x01\x08\x0a" + os.urandom(8)
    payload = os.urandom(SEGS * MSS)
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 1, 8 << 4, 0x18, 502, 0, 0) + opts
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0,
                     bytes([10, 10, 1, 1]), bytes([10, 10, 2, 1]))
    return ip + tcp + payload, VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 52, MSS, 20, 16)


def per_item(fn: Callable[[], int], seconds: float) -> float:
    """CPU microseconds per item; `fn` runs a batch and returns how many items it did."""
    n = 0
    t0 = time.process_time()
    while True:
        n += fn()
        t = time.process_time() - t0
        if t >= seconds:
            return t / n * 1e6


def seal_open(encr: EncrId, bits: int, integ: IntegId, segs: list[bytes], seconds: float) -> tuple[float, float]:
    el, il = key_lengths(encr, bits, integ)
    ek, ik = os.urandom(el), os.urandom(il)
    tx = EspSa(0x1001, encr, bits, ek, integ, ik)
    seal = per_item(lambda: len([tx.seal(s, 4) for s in segs]), seconds)
    rx = EspSa(0x1001, encr, bits, ek, integ, ik, replay_window=1 << 16)
    sad = InboundSad()
    sad.add(rx)
    # open needs fresh sequence numbers: one pass over batches sealed beforehand (~0.3 s of seal work)
    batches = [[tx.seal(s, 4) for s in segs] for _ in range(max(3, min(600, int(seconds * 0.6e6 / (seal * SEGS)))))]
    t0 = time.process_time()
    for b in batches:
        sad.open_batch(b)
    return seal, (time.process_time() - t0) / (len(batches) * SEGS) * 1e6


def measure(seconds: float) -> dict[str, float]:
    frame, hdr = super_packet()
    out: dict[str, float] = {"segment": per_item(lambda: len(segment(frame, hdr)), seconds)}
    segs = segment(frame, hdr)
    for name, encr, bits, integ in SUITES:
        out[f"seal {name}"], out[f"open {name}"] = seal_open(encr, bits, integ, segs, seconds)
    inner = [bytes(s) for s in segs]

    def coalesce() -> int:
        c = Coalescer()
        c.add_all(inner)
        c.frames()
        return len(inner)

    out["coalesce"] = per_item(coalesce, seconds)
    out.update(batch_steps(frame, hdr, seconds))
    return out


def batch_steps(frame: bytes, hdr: VnetHdr, seconds: float) -> dict[str, float]:
    """The seal_batch and open_batch stages, aes128gcm16, per segment of a 64 KiB super-packet."""
    el, _ = key_lengths(EncrId.AES_GCM_16, 128)
    key = os.urandom(el)
    tx = EspSa(0x1001, EncrId.AES_GCM_16, 128, key)
    plain, esp = bytearray(), bytearray()
    out = {"segment_into": per_item(lambda: len((segment_into(frame, hdr, plain) or (0, []))[1]), seconds)}
    laid = segment_into(frame, hdr, plain)
    assert laid is not None
    stride, lengths = laid
    run = [(plain, stride, lengths, 4)]
    out["seal_into aes128gcm16"] = per_item(lambda: len(tx.seal_into(run, esp)[1][0]), seconds)
    # open_into needs fresh sequence numbers: runs sealed beforehand (~0.3 s of seal work)
    runs = []
    for _ in range(max(3, min(600, int(seconds * 0.6e6 / (out["seal_into aes128gcm16"] * SEGS))))):
        _, (sizes,) = tx.seal_into(run, esp)
        runs.append((bytes(esp[: sum(sizes)]), sizes))
    rx = EspSa(0x1001, EncrId.AES_GCM_16, 128, key)
    dec = bytearray()
    # each run copied into one long-lived buffer first, as the data plane reads them (a UDP_GRO read into
    # the same bytearray every time); the copy counts in the figure
    rxbuf = bytearray(65536)
    t0 = time.process_time()
    for data, sizes in runs:
        rxbuf[: len(data)] = data
        if rx.open_into(rxbuf, sizes[0], len(sizes), sizes[-1], dec) is None:
            raise RuntimeError("open_into refused a run it sealed")
    out["open_into aes128gcm16"] = (time.process_time() - t0) / (len(runs) * SEGS) * 1e6
    rx2 = EspSa(0x1001, EncrId.AES_GCM_16, 128, key)
    got = rx2.open_into(memoryview(runs[0][0]), runs[0][1][0], len(runs[0][1]), runs[0][1][-1], dec)
    assert got is not None
    out["merge_run"] = per_item(lambda: len(got) if merge_run(dec, runs[0][1][0], got) else 0, seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results_io.add_args(ap, rounds=5)
    ap.add_argument("--seconds", type=float, default=None, help="CPU seconds per stage (default 0.5, 0.05 --quick)")
    args = ap.parse_args(argv)
    rounds = results_io.rounds_of(args)
    seconds = args.seconds if args.seconds is not None else (0.05 if args.quick else 0.5)
    header = results_io.start_header(argv if argv is not None else sys.argv[1:])
    runs = [measure(seconds) for _ in range(rounds)]
    header = results_io.finish_header(header, args.quick, rounds)
    keys = list(runs[0])
    figs = [results_io.figure(
        f"esp_us_{k.replace(' ', '_')}", f"CPU per 1400-octet packet, {k}",
        results_io.sample([r[k] for r in runs], "us", 2), None, better="lower",
        differences=["Python only: no syscalls, no kernel work"], readme=False) for k in keys]
    g = {k: results_io.sample([r[k] for r in runs], "us", 2) for k in keys}
    def med(k: str) -> float:
        return float((g[k] or {}).get("median", 0))

    send, recv = med("segment") + med("seal aes128gcm16"), med("open aes128gcm16") + med("coalesce")
    send_b, recv_b = med("segment_into") + med("seal_into aes128gcm16"), med("open_into aes128gcm16") + med("merge_run")
    text = "\n".join([f"{'stage':<26} {'us per packet (median, min-max)':>34}"]
                     + [f"{k:<26} {results_io.fmt_value(g[k]):>34}" for k in keys]
                     + ["", f"aes128gcm16: sending (segment + seal) {send:.2f} us, receiving (open + coalesce) "
                        f"{recv:.2f} us per packet: {1400 * 8 / send:.0f} / {1400 * 8 / recv:.0f} Mbit/s per core "
                        "before syscalls and kernel work",
                        f"with seal_batch and open_batch: sending (segment_into + seal_into) {send_b:.2f} us, receiving "
                        f"(open_into + merge_run) {recv_b:.2f} us per packet: {1400 * 8 / send_b:.0f} / "
                        f"{1400 * 8 / recv_b:.0f} Mbit/s per core before syscalls and kernel work"])
    results_io.write_results(args.out, "esp_throughput", header, figs, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
