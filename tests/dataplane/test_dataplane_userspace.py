"""Userspace ESP backend end to end in network namespaces (static keys, no IKE).

Topologies (namespaces prefixed esp<pid>_, removed afterwards):
- direct: a 192.0.2.1 --veth-- b 192.0.2.2, plain ESP (IP protocol 50) or ESP-in-UDP on 4500;
- nat:    a 10.0.1.2 -- n (masquerade) 198.51.100.1 -- b 198.51.100.2, ESP-in-UDP on 4500.
Inner addresses 10.91.1.1 (a) and 10.91.2.1 (b) live on the TUN devices. `ping` must cross both
ways and tcpdump on b's link must see only ESP, never the ICMP inside.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guards import require

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("static_esp_peer.py")
P = f"esp{os.getpid() % 100000}_"
KEY_AB = "11" * 16 + "a1b2c3d4"  # AES-GCM-128 key | salt (RFC 4106 8.1)
KEY_BA = "22" * 16 + "d4c3b2a1"
CBC_KEYS = {"key": "33" * 16, "integ": "HMAC_SHA2_256_128", "integ_key": "44" * 32}


def _need_root() -> None:
    require("root", "tun", "tcpdump", why="TUN devices and captures in network namespaces")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def nsx(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", P + ns, *args, check=check)


def _veth(ns1: str, if1: str, ns2: str, if2: str) -> None:
    ta, tb = f"{P}{ns1}{if1}"[-15:], f"{P}{ns2}{if2}"[-15:]
    sh("ip", "link", "add", ta, "type", "veth", "peer", "name", tb)
    for ns, tmp, name in ((ns1, ta, if1), (ns2, tb, if2)):
        sh("ip", "link", "set", tmp, "netns", P + ns)
        sh("ip", "-n", P + ns, "link", "set", tmp, "name", name)
        sh("ip", "-n", P + ns, "link", "set", name, "up")


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    _need_root()
    kind: str = request.param
    names = ["a", "b"] + (["n"] if kind == "nat" else [])
    tmp = Path(tempfile.mkdtemp(prefix=P))
    procs: list[subprocess.Popen[str]] = []
    try:
        for n in names:
            sh("ip", "netns", "add", P + n)
            sh("ip", "-n", P + n, "link", "set", "lo", "up")
        if kind == "nat":
            _veth("a", "eth0", "n", "lan0")
            _veth("n", "wan0", "b", "eth0")
            sh("ip", "-n", P + "a", "addr", "add", "10.0.1.2/24", "dev", "eth0")
            sh("ip", "-n", P + "a", "route", "add", "default", "via", "10.0.1.1")
            sh("ip", "-n", P + "n", "addr", "add", "10.0.1.1/24", "dev", "lan0")
            sh("ip", "-n", P + "n", "addr", "add", "198.51.100.1/24", "dev", "wan0")
            sh("ip", "-n", P + "b", "addr", "add", "198.51.100.2/24", "dev", "eth0")
            nsx("n", "sysctl", "-qw", "net.ipv4.ip_forward=1")
            rules = (
                "table ip nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n"
                '  oifname "wan0" masquerade\n }\n}\n'
            )
            subprocess.run(
                ["ip", "netns", "exec", P + "n", "nft", "-f", "-"], input=rules, text=True, check=True
            )
            addr = {"a": ("10.0.1.2", "198.51.100.2"), "b": ("198.51.100.2", "198.51.100.1")}
        else:
            _veth("a", "eth0", "b", "eth0")
            sh("ip", "-n", P + "a", "addr", "add", "192.0.2.1/24", "dev", "eth0")
            sh("ip", "-n", P + "b", "addr", "add", "192.0.2.2/24", "dev", "eth0")
            addr = {"a": ("192.0.2.1", "192.0.2.2"), "b": ("192.0.2.2", "192.0.2.1")}
        yield {"kind": kind, "tmp": tmp, "procs": procs, "addr": addr}
    finally:
        for p in procs:  # stop what we started, by PID
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for n in names:
            sh("ip", "netns", "del", P + n, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _peer_config(lab: dict[str, Any], me: str, encap: bool, cbc: bool) -> dict[str, Any]:
    local, remote = lab["addr"][me]
    inner = {"a": "10.91.1.1", "b": "10.91.2.1"}
    other = "b" if me == "a" else "a"
    spi_out, spi_in = (0xA0000001, 0xB0000001) if me == "a" else (0xB0000001, 0xA0000001)
    key_out, key_in = (KEY_AB, KEY_BA) if me == "a" else (KEY_BA, KEY_AB)
    alg: dict[str, Any] = {"encr": "AES_GCM_16", "bits": 128}
    sas = []
    for spi, d, key, s, dst in (
        (spi_out, "OUT", key_out, local, remote),
        (spi_in, "IN", key_in, remote, local),
    ):
        sa = {"spi": spi, "direction": d, "src": s, "dst": dst, "encap": encap, "reqid": 1, "key": key, **alg}
        if cbc:
            sa.update(encr="AES_CBC", **CBC_KEYS)
        sas.append(sa)
    pol = {"local": inner[me] + "/32", "remote": inner[other] + "/32", "reqid": 1}
    return {
        "tun": "espt0",
        "tun_addresses": [inner[me] + "/32"],
        "keepalive": 1.0,
        "report": str(lab["tmp"] / f"{me}.json"),
        "sas": sas,
        "policies": [dict(pol, direction="OUT"), dict(pol, direction="IN")],
    }


def _start_peer(lab: dict[str, Any], me: str, cfg: dict[str, Any]) -> subprocess.Popen[str]:
    path = lab["tmp"] / f"{me}-config.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        ["ip", "netns", "exec", P + me, sys.executable, str(PEER), str(path)],
        stdout=subprocess.PIPE,
        stderr=open(lab["tmp"] / f"{me}.log", "w"),  # noqa: SIM115
        text=True,
        env=env,
    )
    lab["procs"].append(p)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip() == "READY", (lab["tmp"] / f"{me}.log").read_text()
    return p


def _capture(lab: dict[str, Any]) -> tuple[subprocess.Popen[str], Path]:
    pcap = lab["tmp"] / "b.pcap"
    p = subprocess.Popen(
        ["ip", "netns", "exec", P + "b", "tcpdump", "-ni", "eth0", "-U", "-w", str(pcap)],
        stderr=subprocess.PIPE,
        text=True,
    )
    lab["procs"].append(p)
    assert p.stderr is not None
    deadline = time.monotonic() + 10
    while "listening on" not in p.stderr.readline():
        assert time.monotonic() < deadline, "tcpdump did not start"
    return p, pcap


def _line(p: subprocess.Popen[str], want: str, timeout: float, why: str) -> None:
    """Until the peer `p` prints the line `want` on its stdout; `why` if it has not within `timeout` s."""
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, why
        line = p.stdout.readline()
        assert line, f"{why}: the peer exited"
        if line.strip() == want:
            return


def _ping(ns: str, src: str, dst: str) -> tuple[int, float]:
    r = nsx(ns, "ping", "-c", "5", "-i", "0.2", "-W", "2", "-I", src, dst, check=False)
    received = int(r.stdout.split(" received")[0].rsplit(" ", 1)[-1]) if " received" in r.stdout else 0
    rtt = float(r.stdout.split("rtt min/avg/max/mdev = ")[1].split("/")[1]) if received else -1.0
    return received, rtt


@pytest.mark.parametrize(
    "lab,encap,cbc",
    [("direct", False, False), ("direct", True, False), ("direct", True, True), ("nat", True, False)],
    indirect=["lab"],
    ids=["direct-esp-gcm", "direct-udp-gcm", "direct-udp-cbc", "nat-udp-gcm"],
)
def test_ping_through_userspace_esp(lab: dict[str, Any], encap: bool, cbc: bool) -> None:
    peers = {me: _start_peer(lab, me, _peer_config(lab, me, encap, cbc)) for me in ("a", "b")}
    tcpdump, pcap = _capture(lab)
    got_ab, rtt_ab = _ping("a", "10.91.1.1", "10.91.2.1")  # a first: opens the NAT mapping
    got_ba, rtt_ba = _ping("b", "10.91.2.1", "10.91.1.1")
    print(
        f"\n{lab['kind']} encap={encap} cbc={cbc}: a->b {got_ab}/5 rtt {rtt_ab} ms, b->a {got_ba}/5 rtt {rtt_ba} ms"
    )
    # wait until the 20 ESP packets of the pings, and with a NAT a's keepalive (RFC 3948 2.3, interval
    # 1 s), are in the capture (tcpdump -U writes each packet as it comes). tcpdump tells nobody when
    # it has written a packet: this reads the file again until they are there, within a deadline.
    wanted = "esp or udp port 4500" + (" and not (udp[4:2] = 9 and udp[8] = 0xff)" if lab["kind"] == "nat" else "")
    keepalive = "udp port 4500 and udp[4:2] = 9 and udp[8] = 0xff"
    deadline = time.monotonic() + 15
    while len(sh("tcpdump", "-nn", "-r", str(pcap), wanted).stdout.splitlines()) < 20 or \
            (lab["kind"] == "nat" and not sh("tcpdump", "-nn", "-r", str(pcap), keepalive).stdout):
        assert time.monotonic() < deadline, "the pings' ESP (and the NAT keepalive) did not reach the capture"
        time.sleep(0.1)
    tcpdump.send_signal(signal.SIGTERM)
    tcpdump.wait(5)
    if lab["kind"] == "nat":  # the keepalive is on b's link; wait until b has read it too
        _line(peers["b"], "KEEPALIVE", 15.0, "b did not count the NAT keepalive")
    for p in peers.values():
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    assert got_ab == 5 and got_ba == 5
    dump = sh("tcpdump", "-nn", "-r", str(pcap)).stdout
    assert "ICMP echo" not in dump, dump  # the pings are inside ESP only
    esp_lines = [ln for ln in dump.splitlines() if "ESP(spi=" in ln]
    assert len(esp_lines) >= 20, dump
    if encap:
        assert all("UDP-encap" in ln and ".4500 " in ln for ln in esp_lines), dump
        # RFC 3948 2.2: the UDP payload's first word is the (non-zero) SPI
        non_zero = sh("tcpdump", "-nn", "-r", str(pcap), "udp port 4500 and udp[8:4] != 0").stdout
        assert len(non_zero.splitlines()) >= 20
    else:
        assert all("UDP" not in ln for ln in esp_lines), dump
    reports = {me: json.loads((lab["tmp"] / f"{me}.json").read_text()) for me in ("a", "b")}
    for rep in reports.values():
        rows = {r["direction"]: r for r in rep["sas"]}
        assert rows["out"]["counters"]["packets_out"] >= 10, rep
        assert rows["in"]["counters"]["packets_in"] >= 10, rep
        assert rows["in"]["counters"]["drop_bad_icv"] == 0 and rep["stats"]["drop_unknown_spi"] == 0
    if lab["kind"] == "nat":
        assert reports["a"]["stats"]["keepalives_sent"] >= 1
        assert reports["b"]["keepalives_received"] >= 1
