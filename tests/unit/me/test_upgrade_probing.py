"""Relay -> direct upgrade rounds with many-port probing (core_ike/me/upgrade.py, core_ike/me/birthday.py),
on mex_net's simulated internet and fake clock: alice behind a port-restricted NAT (EIM/APDF), bob behind
a symmetric NAT with random ports (APDM). A firewall between the two NATs forces the first setup onto the
server's relay (its probing meets nothing); once it is lifted, a probe round probes many ports as the first
setup does, within the same bounds, and the same IKE_SA moves to the pair that met: on bob's side an
extra socket, which it leaves again (and closes) when the direct path dies."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

from core_ike.me import events as mev
from core_ike.me.birthday import ProbeConfig, ProbeEnded, ProbeStarted, Role
from core_ike.me.upgrade import PathChanged, UpgradeConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "me_ext"))
from mex_net import (
    A_PUB,
    B_PUB,
    MS_IP,
    PORT_RESTRICTED,
    SYM_RANDOM,
    FakePool,
    Net,
    client_config,
    probing_net,
    register,
)

PERIOD = 10.0
UP = UpgradeConfig(period=PERIOD, round_time=1.0, watch=1.0, misses=2)


def _block_direct(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
    """A firewall between the two NATs' public addresses: only the relay carries anything."""
    return None if {src[0], dst[0]} == {A_PUB, B_PUB} else 0.0


def _net(upgrade: UpgradeConfig = UP, probing: ProbeConfig | None = None, seed: int = 7) -> tuple[Net, FakePool]:
    return probing_net(client_config(upgrade=upgrade, probing=probing or ProbeConfig()), seed=seed)


def _relayed(net: Net, initiator: str) -> tuple[Any, Any]:
    """The first setup, its probing blocked: the tunnel comes up through the relay."""
    net.hook = _block_direct
    register(net)
    node = net.nodes[initiator]
    node.ext.connect("alice" if initiator == "bob" else "bob", net.now)
    net.run(40.0, until=lambda: bool(node.of(mev.MediatedEstablished) or node.of(mev.MediationFailed)))
    (up,) = node.of(mev.MediatedEstablished)
    assert up.remote[0] == MS_IP, node.events[-5:]  # relayed
    for who in ("alice", "bob"):  # the first setup probed, and met nothing
        (ended,) = net.nodes[who].of(ProbeEnded)
        assert not ended.ok, ended
    sa_a = next(s for s in net.nodes["alice"].engine.ike_sas() if s.established and s.name == "bob")
    sa_b = next(s for s in net.nodes["bob"].engine.ike_sas() if s.established and s.name == "alice")
    return sa_a, sa_b


def _moves(node: Any) -> list[PathChanged]:
    return node.of(PathChanged)  # type: ignore[no-any-return]


