#!/usr/bin/env python3
"""Where a responder's CPU per IKE_SA goes, for bench/charon_initiator.py: the crypto floor (each operation
alone with `cryptography`), a recording iked (seeded randomness; keeps the datagrams its engine receives and
times its engine and event handling with the thread's CPU clock) and the recording replayed to an engine in
a tight loop, by this tree and by an older one (`replay_ab`).

Run as ``python -m ike_cost -c iked.toml`` with $CHARON_INITIATOR_RECORD set, this module is the recording
iked (SIGUSR2 writes the recording to that path).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io

ROOT = results_io.enter_repo(__file__)


# ====================================================================== where our CPU goes: record, replay
RECORD_ENV = "CHARON_INITIATOR_RECORD"  # set: this module runs as a recording iked (see the docstring)


def _seeded_randomness(seed: str) -> Any:
    """Makes iked's randomness reproducible in this process (the recording iked, then the replay): the
    OS source behind SPIs, nonces and IV counters becomes a SeededRng, X25519 private keys come from a
    counter. Returns a function that undoes it. Bench instrumentation only: never in a daemon in use."""
    from core_ike import sysrng
    from core_ike.crypto import dh
    from core_ike.rng import SeededRng

    rng = SeededRng(seed)
    n = [0]
    orig_bytes, orig_init = sysrng.SystemRng.bytes, dh._MontgomeryExchange.__init__

    def seeded_bytes(self: Any, k: int) -> bytes:
        return rng.bytes(k)

    def init(self: Any, group: int, private: bytes | None = None) -> None:
        if private is None:
            n[0] += 1
            octets = dh._MONTGOMERY[group][-1]  # the key's length: the last field in every tree's layout
            private = hashlib.sha256(b"%s-x%d" % (seed.encode(), n[0])).digest()[:octets]
        orig_init(self, group, private)

    sysrng.SystemRng.bytes = seeded_bytes  # type: ignore[method-assign,assignment]
    dh._MontgomeryExchange.__init__ = init  # type: ignore[method-assign]

    def undo() -> None:
        sysrng.SystemRng.bytes = orig_bytes  # type: ignore[method-assign]
        dh._MontgomeryExchange.__init__ = orig_init  # type: ignore[method-assign]

    return undo


def _recording_iked() -> int:
    """iked (its usual main) with seeded randomness, keeping what Engine.receive gets and the thread CPU
    time spent in the engine (receive, timers, and `Engine.prepare`: the keys of the IKE_SAs just answered
    and the key pool's refill, which the transport calls once a wake-up's replies left, as `_replay` does)
    and in the daemon's event handling (Daemon.on_event, which the transport calls outside the engine);
    SIGUSR2 writes both."""
    from core_ike.daemon.main import main as iked_main
    from core_ike.daemon.runtime import Daemon
    from core_ike.ike.engine import Engine

    _seeded_randomness("bench")
    rec: list[tuple[bytes, Any, Any]] = []
    cpu = {"engine": 0.0, "events": 0.0}
    clock = time.thread_time

    def timed(fn: Any, key: str) -> Any:
        """`fn` with its thread CPU time added to cpu[key]."""
        def wrapper(*args: Any) -> None:
            t = clock()
            try:
                fn(*args)
            finally:
                cpu[key] += clock() - t
        return wrapper

    engine_receive = timed(Engine.receive, "engine")

    def receive(self: Any, data: bytes, local: Any, remote: Any, now: float) -> None:
        rec.append((bytes(data), local, remote))
        engine_receive(self, data, local, remote, now)

    Engine.receive = receive  # type: ignore[method-assign]
    Engine.handle_timer = timed(Engine.handle_timer, "engine")  # type: ignore[method-assign]
    Engine.prepare = timed(Engine.prepare, "engine")  # type: ignore[method-assign]
    Daemon.on_event = timed(Daemon.on_event, "events")  # type: ignore[method-assign]

    def dump(*_: Any) -> None:
        final = Path(os.environ[RECORD_ENV])
        tmp = final.with_suffix(".part")
        tmp.write_bytes(pickle.dumps({"datagrams": rec, "cpu": cpu}))
        os.replace(tmp, final)  # complete when it appears

    signal.signal(signal.SIGUSR2, dump)
    return iked_main()


def replay(out: Path, gap: float = 0.0, log_level: str | None = None) -> tuple[float, int]:
    """CPU ms per IKE_SA of the engine built as iked builds it (core_ike.daemon.runtime.Daemon, no sockets)
    and of the daemon's event handling, fed the recorded datagrams; the second of two runs. `gap`: seconds
    slept before each datagram (the process idle as between the live datagrams; sleeping costs no CPU).
    `log_level`: the log set up as iked sets it (core_ike.daemon.main.setup_logging) at that level, to a
    file in `out`, inside an event loop as live, its handlers flushed after each datagram (the end of
    a live loop turn), so that what iked's handler holds back within a turn is written as live; None:
    the log as this process has it (the default: no handler, warnings to stderr)."""
    if log_level is None:
        return _replay(out, gap, None)
    import asyncio
    import logging

    from core_ike.daemon.main import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log_file = out / f"replay-{log_level}.log"
    log_file.unlink(missing_ok=True)  # each replay's lines alone
    setup_logging(log_level, f"file:{log_file}")
    handlers = root.handlers[:]

    def turn_end() -> None:
        for h in handlers:
            h.flush()

    async def run() -> tuple[float, int]:
        return _replay(out, gap, turn_end)

    try:
        return asyncio.run(run())
    finally:
        for h in handlers:
            h.close()
        root.handlers[:], level = saved
        root.setLevel(level)


def _replay(out: Path, gap: float, turn_end: Any) -> tuple[float, int]:
    from core_ike.daemon import runtime
    from core_ike.daemon.config import load
    from core_ike.daemon.runtime import Daemon
    from core_ike.ike import events as ev

    tune_gc = getattr(runtime, "tune_gc", None)
    rec = pickle.loads((out / "datagrams.pickle").read_bytes())["datagrams"]
    result = (0.0, 0)
    for _ in range(2):
        undo = _seeded_randomness("bench")
        try:
            d = Daemon(load(out / "conf" / "iked.toml"))
            eng, n, now = d.engine, 0, 1000.0
            eng.set_wall_clock(time.time(), now)  # the replay's clock starts at `now` (certificate validity)
            if tune_gc is not None:
                tune_gc()  # iked's collector settings, as it sets them once started (older trees have none)
            prepare = getattr(eng, "prepare", None)  # as the transport calls it (older trees have none)
            t0 = time.process_time()
            for data, local, remote in rec:
                now += 1e-4
                if gap:
                    time.sleep(gap)
                eng.receive(data, local, remote, now)
                eng.datagrams_to_send()
                while (e := eng.next_event()) is not None:
                    n += isinstance(e, ev.IkeSaEstablished)
                    d.on_event(e)
                if prepare is not None:
                    prepare()
                eng.get_timer()
                if turn_end is not None:
                    turn_end()  # the loop turn ends
            result = (1000 * (time.process_time() - t0) / max(1, n), n)
        finally:
            undo()
    return result


def datagram_count(out: Path) -> int:
    return len(pickle.loads((out / "datagrams.pickle").read_bytes())["datagrams"])


def replay_ab(out: Path, n_want: int, tree: Path | None, rounds: int) -> tuple[list[float], list[float]]:
    """`replay` of the recording in `out` by this tree and by `tree` (`--before`), each in its own process,
    the two alternating `rounds` times: the engine alone, A/B on the same datagrams. ([ms per IKE_SA of
    this tree], [of `tree`]); a side whose replay does not establish every IKE_SA gives no figure."""
    import json

    code = ("import sys, json; from pathlib import Path; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
            "import core_ike, core_ike.daemon.runtime; assert core_ike.__file__.startswith(sys.argv[1]); "
            "import ike_cost as ic; print(json.dumps(ic.replay(Path(sys.argv[3]))))")
    res: dict[str, list[float]] = {"ours": [], "before": []}
    for _, side in results_io.interleave(rounds, ["ours", "before"] if tree is not None else ["ours"]):
        src = str(ROOT if side == "ours" else tree)
        p = subprocess.run([sys.executable, "-c", code, src, str(ROOT / "bench"), str(out)], capture_output=True,
                           text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
        if p.returncode != 0:
            print(f"  replay by {side} failed: {p.stderr.strip()[-300:]}", file=sys.stderr, flush=True)
            continue
        ms, n = json.loads(p.stdout.strip().splitlines()[-1])
        if n == n_want:
            res[side].append(ms)
    return res["ours"], res["before"]


# ====================================================================== the crypto floor
def _per_call_us(fn: Any, n: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean CPU time (this process's, so that other load on the machine
    does not count) of `n` calls, in microseconds."""
    import statistics

    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        runs.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(runs)


