"""Bulk TCP between our iked (userspace ESP, users' default offloads: TSO segmentation, UDP_SEGMENT,
UDP_GRO, coalesced TUN writes, super-packets sealed and GRO reads opened in batches) and a real strongSwan charon (kernel-libipsec), ESP-in-UDP on one veth
link (``two_hosts``): what our offloads send must be what charon expects, one inner packet per
ESP datagram with correct inner checksums, and what charon sends must pass our GRO and coalescing.

Checked both ways: the received data is what was sent (SHA-256), no TCP checksum error in either
kernel, no ESP drop on our side, and our counters show the offloads were used.
"""

from __future__ import annotations

from typing import Any

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from scenarios.lab.tunnels import Tunnel, charon_psk_conf, iked_psk_toml
from tests.dataplane.test_dataplane_offload import payload_hash, tcp_transfer
from tests.guards import needs

pytestmark = [pytest.mark.netns, pytest.mark.interop,
              needs("root", "strongswan", why="strongSwan charon in network namespaces")]

A, B = "192.0.2.1", "192.0.2.2"
A_IN, B_IN = "10.10.1.1", "10.10.2.1"
PSK = "bulk-secret-0123456789abcdef"
SIZE = 8_000_000


def transfer(lab: Lab, src_host: str, src: str, dst_host: str, dst: str, seed: int) -> tuple[int, str]:
    return tcp_transfer(lab.ns(dst_host), lambda argv: lab.run(src_host, argv, timeout=120), src, dst, SIZE, seed,
                        timeout=120)


def csum_errors(lab: Lab, host: str) -> int:
    out = lab.run(host, ["nstat", "-az", "TcpInCsumErrors"], check=False).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("TcpInCsumErrors"))


def test_bulk_tcp_with_charon(two_hosts_per_test: Lab) -> None:
    lab = two_hosts_per_test
    iked = Iked(lab, "alice", iked_psk_toml(Tunnel(A, B, "alice@lab", "bob@lab", A_IN, B_IN, PSK), encap=True,
                                            extra_daemon='esp_offload = "all"'))
    charon = Charon(lab, "bob", name="charon",
                    conf=charon_psk_conf(Tunnel(B, A, "bob@lab", "alice@lab", B_IN, A_IN, PSK)))
    try:
        charon.start()
        iked.start()
        iked.up("net", "net")
        charon.wait_child("net", timeout=10)
        sent, received, out = lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.05)
        assert received == sent, out
        assert transfer(lab, "alice", A_IN, "bob", B_IN, 1) == (SIZE, payload_hash(SIZE, 1))  # ours -> charon
        assert transfer(lab, "bob", B_IN, "alice", A_IN, 2) == (SIZE, payload_hash(SIZE, 2))  # charon -> ours
        stats: dict[str, Any] = iked.ctl({"cmd": "stats"})["stats"]["dataplane"]
    finally:
        iked.stop()
        charon.stop()
    assert csum_errors(lab, "alice") == 0 and csum_errors(lab, "bob") == 0
    assert stats["drop_unknown_spi"] == 0 and stats["drop_policy_mismatch"] == 0, stats
    assert stats["drop_bad_frame"] == 0 and stats["drop_send_error"] == 0, stats
    assert stats["tso_frames"] > 0 and stats["esp_gso_sends"] > 0, stats  # ours -> charon used TSO + GSO
    assert stats["batch_seals"] > 0, stats  # ... cut and sealed by the seal_batch step: charon took it
    assert stats["tun_writes"] > 0, stats
