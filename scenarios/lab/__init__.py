"""Reusable network-namespace lab: topologies, NAT, processes, captures, strongSwan charon driver.

See ``scenarios/lab/README.md`` for the API and examples.
"""

from scenarios.lab.loss import add_loss, internet_hops, loss_counters
from scenarios.lab.netns import Lab, LabError, cleanup_orphans, cleanup_stale, unique_prefix, wait_for
from scenarios.lab.pcap import Capture, Packet, read_pcap
from scenarios.lab.topologies import lab_session, nat_lab, two_hosts

__all__ = [
    "Capture", "Lab", "LabError", "Packet", "add_loss", "cleanup_orphans", "cleanup_stale", "internet_hops",
    "lab_session", "loss_counters", "nat_lab", "read_pcap", "two_hosts", "unique_prefix", "wait_for",
]
