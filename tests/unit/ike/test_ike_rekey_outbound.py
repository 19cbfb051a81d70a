"""CHILD_SA rekeying and when each side starts sending on the new SA (RFC 7296 2.8, 2.8.1), in memory.

The rekey responder installs the new inbound SA when it answers, and the new outbound SA only when the
old CHILD_SA ends (normally the initiator's DELETE): the initiator installs its new inbound SA only when
the response arrives, and accepts the old one until its DELETE exchange completes.

Each side's events drive a model of a data plane (`Plane`: inbound SPIs installed, outbound SAs in the
order installed, the newest one sending, as both of ours do); after every datagram delivered, the SA
each side sends on must be one the other side accepts: no ESP can be lost at any point of the rekey.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from ike_pair import Pair, make_pair

from core_ike.constants import NON_ESP_MARKER
from core_ike.daemon.glue import REKEYED_INBOUND_LINGER, DataPlaneGlue, engine_child_deleter
from core_ike.ike import events as ev
from core_ike.ike.sa import IkeSa
from core_ike.io.userspace import UserspaceDataPlane


@dataclass
class Plane:
    """What a data plane holds after the events of one side, in order."""

    inbound: set[int] = field(default_factory=set)
    outbound: list[tuple[int, int]] = field(default_factory=list)  # (CHILD_SA id, SPI), oldest first
    waiting: dict[int, int] = field(default_factory=dict)  # CHILD_SA id -> outbound SPI not installed
    log: list[str] = field(default_factory=list)

    def apply(self, e: object) -> None:
        if isinstance(e, ev.ChildSaEstablished):
            self.inbound.add(e.keys.spi_in)
            if e.outbound_deferred:
                self.waiting[e.unique_id] = e.keys.spi_out
            else:
                self.outbound.append((e.unique_id, e.keys.spi_out))
            self.log.append(f"established {e.unique_id}{' deferred' if e.outbound_deferred else ''}")
        elif isinstance(e, ev.ChildSaOutbound):
            spi = self.waiting.pop(e.unique_id)  # only a deferred one is named, once
            assert spi == e.spi_out
            self.outbound.append((e.unique_id, spi))
            self.log.append(f"outbound {e.unique_id} replacing {e.replaces}")
        elif isinstance(e, ev.ChildSaDeleted):
            self.inbound.discard(e.spi_in)
            self.outbound = [o for o in self.outbound if o[0] != e.unique_id]
            self.waiting.pop(e.unique_id, None)
            self.log.append(f"deleted {e.unique_id}")

    @property
    def sending(self) -> int | None:
        return self.outbound[-1][1] if self.outbound else None


class Stepped:
    """The pair, one datagram at a time, with both planes checked after each."""

    def __init__(self, p: Pair, hooks: dict[str, Callable[[object], object]] | None = None) -> None:
        self.p = p
        self.hooks = hooks or {}  # each side's events go through these first (the daemon's glue)
        self.planes = {"a": Plane(), "b": Plane()}
        self.seen = {"a": 0, "b": 0}
        self.held: list[tuple[str, bytes, tuple[str, int], tuple[str, int]]] = []
        self.checking = False  # from the first rekey on (IKE_AUTH's CHILD_SA is not the point here)
        self.sync()

    def sync(self) -> None:
        self.p._drain()
        for side, evs in (("a", self.p.events_a), ("b", self.p.events_b)):
            while self.seen[side] < len(evs):
                if side in self.hooks:
                    self.hooks[side](evs[self.seen[side]])
                self.planes[side].apply(evs[self.seen[side]])
                self.seen[side] += 1
        self.check()

    def check(self) -> None:
        if not self.checking:
            return
        for me, peer in (("a", "b"), ("b", "a")):
            out = self.planes[me].sending
            assert out is None or out in self.planes[peer].inbound, (
                f"{me} sends on {out:08x}, which {peer} has not installed: {self.planes[me].log} / "
                f"{self.planes[peer].log}")

    def _deliver(self, side: str, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        dst = self.p.b if side == "a->b" else self.p.a
        if remote[1] == dst.natt_port:
            data = data[len(NON_ESP_MARKER):]
        dst.receive(data, remote, local, self.p.now)
        dst.prepare()
        self.sync()

    def run(self, hold: str | None = None) -> None:
        """Deliver until quiet; what `hold` ("a->b" / "b->a") sends is kept back (`release`)."""
        for _ in range(50):
            moved = False
            for side, src in (("a->b", self.p.a), ("b->a", self.p.b)):
                for data, local, remote in src.datagrams_to_send():
                    moved = True
                    if side == hold:
                        self.held.append((side, data, local, remote))
                    else:
                        self._deliver(side, data, local, remote)
            if not moved:
                return

    def release_one(self) -> None:
        """Deliver the first datagram held back, nothing else."""
        side, data, local, remote = self.held.pop(0)
        self._deliver(side, data, local, remote)

    def release(self) -> None:
        held, self.held = self.held, []
        for side, data, local, remote in held:
            self._deliver(side, data, local, remote)
        self.run()


def _up(seed: int = 0, hooks: dict[str, Callable[[object], object]] | None = None,
        **kw: object) -> tuple[Stepped, IkeSa, IkeSa]:
    p = make_pair(esp="aes128gcm16-x25519", seed=seed, **kw)  # type: ignore[arg-type]
    p.a.initiate("home", now=p.now)
    s = Stepped(p, hooks)
    s.run()
    s.checking = True
    (sa_a,) = p.a.ike_sas()
    (sa_b,) = p.b.ike_sas()
    return s, sa_a, sa_b


def _events(p: Pair, side: str, kind: type) -> list[Any]:
    return p.of(side, kind)


def test_responder_sends_on_the_new_sa_only_from_the_delete() -> None:
    s, sa_a, sa_b = _up()
    p = s.p
    (old_b,) = sa_b.children.values()
    p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)
    s.run(hold="b->a")  # B answered; its response is held back
    (new_b,) = _events(p, "b", ev.ChildSaEstablished)[1:]
    assert new_b.outbound_deferred and new_b.rekeyed_from == old_b.unique_id
    assert not _events(p, "b", ev.ChildSaOutbound)
    assert s.planes["b"].sending == old_b.spi_out  # still the old SA, which A accepts
    s.release()  # the response, then A's DELETE of the old CHILD_SA and its answer
    (new_a,) = _events(p, "a", ev.ChildSaEstablished)[1:]
    assert not new_a.outbound_deferred  # the initiator sends on the new SA at once
    (switch,) = _events(p, "b", ev.ChildSaOutbound)
    assert (switch.unique_id, switch.spi_out, switch.replaces) == (new_b.unique_id, new_b.keys.spi_out,
                                                                   old_b.unique_id)
    # make-before-break: the outbound SA before the old CHILD_SA goes
    assert s.planes["b"].log[-2:] == [f"outbound {new_b.unique_id} replacing {old_b.unique_id}",
                                      f"deleted {old_b.unique_id}"]
    assert s.planes["a"].sending == new_a.keys.spi_out and s.planes["b"].sending == new_b.keys.spi_out
    assert list(sa_b.children) == [new_b.unique_id] and sa_b.children[new_b.unique_id].state == "INSTALLED"
    # the next rekey, by B this time, goes the same way round
    p.b.rekey_child(sa_b, new_b.unique_id, now=p.now)
    s.run()
    assert len(_events(p, "a", ev.ChildSaOutbound)) == 1 and len(_events(p, "b", ev.ChildSaOutbound)) == 1


def test_initiator_accepts_the_old_sa_until_its_delete_is_answered() -> None:
    s, sa_a, _ = _up()
    p = s.p
    (old_a,) = sa_a.children.values()
    p.a.rekey_child(sa_a, old_a.unique_id, now=p.now)
    s.run(hold="b->a")
    s.release()
    assert old_a.spi_in not in s.planes["a"].inbound
    # now hold B's answer to the DELETE: A keeps the old inbound SA meanwhile
    s2, sa_a, _ = _up()
    p = s2.p
    (old_a,) = sa_a.children.values()
    p.a.rekey_child(sa_a, old_a.unique_id, now=p.now)
    s2.run(hold="b->a")
    resp = s2.held
    s2.held = []
    for side, data, local, remote in resp:
        s2._deliver(side, data, local, remote)  # the CREATE_CHILD_SA response
    s2.run(hold="b->a")  # A's DELETE reached B, B's answer is held
    assert s2.held and old_a.spi_in in s2.planes["a"].inbound and old_a.state == "DELETING"
    s2.release()
    assert old_a.spi_in not in s2.planes["a"].inbound


def test_responder_deleting_the_old_sa_itself_switches_first() -> None:
    """The old CHILD_SA ends at the responder without the initiator's DELETE (its own expiry or a user's
    `down` of it): the outbound SA of its replacement is installed before it goes."""
    s, sa_a, sa_b = _up()
    p = s.p
    (old_b,) = sa_b.children.values()
    p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)
    s.run(hold="b->a")
    new_b = _events(p, "b", ev.ChildSaEstablished)[-1]
    s.held.clear()  # the response is lost: A retransmits later, B answers from its cache
    # a DELETE (RFC 7296 1.4.1) ends the old SA at A at once, at B when answered: not what is checked here
    s.checking = False
    p.b.terminate_child(sa_b, old_b.unique_id, now=p.now)
    s.run()
    (switch,) = _events(p, "b", ev.ChildSaOutbound)
    assert switch.unique_id == new_b.unique_id
    p.advance(10)  # A's retransmitted request gets the cached response: its new SAs installed too
    s.sync()
    assert s.planes["a"].sending == new_b.keys.spi_in and s.planes["b"].sending == new_b.keys.spi_out


def test_ike_sa_deleted_while_the_outbound_sa_waits() -> None:
    s, sa_a, sa_b = _up()
    p = s.p
    p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)
    s.run(hold="b->a")
    new_b = _events(p, "b", ev.ChildSaEstablished)[-1]
    s.held.clear()
    s.checking = False  # the IKE_SA's DELETE ends everything at A at once, at B when answered
    p.b.terminate(sa_b, now=p.now)
    s.run()
    assert not _events(p, "b", ev.ChildSaOutbound)
    assert new_b.unique_id in {e.unique_id for e in _events(p, "b", ev.ChildSaDeleted)}
    assert not s.planes["b"].outbound and not s.planes["b"].inbound and not s.planes["b"].waiting


def test_simultaneous_rekey_ends_with_the_survivor_sending_both_ways() -> None:
    """RFC 7296 2.8.1, both nonce orders: the redundant SA never sends (deferred on both sides, never
    switched to); the survivor sends at once at its creator and from the old SA's DELETE at the other."""
    outcomes: set[str] = set()
    for seed in range(40):
        s, sa_a, sa_b = _up(seed)
        p = s.p
        (old_a,) = sa_a.children.values()
        (old_b,) = sa_b.children.values()
        p.a.rekey_child(sa_a, old_a.unique_id, now=p.now)
        p.b.rekey_child(sa_b, old_b.unique_id, now=p.now)
        s.run()  # the invariant is checked after every datagram
        ((surv_a, ca),) = sa_a.children.items()
        ((surv_b, cb),) = sa_b.children.items()
        assert ca.spi_in == cb.spi_out and ca.spi_out == cb.spi_in
        assert s.planes["a"].sending == ca.spi_out and s.planes["b"].sending == cb.spi_out
        assert s.planes["a"].inbound == {ca.spi_in} and s.planes["b"].inbound == {cb.spi_in}
        assert not s.planes["a"].waiting and not s.planes["b"].waiting
        est = {side: {e.unique_id: e for e in _events(p, side, ev.ChildSaEstablished)[1:]} for side in "ab"}
        switched = {side: [e.unique_id for e in _events(p, side, ev.ChildSaOutbound)] for side in "ab"}
        winner = "a" if not est["a"][surv_a].outbound_deferred else "b"
        loser = "b" if winner == "a" else "a"
        surv = {"a": surv_a, "b": surv_b}
        assert not est[winner][surv[winner]].outbound_deferred and switched[winner] == []
        assert est[loser][surv[loser]].outbound_deferred and switched[loser] == [surv[loser]]
        for side in "ab":  # the redundant SA: inbound only, then deleted
            (redundant,) = [e for u, e in est[side].items() if u != surv[side]]
            assert redundant.outbound_deferred
        outcomes.add(f"{winner} won")
        if len(outcomes) == 2:
            break
    assert outcomes == {"a won", "b won"}


