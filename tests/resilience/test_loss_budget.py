"""How often tests/resilience/test_loss.py fails by chance with daemons that do everything right
(scenarios/lab/loss.py, ``chance_failure``), computed from the product's own retransmission schedule.

With 30 % loss in each of the two NATs, one try of an exchange between alice and bob (a request and its answer,
four lossy crossings) gets through with 0.7 ** 4 = 0.24; in the lab it did with 0.212 (72 of 340 tries of
mediated IKE_SA_INIT and IKE_AUTH exchanges over 36 setups, counted from alice's log: ``EFFICIENCY``). The
prompt schedule (RFC 7296 2.1, 2.4: waits growing exponentially) sends about 20 tries in 50 s, so a correct
setup still fails about once in 50 tries, which made one try per setup fail the module in about one run of 20
(seen: 3 failed setups in 104 looped runs, each with every missing packet dropped by the loss rule).
"""

from __future__ import annotations

import pytest

from core_ike.ike.config import RetransmitConfig
from scenarios.lab.loss import chance_failure
from tests.resilience.test_loss import ATTEMPTS, BUDGET, LOSS, RUNS

EFFICIENCY = 0.212 / 0.7**4


def _module(attempts: int, runs: int = RUNS) -> float:
    """P(test_mediated_setup_under_loss fails at least one of its runs) with `attempts` tries per setup."""
    one = chance_failure(LOSS / 100, hops=2, budget=BUDGET, efficiency=EFFICIENCY)
    return 1.0 - (1.0 - one**attempts) ** runs


def test_one_exchange_fails_when_every_try_within_the_budget_fails() -> None:
    cfg = RetransmitConfig()
    sends, t = [0.0], 0.0
    for i in range(cfg.retransmits(prompt=True)):
        t += cfg.delay(i, prompt=True)
        sends.append(t)
    tries = sum(1 for s in sends if s <= 49.0)
    assert tries == 20
    assert chance_failure(0.3, hops=2, budget=50.0, exchanges=1) == pytest.approx((1 - 0.7**4) ** tries)


def test_a_setup_fails_more_often_with_more_loss_more_hops_less_time() -> None:
    base = chance_failure(0.3, hops=2, budget=50.0)
    assert chance_failure(0.2, hops=2, budget=50.0) < base < chance_failure(0.4, hops=2, budget=50.0)
    assert chance_failure(0.3, hops=1, budget=50.0) < base < chance_failure(0.3, hops=2, budget=30.0)


def test_one_try_per_mediated_setup_failed_the_module_by_chance_once_in_about_20_runs() -> None:
    assert 0.03 < _module(attempts=1) < 0.1


def test_the_mediated_setups_fail_the_module_by_chance_less_than_once_in_500_runs() -> None:
    assert _module(ATTEMPTS) < 0.002


def test_the_direct_setups_one_lossy_hop_fail_by_chance_less_than_once_in_10000_runs() -> None:
    one = chance_failure(LOSS / 100, hops=1, budget=50.0, efficiency=EFFICIENCY)
    assert 1.0 - (1.0 - one) ** RUNS < 1e-4
