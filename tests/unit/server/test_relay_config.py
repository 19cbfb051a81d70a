"""`[mediation] relay*` settings and the relays in `ikectl status`."""

from __future__ import annotations

import pytest

from core_ike.daemon.ctl import format_status
from core_ike.errors import LocalError
from mediation_client.daemon import client_config
from mediation_server.daemon import relay_config


def test_relay_settings() -> None:
    rc = relay_config({"relay_ports": "40000-40009", "relay_per_peer": 2, "relay_total": 5,
                       "relay_idle_timeout": "1m", "relay_rate": 1000, "relay_packet_rate": 10})
    assert rc.enabled and rc.ports == (40000, 40009) and rc.per_peer == 2 and rc.total == 5
    assert rc.idle_timeout == 60.0 and rc.rate_bytes == 1000.0 and rc.rate_packets == 10.0
    assert relay_config({}).ports == (50000, 50999) and not relay_config({"relay": False}).enabled
    assert relay_config({}).unused_timeout == 15.0
    assert relay_config({"relay_unused_timeout": "5s"}).unused_timeout == 5.0
    with pytest.raises(LocalError):
        relay_config({"relay_unused_timeout": 0})
    for bad in ("x-y", "80-90", "60000-50000"):
        with pytest.raises(LocalError):
            relay_config({"relay_ports": bad})
    assert client_config({}).relay and not client_config({"relay": False}).relay


def test_status_lists_relays() -> None:
    text = format_status({"peers": [], "callbacks": [], "relays": [{
        "id": 1, "a": "alice@med", "b": "bob@med", "a_port": 50000, "b_port": 50001, "address": "203.0.113.10",
        "a_latched": "203.0.113.1[4500]", "b_latched": "", "bytes_a_to_b": 10, "bytes_b_to_a": 0, "idle": 1.5}]})
    assert "1 relay(s):" in text
    assert "#1 alice@med 203.0.113.1[4500] -> 203.0.113.10[50000] | 203.0.113.10[50001] <- - bob@med" in text
