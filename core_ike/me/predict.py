"""Predicted server-reflexive candidates for an APDM NAT that allocates its ports sequentially (pure).

An address-and-port-dependent NAT (RFC 4787 §4.1) gives each new destination a new public port, so the
server-reflexive endpoint the mediation server saw ([ME] §3.3.2) is useless to a peer whose own NAT
filters by address and port: the check toward that peer leaves from a port nobody announced. A NAT
that hands out its ports in order (RFC 4787 §4.2.2 port assignment; the step measured by RFC 5780
discovery, mediation_client/natdisc.py) makes the next ones predictable: the mapping of our check
toward the peer is one of the ports after the last one we saw. Each prediction is offered as a
SERVER_REFLEXIVE ME_ENDPOINT ([ME] §3.3.2 has no type of its own for it, as RFC 8445 §5.1.1.2 has none
for a NAT-assisted one) ranked below the real server-reflexive endpoint, based at the same local
socket; the peer checks it as any other remote candidate ([ME] §5.1) and the check that answers
confirms the guess. Nothing here reads a clock or a random source: the adapter passes what it measured.

Both sides behind such NATs: each side's k-th new mapping after its discovery is its k-th prediction,
so each sends its checks to the peer's predictions first and in order ("ladder", `predicted_among`):
its k-th check leaves from its own k-th predicted port toward the peer's k-th, while the peer's k-th
check runs the same five-tuple the other way, and both NATs' filters (RFC 4787 §5) let it in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..constants import MeEndpointType
from .endpoints import Addr, Endpoint, make_endpoint

PORT_MIN = 1024  # NATs map to the registered and dynamic ranges only (RFC 6056 §2.1)
PORT_MAX = 65535
DEFAULT_COUNT = 8  # predictions offered; the mediation server accepts 16 ME_ENDPOINTs (docs/protocol.md §4.2)
MAX_STEP = 10  # natdisc.SEQUENTIAL_MAX_STEP: a larger step is not taken for sequential allocation


@dataclass(frozen=True)
class Allocation:
    """What discovery measured of our NAT's port allocation (RFC 5780 §4.3 mappings, in order)."""

    last_port: int  # the public port of the newest mapping seen (the next ones follow it)
    step: int  # ports between consecutive mappings


def predicted_ports(alloc: Allocation, count: int = DEFAULT_COUNT) -> list[int]:
    """The `count` public ports the next mappings get: last + step, last + 2 step, ... inside
    PORT_MIN..PORT_MAX (a NAT that reaches the top starts again at the bottom of its range)."""
    if not 0 < alloc.step <= MAX_STEP:
        raise ValueError(f"port step {alloc.step} outside 1..{MAX_STEP}")
    if not PORT_MIN <= alloc.last_port <= PORT_MAX:
        raise ValueError(f"port {alloc.last_port} outside {PORT_MIN}..{PORT_MAX}")
    span = PORT_MAX - PORT_MIN + 1
    return [PORT_MIN + (alloc.last_port - PORT_MIN + alloc.step * k) % span for k in range(1, count + 1)]


def predicted_endpoints(srflx: Endpoint, alloc: Allocation, base: Addr, count: int = DEFAULT_COUNT) -> list[Endpoint]:
    """SERVER_REFLEXIVE endpoints at the srflx address on the predicted ports, each ranked just below
    the last (the nearest guess first, RFC 8445 §5.1.2 local preference), all based at `base`; ports
    equal to the srflx one are left out (that endpoint is offered already)."""
    if srflx.address is None or count <= 0:
        return []
    out: list[Endpoint] = []
    for i, port in enumerate(predicted_ports(alloc, count)):
        if port == srflx.port:
            continue
        out.append(make_endpoint(MeEndpointType.SERVER_REFLEXIVE, srflx.address, port, base=base,
                                 priority=max(0, srflx.priority - 1 - i)))
    return out


MAX_PREDICTED = 16  # the most predictions one ME_CONNECT can carry (the server's endpoint limit)


def predicted_among(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The remote endpoints that are predictions (`predicted_endpoints` of our peer), best first.

    They travel as plain SERVER_REFLEXIVE endpoints; one is a prediction when another SERVER_REFLEXIVE
    endpoint at the same address ranks at most MAX_PREDICTED above it (the real one, or the previous
    guess). strongSwan sends a single server-reflexive endpoint and a port mapping ranks 2^16 above
    its srflx (endpoints.MAPPED_PRIORITY), so neither is taken for one.
    """
    srflx = [e for e in endpoints if e.type == MeEndpointType.SERVER_REFLEXIVE and e.address is not None]
    out = [e for e in srflx if any(o is not e and o.address == e.address
                                   and 1 <= o.priority - e.priority <= MAX_PREDICTED for o in srflx)]
    return sorted(out, key=lambda e: -e.priority)
