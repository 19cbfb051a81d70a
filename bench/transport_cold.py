#!/usr/bin/env python3
"""The per-datagram cost outside the engine, from cold caches, deterministic: a real UdpTransport (and, on the
NAT-T port, the userspace data plane's reader, core_ike/io/fastpath.py UdpEspIo, as iked runs by default) on
uvloop over real UDP on loopback, with a stub engine that answers each datagram at once and reports an
IKE_SA established every second one to iked's event handling (core_ike.daemon.runtime.Daemon.on_event),
under valgrind's callgrind with a simulated last-level cache; by this tree and by another
(``--before REV|DIR``).

Per IKE_SA two datagrams arrive as from a strongSwan initiator without a CHILD_SA: an IKE_SA_INIT request on
the IKE port, an IKE_AUTH request (with the non-ESP marker) on the NAT-T port; each is answered. Before each
datagram is sent, a read of a buffer larger than the simulated last-level cache evicts it (as a responder
idle between datagrams wakes up with cold caches). Counted: uvloop's callback for a ready socket
(``__pyx_f_6uvloop_4loop___on_uvpoll_event``, --toggle-collect) and everything below it: the reader, the
transport, the stub engine (a few lines), the event handling and the system calls' user-space side; not the
kernel, not the wait in epoll.

    bench/transport_cold.py --before 63ac4de --datagrams 200
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LL_BYTES = 2 * 2**20
EVENTS = ("Ir", "ILmr", "DLmr", "DLmw")
TOGGLE = "__pyx_f_6uvloop_4loop___on_uvpoll_event"
CHILD_FLAG = "--child"

CONF = """\
[daemon]
listen = ["127.0.0.1"]
control = "{dir}/iked.ctl"
dataplane = "none"
log_level = "warning"
[connections.bench]
local_addrs = ["127.0.0.1"]
remote_addrs = ["%any"]
proposals = "aes128gcm16-prfsha256-x25519"
unique = "no"
local = {{ auth = "psk", id = "responder@bench" }}
remote = {{ auth = "psk", id = "%any" }}
[[secrets.ike]]
secret = "transport-cold-bench-secret-0123456789"
"""


def _child(tree: str, n: int, evict_mb: int, esp_io: bool) -> int:  # noqa: PLR0915 - one scenario
    sys.path.insert(0, tree)
    import asyncio
    import socket

    import uvloop

    import core_ike
    from core_ike.daemon.config import load
    from core_ike.daemon.runtime import Daemon, tune_gc
    from core_ike.ike import events as ev
    from core_ike.io.transport import UdpTransport

    assert core_ike.__file__.startswith(tree), core_ike.__file__

    def free_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    ike_port, natt_port = free_port(), free_port()

    class Stub:
        """Answers each datagram with one of the size iked's would have; an IKE_AUTH request (on the NAT-T
        port) establishes an IKE_SA: one IkeSaEstablished event. A timer deadline ahead, as an engine with
        half-open and established IKE_SAs has."""

        def __init__(self) -> None:
            self.natt_port = natt_port
            self.out: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
            self.events: list[object] = []
            self.got = 0
            self.uid = 0
            self.deadline = 1e12

        def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
            self.got += 1
            if local[1] == natt_port:
                self.uid += 1
                self.out.append((b"\0\0\0\0" + bytes(124), local, remote))
                self.events.append(ev.IkeSaEstablished("bench", self.uid, local, remote, "responder@bench",
                                                       "c@bench", b"i" * 8, b"r" * 8, False))
            else:
                self.out.append((bytes(224), local, remote))
            self.deadline = now + 30.0

        def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int], tuple[str, int]]]:
            out, self.out = self.out, []
            return out

        def next_event(self) -> object:
            return self.events.pop() if self.events else None

        def get_timer(self) -> float:
            return self.deadline

        def handle_timer(self, now: float) -> None:
            pass

        def prepare(self) -> None:
            pass

    class Prefilter:
        """The engine's pre-filter as the transport asks it once a wake-up (core_ike/ike/prefilter.py)."""

        def __init__(self, engine: Stub) -> None:
            self.engine = engine

        def demanded(self) -> bool:
            return self.engine.got > 10**9

        def answer_batch(self, rb: object, n: int, *args: object) -> range:
            assert not self.demanded(), "no COOKIEs are demanded"
            return range(n)  # as the engine's: every datagram to the engine while COOKIEs are not demanded

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "iked.toml").write_text(CONF.format(dir=d))
        daemon = Daemon(load(Path(d) / "iked.toml"))
    stub = Stub()
    stub.prefilter = Prefilter(stub)  # type: ignore[attr-defined]
    transport = UdpTransport(stub, ["127.0.0.1"], [ike_port, natt_port], on_event=daemon.on_event)  # type: ignore[arg-type]
    buf = bytes(evict_mb * 2**20)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        transport.start(loop)
        if esp_io:
            from core_ike.io.fastpath import DEFAULT_STEPS, UdpEspIo

            UdpEspIo(transport, natt_port, DEFAULT_STEPS, lambda batch: None).start(loop)
        tune_gc()
        c500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c4500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for c in (c500, c4500):
            c.bind(("127.0.0.1", 0))
            c.setblocking(False)
        init, auth = bytes(232), b"\0\0\0\0" + bytes(176)
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True,
                       timeout=120)
        for i in range(n + 20):  # the first 20: warm-up (first calls), the counters zeroed after them
            if i == 20:
                subprocess.run(["callgrind_control", "-z", str(os.getpid())], check=True, capture_output=True,
                               timeout=120)
            c, data, port = (c500, init, ike_port) if i % 2 == 0 else (c4500, auth, natt_port)
            got = stub.got
            hashlib_md5(buf)  # evicts the simulated caches (uvloop's timer/ready callbacks are not counted)
            c.sendto(data, ("127.0.0.1", port))
            while stub.got == got:
                await asyncio.sleep(0)
            while True:
                try:
                    c.recv(2048)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0)
        transport.close()

    import hashlib

    def hashlib_md5(b: bytes) -> None:
        hashlib.md5(b).digest()

    uvloop.run(run())
    print(f"datagrams {n}, established {daemon.events['ike-established']}", flush=True)
    return 0


