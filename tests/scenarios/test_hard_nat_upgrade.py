"""Relay -> direct upgrade and back through real nftables NATs (core_ike/me/upgrade.py): alice and bob
behind port-restricted NATs, our mediation server with its relay on carol. A filter on natA drops
everything between the two NATs' public addresses, so the tunnel comes up relayed; with a ping running
through it the filter is lifted and the same IKE_SA moves to the direct pair without losing a ping;
then the filter comes back and the IKE_SA returns to the relay, where the ping goes through again.

The hard case: alice behind a symmetric NAT with random ports, bob behind a port-restricted one, both
measured by RFC 5780 discovery against carol's two addresses. The same filter makes the first setup's
many-port probing meet nothing, so the tunnel comes up relayed; once the filter is lifted, the first
probe round probes many ports as the first setup does (core_ike/me/birthday.py) and alice, who controls,
moves the IKE_SA onto the extra socket that met, a ping running throughout without a loss."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guards import needs

pytestmark = [pytest.mark.netns, needs("root", why="NAT labs with our daemons in network namespaces")]

INNER = {"alice": "10.11.0.2", "bob": "10.12.0.2"}
PERIOD = 6  # [client] upgrade_period of the test (the default is 30 s)
LAN_ALICE = "10.1.0.2"
HARD_PERIOD = 6  # the same, for the hard-NAT test: its first probe round probes many ports
BLOCK = "h14block"


@pytest.fixture
def lab() -> Iterator[Any]:
    from scenarios.lab import nat_lab

    lab = nat_lab(nat_a="port-restricted", nat_b="port-restricted")
    try:
        for h in ("alice", "bob"):
            lab.addr(h, "lo", f"{INNER[h]}/32")
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def hard_lab() -> Iterator[Any]:
    from scenarios.lab import nat_lab
    from scenarios.lab.natlab import add_carol_alt

    lab = nat_lab(nat_a="symmetric-random", nat_b="port-restricted")
    try:
        add_carol_alt(lab)  # RFC 5780 discovery's second address
        for h in ("alice", "bob"):
            lab.addr(h, "lo", f"{INNER[h]}/32")
        yield lab
    finally:
        lab.teardown()


def _block(lab: Any) -> None:
    from scenarios.lab.topologies import NAT_PUBLIC

    other = NAT_PUBLIC["natB"]
    lab.nft("natA", f"""table inet {BLOCK} {{
  chain blocked {{
    type filter hook forward priority -10; policy accept;
    ip daddr {other} drop
    ip saddr {other} drop
  }}
}}
""")


def _unblock(lab: Any) -> None:
    lab.run("natA", ["nft", "delete", "table", "inet", BLOCK])


def _sa(daemon: Any, name: str) -> dict[str, Any] | None:
    return next((s for s in daemon.list_sas() if s["name"] == name and s["child-sas"]), None)


def _start_ping(lab: Any, log_name: str) -> tuple[Any, Path]:
    """A ping through the tunnel (5 per second) until :func:`_no_ping_lost` stops it."""
    log_path = lab.dir / log_name
    argv = ["ping", "-n", "-i", "0.2", "-W", "2", "-I", INNER["alice"], INNER["bob"]]
    return lab.popen("alice", argv, log_path), log_path


def _no_ping_lost(lab: Any, ping: Any, log_path: Path) -> None:
    """Stop the ping and check that every echo it sent across the move was answered: all but the last
    sequence number, which may have been in flight when it stopped (RFC 792 echo, iputils' output)."""
    assert ping.poll() is None, "the ping ended before the move: the test saw no traffic across it"
    lab.stop(ping, sig=signal.SIGINT)
    out = log_path.read_text()
    m = re.search(r"(\d+) packets transmitted", out)
    assert m is not None, out
    sent = int(m.group(1))
    answered = {int(n) for n in re.findall(r"icmp_seq=(\d+)", out)}
    lost = sorted(set(range(1, sent)) - answered)
    assert sent > 1 and not lost, f"echoes lost across the move: {lost} of {sent}\n{out[-600:]}"


def _wait_remote(daemon: Any, name: str, host: str, timeout: float) -> dict[str, Any]:
    """The IKE_SA `name` once its peer is `host` (the lab's wait on the daemon's SA list)."""
    try:
        sas = daemon.wait_sas(lambda sas: any(s["name"] == name and s["child-sas"] and s["remote-host"] == host
                                              for s in sas), timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"{name}: IKE_SA not to {host} within {timeout} s: {_sa(daemon, name)}\n"
                             f"{daemon.log_tail(60)}") from None
    return next(s for s in sas if s["name"] == name and s["remote-host"] == host)


def test_relayed_tunnel_upgrades_to_direct_without_loss_and_falls_back(lab: Any) -> None:
    from scenarios.lab.mediation import OurMediation
    from scenarios.lab.topologies import CAROL, NAT_PUBLIC

    med = OurMediation(lab, peers=["alice", "bob"])
    client = f"upgrade_period = {PERIOD}\nnat_discovery = false\nport_mapping = false"
    ping = None
    try:
        med.start_server(extra='relay = true\nrelay_ports = "50000-50099"')
        bob = med.start_client("bob", ts=INNER, client=client)
        alice = med.start_client("alice", ts=INNER, client=client)
        med.wait_registered("alice", "bob", timeout=15)
        _block(lab)
        r = alice.up("bob", timeout=60)
        assert r["remote"][0] == CAROL, r  # relayed: the direct path is filtered
        before = _sa(alice, "bob")
        assert before is not None and before["remote-host"] == CAROL

        # a ping through the tunnel across the move, until both sides moved and the direct path carried
        # a ping of its own (the first round starts within PERIOD, its checks end within 3 s)
        ping, log_path = _start_ping(lab, "upgrade-ping.log")
        _unblock(lab)
        moved = _wait_remote(alice, "bob", NAT_PUBLIC["natB"], timeout=PERIOD + 10)
        assert moved["uniqueid"] == before["uniqueid"], (before, moved)  # the same IKE_SA, moved
        _wait_remote(bob, "alice", NAT_PUBLIC["natA"], timeout=10)  # bob followed
        sent1, rcvd1, out1 = lab.ping("alice", INNER["bob"], source=INNER["alice"], count=3, interval=0.2)
        assert sent1 == 3 and rcvd1 == 3, out1
        _no_ping_lost(lab, ping, log_path)

        _block(lab)  # the direct path dies: back to the relay
        _wait_remote(alice, "bob", CAROL, timeout=30)
        _wait_remote(bob, "alice", CAROL, timeout=15)
        after = _sa(alice, "bob")
        assert after is not None and after["uniqueid"] == before["uniqueid"], (before, after)
        sent2, rcvd2, out2 = lab.ping("alice", INNER["bob"], source=INNER["alice"], count=5, interval=0.2)
        assert sent2 == 5 and rcvd2 == 5, out2
    finally:
        if ping is not None and ping.poll() is None:
            lab.stop(ping, sig=signal.SIGINT)
        med.stop()


def test_hard_nat_relayed_tunnel_goes_direct_by_a_probe_round_of_many_port_probing(hard_lab: Any) -> None:
    from scenarios.lab.mediation import OurMediation
    from scenarios.lab.natlab import STUN_EXTRA, wait_nat
    from scenarios.lab.topologies import CAROL, NAT_PUBLIC

    lab = hard_lab
    med = OurMediation(lab, peers=["alice", "bob"])
    client = f"upgrade_period = {HARD_PERIOD}\nport_mapping = false"
    ping = None
    try:
        med.start_server(extra=f'{STUN_EXTRA}\nrelay = true\nrelay_ports = "50000-50099"')
        bob = med.start_client("bob", ts=INNER, client=client)
        alice = med.start_client("alice", ts=INNER, client=client)
        med.wait_registered("alice", "bob", timeout=15)
        nat_a, nat_b = wait_nat(alice)["summary"], wait_nat(bob)["summary"]
        assert nat_a.startswith("mapping APDM, filtering APDF") and "random ports" in nat_a, nat_a
        assert nat_b.startswith("mapping EIM, filtering APDF"), nat_b
        _block(lab)  # the first setup's probing meets nothing: the relay
        r = alice.up("bob", timeout=40)
        assert r["remote"][0] == CAROL, r
        before = _sa(alice, "bob")
        assert before is not None and before["remote-host"] == CAROL
        first = alice.status()["status"]["connections"]
        assert any("did not meet" in (c.get("probing") or "") for c in first), first  # it probed, in vain

        # a ping through the tunnel across the move (the first round starts within HARD_PERIOD, its
        # probing ends within 5 s), until both sides moved and the direct path carried a ping of its own
        ping, log_path = _start_ping(lab, "hard-upgrade-ping.log")
        _unblock(lab)
        moved = _wait_remote(alice, "bob", NAT_PUBLIC["natB"], timeout=HARD_PERIOD + 10)
        assert moved["uniqueid"] == before["uniqueid"], (before, moved)  # the same IKE_SA, moved
        # from the socket of the pair that met: one of alice's extra sockets, or (about once in 257) her
        # NAT-T socket, whose mapping toward bob's endpoint the round's own checks made
        met = re.search(rf"mediated IKE_SA \d+: direct pair #\d+ {re.escape(LAN_ALICE)}\[(\d+)\] - "
                        rf"{re.escape(NAT_PUBLIC['natB'])}\[4500\]", alice.log_text())
        assert met is not None, alice.log_tail(60)
        assert moved["remote-port"] == 4500 and moved["local-port"] == int(met.group(1)), (moved, met.group(0))
        _wait_remote(bob, "alice", NAT_PUBLIC["natA"], timeout=10)  # bob followed
        for d, role in ((alice, "open"), (bob, "spray")):  # the probe round probed many ports, both sides
            assert re.search(rf"probe round for [0-9a-f]+: many-port probing \({role}\)", d.log_text()), d.log_tail(60)
        line = next(c for c in alice.status()["status"]["connections"] if c["name"] == "bob")
        assert line.get("path", "").endswith("(moved off the relay, many-port probing (open) met)"), line
        sent1, rcvd1, out1 = lab.ping("alice", INNER["bob"], source=INNER["alice"], count=3, interval=0.2)
        assert sent1 == 3 and rcvd1 == 3, out1
        _no_ping_lost(lab, ping, log_path)
        assert _sa(alice, "bob")["local-port"] == moved["local-port"]  # type: ignore[index]
    finally:
        if ping is not None and ping.poll() is None:
            lab.stop(ping, sig=signal.SIGINT)
        med.stop()