# -- the userspace data plane across a rekey whose response is held back ---------------------------------

H_A, H_B = "10.1.0.1", "10.2.0.1"  # inside the CHILD_SA's selectors (ike_pair: 10.1.0.0/24 === 10.2.0.0/24)


class Host:
    """One side's userspace data plane, driven by its engine's events through the daemon's glue; ESP it
    seals is collected (`sent`), what it opens lands in a pipe standing in for the TUN device."""

    def __init__(self, p: Pair, side: str, clock: Callable[[], float]) -> None:
        self.sent: list[bytes] = []
        self.later: list[tuple[float, Callable[[], None]]] = []  # the glue's delayed calls, run by hand
        self.dp = UserspaceDataPlane(lambda d, addr: self.sent.append(d), clock=clock)
        self.tun_r, w = os.pipe()
        os.set_blocking(self.tun_r, False)
        self.dp._tun_fd = w
        self.glue = DataPlaneGlue(self.dp, engine_child_deleter(p.engine(side)),
                                  lambda t, fn: self.later.append((t, fn)))
        p.engine(side).extensions.append(self.glue)  # CHILD_SA proposals: what this data plane installs

    def seal(self, src: str, dst: str, n: int, now: float) -> list[bytes]:
        """`n` packets src -> dst through the outbound SA the data plane sends on now."""
        start = len(self.sent)
        for i in range(n):
            self.dp._outbound(_ipv4(src, dst, i), now)
        return self.sent[start:]

    def open(self, esp: list[bytes], src: tuple[str, int]) -> int:
        """Hand it ESP; how many packets came out decrypted."""
        for d in esp:
            self.dp.receive_esp(d, src)
        got = 0  # a pipe keeps no packet boundaries: count octets
        while True:
            try:
                got += len(os.read(self.tun_r, 65535))
            except BlockingIOError:
                assert got % _PACKET_LEN == 0
                return got // _PACKET_LEN

    def close(self) -> None:
        os.close(self.tun_r)
        os.close(self.dp._tun_fd)
        self.dp._tun_fd = -1
        self.dp.close()


