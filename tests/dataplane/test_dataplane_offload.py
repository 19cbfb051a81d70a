"""The userspace data plane's kernel offloads through real TUN devices and a real veth link (static keys,
no IKE; namespaces prefixed esp<pid>_ as in test_dataplane_userspace.py).

Both peers run the daemons' UdpTransport on port 4500 with the data plane attached to it. A TCP bulk
transfer over IPv4 one way and over IPv6 the other way must arrive intact (SHA-256 of what was sent
and what was received), with no TCP checksum error in the receiving kernel, while the counters show
each step at work: TSO super-packets read and cut into segments, UDP_SEGMENT sends, UDP_GRO reads,
segments coalesced into GSO writes. With ``esp_offload = "none"`` the same transfer goes packet by
packet; with ``"mmsg"`` packet by packet too, but read with recvmmsg and sent with sendmmsg. b's link has no UDP segmentation offload (ethtool tx-udp-segmentation off), so the kernel cuts
b's UDP_SEGMENT sends in software before the link: what b puts on the wire (tcpdump) is ordinary
ESP-in-UDP datagrams, one inner packet each, none larger than the TUN MTU plus the ESP and UDP overhead.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from core_ike.io.fastpath import tun_gso_segs
from tests.dataplane.test_dataplane_userspace import P, _capture, _peer_config, _start_peer, lab, nsx, sh
from tests.guards import require

pytestmark = pytest.mark.netns
assert lab  # the fixture, used by name below

INNER6 = {"a": "fd91:1::1", "b": "fd91:2::1"}
SIZE = {"v4": 6_000_000, "v6": 3_000_000}
MTU = 1400

SERVER = """
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1)
print("LISTEN", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

CLIENT = """
import random, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.bind((sys.argv[2], 0)); s.connect((sys.argv[1], 5001))
data = random.Random(int(sys.argv[4])).randbytes(int(sys.argv[3]))
s.sendall(data); s.close()
"""


def payload_hash(size: int, seed: int) -> str:
    import random

    return hashlib.sha256(random.Random(seed).randbytes(size)).hexdigest()


def tcp_transfer(dst_netns: str, run_client: Callable[[list[str]], object], src: str, dst: str, size: int,
                 seed: int, timeout: float) -> tuple[int, str]:
    """``size`` seeded bytes over TCP from ``src`` to ``dst``: SERVER in the namespace ``dst_netns``, CLIENT
    run by ``run_client(argv)`` (in the sender's namespace, until it is done); the bytes the server
    received and their SHA-256."""
    srv = subprocess.Popen(["ip", "netns", "exec", dst_netns, sys.executable, "-c", SERVER, dst],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        assert srv.stdout.readline().strip() == "LISTEN"
        run_client([sys.executable, "-c", CLIENT, dst, src, str(size), str(seed)])
        out, _err = srv.communicate(timeout=timeout)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    n, digest = out.split()
    return int(n), digest


def transfer(src_ns: str, src: str, dst_ns: str, dst: str, size: int, seed: int) -> tuple[int, str]:
    return tcp_transfer(P + dst_ns, lambda argv: nsx(src_ns, *argv), src, dst, size, seed, timeout=60)


def config(lab: dict[str, Any], me: str, offload: str) -> dict[str, Any]:
    cfg = _peer_config(lab, me, encap=True, cbc=False)
    other = "b" if me == "a" else "a"
    cfg["tun_addresses"].append(INNER6[me] + "/128")
    pol6 = {"local": INNER6[me] + "/128", "remote": INNER6[other] + "/128", "reqid": 1}
    cfg["policies"] += [dict(pol6, direction="OUT"), dict(pol6, direction="IN")]
    cfg.update(transport=True, offload=offload)
    return cfg


def csum_errors(ns: str) -> int:
    out = nsx(ns, "nstat", "-az", "TcpInCsumErrors").stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("TcpInCsumErrors"))


@pytest.mark.parametrize("lab,offload", [("direct", "all"), ("direct", "none"), ("direct", "mmsg")],
                         indirect=["lab"], ids=["all", "none", "mmsg"])
def test_bulk_tcp_through_offloads(lab: dict[str, Any], offload: str) -> None:
    require("ethtool", why="b's link without UDP segmentation offload")
    nsx("b", "ethtool", "-K", "eth0", "tx-udp-segmentation", "off")
    peers = {me: _start_peer(lab, me, config(lab, me, offload)) for me in ("a", "b")}
    for ns in ("a", "b"):
        nsx(ns, "ip", "-6", "addr", "show")  # the IPv6 inner addresses are there (no DAD on a TUN /128)
    tcpdump, pcap = _capture(lab)
    # with tso and gso, the TUN device's super-packets are capped at what one UDP_SEGMENT send carries
    want = f"gso_max_segs {tun_gso_segs(MTU)} " if offload == "all" else "gso_max_segs 65535 "
    assert all(want in nsx(ns, "ip", "-d", "link", "show", "espt0").stdout for ns in ("a", "b"))
    got4 = transfer("a", "10.91.1.1", "b", "10.91.2.1", SIZE["v4"], 4)
    got6 = transfer("b", INNER6["b"], "a", INNER6["a"], SIZE["v6"], 6)
    tcpdump.send_signal(signal.SIGTERM)
    tcpdump.wait(5)
    for p in peers.values():
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    assert got4 == (SIZE["v4"], payload_hash(SIZE["v4"], 4))
    assert got6 == (SIZE["v6"], payload_hash(SIZE["v6"], 6))
    assert csum_errors("a") == 0 and csum_errors("b") == 0
    rep = {me: json.loads((lab["tmp"] / f"{me}.json").read_text())["stats"] for me in ("a", "b")}
    for st in rep.values():
        assert st["drop_bad_frame"] == 0 and st["drop_send_error"] == 0 and st["drop_unknown_spi"] == 0
    a, b = rep["a"], rep["b"]
    if offload == "all":
        # IPv4 a -> b: super-packets cut by a, sent with UDP_SEGMENT, read with UDP_GRO and coalesced by b;
        # IPv6 b -> a the same the other way
        for tx in (a, b):
            assert tx["tso_frames"] > 0 and tx["tso_segments"] > 2 * tx["tso_frames"]
            assert tx["esp_gso_sends"] > 0
        assert b["esp_gro_reads"] > 0 and b["coalesced"] > 0  # a's UDP_SEGMENT sends arrive whole
        # seal_batch on both senders (IPv4 and IPv6 super-packets), open_batch on b for a's whole sends
        assert a["batch_seals"] > 0 and b["batch_seals"] > 0 and b["esp_run_reads"] > 0
    else:
        for st in (a, b):
            assert st["tso_frames"] == 0 and st["esp_gso_sends"] == 0 and st["esp_gro_reads"] == 0
            assert st["coalesced"] == 0 and st["batch_seals"] == 0 and st["esp_run_reads"] == 0
            # mmsg alone: packet by packet from the TUN device, but recvmmsg reads and sendmmsg sends
            mm = st["esp_mmsg_reads"] > 0 and 0 < st["esp_mmsg_sends"] < st["esp_udp_sends"]
            assert mm == (offload == "mmsg"), st
    # on the wire: one inner packet per ESP datagram, none larger than MTU + ESP/UDP/IP overhead
    lengths = sh("tcpdump", "-nn", "-r", str(pcap), "src host 192.0.2.2 and udp port 4500").stdout.splitlines()
    assert len(lengths) > SIZE["v6"] // MTU
    biggest = max(int(line.rsplit("length ", 1)[1].split()[0]) for line in lengths if "length " in line)
    assert biggest <= MTU + 8 + 8 + 16 + 3 + 2, biggest  # UDP, SPI|Seq + IV, ICV, padding, trailer
