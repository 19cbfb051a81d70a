"""Per-step times of a mediated setup from packet captures on alice, the mediation server (carol) and bob.

Used by ``bench/mediated_setup.py --timeline COND``: every host's capture shares one clock (network
namespaces of one kernel), so the capture timestamps of a setup's messages give, per step, how long a
daemon took from a datagram's arrival on its interface to the datagram it sent in answer (wake-up,
decoding, the work and the send included) and how long each message was on the wire. The IKE header is
plaintext in every message (RFC 7296 §3.1), so exchange type, flags and Message ID identify the
message without keys: ME_CONNECT (exchange 240, draft-brunner-ikev2-mediation §4.2), the connectivity
checks (INFORMATIONAL with SPIs 0/0, the pair's Message ID, draft-brunner-ikev2-mediation §5.1),
IKE_SA_INIT and IKE_AUTH of the mediated IKE_SA.
"""

from __future__ import annotations

import contextlib
import statistics
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ME_CONNECT, IKE_SA_INIT, IKE_AUTH, INFORMATIONAL = 240, 34, 35, 37
FLAG_RESPONSE = 0x20
ZERO_SPI = bytes(8)


@dataclass(frozen=True)
class Msg:
    """One IKE datagram seen on a host's interface."""

    time: float
    out: bool          # sent by this host (else received)
    exchange: int
    response: bool
    message_id: int
    check: bool        # a connectivity check (plaintext INFORMATIONAL, SPIs 0/0)

    @property
    def label(self) -> str:
        kind = "check" if self.check else {ME_CONNECT: "ME_CONNECT", IKE_SA_INIT: "IKE_SA_INIT",
                                           IKE_AUTH: "IKE_AUTH", INFORMATIONAL: "INFORMATIONAL"}.get(
            self.exchange, str(self.exchange))
        return f"{'out' if self.out else 'in '} {kind} {'resp' if self.response else 'req '} {self.message_id}"


def ike_header(payload: bytes, natt: bool) -> tuple[bytes, bytes, int, int, int] | None:
    """(SPIi, SPIr, exchange, flags, message ID) of a UDP payload that is IKE (non-ESP marker on 4500)."""
    if natt:
        if payload[:4] != b"\0\0\0\0":
            return None
        payload = payload[4:]
    if len(payload) < 28:
        return None
    exchange, flags, mid = struct.unpack_from("!BBI", payload, 18)
    return payload[:8], payload[8:16], exchange, flags, mid


def messages(packets: Iterable[object], own: str) -> list[Msg]:
    """The IKE messages among a capture's packets (scenarios.lab.pcap.Packet), seen from address ``own``."""
    out: list[Msg] = []
    for p in packets:
        if getattr(p, "kind", "") != "ike":
            continue
        hdr = ike_header(p.payload, 4500 in (p.sport, p.dport))  # type: ignore[attr-defined]
        if hdr is None:
            continue
        spi_i, spi_r, exchange, flags, mid = hdr
        out.append(Msg(p.time, p.src == own, exchange, bool(flags & FLAG_RESPONSE), mid,  # type: ignore[attr-defined]
                       exchange == INFORMATIONAL and spi_i == ZERO_SPI and spi_r == ZERO_SPI))
    out.sort(key=lambda m: m.time)
    return out


# the setup's critical path, event by event; a step is the time between two consecutive events
EVENTS = ["up written", "alice ME_CONNECT out", "carol ME_CONNECT in (alice's)", "carol relay out to bob",
          "bob ME_CONNECT in", "bob ME_CONNECT out (answer)", "carol ME_CONNECT in (bob's)",
          "carol relay out to alice", "alice ME_CONNECT in", "alice check out", "bob check in",
          "bob check response out", "alice check response in", "alice IKE_SA_INIT out", "bob IKE_SA_INIT in",
          "bob IKE_SA_INIT response out", "alice IKE_SA_INIT response in", "alice IKE_AUTH out",
          "bob IKE_AUTH in", "bob IKE_AUTH response out", "alice IKE_AUTH response in", "reply read"]
