"""`up` of a CHILD_SA whose CREATE_CHILD_SA is in flight when strongSwan's charon deletes the IKE_SA
(docs/architecture.md "Tasks when the IKE_SA ends"): the reply says why as soon as the DELETE arrives,
not after the `up`'s own timeout. Our CREATE_CHILD_SA is held back by an nftables drop of our outbound
IKE datagrams in alice's namespace (as tests/interop/test_interop_rekey_delete_race.py holds its DELETE);
charon's DELETE comes in, our answer to it is dropped too (charon gives up on it after its --timeout)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from scenarios.lab.tunnels import Tunnel, charon_psk_conf, iked_psk_toml
from tests.guards import needs
from tests.interop.charon_pair import ike_held, one_child

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B = "192.0.2.1", "192.0.2.2"
A_IN, B_IN = "10.10.1.1", "10.10.2.1"
PSK = "up-ike-end-secret-0123456789"
UP_TIMEOUT = 30.0


def test_up_answered_when_charon_deletes_the_ike_sa(two_hosts_per_test: Lab) -> None:
    lab = two_hosts_per_test
    charon = Charon(lab, "bob", name="charon",
                    conf=charon_psk_conf(Tunnel(B, A, "bob@lab", "alice@lab", B_IN, A_IN, PSK)))
    iked = Iked(lab, "alice", iked_psk_toml(Tunnel(A, B, "alice@lab", "bob@lab", A_IN, B_IN, PSK)))
    try:
        charon.start()
        iked.start()
        iked.up("net", "net")
        one_child(iked)
        charon.wait_child("net", timeout=5)
        sent = iked.log_text().count("generating CREATE_CHILD_SA request")
        with ike_held(lab, "alice", B), ThreadPoolExecutor(1) as pool:
            # a second CHILD_SA on the IKE_SA: its request goes out and is dropped
            reply = pool.submit(iked.ctl, {"cmd": "up", "conn": "net", "child": "net", "timeout": UP_TIMEOUT},
                                UP_TIMEOUT + 5)
            iked.wait_log("generating CREATE_CHILD_SA request", timeout=10, count=sent + 1)
            charon.swanctl("--terminate", "--ike", "net", "--timeout", "1", check=False)
            r = reply.result(timeout=UP_TIMEOUT + 5)
        # the reason, not the `up`'s own timeout (which would say it timed out after UP_TIMEOUT)
        assert r == {"ok": False, "conn": "net", "error": "CHILD_SA 'net' failed: deleted by peer"}, r
        assert iked.list_sas() == []
    finally:
        iked.stop()
        charon.stop()
