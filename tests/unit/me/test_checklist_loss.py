"""Check lists under loss ([ME] §5.1, docs/protocol.md §7.6): a pair the peer's checks arrive on keeps a
steady retransmission rate (rto_heard) until the list's deadline; and a sweep of seeded in-memory setups
at 30 % loss per NAT (the loss model of tests/unit/me_ext/test_mex_loss.py, check lists' deadline 5 s):
at most one in 2000 fails its checks while both sides checked together (a peer whose checks start over
1 s late, its ME_CONNECT's answer from the server lost, is counted apart), and 98 % are established
(the others' checks succeeded: their mediated IKE_SA was not up within 90 s of retransmissions).

IKEME_LOSS_SEEDS sets the sweep's size (default 300, a couple of seconds); e.g.
`IKEME_LOSS_SEEDS=4000 .venv/bin/pytest -q -s tests/unit/me/test_checklist_loss.py -k sweep` prints the
counts of a large sweep by cause."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter

import pytest

from core_ike.constants import MeEndpointType
from core_ike.me import events as mev
from core_ike.me.checklist import CheckList, CheckListConfig, CheckListFailed, PairState, retransmit_timeout
from core_ike.me.endpoints import make_endpoint
from tests.unit.me.test_me_checklist import (
    A_HOST,
    B_HOST,
    CID,
    KEY_A,
    KEY_B,
    drain,
    request_from_b,
    run_alone,
)
from tests.unit.me_ext.mex_net import A_PUB, B_PUB, Net, client_config, make_net, register

SEEDS = int(os.environ.get("IKEME_LOSS_SEEDS", "300"))
NATTED = (A_PUB, B_PUB)


def lossy(net: Net, rate: float, seed: int) -> None:
    """Lose `rate` of what leaves a NAT and, independently, of what enters one (as test_mex_loss.py)."""
    rng = random.Random(seed)
    natted = {"alice", "bob"}

    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        hops = (sender in natted) + (dst[0] in NATTED)
        return None if any(rng.random() < rate for _ in range(hops)) else 0.0

    net.hook = hook


def test_heard_pairs_waits_stop_growing_at_rto_heard() -> None:
    cfg = CheckListConfig()
    ms = [round(retransmit_timeout(cfg, n, heard=True) * 1000) for n in range(1, 10)]
    assert ms == [25, 25, 45, 81, 145, 200, 200, 200, 200]
    assert retransmit_timeout(cfg, 9, active=20, heard=True) == pytest.approx(1.0)  # the per-pair floor holds
    assert retransmit_timeout(cfg, 9) == 1.0  # a pair not heard on: rto_max
    assert retransmit_timeout(CheckListConfig(rto_heard=0.0), 9, heard=True) == 1.0  # 0: rto_max


def one_pair(cfg: CheckListConfig) -> CheckList:
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.0, cfg)
    a.set_responder_data(KEY_B, [make_endpoint(MeEndpointType.HOST, *B_HOST)], 0.0)
    return a


def test_a_pair_the_peer_is_heard_on_is_checked_steadily_until_the_deadline() -> None:
    """max_retransmits 3 fails a silent pair after its fourth timeout; the pair the peer's check arrived on
    (its answers all lost) is not given up by count: checked every 200 ms until the 5 s deadline."""
    cfg = CheckListConfig(transaction_timeout=5.0, max_retransmits=3)
    silent = one_pair(cfg)
    assert len(run_alone(silent, 10.0)) == 4 and silent.pairs[0].state == PairState.FAILED
    heard = one_pair(cfg)
    heard.handle_timer(0.0)
    assert heard.receive_check(request_from_b(7), B_HOST, A_HOST, 0.0) is None
    heard.datagrams_to_send()
    sent = [t for t, _, _ in run_alone(heard, 10.0)]
    assert all(b - a <= 0.2 + 1e-9 for a, b in itertools.pairwise(sent))
    assert sent[-1] > 4.7 and len(sent) > 20
    failed = [e for e in drain(heard) if isinstance(e, CheckListFailed)]
    assert len(failed) == 1 and failed[0].reason.startswith("no check succeeded within 5.0")


def _setup(seed: int) -> str:
    """One mediated setup alice -> bob at 30 % loss per NAT (5 ms one way): its outcome."""
    net = make_net(latency=0.005, ccfg=client_config())  # check list deadline 5 s (mex_net)
    register(net)
    lossy(net, 0.3, seed)
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    t0 = net.now
    alice.ext.connect("bob", t0)
    net.run(90.0, until=lambda: bool(alice.of(mev.MediatedEstablished) or alice.of(mev.MediationFailed)))
    (est,) = alice.of(mev.MediatedEstablished) or [None]
    if est is not None:
        assert est.remote == (B_PUB, 4500)
        return "established"
    failed = alice.of(mev.MediationFailed)
    if not failed:
        return "mediated IKE_SA not up within 90 s"  # the checks succeeded
    assert "no check succeeded" in failed[0].reason, failed[0].reason
    started = alice.first(mev.ChecksStarted)
    peer = bob.first(mev.ChecksStarted)
    assert started is not None
    # bob's checks start when the server answers his ME_CONNECT (docs/protocol.md §4.1 step 6): until
    # then his NAT drops alice's checks; a late start leaves less than alice's deadline to check together
    if peer is None or peer[0] > started[0] + 1.0:
        return "checks failed, the peer started over 1 s late"
    return "checks failed"


def test_sweep_of_setups_at_30_percent_loss_per_nat() -> None:
    outcomes = Counter(_setup(seed) for seed in range(SEEDS))
    print(f"{SEEDS} setups at 30 % loss per NAT: {dict(outcomes)}")
    assert outcomes["established"] >= SEEDS * 0.98, outcomes
    # checks that ran together for 4 s and more: at most one such failure in 2000 setups
    assert outcomes["checks failed"] <= SEEDS // 2000, outcomes
