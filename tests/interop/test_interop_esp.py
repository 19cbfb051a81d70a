"""ESP data plane on the wire: our userspace ESP (iked) against charon (kernel-libipsec) across a NAT,
and iked against iked with plain ESP (IP protocol 50) on a direct link.

NAT pair (``nat_pair``, tests/interop/charon_pair.py): our iked on alice 10.1.0.2 behind natA
(203.0.113.1, masquerade, WAN drop of new inbound UDP) plus a port forward of UDP 500/4500 on natA to
alice, so that charon on carol 203.0.113.10 can initiate too. Inner (tunnel) addresses on ``lo``:
alice 10.10.1.1, carol 10.10.2.1.
Direct lab (``two_hosts``): iked on alice 192.0.2.1 and on bob 192.0.2.2, ``encap = false``.

Checked: ping both ways through the tunnel; a capture on the link shows only ESP-in-UDP on 4500 (NAT)
or protocol-50 ESP (direct) with exactly the CHILD_SA SPIs and no plain ICMP; per-SA counters in the
control ``list`` reply; a CHILD_SA rekey under ``ping -i 0.01 -c 300`` loses no packet, and our rekey
responder (bob) sends on the new CHILD_SA only from alice's DELETE of the old one (RFC 7296 2.8,
docs/architecture.md, "CHILD_SA rekeying").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scenarios.lab import Lab
from scenarios.lab.events import wait_daemons, wait_files
from scenarios.lab.iked import Iked
from scenarios.lab.tunnels import Tunnel, iked_psk_toml
from tests.guards import needs
from tests.interop.charon_pair import A_IN, C_IN, CAROL, NAT_PUB, PSK, Pair, bring_up, esp_on_wire, one_child

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

D_A, D_B = "192.0.2.1", "192.0.2.2"


@dataclass
class DirectEnv:
    lab: Lab
    a: Iked
    b: Iked


@pytest.fixture(scope="module")
def direct(two_hosts_per_module: Lab) -> Iterator[DirectEnv]:
    lab = two_hosts_per_module
    a = b = None
    try:
        a = Iked(lab, "alice", iked_psk_toml(Tunnel(D_A, D_B, "alice@lab", "bob@lab", A_IN, C_IN, PSK),
                                             encap=False))
        b = Iked(lab, "bob", iked_psk_toml(Tunnel(D_B, D_A, "bob@lab", "alice@lab", C_IN, A_IN, PSK),
                                           encap=False))
        a.start()
        b.start()
        yield DirectEnv(lab, a, b)
    finally:
        for d in (a, b):
            if d is not None:
                d.stop()


def _clean_direct(env: DirectEnv) -> None:
    for d in (env.a, env.b):
        d.down_all()
    wait_daemons(lambda: not env.a.list_sas() and not env.b.list_sas(), 10, [env.a, env.b], what="SAs gone")


def _ping(lab: Lab, host: str, dst: str, src: str, count: int = 3) -> None:
    sent, received, out = lab.ping(host, dst, source=src, count=count, interval=0.05)
    assert (sent, received) == (count, count), out


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_nat_esp_in_udp_both_ways(nat_pair: Pair, who: str) -> None:
    env = nat_pair
    _sa, child, _ = bring_up(env, who)
    before = env.iked.ctl({"cmd": "stats"})["stats"]["dataplane"]  # drops not attributable to one SA
    with env.lab.capture("natA", "wan0", "udp or esp or icmp") as cap:
        _ping(env.lab, "alice", C_IN, A_IN)
        _ping(env.lab, "carol", A_IN, C_IN)
    esp = esp_on_wire(cap.packets, ("esp-in-udp",), {child["spi-in"], child["spi-out"]}, 12)
    for p in esp:
        assert {p.sport, p.dport} == {4500}, str(p)
        assert {p.src, p.dst} == {NAT_PUB, CAROL}, str(p)
    # counters from the control socket (per CHILD_SA) and the data plane drops
    _, c = one_child(env.iked)
    assert c["packets-in"] >= 6 and c["packets-out"] >= 6, c
    assert c["bytes-in"] > 0 and c["bytes-out"] > 0, c
    assert not any(c["drops"].values()), c["drops"]
    after = env.iked.ctl({"cmd": "stats"})["stats"]["dataplane"]
    drops = {k: v for k, v in after.items() if k.startswith("drop_")}
    assert drops == {k: v for k, v in before.items() if k.startswith("drop_")}, (before, drops)
    assert after["drop_unknown_spi"] == 0 and after["drop_policy_mismatch"] == 0


def test_direct_plain_esp(direct: DirectEnv) -> None:
    env = direct
    _clean_direct(env)
    env.a.up("net", "net")
    sa, child = one_child(env.a)
    _, peer = one_child(env.b)
    assert child["spi-in"] == peer["spi-out"] and child["spi-out"] == peer["spi-in"]
    assert sa["nat-local"] is False and sa["nat-remote"] is False and child["encap"] is False
    with env.lab.capture("bob", "eth0", "udp or esp or icmp") as cap:
        _ping(env.lab, "alice", C_IN, A_IN)
        _ping(env.lab, "bob", A_IN, C_IN)
    esp = esp_on_wire(cap.packets, ("esp",), {child["spi-in"], child["spi-out"]}, 12)
    assert all(p.proto == 50 for p in esp)
    assert not cap.of_kind("esp-in-udp")
    _, c = one_child(env.b)
    assert c["packets-in"] >= 6 and c["packets-out"] >= 6, c


def _ping_during_rekey(lab: Lab, host: str, dst: str, src: str, rekey: Any) -> tuple[int, int, str]:
    """`ping -i 0.01 -c 300` in the background, rekey after ~1 s, return (sent, received, output)."""
    log = lab.dir / f"rekey-ping-{host}.txt"
    proc = lab.popen(host, ["ping", "-n", "-i", "0.01", "-c", "300", "-W", "1", "-I", src, dst], log)
    wait_files(lambda: log.exists() and log.read_text().count("bytes from") >= 80, 10, [log], what="ping running")
    rekey()
    proc.wait(timeout=20)
    out = log.read_text()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def _drops(*daemons: Iked | None) -> list[dict[str, int]]:
    """Each daemon's data-plane drop counters that are not zero (which side lost what)."""
    out = []
    for d in daemons:
        if d is not None:
            dp = d.ctl({"cmd": "stats"})["stats"]["dataplane"]
            out.append({k: v for k, v in dp.items() if k.startswith("drop_") and v})
    return out