@pytest.mark.parametrize("initiator", ["alice", "bob"])
def test_a_probe_round_probes_many_ports_and_moves_the_ike_sa_to_the_pair_that_met(initiator: str) -> None:
    """alice controls: she moves to bob's mapping and bob's engine follows onto his extra socket; bob
    controls: he moves his IKE_SA's local end to the extra socket himself, and alice follows."""
    net, pool = _net()
    sa_a, sa_b = _relayed(net, initiator)
    uid_a, uid_b, relay_b_local = sa_a.unique_id, sa_b.unique_id, sa_b.local
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    assert pool.open_now == set()  # the first setup's sockets are closed
    opened_first = pool.opened

    net.hook = None  # the firewall goes: the next probe round probes many ports again
    ctl = net.nodes[initiator]
    net.run(PERIOD + 10.0, until=lambda: bool(_moves(ctl)))
    (moved,) = _moves(ctl)
    assert moved.direct, moved
    net.run(1.0)
    assert sa_a.remote[0] == B_PUB and sa_a.remote[1] != 4500  # bob's random NAT: a mapping of an extra socket
    assert sa_b.remote == (A_PUB, 4500)
    assert sa_b.local[1] >= 40000 and sa_b.local in pool.open_now  # bob's end: an extra socket
    assert pool.open_now == {sa_b.local}, pool.open_now  # the others closed when the probing ended
    assert sa_b.uses_marker  # IKE there is a NAT-T socket's (RFC 3948 §2.2)
    assert alice.engine.by_uid[uid_a] is sa_a and bob.engine.by_uid[uid_b] is sa_b  # the same IKE_SAs
    assert sa_a.established and sa_b.established and _moves(net.nodes["bob" if initiator == "alice" else "alice"]) == []
    if initiator == "bob":
        assert moved.local == sa_b.local, moved
    # the round probed as the first setup does, within its bounds
    starts = {who: net.nodes[who].of(ProbeStarted) for who in ("alice", "bob")}
    assert [s.role for s in starts["alice"]] == [Role.SPRAY, Role.SPRAY]
    assert [s.role for s in starts["bob"]] == [Role.OPEN, Role.OPEN] and starts["bob"][1].ports == 256
    assert pool.opened == opened_first + 256
    ends = {who: net.nodes[who].of(ProbeEnded) for who in ("alice", "bob")}
    for who, bound in (("alice", 2048), ("bob", 512)):
        assert len(ends[who]) == 2 and ends[who][1].packets <= bound and ends[who][1].seconds <= 5.0, ends[who]
    assert any(e.ok for e in (ends["alice"][1], ends["bob"][1])), ends
    (conn,) = ctl.ext.status().connections
    (host, port), role = (sa_a.remote, "spray") if ctl is alice else (sa_b.remote, "open")
    assert conn.path == f"direct to {host}[{port}] (moved off the relay, many-port probing ({role}) met)", conn.path

    # the direct path dies: back to the relay, bob's IKE_SA off its extra socket, which closes
    net.hook = _block_direct
    net.run(15.0, until=lambda: len(_moves(ctl)) > 1)
    back = _moves(ctl)[1]
    assert not back.direct and back.remote[0] == MS_IP, back
    net.run(2.0)
    assert sa_a.remote[0] == MS_IP and sa_b.remote[0] == MS_IP
    assert sa_b.local == relay_b_local and pool.open_now == set(), (sa_b.local, pool.open_now)
    assert sa_a.established and sa_b.established
    # relayed again: the probe rounds go on on the common schedule, one per period
    watch = ctl.ext.paths.watches[sa_a.unique_id if ctl is alice else sa_b.unique_id]
    assert watch.rounds <= 1 and watch.direct is None
    before = watch.rounds
    net.run(2 * PERIOD)
    assert watch.rounds == before + 2, (before, watch.rounds)


def test_the_extra_socket_closes_with_the_ike_sa() -> None:
    net, pool = _net()
    _, sa_b = _relayed(net, "alice")
    net.hook = None
    net.run(PERIOD + 10.0, until=lambda: bool(_moves(net.nodes["alice"])))
    net.run(1.0)
    assert sa_b.local in pool.open_now
    net.nodes["bob"].engine.terminate(sa_b, net.now)
    net.run(3.0)
    assert pool.open_now == set() and not net.nodes["bob"].ext.paths.watches


def test_probe_rounds_probe_on_the_common_schedule_and_within_the_bounds() -> None:
    """Blocked throughout: many-port probing joins rounds 1, 5, 9 ... only (probe_every = 4), each
    attempt ends in its 5 s with at most 2048 probes (256 sockets on bob's side, all closed after);
    the rounds between check the announced candidates only."""
    net, pool = _net()
    _relayed(net, "alice")
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    t0 = net.now
    net.run(6 * PERIOD)
    assert _moves(alice) == [] and _moves(bob) == []
    starts = [t for t, e in alice.events if isinstance(e, ProbeStarted) and t > t0]
    assert len(starts) == 2 and starts[1] - starts[0] == pytest.approx(4 * PERIOD, abs=0.1), starts  # rounds 1, 5
    ends = [e for t, e in alice.events if isinstance(e, ProbeEnded) and t > t0]
    assert len(ends) == 2 and all(not e.ok and e.packets <= 2048 and e.seconds <= 5.0 for e in ends), ends
    assert pool.open_now == set() and pool.opened == 3 * 256  # the first setup's and two rounds', all closed
    bob_starts = [t for t, e in bob.events if isinstance(e, ProbeStarted) and t > t0]
    assert len(bob_starts) == 2 and all(abs(b - a) < 0.5 for a, b in zip(starts, bob_starts, strict=True))
    (conn,) = alice.ext.status().connections
    assert conn.path is not None and conn.path.endswith("the last many-port probing (spray) did not meet"), conn


