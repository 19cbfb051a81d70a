"""bench/mediated_timeline.py: the critical path of a mediated setup rebuilt from the three hosts'
captures (IKE headers only), each step's time, and the cases where a message is missing or a check
left before the relayed ME_CONNECT it is drawn after."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest

ALICE, CAROL, BOB = "10.1.0.2", "10.3.0.1", "10.2.0.2"


@pytest.fixture
def tl(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("mediated_timeline")


@dataclass
class Packet:
    """The fields of scenarios.lab.pcap.Packet that messages() reads."""

    time: float
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    kind: str = "ike"


def ike(exchange: int, response: bool, mid: int, *, spis: bytes = b"\1" * 16, natt: bool = True) -> bytes:
    hdr = spis + bytes([0, 0x20, exchange, 0x20 if response else 0x08]) + struct.pack("!II", mid, 28)
    return (b"\0\0\0\0" if natt else b"") + hdr


def test_ike_header_reads_the_plaintext_header_and_skips_esp(tl: ModuleType) -> None:
    spis = bytes(range(16))
    assert tl.ike_header(ike(35, True, 7, spis=spis), natt=True) == (spis[:8], spis[8:], 35, 0x20, 7)
    assert tl.ike_header(ike(34, False, 0, spis=spis, natt=False), natt=False) == (spis[:8], spis[8:], 34, 0x08, 0)
    assert tl.ike_header(b"\x01\x02\x03\x04" + bytes(40), natt=True) is None  # ESP (a non-zero SPI)
    assert tl.ike_header(bytes(20), natt=False) is None  # shorter than an IKE header


def test_messages_sees_direction_checks_and_order(tl: ModuleType) -> None:
    pkts = [
        Packet(2.0, BOB, ALICE, 4500, 4500, ike(37, True, 9, spis=bytes(16))),
        Packet(1.0, ALICE, BOB, 4500, 4500, ike(37, False, 9, spis=bytes(16))),
        Packet(1.5, ALICE, CAROL, 4500, 4500, ike(37, False, 3)),
        Packet(1.7, ALICE, BOB, 4500, 4500, b"\0\0\0\1" + bytes(40), kind="esp"),
    ]
    msgs = tl.messages(pkts, ALICE)
    assert [(m.time, m.out, m.exchange, m.response, m.message_id, m.check) for m in msgs] == [
        (1.0, True, 37, False, 9, True), (1.5, True, 37, False, 3, False), (2.0, False, 37, True, 9, True)]
    assert msgs[0].label == "out check req  9"


def _setup(tl: ModuleType, t0: float) -> tuple[list[object], list[object], list[object], list[float]]:
    """One setup's messages on each host at 1 ms steps from t0, in the order of tl.EVENTS; the times."""
    m = tl.Msg
    me, init, auth, info = tl.ME_CONNECT, tl.IKE_SA_INIT, tl.IKE_AUTH, tl.INFORMATIONAL
    times = [t0 + i * 0.001 for i in range(len(tl.EVENTS))]
    t = times
    alice = [m(t[1], True, me, False, 1, False), m(t[8], False, me, False, 2, False),
             m(t[9] - 0.0002, True, info, False, 5, True),  # an earlier check: never answered
             m(t[9], True, info, False, 6, True), m(t[12], False, info, True, 6, True),
             m(t[13], True, init, False, 0, False), m(t[16], False, init, True, 0, False),
             m(t[17], True, auth, False, 1, False), m(t[20], False, auth, True, 1, False)]
    carol = [m(t[2], False, me, False, 1, False), m(t[3], True, me, False, 3, False),
             m(t[6], False, me, False, 4, False), m(t[7], True, me, False, 2, False)]
    bob = [m(t[4], False, me, False, 3, False), m(t[5], True, me, False, 4, False),
           m(t[10], False, info, False, 6, True), m(t[11], True, info, True, 6, True),
           m(t[14], False, init, False, 0, False), m(t[15], True, init, True, 0, False),
           m(t[18], False, auth, False, 1, False), m(t[19], True, auth, True, 1, False)]
    return alice, carol, bob, times


def test_events_follow_the_critical_path(tl: ModuleType) -> None:
    alice, carol, bob, times = _setup(tl, 100.0)
    ev = tl.events(times[0], times[-1], alice, carol, bob)
    assert ev == pytest.approx(times)
    assert tl.steps(ev) == pytest.approx([1.0] * (len(times) - 1))  # every step 1 ms


def test_a_missing_message_leaves_its_steps_unknown(tl: ModuleType) -> None:
    alice, carol, bob, times = _setup(tl, 100.0)
    bob = [x for x in bob if x.exchange != tl.IKE_SA_INIT or not x.response]  # bob's answer not seen
    ev = tl.events(times[0], times[-1], alice, carol, bob)
    assert ev[15] is None and ev[16] is None and ev[20] is None  # later lookups find nothing after it
    st = tl.steps(ev)
    assert st[14] is None and st[13] == pytest.approx(1.0)


def test_a_step_that_runs_backwards_is_unknown(tl: ModuleType) -> None:
    assert tl.steps([1.0, 0.999, 1.002]) == [None, pytest.approx(3.0)]
    assert tl.steps([1.0, None, 1.002]) == [None, None]


def test_table_sums_each_hosts_medians(tl: ModuleType) -> None:
    alice, carol, bob, times = _setup(tl, 100.0)
    runs = [tl.steps(tl.events(times[0], times[-1], alice, carol, bob))]
    lines = tl.table({"ours": runs}, {"ours": [21.0]})
    sums = {ln.split(",")[-1].split()[0]: float(ln.split()[-1]) for ln in lines if ln.startswith("sum of")}
    hosts = {h: sum(1 for i in range(1, len(tl.EVENTS)) if tl.STEP_HOST.get(i, "wire") == h)
             for h in ("alice", "carol", "bob", "wire")}
    assert sums == pytest.approx({h: float(n) for h, n in hosts.items()})
    assert lines[-1].endswith("21.000 (21.00-21.00,  1)")
