"""A rate-limited ME_CONNECT (the server answers TEMPORARY_FAILURE, RFC 7296 3.10.1) is not "peer offline":
the client reports it as rate limited, asks again after a backoff and connects; it fails, saying so, only
after rate_limit_tries refusals. In memory, on the simulation's clock."""

from __future__ import annotations

from core_ike.me import events as mev
from core_ike.me.attempt import AttemptState
from core_ike.me.client import MediationClientConfig, rate_limit_backoff
from mediation_server.registry import Registry, RegistryConfig
from tests.unit.me_ext.mex_net import client_config, make_net, register


def test_backoff_doubles() -> None:
    cfg = MediationClientConfig(rate_limit_retry=0.5)
    assert [rate_limit_backoff(cfg, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_rate_limited_connect_is_retried_and_connects() -> None:
    # one ME_CONNECT per 2 s per peer, no burst beyond one: alice's second attempt in a row is refused
    net = make_net(registry=Registry(RegistryConfig(connect_rate=0.5, connect_burst=1)))
    register(net)
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)
    net.run(5.0, until=lambda: bool(alice.of(mev.MediatedEstablished)))
    assert alice.of(mev.MediatedEstablished)
    t0 = net.now
    alice.ext.connect("bob", net.now)
    net.run(0.2)
    st = alice.ext.status().connections[0]
    assert st.state == AttemptState.RATE_LIMITED.value and "rate limited" in st.reason
    assert not alice.of(mev.PeerNotOnline)  # never mistaken for an offline peer
    net.run(10.0, until=lambda: len(alice.of(mev.MediatedEstablished)) == 2)
    assert len(alice.of(mev.MediatedEstablished)) == 2 and not alice.of(mev.MediationFailed)
    assert net.now - t0 < 5.0  # the server's bucket refills in 2 s; backoffs 0.5, 1, 2 s


def test_rate_limited_until_the_tries_are_spent_fails_truthfully() -> None:
    # the bucket never refills: every retry is refused
    net = make_net(registry=Registry(RegistryConfig(connect_rate=0.0, connect_burst=1)),
                   ccfg=client_config(rate_limit_retry=0.1, rate_limit_tries=3))
    register(net)
    alice = net.nodes["alice"]
    alice.ext.connect("bob", net.now)  # takes the only token
    net.run(5.0, until=lambda: bool(alice.of(mev.MediatedEstablished)))
    t0 = net.now
    alice.ext.connect("bob", net.now)
    net.run(10.0, until=lambda: bool(alice.of(mev.MediationFailed)))
    (f,) = alice.of(mev.MediationFailed)
    assert f.reason.startswith("rate limited by the mediation server") and "3 times" in f.reason
    assert 0.1 + 0.2 <= net.now - t0 < 1.0  # two backoffs, then the third refusal ends it
    assert not alice.of(mev.PeerNotOnline)
