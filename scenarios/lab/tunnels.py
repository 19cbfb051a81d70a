"""Config text for one PSK host-to-host tunnel, for our iked (TOML) and for strongSwan (swanctl.conf),
shared by the interop tests and the benchmarks so both sides are described once."""

from __future__ import annotations


def _host(addr: str) -> str:
    return f"{addr}/128" if ":" in addr else f"{addr}/32"


def iked_psk_toml(me: str, peer: str, my_id: str, peer_id: str, local_ts: str, remote_ts: str, psk: str, *,
                  encap: bool | None = None, conn: str = "net", extra_daemon: str = "") -> str:
    """Connection `conn` with CHILD_SA `net` (`local_ts`/`remote_ts` are host addresses: /32 or /128),
    no rekeying."""
    enc = "" if encap is None else f"encap = {'true' if encap else 'false'}\n"
    return f"""[daemon]
listen = ["{me}"]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
{extra_daemon}
[[secrets.ike]]
id = ["{my_id}", "{peer_id}"]
secret = "{psk}"

[connections.{conn}]
local_addrs = ["{me}"]
remote_addrs = ["{peer}"]
proposals = "aes128gcm16-prfsha256-x25519"
rekey_time = 0
{enc}local = {{ auth = "psk", id = "{my_id}" }}
remote = {{ auth = "psk", id = "{peer_id}" }}
[connections.{conn}.children.net]
local_ts = ["{_host(local_ts)}"]
remote_ts = ["{_host(remote_ts)}"]
esp_proposals = "aes128gcm16"
rekey_time = 0
"""


def charon_psk_conf(me: str, peer: str, my_id: str, peer_id: str, local_ts: str, remote_ts: str, psk: str, *,
                    conn: str = "net") -> str:
    """The same tunnel as swanctl.conf for a charon (connection `conn`, CHILD_SA `net`)."""
    return f"""connections {{
  {conn} {{
    local_addrs = {me}
    remote_addrs = {peer}
    proposals = aes128gcm16-prfsha256-x25519
    rekey_time = 0
    local {{
      auth = psk
      id = {my_id}
    }}
    remote {{
      auth = psk
      id = {peer_id}
    }}
    children {{
      net {{
        local_ts = {_host(local_ts)}
        remote_ts = {_host(remote_ts)}
        esp_proposals = aes128gcm16
        rekey_time = 0
      }}
    }}
  }}
}}
secrets {{
  ike-1 {{
    id-1 = {my_id}
    id-2 = {peer_id}
    secret = "{psk}"
  }}
}}
"""
