"""A road warrior on the XFRM data plane gets a virtual IP from a real strongSwan gateway and sends from
it: our iked (a real Daemon, in process, in alice's namespace) asks charon on bob for an address of its
pool (RFC 7296 2.19, CP payload), puts it on `lo` and installs the CHILD_SA's policies and the route in
table 220 with that address as source (core_ike/io/srcroutes.py, as charon's kernel-netlink does);
`ikectl down` takes them away, stopping iked removes the rule.

What cannot run here: this kernel lacks INET_ESP, so our CHILD_SA's two XFRM SAs are recorded instead of
installed (tests/dataplane/noesp.py) and no packet is sent through the tunnel; the IKE exchange, the
virtual IP, the policies, the route and the kernel's choice of source address (`ip route get`, a UDP
socket's connect) are real. charon uses kernel-libipsec.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from core_ike.daemon import ctl
from core_ike.ike import events as ev
from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from tests.dataplane.xfrmdaemon import XfrmDaemon
from tests.dataplane.xfrmns import route_table
from tests.guards import needs
from tests.ikedtoml import PskConn

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B, B_IN = "192.0.2.1", "192.0.2.2", "10.10.2.1"
PSK = "xfrm-vip-route-psk-0123456789"

CHARON_CONF = f"""connections {{
  rw {{
    local_addrs = {B}
    proposals = aes128gcm16-prfsha256-x25519
    pools = rwpool
    local {{
      auth = psk
      id = gw@lab
    }}
    remote {{
      auth = psk
      id = rw@lab
    }}
    children {{
      net {{
        local_ts = 10.10.2.0/24
        esp_proposals = aes128gcm16
      }}
    }}
  }}
}}
pools {{
  rwpool {{
    addrs = 10.3.0.0/24
  }}
}}
secrets {{
  ike-rw {{
    id-1 = gw@lab
    id-2 = rw@lab
    secret = "{PSK}"
  }}
}}
"""

IKED_TOML = PskConn(A, B, "rw@lab", "gw@lab", PSK, conn="home", remote_ts=["10.10.2.0/24"],
                    conn_extra='vips = ["0.0.0.0"]').toml()


@pytest.fixture
def gateway(two_hosts_per_test: Lab) -> Iterator[tuple[Lab, Charon]]:
    lab = two_hosts_per_test
    with Charon(lab, "bob", name="charon-pool", conf=CHARON_CONF) as charon:
        yield lab, charon


def _sh(lab: Lab, *argv: str) -> str:
    return lab.run("alice", list(argv)).stdout


def test_virtual_ip_route_with_xfrm(gateway: tuple[Lab, Charon], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lab, charon = gateway
    ns = lab.ns("alice")
    iked = XfrmDaemon(IKED_TOML, tmp_path, monkeypatch)
    out: dict[str, object] = {}

    async def scenario() -> None:
        assert await asyncio.to_thread(ctl.main, ["-s", iked.sock, "up", "home"]) == 0
        (sa,) = [s for s in iked.daemon.engine.ike_sas() if s.config.name == "home"]
        vip = str(sa.vip) if sa.vip is not None else ""
        out["vip"], out["table"] = vip, route_table(ns)
        out["get"] = _sh(lab, "ip", "route", "get", B_IN)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # in alice's namespace (XfrmDaemon.run)
        s.connect((B_IN, 9))
        out["sockname"] = s.getsockname()[0]
        s.close()
        out["sas"] = len(iked.plane.sas)
        out["policies"] = _sh(lab, "ip", "xfrm", "policy")
        out["charon_vips"] = [v for sa_ in charon.list_sas() for v in sa_.get("remote-vips", [])]
        assert await asyncio.to_thread(ctl.main, ["-s", iked.sock, "down", "home"]) == 0
        # the data plane removes the CHILD_SA's policies and route, then the virtual IP, before others see them
        await iked.event(ev.ChildSaDeleted, "the CHILD_SA deleted", lambda e: e.ike_name == "home")
        await iked.event(ev.IkeSaDeleted, "the IKE_SA deleted", lambda e: e.name == "home")
        out["table_after"] = route_table(ns)
        out["lo_after"] = _sh(lab, "ip", "addr", "show", "dev", "lo")
        out["rules_up"] = _sh(lab, "ip", "rule")

    iked.run(ns, scenario)
    vip = str(out["vip"])
    assert vip.startswith("10.3.0.")
    assert out["table"] == f"10.10.2.0/24 via {B} dev eth0 proto static src {vip}", out["table"]
    assert f"src {vip}" in str(out["get"]) and "table 220" in str(out["get"])
    assert out["sockname"] == vip  # an application's traffic to the gateway's subnet leaves from the virtual IP
    assert out["sas"] == 2  # in and out: recorded, the kernel has no ESP
    assert f"src {vip}/32 dst 10.10.2.0/24" in str(out["policies"])
    assert out["charon_vips"] == [vip]
    assert out["table_after"] == ""  # the route went with the CHILD_SA
    assert vip not in str(out["lo_after"])
    assert "220:\tfrom all lookup 220" in str(out["rules_up"])  # kept while iked runs
    assert "lookup 220" not in _sh(lab, "ip", "rule")  # iked stopped: gone
