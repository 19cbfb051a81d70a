"""Random packet loss in a lab's routers with nftables (this kernel has no netem qdisc, so `tc qdisc ... netem loss` is not available; see scenarios/lab/README.md).

``add_loss(lab, hosts, percent)`` loads, in each of ``hosts``, a filter chain on the forward hook that
drops ``percent`` % of the packets the host forwards (``numgen random mod 100 < percent drop``), in both
directions, independently per packet and per host. Unlike the TAP hub of :mod:`scenarios.lab.delay` it keeps
the plain bridge (no userspace forwarder, no added latency) and needs nothing but nftables.

In :func:`scenarios.lab.topologies.nat_lab` the routers are the two NATs (:func:`internet_hops`): a packet
between alice and carol crosses one lossy hop (natA), one between alice and bob two (natA and natB); carol
sits on the internet segment itself. The hosts' own traffic (input/output: the NATs' conntrack, their
keepalives) is not touched.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from core_ike.ike.config import RetransmitConfig
from scenarios.lab.netns import Lab, LabError
from scenarios.lab.pcap import Capture

TABLE = "lab_loss"

LOSS_RULESET = """table inet {table} {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    numgen random mod 100 < {percent} counter drop
  }}
}}
"""


def chance_failure(loss: float, hops: int, budget: float, exchanges: int = 2, before: float = 1.0,
                   retransmit: RetransmitConfig | None = None, efficiency: float = 1.0) -> float:
    """The probability that a setup whose last ``exchanges`` request/response exchanges cross ``hops`` lossy
    hops each way, each hop dropping a ``loss`` share (0-1) of the packets independently, is not done
    within ``budget`` seconds though every daemon does its part: every try of an exchange (a request and its
    answer: the responder answers each retransmission from its cache, RFC 7296 2.1) gets through with
    ``q = efficiency * (1 - loss) ** (2 * hops)``, the tries leave on the prompt schedule of ``retransmit``
    (RFC 7296 2.1, 2.4: the waits grow exponentially, so a longer budget adds few tries), an exchange starts
    when the one before it ended, the first ``before`` seconds after the start. ``efficiency`` < 1 for what the
    lab shows below the ideal (``tests/resilience/test_loss_budget.py`` says what was measured).
    """
    cfg = retransmit or RetransmitConfig()
    sends = [0.0]
    for i in range(cfg.retransmits(prompt=True)):
        sends.append(sends[-1] + cfg.delay(i, prompt=True))
    q = efficiency * (1.0 - loss) ** (2 * hops)

    def done_by(n: int, left: float) -> float:
        """P(the last n exchanges are done within `left` seconds)."""
        if n == 0:
            return 1.0
        return sum(q * (1.0 - q) ** k * done_by(n - 1, left - t) for k, t in enumerate(sends) if t <= left)

    return 1.0 - done_by(exchanges, budget - before)


def internet_hops(lab: Lab) -> list[str]:
    """The routers on the internet paths of a lab: its NATs (``lab.nats``)."""
    return list(lab.nats)


def add_loss(lab: Lab, hosts: list[str] | None = None, percent: int = 30) -> list[str]:
    """Drop ``percent`` % (0-100) of the packets each of ``hosts`` forwards (default: :func:`internet_hops`).

    Replaces an earlier loss rule in those hosts; ``percent = 0`` removes it. Returns the hosts changed.
    """
    if not 0 <= percent <= 100 or int(percent) != percent:
        raise LabError(f"loss percent must be a whole number 0-100, not {percent!r}")
    hosts = internet_hops(lab) if hosts is None else hosts
    for h in hosts:
        lab.run(h, ["nft", "delete", "table", "inet", TABLE], check=False)
        if percent:
            lab.nft(h, LOSS_RULESET.format(table=TABLE, percent=int(percent)))
    lab.info.setdefault("nft_loss", {}).update({h: int(percent) for h in hosts})
    return hosts


def loss_counters(lab: Lab, hosts: list[str] | None = None) -> dict[str, int]:
    """Packets dropped so far by the loss rule of each host."""
    out: dict[str, int] = {}
    for h in internet_hops(lab) if hosts is None else hosts:
        res = lab.run(h, ["nft", "list", "table", "inet", TABLE], check=False)
        words = res.stdout.split()
        out[h] = int(words[words.index("packets") + 1]) if "packets" in words else 0
    return out


@dataclass
class HopWatch:
    """What crossed each side of each lossy hop during a :func:`watch_hops` block (filled at its end)."""

    lab: Lab
    captures: dict[str, Capture] = field(default_factory=dict)  # "natA lan0" -> its capture

    def report(self) -> str:
        """Per interface of each NAT, the UDP packets seen per flow (``src:port > dst:port kind xN``), in the
        order the interfaces are crossed: a packet seen on one side of a NAT and not on the other was
        dropped there; its conntrack table (``conntrack -L -p udp``, taken now) shows the mappings."""
        out = []
        for where, cap in self.captures.items():
            counts = Counter(p.flow() for p in cap.packets if p.proto == 17)
            out.append(f"{where} ({cap.path.name}):")
            out += [f"  {src}:{sp} > {dst}:{dp} {kind} x{n}" for (src, sp, dst, dp, kind), n in sorted(
                counts.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]
        for nat in internet_hops(self.lab):
            table = self.lab.run(nat, ["conntrack", "-L", "-p", "udp"], check=False).stdout.strip()
            out.append(f"{nat} conntrack -L -p udp:")
            out += [f"  {line}" for line in table.splitlines()] or ["  (empty)"]
        return "\n".join(out)


@contextlib.contextmanager
def watch_hops(lab: Lab, hosts: list[str] | None = None, ifaces: tuple[str, ...] = ("lan0", "wan0"),
               name: str = "hops") -> Iterator[HopWatch]:
    """Capture UDP on ``ifaces`` of each of ``hosts`` (default: :func:`internet_hops`) for the block; the
    files stay in the lab's directory (``<name>-<host>-<iface>.pcap``). :meth:`HopWatch.report` tells,
    after the block, where each flow's packets went missing."""
    watch = HopWatch(lab)
    with contextlib.ExitStack() as stack:
        for h in internet_hops(lab) if hosts is None else hosts:
            for i in ifaces:
                watch.captures[f"{h} {i}"] = stack.enter_context(lab.capture(h, i, "udp", name=f"{name}-{h}-{i}"))
        yield watch
