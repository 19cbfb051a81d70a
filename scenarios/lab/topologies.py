"""Ready-made lab topologies (docs/nat-lab.md §3, §4).

``two_hosts``: two namespaces on one link, for IKE interop tests. ``nat_lab``: alice behind natA, bob
behind natB, carol (mediation server) on the internet segment, optionally venus behind natA too, with
Linux NAT (endpoint-independent or symmetric) and the WAN input drop rule (docs/nat-lab.md §4.2); the internet
segment is a bridge, or the userspace delay hub of :mod:`scenarios.lab.delay` when ``delay_ms`` is given.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from scenarios.lab import natkinds
from scenarios.lab.events import wait_files
from scenarios.lab.netns import Lab, LabError, cleanup_orphans, read_text

NatKind = Literal["eim", "symmetric", "port-restricted", "full-cone", "address-restricted", "symmetric-random",
                  "symmetric-sequential", "none"]  # scenarios/lab/natkinds.py

# docs/nat-lab.md §4: endpoint-independent mapping (port preserving) vs address-and-port-dependent (random)
_NAT_RULES = {
    "eim": 'oifname "wan0" masquerade',
    "symmetric": 'oifname "wan0" masquerade fully-random',
}

NAT_RULESET = """table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {rule}
  }}
}}
"""

# docs/nat-lab.md §4.2: unsolicited inbound UDP must not take the conntrack tuple (CPE-like WAN filter)
WAN_DROP_RULESET = """table inet fw {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan0" ct state new meta l4proto udp drop
  }
}
"""

NAT_PUBLIC = {"natA": "203.0.113.1", "natB": "203.0.113.2"}
CAROL = "203.0.113.10"


def two_hosts(prefix: str | None = None, names: tuple[str, str] = ("alice", "bob"),
              workdir: str | Path | None = None, inner: bool = True) -> Lab:
    """Two namespaces joined by one veth link: ``names[0]`` 192.0.2.1/24 <-> ``names[1]`` 192.0.2.2/24.

    With ``inner`` each host also gets a tunnel-inner address on ``lo`` (this kernel has no dummy links) (10.10.1.1/32 and
    10.10.2.1/32, in ``lab.info["inner"]``) so CHILD_SA traffic selectors do not cover the IKE peers
    themselves (a kernel-libipsec route for the peer's own address would loop the ESP packets).
    """
    a, b = names
    lab = Lab(prefix, workdir)
    try:
        lab.add_host(a)
        lab.add_host(b)
        lab.link(a, "eth0", b, "eth0", "192.0.2.1/24", "192.0.2.2/24")
        lab.info["inner"] = {}
        if inner:
            for host, ip in ((a, "10.10.1.1"), (b, "10.10.2.1")):
                lab.addr(host, "lo", f"{ip}/32")
                lab.info["inner"][host] = ip
    except BaseException:
        lab.close(passed=False)
        raise
    return lab


def nat_lab(prefix: str | None = None, nat_a: NatKind = "eim", nat_b: NatKind = "eim",
            same_nat_peer: bool = False, delay_ms: float | None = None, loss: float = 0.0,
            wan_drop: bool = True, workdir: str | Path | None = None) -> Lab:
    """The NAT topology of docs/nat-lab.md §3.2::

        alice 10.1.0.2 [venus 10.1.0.3] -- natA 10.1.0.1 | 203.0.113.1 --+
        bob   10.2.0.2                  -- natB 10.2.0.1 | 203.0.113.2 --+-- inet (br0 or delay hub)
                                                   carol 203.0.113.10 --+

    ``nat_a``/``nat_b``: "eim" (masquerade) or "symmetric" (masquerade fully-random). ``wan_drop`` adds
    the input drop rule of docs/nat-lab.md §4.2 on both NATs. ``delay_ms`` (even 0) replaces the bridge by the userspace
    TAP hub adding that one-way delay per hop through the internet segment (and ``loss``).
    """
    lab = Lab(prefix, workdir)
    try:
        _build_nat_lab(lab, nat_a, nat_b, same_nat_peer, delay_ms, loss, wan_drop)
    except BaseException:
        lab.close(passed=False)
        raise
    return lab


def _build_nat_lab(lab: Lab, nat_a: NatKind, nat_b: NatKind, same_nat_peer: bool,
                   delay_ms: float | None, loss: float, wan_drop: bool) -> None:
    for kind in (nat_a, nat_b):
        if kind not in natkinds.KINDS:
            raise LabError(f"unknown NAT kind {kind!r} ({', '.join(natkinds.KINDS)})")
    hosts = ["alice", "natA", "inet", "natB", "bob", "carol"] + (["venus"] if same_nat_peer else [])
    for h in hosts:
        lab.add_host(h)
    # LANs
    if same_nat_peer:
        lab.link("alice", "eth0", "natA", "lana", "10.1.0.2/24")
        lab.link("venus", "eth0", "natA", "lanv", "10.1.0.3/24")
        lab.bridge("natA", "lan0", ["lana", "lanv"], "10.1.0.1/24")
        lab.route("venus", "default", "10.1.0.1")
    else:
        lab.link("alice", "eth0", "natA", "lan0", "10.1.0.2/24", "10.1.0.1/24")
    lab.link("bob", "eth0", "natB", "lan0", "10.2.0.2/24", "10.2.0.1/24")
    lab.route("alice", "default", "10.1.0.1")
    lab.route("bob", "default", "10.2.0.1")
    # internet segment
    wan = [("natA", "wan0", "203.0.113.1/24"), ("natB", "wan0", "203.0.113.2/24"),
           ("carol", "eth0", f"{CAROL}/24")]
    if delay_ms is None:
        ports = {"natA": "pA", "natB": "pB", "carol": "pC"}
        for host, ifname, cidr in wan:
            lab.link(host, ifname, "inet", ports[host], cidr)
        lab.bridge("inet", "br0", ports.values())
    else:
        start_delay_hub(lab, [(h, i) for h, i, _ in wan], delay_ms, loss)
        for host, ifname, cidr in wan:
            lab.set_up(host, ifname)
            lab.addr(host, ifname, cidr)
    # NAT routers
    for nat, kind in (("natA", nat_a), ("natB", nat_b)):
        lab.sysctl(nat, "net.ipv4.ip_forward", 1)
        lan_host = "10.1.0.2" if nat == "natA" else "10.2.0.2"
        lab.nft(nat, natkinds.nat_ruleset(kind, NAT_PUBLIC[nat], lan_host))
        if kind == "none":  # routed: the other router and carol reach the LAN through this one
            natkinds.routes_for_unnatted(lab, nat, "10.1.0.0/24" if nat == "natA" else "10.2.0.0/24",
                                         NAT_PUBLIC[nat], ["carol", "natB" if nat == "natA" else "natA"])
        if wan_drop:
            lab.nft(nat, WAN_DROP_RULESET)
        lab.nats.append(nat)
        lab.addrs[nat] = NAT_PUBLIC[nat]
    lab.info.update(nat_a=nat_a, nat_b=nat_b, delay_ms=delay_ms, loss=loss, carol=CAROL,
                    public=dict(NAT_PUBLIC), same_nat_peer=same_nat_peer)


@contextlib.contextmanager
def lab_session(build: Callable[..., Lab], *, failed: Callable[[], bool] | None = None,
                say: Callable[[str], object] | None = None, **kw: Any) -> Iterator[Lab]:
    """``with lab_session(nat_lab, nat_b="symmetric") as lab:`` removes the namespaces of dead runs
    (:func:`cleanup_orphans`), builds the lab with ``build(**kw)`` and ends it with :meth:`Lab.close`: a body
    that passed leaves nothing behind; one that raised keeps the lab's files (daemon logs, captures) and the
    exception's notes say where (shown under its traceback), as does ``say`` (default: a line on stderr).

    A pytest fixture's body does not see its tests fail (pytest raises nothing at its ``yield``): it passes
    ``failed``, asked at the end (e.g. whether the session counts more failed tests than when the lab was
    built), and a true answer keeps the files as a raise does."""
    cleanup_orphans()
    lab = build(**kw)
    passed = False
    try:
        yield lab
        passed = failed is None or not failed()
    except BaseException as e:
        e.add_note(f"lab {lab.prefix}: files of the failed run: {lab.dir}")
        raise
    finally:
        lab.close(passed, say)


def start_delay_hub(lab: Lab, ports: list[tuple[str, str]], delay_ms: float, loss: float = 0.0,
                    host: str = "inet", timeout: float = 10.0) -> None:
    """Start :mod:`scenarios.lab.delay` in ``host``, creating a TAP per (host, ifname) port."""
    script = Path(__file__).with_name("delay.py")
    logf = lab.host_dir(host) / "delay-hub.log"
    argv = [sys.executable, str(script), "--delay-ms", str(delay_ms), "--loss", str(loss)]
    argv += [f"{lab.ns(h)}:{i}" for h, i in ports]
    proc = lab.popen(host, argv, logf)
    wait_files(lambda: proc.poll() is not None or "ready" in read_text(logf), timeout, [logf], what="delay hub")
    if proc.poll() is not None:
        raise LabError(f"delay hub failed: {read_text(logf)}")
    lab.info["delay_hub_pid"] = proc.pid