def test_no_probing_in_the_rounds_without_the_peers_nat_behaviour() -> None:
    """A peer whose ME_CONNECT carried no NAT behaviour: the rounds check the candidates only."""
    net, pool = _net()
    net.nodes["bob"].ext.config.nat_behaviour = None
    net.hook = _block_direct
    register(net)
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(40.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    assert alice.of(mev.MediatedEstablished)[0].remote[0] == MS_IP
    net.hook = None
    net.run(2 * PERIOD + 2)
    assert alice.of(ProbeStarted) == [] and net.nodes["bob"].of(ProbeStarted) == [] and pool.opened == 0
    assert _moves(alice) == []  # nothing else gets through bob's random NAT to alice's filter


def test_round_attempts_count_against_the_first_setups_limit() -> None:
    """max_active bounds the probe rounds' attempts and the first setups' together."""
    from core_ike.constants import MeEndpointType
    from core_ike.me.checklist import CheckList
    from core_ike.me.endpoints import make_endpoint

    net, _ = _net(probing=ProbeConfig(max_active=1))
    _relayed(net, "alice")
    alice = net.nodes["alice"]
    prober = alice.ext.paths.prober
    assert prober is not None and prober.active() == 0 and alice.ext.probes.busy() == 0
    net.run(PERIOD + 1.0, until=lambda: prober.active() > 0)
    assert prober.active() == 1 and alice.ext.probes.busy() == 1

    def other_setup() -> CheckList:  # another connection's first setup toward a random NAT
        cl = CheckList.for_initiator(b"\x42" * 4, b"a" * 16, [make_endpoint(
            MeEndpointType.SERVER_REFLEXIVE, A_PUB, 4500, base=("10.1.0.2", 4500))], net.now)
        cl.set_responder_data(b"b" * 16, [make_endpoint(MeEndpointType.SERVER_REFLEXIVE, "192.0.2.9", 61000)],
                              net.now)
        return cl

    assert alice.ext.probes.start(other_setup(), PORT_RESTRICTED, SYM_RANDOM, net.now) is None  # the limit
    net.run(6.0, until=lambda: prober.active() == 0)
    assert prober.active() == 0
    assert alice.ext.probes.start(other_setup(), PORT_RESTRICTED, SYM_RANDOM, net.now) is not None


def test_a_probe_round_meets_under_loss() -> None:
    """The path is lossy (a fifth of the datagrams between the NATs dropped): the round's probing
    still meets (its checks retransmit, many probes are in the air) and the IKE_SA moves."""
    net, pool = _net(seed=5)
    sa_a, sa_b = _relayed(net, "alice")
    rnd = random.Random(3)

    def lossy(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        return None if {src[0], dst[0]} == {A_PUB, B_PUB} and rnd.random() < 0.2 else 0.0

    net.hook = lossy
    alice = net.nodes["alice"]
    net.run(PERIOD + 10.0, until=lambda: bool(_moves(alice)))
    assert _moves(alice) and _moves(alice)[0].direct, alice.of(ProbeEnded)
    net.run(3.0)
    assert sa_b.remote == (A_PUB, 4500) and sa_a.remote[0] == B_PUB and sa_a.established and sa_b.established
    # the probes may meet the mapping of bob's NAT-T socket (his round checks alice's endpoint from it
    # too) or of an extra socket: his IKE_SA runs on the one that met, and no other extra socket is open
    (watch,) = net.nodes["bob"].ext.paths.watches.values()
    assert sa_b.local == watch.direct_local and pool.open_now <= {sa_b.local}, (sa_b.local, pool.open_now)