def _missing(out: str) -> list[int]:
    seqs = {int(x) for x in re.findall(r"icmp_seq=(\d+)", out)}
    return [i for i in range(1, 301) if i not in seqs]


@pytest.mark.parametrize("pair", ["charon-nat", "iked-direct"])
def test_child_rekey_under_ping(request: pytest.FixtureRequest, pair: str) -> None:
    if pair == "charon-nat":
        env: Any = request.getfixturevalue("nat_pair")
        bring_up(env, "ours")
        ours, lab, host, dst, src = env.iked, env.lab, "alice", C_IN, A_IN
    else:
        env = request.getfixturevalue("direct")
        _clean_direct(env)
        env.a.up("net", "net")
        one_child(env.b)
        ours, lab, host, dst, src = env.a, env.lab, "alice", C_IN, A_IN
    responder = env.b if pair == "iked-direct" else None
    sa, old = one_child(ours)

    def rekey() -> None:
        r = ours.ctl({"cmd": "rekey-child", "ike": sa["uniqueid"], "child": old["uniqueid"]})
        assert r.get("ok"), r

    sent, received, out = _ping_during_rekey(lab, host, dst, src, rekey)
    _, new = one_child(ours)
    assert new["spi-in"] != old["spi-in"], "CHILD_SA was not rekeyed"
    assert sent == 300 and received == 300, (f"lost icmp_seq {_missing(out)}, data plane drops "
                                             f"{_drops(ours, responder)}\n{ours.log_tail()}")
    if responder is not None:  # its outbound SA switched when alice's DELETE of the old CHILD_SA arrived
        log = responder.log_path
        switched = f"now sends with SPI {new['spi-in']}_o"
        deleted = f"received DELETE for ESP CHILD_SA with SPI {old['spi-in']}"
        wait_files(lambda: switched in log.read_text(), 10, [log], what="outbound switched")
        text = log.read_text()
        assert deleted in text and text.index(deleted) < text.index(switched), text[-3000:]
    _ping(lab, host, dst, src)
