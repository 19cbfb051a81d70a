"""NAT behaviour in the lab: carol's second STUN address (RFC 5780) and reading what a client measured."""

from __future__ import annotations

from typing import Any

from scenarios.lab.iked import Iked
from scenarios.lab.netns import Lab, wait_for

CAROL_ALT = "203.0.113.11"  # carol's second address: RFC 5780 change-IP answers leave from here
STUN_EXTRA = f'stun_alt_address = "{CAROL_ALT}"'  # [mediation] of a server_toml


def add_carol_alt(lab: Lab) -> None:
    lab.addr("carol", "eth0", f"{CAROL_ALT}/24")


def wait_nat(client: Iked, timeout: float = 20.0) -> dict[str, Any]:
    """The client's NAT behaviour once its discovery has run (`ikectl status` -> status.nat)."""
    out: dict[str, Any] = {}

    def done() -> bool:
        st = client.ctl({"cmd": "status"}).get("status", {})
        if st.get("nat"):
            out.update(st["nat"])
            return True
        return False

    wait_for(done, timeout, interval=0.1, what=f"{client.host}'s NAT behaviour discovery")
    return out
