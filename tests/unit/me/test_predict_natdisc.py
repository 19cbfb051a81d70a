"""RFC 5780 discovery feeds the prediction (mediation_client/natdisc.py -> core_ike/me/predict.py): the
newest mapping's port is kept for an APDM NAT with sequential ports, and only for one."""

from __future__ import annotations

from core_ike.me.predict import Allocation, predicted_ports
from mediation_client.natdisc import Observations, classify

LOCAL = ("10.2.0.2", 40000)
PRIMARY, OTHER = ("192.0.2.1", 3478), ("192.0.2.9", 3479)


def _obs(ports: list[int]) -> Observations:
    """The mappings of tests I-III (primary, other address, other address and port) and the fourth."""
    obs = Observations(local=LOCAL, primary=PRIMARY, other=OTHER, filter_change_both=False,
                       filter_change_port=False)
    for dst, port in zip((PRIMARY, (OTHER[0], PRIMARY[1]), OTHER), ports, strict=False):
        obs.mapped[dst] = ("203.0.113.2", port)
    obs.extra_mapped = [("203.0.113.2", p) for p in ports[3:]]
    return obs


def test_sequential_apdm_keeps_the_newest_port_and_predicts_after_it() -> None:
    r = classify(_obs([20001, 20002, 20003, 20004]))
    assert (r.mapping, r.allocation, r.port_step, r.last_port) == ("APDM", "sequential", 1, 20004)
    assert predicted_ports(Allocation(r.last_port, r.port_step), 2) == [20005, 20006]
    r2 = classify(_obs([30000, 30002, 30004, 30006]))
    assert (r2.port_step, r2.last_port) == (2, 30006)


def test_random_or_endpoint_independent_mapping_has_no_prediction_base() -> None:
    r = classify(_obs([20001, 41234, 1789, 60000]))
    assert (r.mapping, r.allocation, r.last_port) == ("APDM", "random", None)
    eim = classify(_obs([40000, 40000, 40000]))
    assert eim.mapping == "EIM" and eim.last_port is None
