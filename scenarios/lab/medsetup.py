"""strongSwan-only mediation on a :func:`~scenarios.lab.topologies.nat_lab` (docs/nat-lab.md §7.4).

carol runs a charon mediation server (``mediation = yes``, ``remote.id = %any``); alice and bob run
charons with a ``medsrv`` mediation connection and a mediated ``p2p`` connection (child ``net``).

:class:`CharonMediation` implements the :class:`MediatedSetupDriver` protocol that the benchmark
(``bench/mediated_setup.py``) and scenarios use; an implementation of our own plugs in by providing the
same five methods.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from scenarios.lab.charon import Charon, CharonError
from scenarios.lab.events import wait_files
from scenarios.lab.netns import Lab
from scenarios.lab.topologies import CAROL

LAN = {"alice": "10.1.0.2", "bob": "10.2.0.2", "venus": "10.1.0.3"}
PUBLIC = {"alice": "203.0.113.1", "bob": "203.0.113.2", "venus": "203.0.113.1"}


class MediatedSetupDriver(Protocol):
    """What the mediated-setup benchmark needs from one implementation (charon, ours, mixed)."""

    name: str

    def start(self) -> None:
        """Start the daemons (mediation server and both peers) and load their configs."""

    def bring_up_mediation(self) -> None:
        """Establish both peers' mediation connections; return once the server has both registered."""

    def initiate_and_wait(self, timeout: float) -> float:
        """Start the mediated connection on the initiator; return seconds until its CHILD_SA is installed."""

    def reset(self) -> None:
        """Remove the mediated SAs (keep the mediation SAs) so the next run starts from scratch."""

    def stop(self) -> None:
        """Stop every daemon."""


@dataclass
class PeerSpec:
    host: str                   # lab host (alice, bob, venus)
    med_id: str                 # identity toward the mediation server (pseudonym)
    med_psk: str                # PSK shared with the mediation server
    p2p_id: str                 # identity in the mediated connection
    children: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (local_ts, remote_ts)


def medsrv_conf(peers: list[PeerSpec], server_id: str = "carol@med", local_addr: str = CAROL) -> str:
    """swanctl.conf of a charon mediation server accepting every peer by its PSK (docs/nat-lab.md §7.4)."""
    secrets = "\n".join(
        f"  ike-{p.host} {{\n    id-1 = {server_id}\n    id-2 = {p.med_id}\n    secret = \"{p.med_psk}\"\n  }}"
        for p in peers)
    return f"""connections {{
  medsrv {{
    local_addrs = {local_addr}
    mediation = yes
    local {{
      auth = psk
      id = {server_id}
    }}
    remote {{
      auth = psk
      id = %any
    }}
  }}
}}
secrets {{
{secrets}
}}
"""


def peer_conf(me: PeerSpec, other: PeerSpec, p2p_psk: str, server_id: str = "carol@med",
              server_addr: str = CAROL, extra_p2p: str = "") -> str:
    """swanctl.conf of a mediation client with connection ``medsrv`` and mediated ``p2p`` (docs/nat-lab.md §7.4)."""
    children = "\n".join(
        f"      {name} {{\n        local_ts = {lts}\n        remote_ts = {rts}\n      }}"
        for name, (lts, rts) in me.children.items())
    return f"""connections {{
  medsrv {{
    remote_addrs = {server_addr}
    mediation = yes
    local {{
      auth = psk
      id = {me.med_id}
    }}
    remote {{
      auth = psk
      id = {server_id}
    }}
  }}
  p2p {{
    remote_addrs = %any
    mediated_by = medsrv
    mediation_peer = {other.med_id}
    {extra_p2p}
    local {{
      auth = psk
      id = {me.p2p_id}
    }}
    remote {{
      auth = psk
      id = {other.p2p_id}
    }}
    children {{
{children}
    }}
  }}
}}
secrets {{
  ike-med {{
    id-1 = {me.med_id}
    id-2 = {server_id}
    secret = "{me.med_psk}"
  }}
  ike-p2p {{
    id-1 = {me.p2p_id}
    id-2 = {other.p2p_id}
    secret = "{p2p_psk}"
  }}
}}
"""