# which host does the work of the step ending at an event (None: on the wire between two hosts)
STEP_HOST = {1: "alice", 3: "carol", 5: "bob", 7: "carol", 9: "alice", 11: "bob", 13: "alice", 15: "bob",
             17: "alice", 19: "bob", 21: "alice"}


def _first(msgs: Sequence[Msg], after: float, out: bool, exchange: int, response: bool,
           mid: int | None = None, check: bool = False) -> Msg | None:
    for m in msgs:
        if (m.time >= after and m.out == out and m.exchange == exchange and m.response == response
                and m.check == check and (mid is None or m.message_id == mid)):
            return m
    return None


def events(t_up: float, t_reply: float, alice: Sequence[Msg], carol: Sequence[Msg],
           bob: Sequence[Msg]) -> list[float | None]:
    """The times of EVENTS in one setup (None where a message was not seen)."""
    def win(ms: Sequence[Msg]) -> list[Msg]:
        return [m for m in ms if t_up - 0.001 <= m.time <= t_reply + 0.001]
    alice, carol, bob = win(alice), win(carol), win(bob)
    t: list[float | None] = [None] * len(EVENTS)
    t[0], t[21] = t_up, t_reply

    def at(i: int, m: Msg | None) -> float:
        t[i] = m.time if m else None
        return m.time if m else t_reply + 1.0  # a missing message: later lookups find nothing

    a = at(1, _first(alice, t_up, True, ME_CONNECT, False))
    c = at(2, _first(carol, a, False, ME_CONNECT, False))
    c = at(3, _first(carol, c, True, ME_CONNECT, False))
    b = at(4, _first(bob, c, False, ME_CONNECT, False))
    b = at(5, _first(bob, b, True, ME_CONNECT, False))
    c = at(6, _first(carol, b, False, ME_CONNECT, False))
    c = at(7, _first(carol, c, True, ME_CONNECT, False))
    a_in = at(8, _first(alice, c, False, ME_CONNECT, False))
    init = _first(alice, a_in, True, IKE_SA_INIT, False)
    # the check whose response let alice start the IKE_SA: the last one answered before her IKE_SA_INIT
    answered = [m for m in alice if m.check and m.response and not m.out and init is not None
                and m.time <= init.time]
    if answered:
        mid = answered[-1].message_id
        at(9, _first(alice, t_up, True, INFORMATIONAL, False, mid, check=True))
        bi = at(10, _first(bob, t_up, False, INFORMATIONAL, False, mid, check=True))
        at(11, _first(bob, bi, True, INFORMATIONAL, True, mid, check=True))
        t[12] = answered[-1].time
    i = at(13, init)
    i = at(14, _first(bob, i, False, IKE_SA_INIT, False))
    i = at(15, _first(bob, i, True, IKE_SA_INIT, True))
    i = at(16, _first(alice, i, False, IKE_SA_INIT, True))
    i = at(17, _first(alice, i, True, IKE_AUTH, False))
    i = at(18, _first(bob, i, False, IKE_AUTH, False))
    i = at(19, _first(bob, i, True, IKE_AUTH, True))
    at(20, _first(alice, i, False, IKE_AUTH, True))
    return t


def steps(ev: Sequence[float | None]) -> list[float | None]:
    """Milliseconds of each step (EVENTS[i-1] -> EVENTS[i]) for i = 1.. ; None where unknown or negative
    (a message that left before the one it is drawn after, e.g. a check sent before the relayed
    ME_CONNECT arrived)."""
    out: list[float | None] = []
    for i in range(1, len(ev)):
        a, b = ev[i - 1], ev[i]
        out.append((b - a) * 1000 if a is not None and b is not None and b >= a else None)
    return out


