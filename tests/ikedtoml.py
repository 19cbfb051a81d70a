"""Our iked's TOML for one PSK connection with one CHILD_SA (docs/configuration.md), for the tests that
run iked against a charon with settings of their own (data plane, virtual IPs, trap, keying tries):
each test states only what differs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@dataclass(frozen=True)
class PskConn:
    """Connection `conn` from `me` to `peer` ("%any": whoever comes), iked listening on `me`; `daemon`,
    `conn_extra` and `child_extra` are further lines of the [daemon], connection and CHILD_SA tables."""

    me: str
    peer: str
    my_id: str
    peer_id: str
    psk: str
    remote_ts: Sequence[str]
    local_ts: Sequence[str] = ()
    conn: str = "net"
    child: str = "net"
    daemon: str = 'dataplane = "xfrm"'
    conn_extra: str = ""
    child_extra: str = ""

    def toml(self) -> str:
        """The file's text; the control socket's path is left as "@CTL@"."""
        lines = [
            "[daemon]", f'listen = ["{self.me}"]', 'control = "@CTL@"', self.daemon,
            f"[connections.{self.conn}]", f'local_addrs = ["{self.me}"]', f'remote_addrs = ["{self.peer}"]',
            'proposals = "aes128gcm16-prfsha256-x25519"',
            f'local = {{ auth = "psk", id = "{self.my_id}" }}', f'remote = {{ auth = "psk", id = "{self.peer_id}" }}',
            self.conn_extra,
            f"[connections.{self.conn}.children.{self.child}]",
            f"local_ts = {_list(self.local_ts)}" if self.local_ts else "",
            f"remote_ts = {_list(self.remote_ts)}", 'esp_proposals = "aes128gcm16"', self.child_extra,
            "[[secrets.ike]]", f'id = ["{self.my_id}", "{self.peer_id}"]', f'secret = "{self.psk}"',
        ]
        return "\n".join(line for line in lines if line) + "\n"