def measure(tree: Path, n: int, evict_mb: int, esp_io: bool, keep: Path | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="transport-cold-") as work:
        cg = Path(work) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--LL={LL_BYTES},16,64", "--instr-atstart=no",
               "--collect-atstart=no", f"--toggle-collect={TOGGLE}", f"--callgrind-out-file={cg}",
               sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(tree), str(n), str(evict_mb),
               "1" if esp_io else "0"]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
        if p.returncode != 0 or "datagrams" not in p.stdout:
            raise RuntimeError(f"callgrind run by {tree} failed ({p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
        # the last dump (the zeroing dumps nothing): totals of the counted region
        files = sorted(Path(work).glob("callgrind.out*"))
        totals = dict.fromkeys(EVENTS, 0)
        for f in files:
            text = f.read_text(errors="replace")
            ev_line = re.search(r"^events: (.*)$", text, re.M)
            tot = re.search(r"^(?:summary|totals): (.*)$", text, re.M)
            if ev_line is None or tot is None:
                continue
            names, vals = ev_line.group(1).split(), [int(x) for x in tot.group(1).split()]
            for name, v in zip(names, vals, strict=False):
                if name in totals:
                    totals[name] += v
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in files:
                (keep / f.name).write_bytes(f.read_bytes())
    per = {k: v / n for k, v in totals.items()}
    per["LL"] = per["ILmr"] + per["DLmr"] + per["DLmw"]
    return per


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        return _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--before", metavar="REV|DIR")
    ap.add_argument("--datagrams", type=int, default=200)
    ap.add_argument("--evict", type=int, default=4, help="MB read before each datagram (larger than the LL cache)")
    ap.add_argument("--no-esp-io", action="store_true", help="the transport reads the NAT-T port too (dataplane none)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep callgrind's output files in DIR")
    a = ap.parse_args(argv)
    sides: dict[str, Path] = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="transport-cold-before-") as tmp:
        if a.before:
            before = Path(a.before)
            if not before.is_dir():
                before = Path(tmp)
                arch = subprocess.run(["git", "-C", str(ROOT), "archive", a.before], capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", str(before)], input=arch.stdout, check=True)
            sides[f"before ({a.before})"] = before
        for r in range(a.rounds):
            for name, tree in sides.items():
                keep = a.keep / f"{name.split()[0]}.{r + 1}" if a.keep else None
                per = measure(tree, a.datagrams, a.evict, not a.no_esp_io, keep)
                print(f"{name}: {per['Ir']:.0f} instructions, {per['LL']:.0f} LL misses per datagram "
                      f"(I {per['ILmr']:.0f}, D read {per['DLmr']:.0f}, D write {per['DLmw']:.0f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