def default_peers(initiator: str = "alice", responder: str = "bob",
                  ts_addrs: Mapping[str, str] | None = None) -> tuple[PeerSpec, PeerSpec]:
    """Peer specs with child ``net`` between the hosts' ``ts_addrs`` (default: their LAN addresses)."""
    ts = {**LAN, **(ts_addrs or {})}
    a = PeerSpec(initiator, f"{initiator}@med", f"{initiator}-medsrv-secret-0123456789", f"{initiator}@p2p",
                 {"net": (f"{ts[initiator]}/32", f"{ts[responder]}/32")})
    b = PeerSpec(responder, f"{responder}@med", f"{responder}-medsrv-secret-0123456789", f"{responder}@p2p",
                 {"net": (f"{ts[responder]}/32", f"{ts[initiator]}/32")})
    return a, b


class CharonMediation:
    """Three charons: carol = mediation server, ``initiator`` and ``responder`` = mediation clients.

    ``ts_addrs`` overrides the traffic-selector address per host (kernel-libipsec cannot install a
    CHILD_SA whose TS are the IKE peers' own addresses, e.g. two peers behind one NAT: use inner addresses).
    """

    name = "charon"

    def __init__(self, lab: Lab, initiator: str = "alice", responder: str = "bob", settings: str = "",
                 p2p_psk: str = "alice-bob-p2p-secret-0123456789",
                 ts_addrs: Mapping[str, str] | None = None) -> None:
        self.lab = lab
        self.a_spec, self.b_spec = default_peers(initiator, responder, ts_addrs)
        self.carol = Charon(lab, "carol", conf=medsrv_conf([self.a_spec, self.b_spec]), settings=settings)
        self.alice = Charon(lab, initiator, conf=peer_conf(self.a_spec, self.b_spec, p2p_psk), settings=settings)
        self.bob = Charon(lab, responder, conf=peer_conf(self.b_spec, self.a_spec, p2p_psk), settings=settings)
        self.child = "net"

    @property
    def charons(self) -> list[Charon]:
        return [self.carol, self.alice, self.bob]

    def start(self) -> None:
        for c in self.charons:
            c.start()

    def bring_up_mediation(self, timeout: float = 15.0) -> None:
        """bob first, then alice (as in strongSwan's p2pnat tests); wait until carol holds both."""
        self.bob.initiate(ike="medsrv", timeout=timeout)
        self.alice.initiate(ike="medsrv", timeout=timeout)
        self.carol.wait_ike("medsrv", count=2, timeout=timeout)

    def initiate_and_wait(self, timeout: float = 30.0) -> float:
        """``initiate --child net`` on alice (not waiting), poll list-sas every 5 ms until INSTALLED."""
        t0 = time.monotonic()
        self.alice.initiate(child=self.child, wait=False)
        self.alice.wait_child(self.child, timeout=timeout, interval=0.005)
        return time.monotonic() - t0

    def reset(self, timeout: float = 10.0) -> None:
        """Terminate the mediated IKE_SAs on both peers and forget the NAT mappings of the direct path."""
        for c in (self.alice, self.bob):
            c.terminate(ike="p2p", timeout=timeout)
        for c in (self.alice, self.bob):
            def gone(c: Charon = c) -> bool:
                return not any(sa["name"] == "p2p" for sa in c.list_sas())

            try:
                # again at each line charon logs, and 0.1 s after the last (its line may come before
                # `list-sas` drops the SA)
                wait_files(gone, timeout, [c.log_path], what=f"p2p SA on {c.host} gone", backstop=0.1)
            except TimeoutError as e:
                raise CharonError(f"{e}\n{c.log_tail()}") from None
        forget_direct_mappings(self.lab)

    def stop(self) -> None:
        for c in reversed(self.charons):
            c.stop()


def forget_direct_mappings(lab: Lab) -> None:
    """Delete the NATs' conntrack entries toward the other NAT (the punched path), keep those to carol."""
    public = lab.info.get("public", {})
    for nat in lab.nats:
        for other, addr in public.items():
            if other != nat:
                lab.run(nat, ["conntrack", "-D", "-p", "udp", "--orig-dst", addr], check=False)
