"""ESP seal/open rate of core_ike.esp (pure per-packet cost, no I/O).

Usage: python bench/esp_throughput.py [--seconds 1.0] [--sizes 64,512,1400]
Prints packets/s and the equivalent Mbit/s of inner payload for each transform and size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core_ike.constants import EncrId, IntegId  # noqa: E402
from core_ike.esp import EspSa, InboundSad, key_lengths  # noqa: E402

SUITES = [
    ("aes128gcm16", EncrId.AES_GCM_16, 128, IntegId.NONE),
    ("aes256gcm16", EncrId.AES_GCM_16, 256, IntegId.NONE),
    ("aes128-sha1", EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
    ("aes128-sha256", EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    ("aes256-sha384", EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192),
    ("aes256-sha512", EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
]


def _rate(fn: object, items: list[bytes], seconds: float) -> float:
    call = fn  # type: ignore[assignment]
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for it in items:
            call(it)  # type: ignore[operator]
        n += len(items)
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--sizes", default="64,512,1400")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'transform':15} {'size':>5} {'seal pkt/s':>12} {'open pkt/s':>12} {'seal Mbit/s':>12} {'open Mbit/s':>12}")
    for name, encr, bits, integ in SUITES:
        el, il = key_lengths(encr, bits, integ)
        ek, ik = os.urandom(el), os.urandom(il)
        for size in sizes:
            tx = EspSa(0x1001, encr, bits, ek, integ, ik)
            rx = EspSa(0x1001, encr, bits, ek, integ, ik, replay_window=1024)
            sad = InboundSad()
            sad.add(rx)
            inner = b"\x45" + os.urandom(size - 1)
            seal_rate = _rate(tx.seal, [inner] * 256, args.seconds)
            # open needs fresh sequence numbers: pre-seal a large batch, measure one pass
            batch = [tx.seal(inner) for _ in range(int(min(seal_rate * args.seconds, 400_000)))]
            t0 = time.perf_counter()
            for pkt in batch:
                sad.open(pkt)
            open_rate = len(batch) / (time.perf_counter() - t0)
            print(
                f"{name:15} {size:5d} {seal_rate:12,.0f} {open_rate:12,.0f} "
                f"{seal_rate * size * 8 / 1e6:12,.0f} {open_rate * size * 8 / 1e6:12,.0f}"
            )


if __name__ == "__main__":
    main()
