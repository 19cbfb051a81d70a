"""Our relay extension in memory: symmetric NATs on both sides connect through the MS's data relay.

Negotiated by RELAY_VENDOR_ID in the mediation IKE_SA_INIT (docs/protocol.md §11.1); without it (or with
the server's relay off) the symmetric case still ends in "checks failed".
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from mex_net import A_PUB, B_PUB, IDS, MS_IP, client_config, make_net, register

from core_ike.constants import MeEndpointType
from core_ike.ike import events as ev
from core_ike.me import events as mev
from core_ike.me.tasks import MeSaState
from mediation_server.datarelay import RelayConfig, is_check

PORTS = (50000, 50099)


def _connect(net) -> float:  # type: ignore[no-untyped-def]
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    t0 = net.now
    alice.ext.connect("bob", net.now)
    net.run(60.0, until=lambda: bool(alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
            or bool(alice.of(mev.MediationFailed)))
    return t0


def _relay_ports(net) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    (alloc,) = net.nodes["ms"].of(mev.RelayAllocated)
    return alloc.a_port, alloc.b_port


def test_negotiated_on_both_mediation_sas() -> None:
    net = make_net(relay=RelayConfig(ports=PORTS))
    register(net)
    for name in ("alice", "bob"):
        (sa,) = [s for s in net.nodes[name].engine.ike_sas() if s.name == "medsrv"]
        assert sa.extension(MeSaState).relay is True
    assert all(s.extension(MeSaState).relay for s in net.nodes["ms"].engine.ike_sas())


def test_symmetric_nats_both_sides_connect_through_the_relay() -> None:
    net = make_net(symmetric=(True, True), relay=RelayConfig(ports=PORTS), latency=0.01)
    register(net)
    t0 = _connect(net)
    alice, bob, ms = net.nodes["alice"], net.nodes["bob"], net.nodes["ms"]
    assert not alice.of(mev.MediationFailed), alice.of(mev.MediationFailed)
    a_port, b_port = _relay_ports(net)
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote == (MS_IP, a_port)  # alice reaches bob at the relay port she sends to
    (ike_b,) = [e for e in bob.of(ev.IkeSaEstablished) if e.name == "alice"]
    assert ike_b.remote == (MS_IP, b_port)
    (ca,) = alice.of(ev.ChildSaEstablished)
    (cb,) = bob.of(ev.ChildSaEstablished)
    # both sides see a NAT: ESP is UDP-encapsulated, from 4500, to the relay
    assert ca.encap and cb.encap and ca.local[1] == 4500 and cb.local[1] == 4500
    assert ca.remote == (MS_IP, a_port) and cb.remote == (MS_IP, b_port)
    sas = {s.name: s for s in alice.engine.ike_sas()}
    assert sas["bob"].remote == (MS_IP, a_port) and sas["bob"].nat_here and sas["bob"].nat_there
    # the selected pair is the RELAYED one; the direct ones did not hold up the selection
    (init,) = alice.of(mev.MediatedInitiating)
    assert init.remote == (MS_IP, a_port)
    t_sel = alice.first(mev.MediatedInitiating)[0]  # type: ignore[index]
    t_relay_ok = min(t for t, e in alice.events if isinstance(e, mev.PairSucceeded))
    assert t_sel - t_relay_ok < 0.2, (t_sel, t_relay_ok)  # a few RTTs, not the direct pairs' 65 s
    assert est.elapsed < 1.5, est.elapsed
    # every datagram of the mediated SA went via the MS, none directly between the NATs (bob's checks go
    # on until the IKE_SA_INIT reaches him)
    direct = [w for w in net.wire if w[1] in ("alice", "bob") and w[3][0] in (A_PUB, B_PUB)
              and w[0] >= t_sel and not is_check(w[4])]
    assert not direct
    relayed = [w for w in net.wire if w[1] == "ms" and w[2][1] in (a_port, b_port)]
    assert relayed
    (st,) = ms.ext.relay.status(net.now)
    assert (st.a, st.b) == (IDS["alice"], IDS["bob"]) and st.bytes_a_to_b > 0 and st.bytes_b_to_a > 0
    assert st.a_latched is not None and st.a_latched[0] == A_PUB and st.b_latched[0] == B_PUB
    assert t0 < t_sel


def test_direct_pair_still_wins_when_it_works() -> None:
    net = make_net(relay=RelayConfig(ports=PORTS))
    register(net)
    _connect(net)
    alice = net.nodes["alice"]
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote == (B_PUB, 4500)  # the relayed pair has the lowest priority
    cl_pairs = alice.ext.status().connections[0].pairs
    assert any("RELAYED" in p for p in cl_pairs)


def _freed_at(net) -> list[tuple[float, mev.RelayFreed]]:  # type: ignore[no-untyped-def]
    return [(t, e) for t, e in net.nodes["ms"].events if isinstance(e, mev.RelayFreed)]


def _last_relayed(net) -> float:  # type: ignore[no-untyped-def]
    return max(w[0] for w in net.wire if w[1] == "ms" and w[2][1] >= PORTS[0])


def _last_at_relay(net) -> float:  # type: ignore[no-untyped-def]
    """When a peer last sent to a relay port (the relay's activity, forwarded or not)."""
    return max(w[0] for w in net.wire if w[1] != "ms" and w[3][0] == MS_IP and w[3][1] >= PORTS[0])


def _alice_direct_checks_lost(net, seconds: float):  # type: ignore[no-untyped-def]
    """A hook losing alice's checks to bob's public address for `seconds`: she checks the relayed pair
    meanwhile (both sides latch), then the direct pair wins."""
    until = net.now + seconds

    def hook(sender, data, src, dst):  # type: ignore[no-untyped-def]
        return None if sender == "alice" and dst == (B_PUB, 4500) and is_check(data) and net.now < until else 0.0
    return hook


def test_direct_pair_wins_relay_freed_after_the_unused_timeout() -> None:
    """Gap: the relay allocated for the ME_CONNECT must not hold its ports for the idle timeout when the
    direct pair wins. Here alice never checks the relayed pair (the direct one succeeded first, docs/
    protocol.md §11.1): only bob's checks reach the relay and latch his side."""
    net = make_net(relay=RelayConfig(ports=PORTS, idle_timeout=120.0, unused_timeout=15.0), latency=0.01)
    register(net)
    _connect(net)
    ms = net.nodes["ms"]
    assert net.nodes["alice"].of(mev.MediatedEstablished)[0].remote == (B_PUB, 4500)
    (st,) = ms.ext.relay.status(net.now)
    assert st.a_latched is None and st.b_latched and not st.in_use  # never checked by alice, never used
    last = _last_at_relay(net)
    net.run(40.0)
    assert len(ms.ext.relay) == 0
    ((t, freed),) = _freed_at(net)
    assert freed.reason == "unused" and t == pytest.approx(last + 15.0, abs=0.1)


def test_relay_checked_by_both_but_not_used_is_freed_after_the_unused_timeout() -> None:
    """The relayed pair was checked by both sides (alice's direct checks were lost for a while) while the
    direct pair won: only checks went through the relay."""
    net = make_net(relay=RelayConfig(ports=PORTS, idle_timeout=120.0, unused_timeout=15.0), latency=0.01)
    register(net)
    net.hook = _alice_direct_checks_lost(net, 0.3)
    _connect(net)
    ms = net.nodes["ms"]
    assert net.nodes["alice"].of(mev.MediatedEstablished)[0].remote == (B_PUB, 4500)
    (st,) = ms.ext.relay.status(net.now)
    assert st.a_latched and st.b_latched and not st.in_use  # checked, never used
    last = _last_relayed(net)
    net.run(40.0)
    assert len(ms.ext.relay) == 0
    ((t, freed),) = _freed_at(net)
    assert freed.reason == "unused" and t == pytest.approx(last + 15.0, abs=0.1)


def test_relay_in_use_is_kept_past_the_unused_timeout_then_idles_out() -> None:
    net = make_net(symmetric=(True, True), relay=RelayConfig(ports=PORTS, idle_timeout=30.0, unused_timeout=2.0),
                   latency=0.01)
    register(net)
    _connect(net)
    ms = net.nodes["ms"]
    (st,) = ms.ext.relay.status(net.now)
    assert st.in_use  # the mediated IKE_SA went through it
    net.run(10.0)
    assert len(ms.ext.relay) == 1 and not _freed_at(net)
    # silence the tunnel (no keepalives, DPD, ... through the relay): it idles out after idle_timeout
    net.hook = lambda sender, data, src, dst: None if dst[0] == MS_IP and dst[1] >= PORTS[0] else 0.0
    t_quiet = _last_relayed(net)
    net.run(40.0)
    ((t, freed),) = _freed_at(net)
    assert freed.reason == "idle" and t == pytest.approx(t_quiet + 30.0, abs=0.1)


def _mediation_sa(net, name: str):  # type: ignore[no-untyped-def]
    (sa,) = [s for s in net.nodes[name].engine.ike_sas() if s.name == "medsrv" and s.established]
    return sa


def test_peer_offline_frees_its_relays_without_traffic() -> None:
    """Gap: alice's mediation SA is deleted and she does not re-register: a relay that never latched
    both sides is freed at once (not after the unused/idle timeout)."""
    net = make_net(relay=RelayConfig(ports=PORTS), latency=0.01)
    register(net)
    # the relay's ports are unreachable (a firewall): it is allocated, never latched; the direct pair wins
    net.hook = lambda sender, data, src, dst: None if dst[0] == MS_IP and dst[1] >= PORTS[0] else 0.0
    _connect(net)
    ms = net.nodes["ms"]
    (st,) = ms.ext.relay.status(net.now)
    assert st.a_latched is None and st.b_latched is None
    net.nodes["alice"].engine.terminate(_mediation_sa(net, "alice"), net.now)
    t0 = net.now
    net.run(1.0)
    assert ms.ext.registry.lookup(IDS["alice"]) is None
    ((t, freed),) = _freed_at(net)
    assert freed.reason == "mediation SA gone" and t - t0 < 0.1 and len(ms.ext.relay) == 0
    assert len(ms.ext.relay.take_changes().closed) == 2


def test_peer_offline_keeps_a_relay_latched_by_checks_until_the_unused_timeout() -> None:
    net = make_net(relay=RelayConfig(ports=PORTS, unused_timeout=15.0), latency=0.01)
    register(net)
    net.hook = _alice_direct_checks_lost(net, 0.3)  # both sides check (and latch) the relay
    _connect(net)
    ms = net.nodes["ms"]
    last = _last_relayed(net)
    net.nodes["alice"].engine.terminate(_mediation_sa(net, "alice"), net.now)
    net.run(1.0)
    assert ms.ext.registry.lookup(IDS["alice"]) is None and len(ms.ext.relay) == 1
    net.run(20.0)
    ((t, freed),) = _freed_at(net)
    assert freed.reason == "unused" and t == pytest.approx(last + 15.0, abs=0.1)


def test_peer_offline_keeps_a_relay_that_carries_traffic() -> None:
    """The data path does not depend on the mediation SAs: both gone, the tunnel through the relay stays."""
    net = make_net(symmetric=(True, True), relay=RelayConfig(ports=PORTS, idle_timeout=30.0), latency=0.01)
    register(net)
    _connect(net)
    ms, alice, bob = net.nodes["ms"], net.nodes["alice"], net.nodes["bob"]
    alice.engine.terminate(_mediation_sa(net, "alice"), net.now)
    bob.engine.terminate(_mediation_sa(net, "bob"), net.now)
    net.run(1.0)
    assert ms.ext.registry.lookup(IDS["alice"]) is None and ms.ext.registry.lookup(IDS["bob"]) is None
    assert len(ms.ext.relay) == 1 and not _freed_at(net)
    # the mediated IKE_SA still works through the relay: rekey its CHILD_SA
    sa = next(s for s in alice.engine.ike_sas() if s.name == "bob")
    before = ms.ext.relay.status(net.now)[0].packets
    n_child = len(alice.of(ev.ChildSaEstablished))
    alice.engine.rekey_child(sa, next(iter(sa.children)), net.now)
    net.run(1.0)
    assert len(alice.of(ev.ChildSaEstablished)) == n_child + 1
    assert ms.ext.relay.status(net.now)[0].packets > before


def test_re_registration_frees_nothing() -> None:
    """A new mediation SA of the same peer replaces the old one: the peer never went offline."""
    net = make_net(relay=RelayConfig(ports=PORTS), latency=0.01)
    register(net)
    net.hook = lambda sender, data, src, dst: None if dst[0] == MS_IP and dst[1] >= PORTS[0] else 0.0
    _connect(net)
    ms = net.nodes["ms"]
    alice = net.nodes["alice"].engine
    ids = [ms.ext.registry.lookup(IDS["alice"]).sa_id]  # type: ignore[union-attr]
    alice.rekey_ike(_mediation_sa(net, "alice"), net.now)  # rekey: the old SA is deleted
    net.run(2.0)
    ids.append(ms.ext.registry.lookup(IDS["alice"]).sa_id)  # type: ignore[union-attr]
    alice.initiate("medsrv", now=net.now, remote=(MS_IP, 500))  # a second SA replaces it (uniqueness)
    net.run(2.0)
    ids.append(ms.ext.registry.lookup(IDS["alice"]).sa_id)  # type: ignore[union-attr]
    assert len(set(ids)) == 3
    alive = {s.unique_id for s in ms.engine.ike_sas()}
    assert ids[0] not in alive and ids[1] not in alive  # the old ones are gone
    assert not ms.of(mev.PeerOffline) and len(ms.ext.relay) == 1 and not _freed_at(net)


def test_relay_disabled_at_server_still_checks_failed() -> None:
    net = make_net(symmetric=(True, True), relay=RelayConfig(ports=PORTS, enabled=False))
    register(net)
    _connect(net)
    (f,) = net.nodes["alice"].of(mev.MediationFailed)
    assert f.reason.startswith("checks failed") and "RELAYED" not in f.reason
    assert not any(s.extension(MeSaState).relay for s in net.nodes["ms"].engine.ike_sas())


def test_client_without_relay_gets_no_relayed_endpoints() -> None:
    ccfg = client_config()
    net = make_net(symmetric=(True, True), relay=RelayConfig(ports=PORTS), ccfg=replace(ccfg, relay=False))
    register(net)
    _connect(net)
    assert not net.nodes["ms"].of(mev.RelayAllocated)
    (f,) = net.nodes["alice"].of(mev.MediationFailed)
    assert f.reason.startswith("checks failed")
    eps = net.nodes["bob"].of(mev.MediationRequested)[0].endpoints
    assert not any(MeEndpointType.RELAYED.name in e for e in eps)
