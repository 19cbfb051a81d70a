"""A real strongSwan charon behind a NAT (alice behind natA) has a tunnel to our iked on carol, XFRM data
plane; natA forgets its mapping and translates to another public address (conntrack flushed, SNAT to
203.0.113.5), as after a reconnect. charon's next liveness check arrives from there, our engine moves
the IKE_SA (RFC 7296 §2.23: the peer is behind a NAT) and the XFRM data plane follows: the kernel's
policies name the new address in their templates, the source route in table 220 leads to it, and the
SAs have its address and port. The NAT-T socket has UDP_ENCAP (the kernel decapsulates ESP-in-UDP there)
and charon's IKE messages still reach the daemon through it.

What cannot run here: this kernel lacks INET_ESP, so the two XFRM SAs are recorded (tests/dataplane/
noesp.py) and no ESP is sent; the IKE exchanges, the NAT, the policies, the route are real. charon uses
kernel-libipsec.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from core_ike.ike import events as ev
from core_ike.io.dataplane import Direction
from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.topologies import CAROL, NAT_RULESET
from tests.dataplane.xfrmdaemon import XfrmDaemon
from tests.dataplane.xfrmns import policy_templates, route_table
from tests.guards import needs
from tests.ikedtoml import PskConn

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon behind a Linux NAT in network namespaces"),
]

A_IN, C_IN, MOVED = "10.1.5.1", "10.3.0.1", "203.0.113.5"  # alice's and carol's inside, natA's new address
PSK = "xfrm-nat-move-psk-0123456789"

CHARON_CONF = f"""connections {{
  home {{
    remote_addrs = {CAROL}
    proposals = aes128gcm16-prfsha256-x25519
    dpd_delay = 1s
    local {{
      auth = psk
      id = alice@lab
    }}
    remote {{
      auth = psk
      id = carol@lab
    }}
    children {{
      net {{
        local_ts = {A_IN}/32
        remote_ts = {C_IN}/32
        esp_proposals = aes128gcm16
      }}
    }}
  }}
}}
secrets {{
  ike-home {{
    id-1 = alice@lab
    id-2 = carol@lab
    secret = "{PSK}"
  }}
}}
"""

IKED_TOML = PskConn(CAROL, "%any", "carol@lab", "alice@lab", PSK, conn="rw", local_ts=[f"{C_IN}/32"],
                    remote_ts=[f"{A_IN}/32"]).toml()


@pytest.fixture
def alice(nat_lab_per_test: Lab) -> Iterator[tuple[Lab, Charon]]:
    lab = nat_lab_per_test
    lab.addr("alice", "lo", f"{A_IN}/32")
    lab.addr("carol", "lo", f"{C_IN}/32")
    lab.addr("natA", "wan0", f"{MOVED}/24")  # natA answers for its second public address
    with Charon(lab, "alice", name="charon-move", conf=CHARON_CONF) as charon:
        yield lab, charon


def test_xfrm_follows_the_peers_new_nat_address(alice: tuple[Lab, Charon], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from core_ike.io import xfrm

    lab, charon = alice
    ns = lab.ns("carol")
    iked = XfrmDaemon(IKED_TOML, tmp_path, monkeypatch)
    out: dict[str, object] = {}

    def ends() -> tuple[str, int]:
        """The outbound SA's destination and port, as the data plane installed (and moved) it."""
        out_spis = [spi for spi, d in iked.plane.sas if d == Direction.OUT]
        sa = iked.plane.installed_sa(out_spis[0], Direction.OUT) if out_spis else None
        return (sa.dst, sa.dst_port) if sa is not None else ("", 0)

    async def scenario() -> None:
        await asyncio.to_thread(charon.initiate, "net", "home", 20)
        await iked.event(ev.ChildSaEstablished, "the CHILD_SA installed")
        out["sas"] = len(iked.plane.sas)
        out["before"] = (ends(), policy_templates(ns), route_table(ns))
        lab.nft("natA", "flush ruleset\n" + NAT_RULESET.format(rule=f'oifname "wan0" snat to {MOVED}'))
        await asyncio.to_thread(lab.flush_conntrack, ["natA"])
        # the data plane follows the engine's report at once (SAs, policies, route) before others see it
        await iked.event(ev.PeerAddressChanged, "the IKE_SA's move to natA's new address",
                         lambda e: e.remote[0] == MOVED)
        out["after"] = (ends(), policy_templates(ns), route_table(ns))
        (sa,) = iked.daemon.engine.ike_sas()
        out["remote"] = sa.remote
        natt = iked.daemon.transport.socket_for((CAROL, 4500))
        out["encap"] = natt.getsockopt(socket.IPPROTO_UDP, xfrm.UDP_ENCAP) if natt is not None else None
        out["charon"] = [s.get("state") for s in charon.list_sas()]

    iked.run(ns, scenario)
    assert out["sas"] == 2  # in and out: recorded, the kernel has no ESP
    before_ends, before_pols, before_route = out["before"]  # type: ignore[misc]
    assert before_ends[0] == "203.0.113.1"
    assert before_pols == {("out", CAROL, "203.0.113.1"), ("in", "203.0.113.1", CAROL), ("fwd", "203.0.113.1", CAROL)}
    assert before_route == f"{A_IN} via 203.0.113.1 dev eth0 proto static src {C_IN}"
    after_ends, after_pols, after_route = out["after"]  # type: ignore[misc]
    assert after_ends == tuple(out["remote"])  # type: ignore[arg-type]  # the IKE_SA's new remote end, port too
    assert after_pols == {("out", CAROL, MOVED), ("in", MOVED, CAROL), ("fwd", MOVED, CAROL)}
    assert after_route == f"{A_IN} via {MOVED} dev eth0 proto static src {C_IN}"
    assert out["charon"] == ["ESTABLISHED"]  # charon kept the IKE_SA: our answers reached it there
    # the kernel takes ESP-in-UDP on the NAT-T socket; charon's IKE (behind the non-ESP marker) still came
    assert out["encap"] == xfrm.UDP_ENCAP_ESPINUDP
