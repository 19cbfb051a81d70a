"""The lab's own behaviour: topology, NAT classes (docs/nat-lab.md §4), delay hub (§5.2), teardown, pcap parsing."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pyroute2 import netns

from scenarios.lab import Lab, lab_session, nat_lab, read_pcap
from scenarios.lab.events import wait_files
from scenarios.lab.netns import read_text
from scenarios.lab.pcap import classify_udp
from tests.guards import needs
from tests.outcome import failed_since

root_only = needs("root", why="network namespaces")

ECHO = """
import socket, sys
socks = []
for port in (3478, 3479):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); socks.append(s)
print("ready", flush=True)
import select
while True:
    for s in select.select(socks, [], [])[0]:
        data, addr = s.recvfrom(2048)
        s.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)
"""

PROBE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5000)); s.settimeout(2)
for port in (3478, 3479):
    s.sendto(b"x", ("203.0.113.10", port)); print(s.recvfrom(2048)[0].decode())
"""


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with lab_session(nat_lab, nat_a="eim", nat_b="symmetric", failed=failed_since(request)) as lab:
        yield lab


def test_pcap_classification() -> None:
    assert classify_udp(500, 500, b"\x00" * 28) == ("ike", None)
    assert classify_udp(4500, 4500, b"\xff") == ("keepalive", None)
    assert classify_udp(4500, 4500, b"\x00\x00\x00\x00" + b"\x01" * 28) == ("ike", None)
    assert classify_udp(4500, 31000, struct.pack("!II", 0xC0FFEE01, 1) + b"\x00" * 16) == ("esp-in-udp", 0xC0FFEE01)
    assert classify_udp(53, 40000, b"abc") == ("other", None)


@root_only
@pytest.mark.netns
def test_nat_classes(lab: Lab) -> None:
    assert lab.ping("alice", "203.0.113.10", count=1)[1] == 1
    assert lab.ping("bob", "203.0.113.10", count=1)[1] == 1
    logf = lab.host_dir("carol") / "echo.log"
    echo = lab.popen("carol", [sys.executable, "-c", ECHO], logf)
    try:
        wait_files(lambda: "ready" in read_text(logf), 5, [logf], what="echo server", procs=[echo])
        seen_a = lab.run("alice", [sys.executable, "-c", PROBE]).stdout.split()
        seen_b = lab.run("bob", [sys.executable, "-c", PROBE]).stdout.split()
    finally:
        lab.stop(echo)
    assert seen_a == ["203.0.113.1:5000", "203.0.113.1:5000"]      # EIM, port preserved
    assert all(s.startswith("203.0.113.2:") for s in seen_b)
    assert seen_b[0] != seen_b[1]                                   # address-and-port-dependent
    lab.flush_conntrack()
    out = lab.run("natA", ["conntrack", "-L"], check=False).stdout
    assert "dport=3478" not in out


@root_only
@pytest.mark.netns
def test_unsolicited_wan_udp_is_dropped(lab: Lab) -> None:
    with lab.capture("natB", "wan0", "udp port 4500") as cap:
        lab.run("carol", [sys.executable, "-c",
                          "import socket; s=socket.socket(2,2); s.sendto(b'\\0'*8, ('203.0.113.2', 4500))"])
    assert [p.flow()[:4] for p in cap.packets] == [("203.0.113.10", cap.packets[0].sport, "203.0.113.2", 4500)]
    out = lab.run("natB", ["conntrack", "-L", "-p", "udp"], check=False).stdout
    assert "dport=4500" not in out                                  # never confirmed (docs/nat-lab.md §4.2)


@root_only
@pytest.mark.netns
def test_delay_hub_rtt() -> None:
    lab = nat_lab(delay_ms=20)
    try:
        assert lab.ping("alice", "203.0.113.10", count=1)[1] == 1   # ARP out of the way
        sent, received, out = lab.ping("alice", "203.0.113.10", count=5, interval=0.05)
        assert (sent, received) == (5, 5), out
        rtt = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        # 20 ms each way: no echo comes back sooner; the hub is a userspace process, so load on the host
        # delays some echoes further, but not the fastest one by another round of the hub's delay
        assert len(rtt) == 5 and min(rtt) >= 39.0 and min(rtt) < 80.0, rtt
        hub = lab.info["delay_hub_pid"]
        assert os.path.exists(f"/proc/{hub}")
    finally:
        lab.teardown()
    assert not [n for n in netns.listnetns() if n.startswith(lab.prefix)]
    assert not os.path.exists(f"/proc/{hub}")


