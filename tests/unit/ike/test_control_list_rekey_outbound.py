"""The listing (`ikectl list`, the control socket's `list`) of a rekey responder's new CHILD_SA while
its outbound SA waits for the end of the replaced one (RFC 7296 2.8; docs/architecture.md, "CHILD_SA
rekeying"): the JSON listing and the text form say it does not send on it yet, until the DELETE.

The responder's engine events go through the daemon's glue into a userspace data plane, as in iked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ike_pair import Pair, make_pair

from core_ike.constants import NON_ESP_MARKER
from core_ike.daemon.control import EngineControl
from core_ike.daemon.ctl import format_sas
from core_ike.daemon.glue import DataPlaneGlue, engine_child_deleter
from core_ike.io.userspace import UserspaceDataPlane


class Responder:
    """Side B of the pair with the daemon's data-plane glue and control handlers."""

    def __init__(self, p: Pair) -> None:
        self.p = p
        self.dp = UserspaceDataPlane(lambda d, addr: None, clock=lambda: p.now)
        self.later: list[tuple[float, Callable[[], None]]] = []  # the glue's delayed calls, never run here
        self.glue = DataPlaneGlue(self.dp, engine_child_deleter(p.b), lambda t, fn: self.later.append((t, fn)))
        p.b.extensions.append(self.glue)
        self.control = EngineControl(p.b, lambda: None)
        self.control.outbound_pending = self.glue.outbound_pending  # as the daemon wires them (runtime.py)
        self.fed = 0

    def feed(self) -> None:
        """B's engine events so far, in order, through the glue (the daemon's on_event)."""
        self.p._drain()
        for e in self.p.events_b[self.fed:]:
            self.glue.handle(e)
        self.fed = len(self.p.events_b)

    def children(self) -> list[dict[str, Any]]:
        self.feed()
        reply = asyncio.run(self.control.handle({"cmd": "list"}))
        assert reply["ok"]
        (sa,) = reply["sas"]
        return list(sa["child-sas"])

    def text(self) -> str:
        return format_sas(asyncio.run(self.control.handle({"cmd": "list"}))["sas"])


def _up(seed: int = 0) -> tuple[Pair, Responder]:
    p = make_pair(esp="aes128gcm16", a_conf={"encap": True}, b_conf={"encap": True},  # ESP-in-UDP: no raw socket
                  seed=seed)
    b = Responder(p)
    p.a.initiate("home", now=p.now)
    p.pump()
    b.feed()
    return p, b


@pytest.fixture
def pair() -> Iterator[tuple[Pair, Responder]]:
    p, b = _up()
    yield p, b
    b.dp.close()


Datagrams = list[tuple[bytes, tuple[str, int], tuple[str, int]]]


def _deliver(p: Pair, to: str, datagrams: Datagrams) -> None:
    dst = p.engine(to)
    for data, local, remote in datagrams:
        if remote[1] == dst.natt_port:
            data = data[len(NON_ESP_MARKER):]
        dst.receive(data, remote, local, p.now)
        dst.prepare()


def _a_to_b(p: Pair) -> None:
    """Deliver what A sends now to B, and nothing back."""
    _deliver(p, "b", list(p.a.datagrams_to_send()))


def test_rekey_responder_lists_its_outbound_sa_pending_until_the_delete(pair: tuple[Pair, Responder]) -> None:
    p, b = pair
    (old,) = b.children()
    assert "outbound" not in old  # installed both ways: nothing to say
    assert "outbound SA" not in b.text()
    (sa_a,) = p.a.ike_sas()
    p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)
    _a_to_b(p)  # B answers the rekey; its response has not reached A yet
    listed = {c["uniqueid"]: c for c in b.children()}
    assert set(listed) == {old["uniqueid"], max(listed)} and max(listed) != old["uniqueid"]
    new = listed[max(listed)]
    assert b.glue.outbound_pending(new["uniqueid"]) and not b.glue.outbound_pending(old["uniqueid"])
    assert new["state"] == "INSTALLED" and listed[old["uniqueid"]]["state"] == "REKEYED"
    assert new["outbound"] == f"pending until the replaced CHILD_SA #{old['uniqueid']} ends"
    assert "outbound" not in listed[old["uniqueid"]]  # the one we still send on
    assert (f"in  {new['spi-in']}, out {new['spi-out']} (outbound SA pending until the replaced CHILD_SA "
            f"#{old['uniqueid']} ends)") in b.text()
    p.pump()  # the response, A's DELETE of the old CHILD_SA and its answer: B switches
    (after,) = b.children()
    assert after["uniqueid"] == new["uniqueid"] and after["state"] == "INSTALLED"
    assert "outbound" not in after and not b.glue.outbound_pending(new["uniqueid"])
    assert f"in  {new['spi-in']}, out {new['spi-out']}\n" in b.text() + "\n"
    assert "outbound SA" not in b.text()


def test_redundant_sa_of_a_rekey_collision_is_listed_as_never_sending() -> None:
    """RFC 7296 2.8.1, both nonce orders: once B knows which of the two new CHILD_SAs is redundant, that
    one says "not installed" (it never sends, whoever created it); the survivor sends at once if B
    created it, else it waits for the end of the old CHILD_SA."""
    outcomes: set[str] = set()
    for seed in range(40):
        p, b = _up(seed)
        try:
            (old,) = b.children()
            (sa_a,) = p.a.ike_sas()
            (sa_b,) = p.b.ike_sas()
            waits = f"pending until the replaced CHILD_SA #{old['uniqueid']} ends"
            p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)
            p.b.rekey_child(sa_b, old["uniqueid"], now=p.now)
            req_a, req_b = list(p.a.datagrams_to_send()), list(p.b.datagrams_to_send())
            _deliver(p, "b", req_a)  # B answers A's rekey: the SA it answered waits for the old one
            (answered,) = [c for c in b.children() if "outbound" in c]
            assert answered["outbound"] == waits
            _deliver(p, "a", req_b)
            _deliver(p, "b", list(p.a.datagrams_to_send()))  # A's answer: B sees the collision
            listed = {c["uniqueid"]: c for c in b.children()}
            (mine,) = [c for u, c in listed.items() if u not in (old["uniqueid"], answered["uniqueid"])]
            got = (mine.get("outbound"), listed[answered["uniqueid"]].get("outbound"))
            if mine["state"] == "DELETING":  # B's own is redundant: B deletes it; the answered one survives
                assert got == ("not installed", waits)
                outcomes.add("answered survives")
            else:  # the answered one is redundant (A deletes it); B's own sends at once
                assert mine["state"] == "INSTALLED" and got == (None, "not installed")
                outcomes.add("own survives")
            assert all(b.glue.outbound_pending(c["uniqueid"]) == ("outbound" in c) for c in listed.values())
            assert b.text().count("(outbound SA not installed)") == 1
        finally:
            b.dp.close()
        if len(outcomes) == 2:
            break
    assert outcomes == {"answered survives", "own survives"}