_PACKET_LEN = 40


def _ipv4(src: str, dst: str, seq: int) -> bytes:
    payload = seq.to_bytes(4, "big") + bytes(16)
    hdr = bytes([0x45, 0]) + (20 + len(payload)).to_bytes(2, "big") + bytes(4) + bytes([64, 17, 0, 0])
    return hdr + bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + payload


@pytest.fixture
def hosts() -> Iterator[tuple[Stepped, Host, Host]]:
    box: list[Stepped] = []
    made: dict[str, Host] = {}

    def clock() -> float:
        return box[0].p.now if box else 1000.0

    def hook(side: str) -> Callable[[object], object]:
        return lambda e: made[side].glue.handle(e)

    p = make_pair(esp="aes128gcm16", a_conf={"encap": True}, b_conf={"encap": True})  # ESP-in-UDP: no raw socket
    made["a"], made["b"] = Host(p, "a", clock), Host(p, "b", clock)
    p.a.initiate("home", now=p.now)
    s = Stepped(p, {"a": hook("a"), "b": hook("b")})
    box.append(s)
    s.run()
    s.checking = True
    yield s, made["a"], made["b"]
    for h in made.values():
        h.close()


def _spis(esp: list[bytes]) -> set[int]:
    return {int.from_bytes(d[:4], "big") for d in esp}


