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

from scenarios.lab.netns import Lab, LabError

TABLE = "lab_loss"

LOSS_RULESET = """table inet {table} {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    numgen random mod 100 < {percent} counter drop
  }}
}}
"""


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