@root_only
@pytest.mark.netns
def test_teardown_idempotent_and_capture_file() -> None:
    lab = nat_lab()
    with lab.capture("carol", "eth0", "icmp") as cap:
        lab.ping("alice", "203.0.113.10", count=2, interval=0.05)
    assert len(read_pcap(cap.path)) == len(cap.packets) == 4
    assert {(p.src, p.dst) for p in cap.packets} == {("203.0.113.1", "203.0.113.10"),
                                                     ("203.0.113.10", "203.0.113.1")}
    sleeper = lab.popen("bob", ["sleep", "600"], lab.dir / "sleep.log")
    lab.teardown()
    lab.teardown()
    assert sleeper.poll() is not None
    assert not [n for n in netns.listnetns() if n.startswith(lab.prefix)]


@root_only
@pytest.mark.netns
def test_same_nat_peer_topology() -> None:
    lab = nat_lab(same_nat_peer=True, nat_b="symmetric")
    try:
        assert lab.hosts == ["alice", "natA", "inet", "natB", "bob", "carol", "venus"]
        assert lab.ping("venus", "10.1.0.2", count=1)[1] == 1
        assert lab.ping("venus", "203.0.113.10", count=1)[1] == 1
        assert lab.info["nat_b"] == "symmetric" and lab.nats == ["natA", "natB"]
    finally:
        lab.teardown()


@root_only
@pytest.mark.netns
def test_iked_start_waits_for_ready_and_reports_an_early_exit() -> None:
    """Iked.start returns at the daemon's READY=1 (its control socket answers then) and, when the daemon
    exits first, fails with its exit and its log, not at the deadline's TimeoutError."""
    from scenarios.lab.iked import Iked, IkedError

    with Lab() as lab:
        lab.add_host("solo")
        good = Iked(lab, "solo", '[daemon]\ncontrol = "@CTL@"\ndataplane = "none"\nlisten = ["127.0.0.1"]\n')
        good.start()
        assert good.notes is not None and good.notes.seen("READY=1")
        assert good.ctl({"cmd": "conns"}) == {"ok": True, "conns": []}
        good.reload()  # returns at the READY=1 after RELOADING=1
        assert "reloaded configuration" in good.log_text()
        assert good.stop() == 0 and good.notes.seen("STOPPING=1")
        bad = Iked(lab, "solo", '[daemon]\ncontrol = "@CTL@"\nno_such_setting = 1\n', name="bad")
        with pytest.raises(IkedError, match=r"exited with status 2 before READY=1") as e:
            bad.start(timeout=600)
        assert "no_such_setting" in str(e.value)


@root_only
@pytest.mark.netns
def test_a_kept_daemon_reloads_without_a_notify_warning() -> None:
    """Left running (Lab.detach, as `scenarios/run --keep` does), a daemon's notification socket is read
    by a process of its own: a reload after this process stopped reading notifies it (RELOADING=1 then
    READY=1 in notify.log) and the daemon logs no "cannot notify"; --cleanup removes that reader."""
    from scenarios.lab import cleanup_stale
    from scenarios.lab.iked import Iked

    lab = Lab()
    try:
        lab.add_host("kept")
        iked = Iked(lab, "kept", '[daemon]\ncontrol = "@CTL@"\ndataplane = "none"\nlisten = ["127.0.0.1"]\n')
        iked.start()
        daemon = iked.proc
        lab.detach()
        assert iked.notes is not None and iked.notes.sock.fileno() < 0  # this process reads no more
        readers = [p for p in lab._procs if p is not daemon]
        assert readers
        notes = iked.dir / "notify.log"
        iked.signal(signal.SIGHUP)
        got = wait_files(lambda: "RELOADING=1" in read_text(notes) and "READY=1" in read_text(notes),
                         30, [notes], what="the reload's notifications in notify.log", procs=[daemon])
        assert got
        iked.wait_log("reloaded configuration")
        assert "cannot notify" not in iked.log_text()
    finally:
        cleanup_stale(lab.prefix)
    assert daemon.wait(10) is not None
    assert all(p.wait(10) is not None for p in readers)  # killed in the daemon's namespace


@root_only
@pytest.mark.netns
def test_a_kept_lab_outlives_its_process_until_cleanup() -> None:
    """A lab left running (detach) is no orphan for the next run's cleanup_orphans though the process
    that made it is gone; cleanup_stale (scenarios/run --cleanup) removes it and its mark."""
    from scenarios.lab import cleanup_orphans, cleanup_stale
    from scenarios.lab.netns import KEPT_DIR

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names the lab as a runner's pid would
    prefix = f"lb{gone.pid}x0_"
    lab = Lab(prefix=prefix)
    try:
        lab.add_host("kept")
        lab.detach()
        cleanup_orphans()
        assert [n for n in netns.listnetns() if n.startswith(prefix)] == [f"{prefix}kept"]
    finally:
        assert cleanup_stale(prefix) == [f"{prefix}kept"]
    assert not (KEPT_DIR / prefix).exists()
    assert not [n for n in netns.listnetns() if n.startswith(prefix)]