def test_userspace_no_packet_lost_while_the_rekey_response_is_held_back(
    hosts: tuple[Stepped, Host, Host],
) -> None:
    """A rekeys; B's response is held back while B sends ESP; then the response, A's DELETE of the old
    CHILD_SA and (held back too) B's answer to it: everything either side sealed meanwhile, delivered
    late, is opened by the other."""
    s, a, b = hosts
    p = s.p
    at_a, at_b = (p.a.ike_sas()[0].remote, p.b.ike_sas()[0].remote)  # where each one's ESP comes from
    (sa_a,) = p.a.ike_sas()
    (old_a,) = sa_a.children.values()
    assert a.open(b.seal(H_B, H_A, 3, p.now), at_a) == 3 and b.open(a.seal(H_A, H_B, 3, p.now), at_b) == 3
    p.a.rekey_child(sa_a, old_a.unique_id, now=p.now)
    s.run(hold="b->a")  # B answered: the response is held back
    assert len(s.held) == 1
    early = b.seal(H_B, H_A, 20, p.now)  # B's ESP right after answering: arrives before the response
    assert _spis(early) == {old_a.spi_in}
    assert a.open(early, at_a) == 20
    in_flight = b.seal(H_B, H_A, 20, p.now)  # sealed now, delivered only after the rekey completed at A
    s.release_one()  # the response: A installs the new SAs and sends its DELETE; B switches at the DELETE
    s.run(hold="b->a")  # B's answer to the DELETE is held back
    assert len(s.held) == 1 and old_a.state == "DELETING"
    (new_a,) = [c for c in sa_a.children.values() if c is not old_a]
    after = b.seal(H_B, H_A, 20, p.now)
    assert _spis(after) == {new_a.spi_in}  # B sends on the new SA from A's DELETE on
    assert a.open(in_flight, at_a) == 20 and a.open(after, at_a) == 20
    assert b.open(a.seal(H_A, H_B, 20, p.now), at_b) == 20  # A sends on the new SA at once
    s.release()
    assert a.open(b.seal(H_B, H_A, 20, p.now), at_a) == 20
    assert b.open(a.seal(H_A, H_B, 20, p.now), at_b) == 20
    assert a.dp.stats()["drop_unknown_spi"] == 0 and b.dp.stats()["drop_unknown_spi"] == 0
    for _, fn in a.later:  # the old inbound SA, kept a while (REKEYED_INBOUND_LINGER)
        fn()
    assert {r.spi for r in a.dp.list_sas()} == {new_a.spi_in, new_a.spi_out}


