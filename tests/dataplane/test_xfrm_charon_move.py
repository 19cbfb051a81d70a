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

from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from core_ike.io.dataplane import Direction
from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.topologies import CAROL, NAT_RULESET
from tests.dataplane.noesp import NoEspXfrm
from tests.guards import needs

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

IKED_TOML = f"""[daemon]
listen = ["{CAROL}"]
control = "@CTL@"
dataplane = "xfrm"

[connections.rw]
local_addrs = ["{CAROL}"]
remote_addrs = ["%any"]
proposals = "aes128gcm16-prfsha256-x25519"
local = {{ auth = "psk", id = "carol@lab" }}
remote = {{ auth = "psk", id = "alice@lab" }}
[connections.rw.children.net]
local_ts = ["{C_IN}/32"]
remote_ts = ["{A_IN}/32"]
esp_proposals = "aes128gcm16"

[[secrets.ike]]
id = ["carol@lab", "alice@lab"]
secret = "{PSK}"
"""


@pytest.fixture
def alice(nat_lab_per_test: Lab) -> Iterator[tuple[Lab, Charon]]:
    lab = nat_lab_per_test
    lab.addr("alice", "lo", f"{A_IN}/32")
    lab.addr("carol", "lo", f"{C_IN}/32")
    lab.addr("natA", "wan0", f"{MOVED}/24")  # natA answers for its second public address
    charon = Charon(lab, "alice", name="charon-move", conf=CHARON_CONF)
    charon.start()
    try:
        yield lab, charon
    finally:
        charon.stop()


def _policy_templates(lab: Lab) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    direction = ""
    for line in lab.run("carol", ["ip", "xfrm", "policy"]).stdout.splitlines():
        w = line.split()
        if "dir" in w:
            direction = w[w.index("dir") + 1]
        elif w[:1] == ["tmpl"]:
            out.add((direction, w[w.index("src") + 1], w[w.index("dst") + 1]))
    return out


def _table(lab: Lab) -> str:
    r = lab.run("carol", ["ip", "route", "show", "table", "220"], check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


async def _until(pred: object, what: str, timeout: float = 15.0) -> None:
    """Poll `pred` with a deadline, yielding to the daemon's loop in between."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():  # type: ignore[operator]
        if loop.time() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_xfrm_follows_the_peers_new_nat_address(alice: tuple[Lab, Charon], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pyroute2 import netns

    from core_ike.io import xfrm

    lab, charon = alice
    sock = str(tmp_path / "iked.ctl")
    conf = tmp_path / "iked.toml"
    conf.write_text(IKED_TOML.replace("@CTL@", sock))
    made: list[NoEspXfrm] = []  # made by the daemon, in carol's namespace (its XFRM and netlink sockets)
    monkeypatch.setattr(xfrm, "choose_backend", lambda *a, **kw: made.append(NoEspXfrm()) or made[0])
    daemon = Daemon(load(conf))
    daemon.shutdown_timeout = 2.0
    out: dict[str, object] = {}

    def ends() -> tuple[str, int]:
        """The outbound SA's destination and port, as the data plane installed (and moved) it."""
        out_spis = [spi for spi, d in made[0].sas if d == Direction.OUT] if made else []
        sa = made[0].installed_sa(out_spis[0], Direction.OUT) if out_spis else None
        return (sa.dst, sa.dst_port) if sa is not None else ("", 0)

    async def scenario() -> None:
        run = asyncio.create_task(daemon.run())
        try:
            await _until(lambda: Path(sock).exists(), "iked's control socket")
            await asyncio.to_thread(charon.initiate, "net", "home", 20)
            await _until(lambda: bool(made) and len(made[0].sas) == 2, "the CHILD_SA's two SAs")
            out["before"] = (ends(), _policy_templates(lab), _table(lab))
            lab.nft("natA", "flush ruleset\n" + NAT_RULESET.format(rule=f'oifname "wan0" snat to {MOVED}'))
            await asyncio.to_thread(lab.flush_conntrack, ["natA"])
            await _until(lambda: ends()[0] == MOVED, "the SAs moved to natA's new address")
            await _until(lambda: MOVED in _table(lab), "the source route moved")
            out["after"] = (ends(), _policy_templates(lab), _table(lab))
            (sa,) = daemon.engine.ike_sas()
            out["remote"] = sa.remote
            natt = daemon.transport.socket_for((CAROL, 4500))
            out["encap"] = natt.getsockopt(socket.IPPROTO_UDP, xfrm.UDP_ENCAP) if natt is not None else None
            out["charon"] = [s.get("state") for s in charon.list_sas()]
        finally:
            daemon.stopped.set()
            await run

    netns.pushns(lab.ns("carol"))
    try:
        asyncio.run(scenario())
    finally:
        netns.popns()
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
