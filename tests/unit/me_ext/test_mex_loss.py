"""Mediated connections under packet loss, in memory (docs/operations.md, "Loss").

The loss model is the lab's (scenarios/lab/loss.py): every datagram crossing a NAT is lost with a given
probability, independently per NAT, so alice <-> server crosses one lossy hop and alice <-> bob two.
"""

from __future__ import annotations

import random
from dataclasses import replace

from mex_net import A_PUB, B_PUB, MS_IP, Net, client_config, make_net, register

from core_ike.constants import ExchangeType
from core_ike.ike import events as ev
from core_ike.ike.sa import IkeState
from core_ike.ike.tasks.informational import Dpd
from core_ike.me import events as mev
from core_ike.me.tasks import me_role
from mediation_server.datarelay import RelayConfig

NATTED = {"alice": A_PUB, "bob": B_PUB}


def lossy(net: Net, rate: float, seed: int) -> None:
    """Lose `rate` of what leaves a NAT and, independently, of what enters one."""
    rng = random.Random(seed)

    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        hops = (sender in NATTED) + (dst[0] in NATTED.values())
        return None if any(rng.random() < rate for _ in range(hops)) else 0.0

    net.hook = hook


def _exchange(data: bytes) -> int:
    off = 4 if data[:4] == b"\x00\x00\x00\x00" else 0
    return data[off + 18] if len(data) > off + 18 else -1


def _mediation_sa(net: Net, name: str):  # type: ignore[no-untyped-def]
    return next(s for s in net.nodes[name].engine.ike_sas() if me_role(s) == "peer")


def _wait(net: Net, seconds: float) -> None:
    alice = net.nodes["alice"]
    net.run(seconds, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))


def test_mediated_setups_under_30_percent_loss_per_hop() -> None:
    took = []
    for seed in range(30):
        net = make_net(latency=0.005, ccfg=client_config())
        register(net)
        lossy(net, 0.3, seed)
        alice = net.nodes["alice"]
        t0 = net.now
        alice.ext.connect("bob", net.now)
        _wait(net, 90.0)
        assert not alice.of(mev.MediationFailed), (seed, alice.of(mev.MediationFailed))
        (est,) = alice.of(mev.MediatedEstablished)
        assert est.remote == (B_PUB, 4500)  # direct, not through a relay
        took.append(net.now - t0)
    took.sort()
    print(f"30 mediated setups, 30 % loss per NAT: median {took[15]:.2f} s, slowest {took[-1]:.2f} s")
    assert sum(t <= 30.0 for t in took) >= 27, took


def test_queued_me_connect_is_not_failed_before_it_is_sent() -> None:
    """A DPD in flight on the mediation SA is lost for 20 s (window 1: the ME_CONNECT queues behind it);
    the mediated connection waits, without the old 15 s cut-off, and succeeds once the path is back."""
    net = make_net(ccfg=client_config())
    register(net)
    alice = net.nodes["alice"]
    blocked_until = net.now + 20.0
    net.hook = lambda sender, data, src, dst: None if sender == "alice" and net.now < blocked_until else 0.0
    sa = _mediation_sa(net, "alice")
    sa.queue_task(Dpd(), net.now)
    alice.ext.connect("bob", net.now + 0.5)
    assert alice.ext.attempts["bob"].state == "connecting" and alice.ext.attempts["bob"].deadline is None
    net.run(19.0)
    assert not alice.of(mev.MeConnectSent) and not alice.of(mev.MediationFailed)
    _wait(net, 30.0)
    assert alice.of(mev.MediatedEstablished) and not alice.of(mev.MediationFailed)
    (t_sent, _), = [(t, e) for t, e in alice.events if isinstance(e, mev.MeConnectSent)]
    assert t_sent >= blocked_until  # it really waited that long, unsent


def test_connect_timeout_counts_from_the_request_sent() -> None:
    net = make_net(ccfg=client_config(connect_timeout=3.0))
    register(net)
    alice = net.nodes["alice"]
    blocked_until = net.now + 10.0  # the DPD in front is lost for 10 s
    # ... then the server never answers ME_CONNECT
    net.hook = lambda sender, data, src, dst: (
        None if (sender == "alice" and net.now < blocked_until)
        or (sender == "ms" and _exchange(data) == ExchangeType.ME_CONNECT) else 0.0)
    _mediation_sa(net, "alice").queue_task(Dpd(), net.now)
    t0 = net.now
    alice.ext.connect("bob", net.now)
    _wait(net, 60.0)
    (f,) = alice.of(mev.MediationFailed)
    (t_sent, _), = [(t, e) for t, e in alice.events if isinstance(e, mev.MeConnectSent)]
    t_fail = next(t for t, e in alice.events if isinstance(e, mev.MediationFailed))
    assert t_sent - t0 >= 10.0 and abs(t_fail - t_sent - 3.0) < 1e-6, (t0, t_sent, t_fail)
    assert "no answer to ME_CONNECT" in f.reason