def test_userspace_ike_sa_deleted_while_the_outbound_sa_waits(hosts: tuple[Stepped, Host, Host]) -> None:
    """The outbound SA never installed is not asked to be deleted; nothing of the CHILD_SAs stays."""
    s, a, b = hosts
    p = s.p
    (sa_a,) = p.a.ike_sas()
    (sa_b,) = p.b.ike_sas()
    (old_b,) = sa_b.children.values()
    p.a.rekey_child(sa_a, next(iter(sa_a.children)), now=p.now)
    s.run(hold="b->a")
    new_b = p.of("b", ev.ChildSaEstablished)[-1]
    assert isinstance(new_b, ev.ChildSaEstablished) and new_b.outbound_deferred
    assert {(r.spi, r.direction) for r in b.dp.list_sas()} >= {(new_b.keys.spi_in, "in")}
    assert new_b.keys.spi_out not in {r.spi for r in b.dp.list_sas()}
    s.held.clear()
    s.checking = False  # the IKE_SA's DELETE ends everything at A at once, at B when answered
    p.b.terminate(sa_b, now=p.now)
    s.run()
    assert not b.glue.children and not b.glue.policies
    # the replaced CHILD_SA's inbound SA stays its REKEYED_INBOUND_LINGER, then nothing is left
    assert {r.spi for r in b.dp.list_sas()} == {old_b.spi_in} and len(b.later) == 1
    b.later[0][1]()
    assert not b.dp.list_sas()
    assert not a.dp.list_sas() and not a.glue.children


def test_userspace_replaced_inbound_sa_kept_a_while_after_the_delete(hosts: tuple[Stepped, Host, Host]) -> None:
    """ESP the peer sealed with the old CHILD_SA before the DELETE exchange, arriving after it (plain ESP
    and IKE come in on different sockets, read in no set order), is still opened, on both sides, until
    REKEYED_INBOUND_LINGER later; the outbound SAs go at once."""
    s, a, b = hosts
    p = s.p
    at_a, at_b = (p.a.ike_sas()[0].remote, p.b.ike_sas()[0].remote)
    (sa_a,) = p.a.ike_sas()
    (old_a,) = sa_a.children.values()
    p.a.rekey_child(sa_a, old_a.unique_id, now=p.now)
    s.run(hold="b->a")
    from_b = b.seal(H_B, H_A, 5, p.now)  # on the old SA (B has not switched)
    s.release_one()  # the response: A switches
    from_a_late = a.seal(H_A, H_B, 5, p.now)  # on the new SA
    s.run()  # the DELETE exchange, completed
    assert old_a.unique_id not in sa_a.children
    assert [t for t, _ in a.later] == [REKEYED_INBOUND_LINGER] and [t for t, _ in b.later] == [REKEYED_INBOUND_LINGER]
    assert {r.spi for r in a.dp.list_sas()} == {old_a.spi_in} | {c.spi_in for c in sa_a.children.values()} | \
        {c.spi_out for c in sa_a.children.values()}  # the old outbound SA is gone, its inbound one stays
    assert a.open(from_b, at_a) == 5 and b.open(from_a_late, at_b) == 5
    for h in (a, b):
        for _, fn in h.later:
            fn()
    assert a.open(from_b, at_a) == 0 and a.dp.stats()["drop_unknown_spi"] == 5
    assert {r.spi for r in a.dp.list_sas()} == {c.spi_in for c in sa_a.children.values()} | \
        {c.spi_out for c in sa_a.children.values()}
