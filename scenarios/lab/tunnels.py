"""Config text for one PSK host-to-host tunnel, for our iked (TOML) and for strongSwan (swanctl.conf),
shared by the interop tests and the benchmarks so both sides are described once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tunnel:
    """One end of the tunnel: its address and the peer's, both identities, the inner host addresses
    (`local_ts`/`remote_ts`: a /32 or /128 each) and the shared secret."""

    me: str
    peer: str
    my_id: str
    peer_id: str
    local_ts: str
    remote_ts: str
    psk: str


def _host(addr: str) -> str:
    return f"{addr}/128" if ":" in addr else f"{addr}/32"


def iked_psk_toml(t: Tunnel, *, encap: bool | None = None, conn: str = "net", extra_daemon: str = "") -> str:
    """Connection `conn` with CHILD_SA `net`, no rekeying."""
    enc = "" if encap is None else f"encap = {'true' if encap else 'false'}\n"
    return f"""[daemon]
listen = ["{t.me}"]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
{extra_daemon}
[[secrets.ike]]
id = ["{t.my_id}", "{t.peer_id}"]
secret = "{t.psk}"

[connections.{conn}]
local_addrs = ["{t.me}"]
remote_addrs = ["{t.peer}"]
proposals = "aes128gcm16-prfsha256-x25519"
rekey_time = 0
{enc}local = {{ auth = "psk", id = "{t.my_id}" }}
remote = {{ auth = "psk", id = "{t.peer_id}" }}
[connections.{conn}.children.net]
local_ts = ["{_host(t.local_ts)}"]
remote_ts = ["{_host(t.remote_ts)}"]
esp_proposals = "aes128gcm16"
rekey_time = 0
"""


def charon_psk_conf(t: Tunnel, *, conn: str = "net") -> str:
    """The same tunnel as swanctl.conf for a charon (connection `conn`, CHILD_SA `net`)."""
    return f"""connections {{
  {conn} {{
    local_addrs = {t.me}
    remote_addrs = {t.peer}
    proposals = aes128gcm16-prfsha256-x25519
    rekey_time = 0
    local {{
      auth = psk
      id = {t.my_id}
    }}
    remote {{
      auth = psk
      id = {t.peer_id}
    }}
    children {{
      net {{
        local_ts = {_host(t.local_ts)}
        remote_ts = {_host(t.remote_ts)}
        esp_proposals = aes128gcm16
        rekey_time = 0
      }}
    }}
  }}
}}
secrets {{
  ike-1 {{
    id-1 = {t.my_id}
    id-2 = {t.peer_id}
    secret = "{t.psk}"
  }}
}}
"""
