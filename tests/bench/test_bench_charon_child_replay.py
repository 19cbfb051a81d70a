"""bench/charon_child.py's replays count IKE_SAs the process has not seen: the recording's first quarter
warms the interpreter, the others are counted (what a process keeps per peer is then as cold as live)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def _datagram(spi_i: bytes) -> bytes:
    # RFC 7296 3.1 header: SPIi, SPIr, ... (as Engine.receive gets it: no non-ESP marker)
    return spi_i + bytes(8) + b"\x21\x20\x22\x08" + bytes(8)


def test_the_first_ike_sas_warm_and_the_others_are_counted(load_bench: Callable[[str], ModuleType]) -> None:
    cc = load_bench("charon_initiator").charon_child  # which puts bench/ on the path charon_child imports from
    spis = [bytes([i]) * 8 for i in range(1, 9)]
    a, b = ("192.0.2.2", 500), ("192.0.2.1", 500)
    # in flight together, as the charon initiator keeps several: IKE_SA_INITs and IKE_AUTHs interleaved
    order = [0, 1, 0, 2, 1, 3, 2, 4, 3, 5, 4, 6, 5, 7, 6, 7]
    rec = [(_datagram(spis[i]), b, a) for i in order]
    assert [cc.ike_sa_of(d) for d, _, _ in rec] == [spis[i] for i in order]
    warm = cc.warming(rec, cc.warm_count(len(spis)))
    assert warm == {spis[0], spis[1]}
    counted = [i for i in order if spis[i] not in warm]
    assert counted == [2, 3, 2, 4, 3, 5, 4, 6, 5, 7, 6, 7]  # every datagram of the later IKE_SAs, in order
    assert cc.warming(rec, 0) == set() and cc.warming(rec, 100) == set(spis)
