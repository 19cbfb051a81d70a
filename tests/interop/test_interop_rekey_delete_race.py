"""A CHILD_SA DELETE crossing an IKE_SA rekey (RFC 7296 2.25, 2.18), with a real strongSwan charon.

The race is made deterministic by holding our IKE datagrams back (an nftables drop of our outbound UDP
500/4500 in alice's namespace): our DELETE of the CHILD_SA leaves (and is dropped), then charon's IKE
rekey request reaches us while that DELETE is in flight, which we wait for in our log. We refuse the
rekey with TEMPORARY_FAILURE, as charon itself does while a CHILD_SA of its own is being deleted. Then the
drop goes: the retransmissions deliver our DELETE and our refusal in either order; charon deletes the
CHILD_SA (it is still on the old IKE_SA there) and rekeys again later (strongSwan retries in 5-15 s).

Before the fix we answered the rekey and moved the CHILD_SA (DELETING) to the new IKE_SA; the DELETE's
answer on the old one then ended nothing (or charon, having moved it too, answered as for an unknown
CHILD_SA): both sides listed the deleted CHILD_SA until it expired.

The other way round (charon's DELETE in flight, our rekey) charon refuses and we retry after our
`ike_rekey_retry` (2 s here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked
from scenarios.lab.tunnels import Tunnel, charon_psk_conf, iked_psk_toml
from tests.guards import needs
from tests.interop.charon_pair import clear, ike_held, lift_ike_hold, one_child

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B = "192.0.2.1", "192.0.2.2"
A_IN, B_IN = "10.10.1.1", "10.10.2.1"
PSK = "rekey-race-secret-0123456789"


@dataclass
class Env:
    lab: Lab
    iked: Iked
    charon: Charon


@pytest.fixture(scope="module")
def env(two_hosts_per_module: Lab) -> Iterator[Env]:
    lab = two_hosts_per_module
    charon = Charon(lab, "bob", name="charon",
                    conf=charon_psk_conf(Tunnel(B, A, "bob@lab", "alice@lab", B_IN, A_IN, PSK)))
    toml = iked_psk_toml(Tunnel(A, B, "alice@lab", "bob@lab", A_IN, B_IN, PSK))
    toml = toml.replace("rekey_time = 0\n", 'rekey_time = 0\nike_rekey_retry = "2s"\n', 1)  # the IKE_SA's
    iked = Iked(lab, "alice", toml)
    try:
        charon.start()
        iked.start()
        yield Env(lab, iked, charon)
    finally:
        for host in ("alice", "bob"):
            lift_ike_hold(lab, host)
        iked.stop()
        charon.stop()


def _up(env: Env, who: str) -> tuple[dict[str, Any], dict[str, Any]]:
    clear(env.iked, env.charon)
    if who == "ours":
        env.iked.up("net", "net")
    else:
        env.charon.initiate(child="net", ike="net", timeout=15)
    sa, child = one_child(env.iked)
    env.charon.wait_child("net", timeout=5)
    return sa, child


def _settled(env: Env, old_spi: str) -> None:
    """One IKE_SA on each side, rekeyed (a new SPI) and agreed on, with no CHILD_SA left."""
    def settled() -> bool:
        ours, theirs = env.iked.list_sas(), env.charon.list_sas()
        return (len(ours) == 1 and len(theirs) == 1 and ours[0]["initiator-spi"] != old_spi
                and ours[0]["initiator-spi"] == theirs[0]["initiator-spi"]
                and ours[0]["state"] == "ESTABLISHED" and theirs[0]["state"] == "ESTABLISHED")

    wait_daemons(settled, 30, [env.iked, env.charon], what="IKE_SA rekeyed on both sides after the refusal")
    (ours,) = env.iked.list_sas()
    assert ours["child-sas"] == [], ours
    assert env.charon.child_sas() == []


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_rekey_while_our_child_delete_is_in_flight(env: Env, who: str) -> None:
    """`who` initiated the IKE_SA (our role in it differs; the race is the same)."""
    sa, child = _up(env, who)
    refusals = env.iked.log_text().count("failed: CHILD_SA exchange in progress")
    mark = env.charon.log_mark()
    with ike_held(env.lab, "alice", B):
        # our DELETE goes out and is dropped: in flight until the retransmissions get through
        r = env.iked.ctl({"cmd": "down", "ike": sa["uniqueid"], "child": child["uniqueid"], "timeout": 0.2})
        assert not r["ok"], r  # not confirmed: held back
        env.charon.swanctl("--rekey", "--ike", "net")
        env.iked.wait_log("failed: CHILD_SA exchange in progress", timeout=10, count=refusals + 1)
    # charon: the refusal, then a later rekey that succeeds; the CHILD_SA is gone on both sides
    env.charon.wait_log("IKE_SA rekeying failed, trying again", timeout=20, since=mark)
    _settled(env, sa["initiator-spi"])


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_our_rekey_while_charons_child_delete_is_in_flight(env: Env, who: str) -> None:
    """The other way round: charon's DELETE is held back while our IKE rekey request reaches it; charon
    refuses the rekey (TEMPORARY_FAILURE), we answer its DELETE as usual (RFC 7296 2.25.2: our rekey is
    only in flight, the CHILD_SA still on the old IKE_SA) and rekey again after `ike_rekey_retry`."""
    sa, _ = _up(env, who)
    failures = env.iked.log_text().count("rekeying failed: peer sent TEMPORARY_FAILURE")
    mark = env.charon.log_mark()
    with ike_held(env.lab, "bob", A):
        env.charon.swanctl("--terminate", "--child", "net", "--timeout", "1", check=False)
        env.charon.wait_log("sending DELETE for ESP CHILD_SA", timeout=10, since=mark)
        assert env.iked.ctl({"cmd": "rekey", "ike": sa["uniqueid"]})["ok"]
        env.charon.wait_log("child is half-open", timeout=10, since=mark)
    env.iked.wait_log("rekeying failed: peer sent TEMPORARY_FAILURE", timeout=20, count=failures + 1)
    _settled(env, sa["initiator-spi"])