def test_cancelled_attempt_withdraws_its_unsent_me_connect() -> None:
    net = make_net(ccfg=client_config())
    register(net)
    alice = net.nodes["alice"]
    blocked_until = net.now + 5.0
    net.hook = lambda sender, data, src, dst: None if sender == "alice" and net.now < blocked_until else 0.0
    _mediation_sa(net, "alice").queue_task(Dpd(), net.now)
    alice.ext.connect("bob", net.now)
    net.run(1.0)
    alice.ext.cancel("bob", net.now)
    net.run(20.0)
    assert not alice.of(mev.MeConnectSent)  # withdrawn: it does not hold up the next one
    assert not [w for w in net.wire if w[1] == "alice" and _exchange(w[4]) == ExchangeType.ME_CONNECT]
    alice.ext.connect("bob", net.now)
    net.run(10.0, until=lambda: bool(alice.of(mev.MediatedEstablished)))
    assert alice.of(mev.MediatedEstablished)


def _drop_mediated_ike(net: Net, until: float) -> None:
    """Lose the mediated IKE_SA_INIT / IKE_AUTH between the peers (not the checks) until `until`."""
    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        ike = _exchange(data) in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH)
        return None if ike and dst[0] != MS_IP and sender != "ms" and net.now < until else 0.0

    net.hook = hook


def test_mediated_ike_sa_is_retransmitted_not_cut_off() -> None:
    net = make_net(ccfg=client_config())
    register(net)
    alice = net.nodes["alice"]
    t0 = net.now
    _drop_mediated_ike(net, t0 + 40.0)  # beyond any fixed 30 s cut-off: ike_timeout = 0 means none
    alice.ext.connect("bob", net.now)
    _wait(net, 90.0)
    assert not alice.of(mev.MediationFailed), alice.of(mev.MediationFailed)
    t_est = next(t for t, e in alice.events if isinstance(e, mev.MediatedEstablished))
    # the next retransmission after the gap: 21.9 s early waits, then 4, 7.2, 13 s (RetransmitConfig)
    assert 40.0 <= t_est - t0 < 47.0, t_est - t0
    assert alice.of(ev.ChildSaEstablished)


def test_ike_timeout_caps_the_mediated_ike_sa_when_set() -> None:
    net = make_net(ccfg=client_config(ike_timeout=10.0))
    register(net)
    alice = net.nodes["alice"]
    _drop_mediated_ike(net, net.now + 60.0)
    alice.ext.connect("bob", net.now)
    _wait(net, 90.0)
    (f,) = alice.of(mev.MediationFailed)
    assert "not established within 10 s (ike_timeout)" in f.reason
    assert not [s for s in alice.engine.ike_sas() if s.name == "bob" and s.state is not IkeState.DESTROYED]


def test_lost_direct_checks_do_not_hand_the_tunnel_to_the_relay() -> None:
    """With the server's relay on, alice's own checks on the direct pair are lost for a while, but bob's
    arrive on it: the direct pair gets relay_wait to come through before the RELAYED one is taken."""
    net = make_net(relay=RelayConfig(ports=(50000, 50099)), latency=0.002)
    register(net)
    alice = net.nodes["alice"]
    until = net.now + 0.3

    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        direct_check = sender == "alice" and dst == (B_PUB, 4500) and _exchange(data) == ExchangeType.INFORMATIONAL
        return None if direct_check and net.now < until else 0.0

    net.hook = hook
    alice.ext.connect("bob", net.now)
    _wait(net, 30.0)
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote == (B_PUB, 4500), est


def test_without_relay_wait_the_relay_wins_that_race() -> None:
    """The same race with relay_wait = 0: the RELAYED pair, which answered first, is taken."""
    ccfg = client_config()
    net = make_net(relay=RelayConfig(ports=(50000, 50099)), latency=0.002,
                   ccfg=replace(ccfg, checks=replace(ccfg.checks, relay_wait=0.0)))
    register(net)
    alice = net.nodes["alice"]
    until = net.now + 0.3
    net.hook = lambda sender, data, src, dst: (
        None if sender == "alice" and dst == (B_PUB, 4500) and _exchange(data) == ExchangeType.INFORMATIONAL
        and net.now < until else 0.0)
    alice.ext.connect("bob", net.now)
    _wait(net, 30.0)
    (est,) = alice.of(mev.MediatedEstablished)
    assert est.remote[0] == MS_IP, est


def test_callback_during_a_retransmitted_me_connect_is_not_lost() -> None:
    """bob is offline; the server's "offline" answer to alice is lost; bob comes online and the server sends
    alice the ME_CALLBACK while her ME_CONNECT is still being retransmitted; the retransmission is answered
    from the server's cache ("offline" again). alice asks once more at once instead of waiting for a
    callback that already came (callback_timeout)."""
    net = make_net(ccfg=client_config(callback_timeout=10.0))
    register(net, "alice")
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    lost: list[float] = []

    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        off = 4 if data[:4] == b"\x00\x00\x00\x00" else 0
        response = len(data) > off + 19 and bool(data[off + 19] & 0x20)
        if sender == "ms" and dst[0] == A_PUB and _exchange(data) == ExchangeType.ME_CONNECT and response \
                and not lost:
            lost.append(net.now)
            return None
        return 0.0

    net.hook = hook
    alice.ext.connect("bob", net.now)
    net.run(0.1)
    assert lost and alice.ext.attempts["bob"].state == "connecting"
    bob.engine.initiate("medsrv", now=net.now)  # bob comes online: the server calls alice back at once
    net.run(5.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    assert alice.of(mev.CallbackReceived) and not alice.of(mev.PeerNotOnline)
    assert alice.of(mev.MediatedEstablished), alice.of(mev.MediationFailed)
