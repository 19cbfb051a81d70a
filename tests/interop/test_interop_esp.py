"""ESP data plane on the wire: our userspace ESP (iked) against charon (kernel-libipsec) across a NAT,
and iked against iked with plain ESP (IP protocol 50) on a direct link.

NAT lab (``nat_lab``): our iked on alice 10.1.0.2 behind natA (203.0.113.1, masquerade, WAN drop of new
inbound UDP) plus a port forward of UDP 500/4500 on natA to alice, so that charon on carol 203.0.113.10 can
initiate too. Inner (tunnel) addresses on ``lo``: alice 10.10.1.1, carol 10.10.2.1.
Direct lab (``two_hosts``): iked on alice 192.0.2.1 and on bob 192.0.2.2, ``encap = false``.

Checked: ping both ways through the tunnel; a capture on the link shows only ESP-in-UDP on 4500 (NAT)
or protocol-50 ESP (direct) with exactly the CHILD_SA SPIs and no plain ICMP; per-SA counters in the
control ``list`` reply; a CHILD_SA rekey under ``ping -i 0.01 -c 300`` loses no packet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scenarios.lab import Lab, cleanup_orphans, nat_lab, two_hosts
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from scenarios.lab.netns import wait_for
from scenarios.lab.tunnels import charon_psk_conf, iked_psk_toml
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

ALICE, NAT_PUB, CAROL = "10.1.0.2", "203.0.113.1", "203.0.113.10"
A_IN, C_IN = "10.10.1.1", "10.10.2.1"
D_A, D_B = "192.0.2.1", "192.0.2.2"
PSK = "esp-interop-secret-0123456789"

# natA: forward IKE and NAT-T to alice so that charon can initiate (the WAN drop rule only filters input)
PORT_FORWARD = f"""table ip portfwd {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan0" udp dport {{ 500, 4500 }} dnat to {ALICE}
  }}
}}
"""

CHARON_CONF = charon_psk_conf(CAROL, NAT_PUB, "carol@lab", "alice@lab", C_IN, A_IN, PSK, conn="nat")

def iked_conf(me: str, peer: str, my_id: str, peer_id: str, local_ts: str, remote_ts: str,
              encap: bool | None = None) -> str:
    return iked_psk_toml(me, peer, my_id, peer_id, local_ts, remote_ts, PSK, encap=encap)


@dataclass
class NatEnv:
    lab: Lab
    iked: Iked
    charon: Charon


@dataclass
class DirectEnv:
    lab: Lab
    a: Iked
    b: Iked


@pytest.fixture(scope="module")
def natenv() -> Iterator[NatEnv]:
    cleanup_orphans()
    lab = nat_lab()
    iked = charon = None
    try:
        lab.nft("natA", PORT_FORWARD)
        lab.addr("alice", "lo", f"{A_IN}/32")
        lab.addr("carol", "lo", f"{C_IN}/32")
        charon = Charon(lab, "carol", name="charon", conf=CHARON_CONF, settings="retransmit_tries = 2")
        iked = Iked(lab, "alice", iked_conf(ALICE, CAROL, "alice@lab", "carol@lab", A_IN, C_IN))
        charon.start()
        iked.start()
        yield NatEnv(lab, iked, charon)
    finally:
        if iked is not None:
            iked.stop()
        if charon is not None:
            charon.stop()
        lab.teardown()


@pytest.fixture(scope="module")
def direct() -> Iterator[DirectEnv]:
    cleanup_orphans()
    lab = two_hosts()
    a = b = None
    try:
        a = Iked(lab, "alice", iked_conf(D_A, D_B, "alice@lab", "bob@lab", A_IN, C_IN, encap=False))
        b = Iked(lab, "bob", iked_conf(D_B, D_A, "bob@lab", "alice@lab", C_IN, A_IN, encap=False))
        a.start()
        b.start()
        yield DirectEnv(lab, a, b)
    finally:
        for d in (a, b):
            if d is not None:
                d.stop()
        lab.teardown()


def _clean_nat(env: NatEnv) -> None:
    for sa in env.iked.list_sas():
        env.iked.ctl({"cmd": "down", "ike": sa["uniqueid"]})
    for sa in env.charon.list_sas():
        env.charon.terminate(ike=sa["name"])
    wait_for(lambda: not env.iked.list_sas() and not env.charon.list_sas(), 10, what="SAs gone")
    env.lab.flush_conntrack()


def _clean_direct(env: DirectEnv) -> None:
    for d in (env.a, env.b):
        for sa in d.list_sas():
            d.ctl({"cmd": "down", "ike": sa["uniqueid"]})
    wait_for(lambda: not env.a.list_sas() and not env.b.list_sas(), 10, what="SAs gone")


def _one_child(d: Iked) -> tuple[dict[str, Any], dict[str, Any]]:
    sas = d.wait_sas(lambda s: len(s) == 1 and len(s[0]["child-sas"]) == 1
                     and s[0]["child-sas"][0]["state"] == "INSTALLED")
    return sas[0], sas[0]["child-sas"][0]


def _ping(lab: Lab, host: str, dst: str, src: str, count: int = 3) -> None:
    sent, received, out = lab.ping(host, dst, source=src, count=count, interval=0.05)
    assert (sent, received) == (count, count), out


def _assert_wire(packets: list[Any], kind: str, spis: set[str], n: int) -> list[Any]:
    esp = [p for p in packets if p.kind == kind]
    assert len(esp) >= n, [str(p) for p in packets]
    assert {f"{p.spi:08x}" for p in esp} == spis, [str(p) for p in esp]
    assert all(p.spi != 0 for p in esp)
    assert not [p for p in packets if p.kind == "other" and p.proto == 1], "plain ICMP on the wire"
    assert not [p for p in packets if p.kind in ("esp", "esp-in-udp") and p.kind != kind], \
        "unexpected ESP encapsulation"
    return esp


def _nat_bring_up(env: NatEnv, who: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    _clean_nat(env)
    if who == "ours":
        env.iked.up("net", "net")
    else:
        env.charon.initiate(child="net", ike="nat", timeout=15)
    sa, child = _one_child(env.iked)
    theirs = env.charon.wait_child("net", timeout=5)
    assert child["spi-in"] == theirs["spi-out"] and child["spi-out"] == theirs["spi-in"]
    assert sa["nat-local"] is True, sa  # we are behind natA
    assert child["encap"] is True
    return sa, child, theirs


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_nat_esp_in_udp_both_ways(natenv: NatEnv, who: str) -> None:
    env = natenv
    sa, child, _ = _nat_bring_up(env, who)
    before = env.iked.ctl({"cmd": "stats"})["stats"]["dataplane"]  # drops not attributable to one SA
    with env.lab.capture("natA", "wan0", "udp or esp or icmp") as cap:
        _ping(env.lab, "alice", C_IN, A_IN)
        _ping(env.lab, "carol", A_IN, C_IN)
    esp = _assert_wire(cap.packets, "esp-in-udp", {child["spi-in"], child["spi-out"]}, 12)
    for p in esp:
        assert {p.sport, p.dport} == {4500}, str(p)
        assert {p.src, p.dst} == {NAT_PUB, CAROL}, str(p)
    # counters from the control socket (per CHILD_SA) and the data plane drops
    _, c = _one_child(env.iked)
    assert c["packets-in"] >= 6 and c["packets-out"] >= 6, c
    assert c["bytes-in"] > 0 and c["bytes-out"] > 0, c
    assert not any(c["drops"].values()), c["drops"]
    # the TUN's own IPv6 chatter (router solicitations) may count as drop_no_policy before the pings
    after = env.iked.ctl({"cmd": "stats"})["stats"]["dataplane"]
    drops = {k: v for k, v in after.items() if k.startswith("drop_")}
    assert drops == {k: v for k, v in before.items() if k.startswith("drop_")}, (before, drops)
    assert after["drop_unknown_spi"] == 0 and after["drop_policy_mismatch"] == 0


def test_direct_plain_esp(direct: DirectEnv) -> None:
    env = direct
    _clean_direct(env)
    env.a.up("net", "net")
    sa, child = _one_child(env.a)
    _, peer = _one_child(env.b)
    assert child["spi-in"] == peer["spi-out"] and child["spi-out"] == peer["spi-in"]
    assert sa["nat-local"] is False and sa["nat-remote"] is False and child["encap"] is False
    with env.lab.capture("bob", "eth0", "udp or esp or icmp") as cap:
        _ping(env.lab, "alice", C_IN, A_IN)
        _ping(env.lab, "bob", A_IN, C_IN)
    esp = _assert_wire(cap.packets, "esp", {child["spi-in"], child["spi-out"]}, 12)
    assert all(p.proto == 50 for p in esp)
    assert not cap.of_kind("esp-in-udp")
    _, c = _one_child(env.b)
    assert c["packets-in"] >= 6 and c["packets-out"] >= 6, c


def _ping_during_rekey(lab: Lab, host: str, dst: str, src: str, rekey: Any) -> tuple[int, int, str]:
    """`ping -i 0.01 -c 300` in the background, rekey after ~1 s, return (sent, received, output)."""
    log = lab.dir / f"rekey-ping-{host}.txt"
    proc = lab.popen(host, ["ping", "-n", "-i", "0.01", "-c", "300", "-W", "1", "-I", src, dst], log)
    wait_for(lambda: log.exists() and log.read_text().count("bytes from") >= 80, 10, what="ping running")
    rekey()
    proc.wait(timeout=20)
    out = log.read_text()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def _missing(out: str) -> list[int]:
    seqs = {int(x) for x in re.findall(r"icmp_seq=(\d+)", out)}
    return [i for i in range(1, 301) if i not in seqs]


@pytest.mark.parametrize("pair", ["charon-nat", "iked-direct"])
def test_child_rekey_under_ping(request: pytest.FixtureRequest, pair: str) -> None:
    if pair == "charon-nat":
        env: Any = request.getfixturevalue("natenv")
        _nat_bring_up(env, "ours")
        ours, lab, host, dst, src = env.iked, env.lab, "alice", C_IN, A_IN
    else:
        env = request.getfixturevalue("direct")
        _clean_direct(env)
        env.a.up("net", "net")
        _one_child(env.b)
        ours, lab, host, dst, src = env.a, env.lab, "alice", C_IN, A_IN
    sa, old = _one_child(ours)

    def rekey() -> None:
        r = ours.ctl({"cmd": "rekey-child", "ike": sa["uniqueid"], "child": old["uniqueid"]})
        assert r.get("ok"), r

    sent, received, out = _ping_during_rekey(lab, host, dst, src, rekey)
    _, new = _one_child(ours)
    assert new["spi-in"] != old["spi-in"], "CHILD_SA was not rekeyed"
    assert sent == 300 and received == 300, f"lost icmp_seq {_missing(out)}\n{ours.log_tail()}"
    _ping(lab, host, dst, src)
