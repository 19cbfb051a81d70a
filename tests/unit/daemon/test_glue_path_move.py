"""An IKE_SA's path changes (RFC 7296 §2.23: the peer behind a NAT comes from a new address, or we
moved to an extra socket of many-port probing, core_ike/me/upgrade.py): the daemon's glue moves the
CHILD_SAs' SAs (addresses and UDP encapsulation ports) and, on a data plane whose policies carry the
tunnel addresses (XFRM), the policies' templates. Two sans-IO engines back to back, the glue over a
recording data plane; tests/dataplane/test_xfrm_path_move.py does the same against the kernel's
policies and routes.
"""

from __future__ import annotations

from typing import Any

from core_ike.ike import events as ev
from core_ike.io.dataplane import Direction, PolicyParams
from core_ike.me.upgrade import PathChanged
from tests.unit.daemon.test_glue_esp import FakeDataPlane, Glued
from tests.unit.ike.ike_pair import make_pair

NEW = ("198.51.100.66", 4500)


class MovingDataPlane(FakeDataPlane):
    """Applies `update_sa` to its record and replaces policies in place, as the XFRM data plane does."""

    def update_sa(self, spi: int, direction: Direction, **kw: Any) -> None:
        from dataclasses import replace

        old = self.sas[(spi, direction)]
        self.sas[(spi, direction)] = replace(old, **{k: v for k, v in kw.items() if v is not None})
        self.calls.append(f"update {direction.name}")

    def update_policy(self, old: PolicyParams, new: PolicyParams) -> None:
        self.policies[self.policies.index(old)] = new
        self.calls.append(f"update_policy {new.direction.name}")


def _up() -> tuple[Glued, MovingDataPlane, Any]:
    p = make_pair(a_conf={"dpd_delay": 5.0})
    p.a.configs[0].encap = True  # b sees a NAT in front of a: b follows a's moves
    dp = MovingDataPlane()
    g = Glued(p, None, dp)
    p.a.initiate("home", now=p.now)
    g.run()
    (bob_sa,) = p.b.ike_sas()
    assert bob_sa.nat_there and len(dp.sas) == 2 and len(dp.policies) == 2
    return g, dp, bob_sa


def _sa(dp: MovingDataPlane, direction: Direction) -> Any:
    (sa,) = [s for (_, d), s in dp.sas.items() if d == direction]
    return sa


def test_the_peers_move_moves_the_sas_and_the_policy_templates() -> None:
    g, dp, bob_sa = _up()
    here = bob_sa.local
    p = g.p
    p.drop = lambda side, data: True  # catch a's DPD and deliver it from the new address
    p.advance(5.5)
    (req,) = [d for side, d in p.wire if side == "a->b"][-1:]
    p.drop = None
    p.b.receive(req[4:], here, NEW, p.now)
    g.run()
    (moved,) = g.of("b", ev.PeerAddressChanged)
    assert moved.remote == NEW and moved.local == here  # the event names both ends
    out, inb = _sa(dp, Direction.OUT), _sa(dp, Direction.IN)
    assert (out.src, out.src_port, out.dst, out.dst_port) == (here[0], here[1], *NEW)
    assert (inb.src, inb.src_port, inb.dst, inb.dst_port) == (*NEW, here[0], here[1])
    assert {(x.direction, x.tunnel_src, x.tunnel_dst) for x in dp.policies} == {
        (Direction.OUT, here[0], NEW[0]), (Direction.IN, here[0], NEW[0])}  # the local end first, as installed
    calls = len(dp.calls)
    g.glues["b"].handle(ev.PeerAddressChanged(bob_sa.unique_id, NEW, here))  # the same path again: nothing
    assert len(dp.calls) == calls
    child = next(iter(bob_sa.children.values()))
    p.b.terminate(bob_sa, p.now)
    g.run()
    assert dp.sas == {} and dp.policies == [], child  # the moved policies are the ones deleted


def test_a_move_to_an_extra_socket_changes_the_encapsulation_ports() -> None:
    """The mediated IKE_SA moved to an extra socket (upgrade.py's PathChanged with a local end): ESP-in-UDP
    must leave from that socket's port, or the peer's NAT filter (RFC 4787 §5) drops it."""
    g, dp, bob_sa = _up()
    here, there = bob_sa.local, bob_sa.remote
    extra = (here[0], 40123)
    g.glues["b"].handle(PathChanged(bob_sa.unique_id, there, True, "check succeeded", extra))
    out, inb = _sa(dp, Direction.OUT), _sa(dp, Direction.IN)
    assert (out.src, out.src_port, out.dst_port) == (here[0], 40123, there[1])
    assert (inb.dst, inb.dst_port, inb.src_port) == (here[0], 40123, there[1])
    assert not [c for c in dp.calls if c.startswith("update_policy")]  # the addresses did not change


def test_the_children_follow_into_a_rekeyed_ike_sa() -> None:
    """RFC 7296 §2.18: the IKE_SA's successor carries its CHILD_SAs; a move reported for the successor
    moves them."""
    g, dp, bob_sa = _up()
    g.p.b.rekey_ike(bob_sa, g.p.now)
    g.run()
    (new,) = [e for e in g.of("b", ev.IkeSaEstablished) if e.rekeyed_from == bob_sa.unique_id]
    assert len(dp.sas) == 2  # the CHILD_SA is the same one
    g.glues["b"].handle(ev.PeerAddressChanged(new.unique_id, NEW))
    assert _sa(dp, Direction.OUT).dst == NEW[0] and _sa(dp, Direction.IN).src == NEW[0]
