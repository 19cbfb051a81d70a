"""keyingtries: a connection with start_action = start whose peer is not up yet keeps retrying (with a
growing delay) and comes up by itself once the peer (a real charon) starts."""

from __future__ import annotations

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

CHARON_CONF = """connections {
  home {
    local_addrs = 192.0.2.2
    remote_addrs = 192.0.2.1
    proposals = aes128gcm16-prfsha256-x25519
    local {
      auth = psk
      id = bob@lab
    }
    remote {
      auth = psk
      id = alice@lab
    }
    children {
      net {
        local_ts = 10.10.2.1/32
        remote_ts = 10.10.1.1/32
      }
    }
  }
}
secrets {
  ike {
    id-1 = alice@lab
    id-2 = bob@lab
    secret = "keyingtries-secret-0123456789"
  }
}
"""

IKED_CONF = """[daemon]
listen = ["192.0.2.1"]
control = "@CTL@"
dataplane = "none"

[[secrets.ike]]
id = ["alice@lab", "bob@lab"]
secret = "keyingtries-secret-0123456789"

[connections.home]
remote_addrs = ["192.0.2.2"]
keyingtries = 0
local = { auth = "psk", id = "alice@lab" }
remote = { auth = "psk", id = "bob@lab" }
[connections.home.retransmit]
timeout = 0.3
base = 1.5
tries = 1
[connections.home.children.net]
local_ts = ["10.10.1.1/32"]
remote_ts = ["10.10.2.1/32"]
start_action = "start"
"""


def test_connection_retries_until_the_peer_is_up(two_hosts_per_test: Lab) -> None:
    lab = two_hosts_per_test
    iked = Iked(lab, "alice", IKED_CONF)
    charon = Charon(lab, "bob", name="charon-late", conf=CHARON_CONF)
    try:
        iked.start()
        iked.wait_log("keying try 2 of unlimited for 'home'", 10)
        assert not iked.list_sas() or iked.list_sas()[0]["state"] != "ESTABLISHED"
        charon.start()
        sas = iked.wait_sas(lambda s: any(x["state"] == "ESTABLISHED" and x["child-sas"] for x in s), timeout=20)
        assert sas[0]["name"] == "home"
        assert "unreachable" in iked.log_text()  # the failed tries said why
    finally:
        iked.stop()
        charon.stop()