def cell(values: list[float]) -> str:
    if not values:
        return f"{'-':>22}"
    return f"{statistics.median(values):6.3f} ({min(values):5.2f}-{max(values):5.2f}, {len(values):>2})"


def table(per_side: dict[str, list[list[float | None]]], walls: dict[str, list[float]]) -> list[str]:
    """One line per step: who does it, median (min-max, n) per side in ms; then per host the sum of its
    steps' medians, and the setups' own times (`walls`, ms: up written to reply read, every run)."""
    sides = list(per_side)
    lines = [f"{'step (ms: median (min-max, n))':<62} " + " ".join(f"{s:>22}" for s in sides)]
    medians: dict[str, list[float | None]] = {s: [] for s in sides}
    for i in range(1, len(EVENTS)):
        who = STEP_HOST.get(i, "wire")
        name = f"{who:<5} {EVENTS[i - 1]} -> {EVENTS[i]}"
        cells = []
        for s in sides:
            vals = [x for r in per_side[s] if (x := r[i - 1]) is not None]
            medians[s].append(statistics.median(vals) if vals else None)
            cells.append(cell(vals))
        lines.append(f"{name[:62]:<62} " + " ".join(cells))
    for host in ("alice", "carol", "bob", "wire"):
        idx = [i for i in range(1, len(EVENTS)) if STEP_HOST.get(i, "wire") == host]
        cells = []
        for s in sides:
            ms = [medians[s][i - 1] for i in idx]
            cells.append(f"{sum(m for m in ms if m is not None):22.3f}")
        lines.append(f"{'sum of the medians, ' + host:<62} " + " ".join(cells))
    lines.append(f"{'setup (up written -> reply read), every run':<62} " + " ".join(cell(walls[s]) for s in sides))
    return lines


def collect(lab: Any, addr: dict[str, str], order: Sequence[tuple[int, str]], started: Callable[[str], Any],
            runs: int, pace: float, verbose: bool) -> list[str]:
    """Capture ``runs`` setups of each side in ``order`` (round, side) on every host of ``addr`` (host:
    its address), a setup starting at most every ``pace`` s; ``started(side)`` gives a side's driver,
    started and warmed up. The step table over all captured setups of each side, then the three daemons'
    CPU per setup (the driver's ``cpu``, ns, when it reads one)."""
    sides = list(dict.fromkeys(side for _, side in order))
    per_side: dict[str, list[list[float | None]]] = {s: [] for s in sides}
    walls: dict[str, list[float]] = {s: [] for s in sides}
    cpus: dict[str, list[float]] = {s: [] for s in sides}
    for _, side in order:
        driver = started(side)
        try:
            windows: list[tuple[float, float]] = []
            with contextlib.ExitStack() as stack:
                caps = {h: stack.enter_context(lab.capture(h, "eth0", "udp", immediate=False)) for h in addr}
                for _ in range(runs):
                    t0 = time.time()
                    took = driver.initiate_and_wait(10.0)
                    windows.append((t0, t0 + took))
                    cpus[side].append(getattr(driver, "cpu", 0) / 1e6)
                    driver.reset()
                    time.sleep(max(0.0, t0 + pace - time.time()))  # the bench's pacing between setups
            msgs = {h: messages(c.packets, addr[h]) for h, c in caps.items()}
            for t_up, t_reply in windows:
                ev = events(t_up, t_reply, msgs["alice"], msgs["carol"], msgs["bob"])
                per_side[side].append(steps(ev))
                walls[side].append((t_reply - t_up) * 1000)
                if verbose:
                    print(f"  {side}: {(t_reply - t_up) * 1000:.2f} ms; "
                          + " ".join(f"{x:.2f}" if x is not None else "-" for x in steps(ev)), flush=True)
        finally:
            driver.stop()
    return [*table(per_side, walls),
            f"{'CPU of the three daemons per setup (to the reply)':<62} " + " ".join(cell(cpus[s]) for s in sides)]
