"""Trap policies (ipsec.conf `auto=route`, docs/gateway.md "Trap policies"): the gateway routes its
connections with iked's trap manager, core_ike/daemon/traps.py."""

from __future__ import annotations

from core_ike.daemon.traps import (
    PENDING_MAX,
    TRAP_REQID_BASE,
    Trap,
    TrapManager,
    packet_selectors,
    trap_policies,
)

__all__ = ["PENDING_MAX", "TRAP_REQID_BASE", "Trap", "TrapManager", "packet_selectors", "trap_policies"]