def crypto_floor(pki: Any) -> dict[str, dict[str, float]]:
    """What a responder must compute per IKE_SA, each operation timed alone with `cryptography` (the
    library iked uses) in this process: {auth: {operation: microseconds}}. PSK: x25519 key pair and
    shared secret, 10 HMAC-SHA-256 (SKEYSEED, 5 prf+ blocks for 136 octets of keys, RFC 7296 2.14;
    2 x prf(SK_p, ID) and 2 x AUTH, RFC 7296 2.15; the key-pad prf of the secret is per configuration),
    AES-GCM-128 open of the IKE_AUTH request and seal of the response, 4 SHA-1 NAT-D hashes (RFC 7296
    2.23), 4 draws from the OS (SPI, nonce, two IV counters). RSA adds the RSA-2048 signature (PKCS#1
    v1.5 SHA-256 over the signed octets, RFC 7427), the verification of the peer's AUTH and of its
    certificate's signature by the CA, and parsing the peer's certificate."""
    import hashlib
    import hmac

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    peer_pub = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()

    def dh() -> None:
        k = x25519.X25519PrivateKey.generate()
        k.public_key().public_bytes_raw()
        k.exchange(x25519.X25519PublicKey.from_public_bytes(peer_pub))

    key, octets = os.urandom(32), os.urandom(300)
    gcm_key, aad = os.urandom(16), os.urandom(32)
    sealed = AESGCM(gcm_key).encrypt(b"n" * 12, os.urandom(150), aad)

    def aead() -> None:
        AESGCM(gcm_key).decrypt(b"n" * 12, sealed, aad)
        AESGCM(gcm_key).encrypt(b"n" * 12, octets[:100], aad)

    psk = {
        "x25519": _per_call_us(dh, 2000),
        "HMAC-SHA-256 x10": 10 * _per_call_us(lambda: hmac.digest(key, octets[:120], "sha256"), 20000),
        "AES-GCM open+seal": _per_call_us(aead, 20000),
        "SHA-1 x4": 4 * _per_call_us(lambda: hashlib.sha1(octets[:42]).digest(), 20000),
        "random x4": 4 * _per_call_us(lambda: os.urandom(32), 20000),
    }
    out = {"psk": psk}
    if pki is not None and pki.clients:
        priv = serialization.load_pem_private_key(pki.resp[0], None)
        assert isinstance(priv, rsa.RSAPrivateKey)
        ca = x509.load_pem_x509_certificate(pki.ca_pem)
        der = x509.load_pem_x509_certificate(pki.clients[0][1]).public_bytes(serialization.Encoding.DER)
        signed = os.urandom(1100)  # IKE_SA_INIT request | Nr | prf(SK_p, ID) (RFC 7296 2.15)
        sig = priv.sign(signed, padding.PKCS1v15(), hashes.SHA256())
        pub = priv.public_key()
        cert = x509.load_der_x509_certificate(der)
        out["rsa"] = {**psk,
                      "RSA-2048 sign": _per_call_us(lambda: priv.sign(signed, padding.PKCS1v15(), hashes.SHA256()), 200),
                      "RSA-2048 verify (AUTH)": _per_call_us(
                          lambda: pub.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256()), 2000),
                      "certificate verify (CA)": _per_call_us(lambda: cert.verify_directly_issued_by(ca), 2000),
                      "certificate parse": _per_call_us(lambda: x509.load_der_x509_certificate(der).public_key(),
                                                        2000)}
    return out


def openssl_rsa_sign_ms() -> tuple[float, str] | None:
    """RSA-2048 private-key operation of the system's libcrypto (the one charon's openssl plugin links,
    and charon loads openssl before gmp, so openssl's RSA is the one it uses): `openssl speed`."""
    import subprocess

    try:
        r = subprocess.run(["openssl", "speed", "-seconds", "2", "rsa2048"], capture_output=True, text=True,
                           timeout=60, check=True)
        ver = subprocess.run(["openssl", "version"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for line in r.stdout.splitlines():
        f = line.split()
        if line.startswith("rsa 2048 bits") and len(f) >= 5:
            return 1000 * float(f[3].rstrip("s")), " ".join(ver[:2])
    return None


if __name__ == "__main__":
    if not os.environ.get(RECORD_ENV):
        sys.exit(f"{sys.argv[0]}: the recording iked runs only with ${RECORD_ENV} set (bench/charon_initiator.py sets it)")
    sys.exit(_recording_iked())
