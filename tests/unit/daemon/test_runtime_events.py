"""iked's event handling (core_ike/daemon/runtime.py on_event): what each event counts and what it does
to the keying tries of its connection."""

from __future__ import annotations

import textwrap
from pathlib import Path

from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from core_ike.ike import events as ev

TOML = """\
[daemon]
listen = ["192.0.2.1"]
control = "/nonexistent/iked.ctl"
dataplane = "none"
[connections.home]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
keyingtries = 3
proposals = "aes128gcm16-prfsha256-x25519"
local = { auth = "psk", id = "alice@test" }
remote = { auth = "psk", id = "bob@test" }
[[secrets.ike]]
id = ["alice@test", "bob@test"]
secret = "a-very-secret-shared-key"
"""


def _daemon(tmp_path: Path) -> Daemon:
    path = tmp_path / "iked.toml"
    path.write_text(textwrap.dedent(TOML))
    return Daemon(load(path))


def _established(name: str) -> ev.IkeSaEstablished:
    return ev.IkeSaEstablished(name, 1, ("192.0.2.1", 500), ("192.0.2.2", 500), "alice@test", "bob@test",
                               b"i" * 8, b"r" * 8, True)


def test_established_counts_and_ends_the_keying_tries(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    seen: list[object] = []
    d.listeners.append(seen.append)
    d._tries["home"] = 2  # a failed attempt was retried
    d._tries["other"] = 2
    e = _established("home")
    d.on_event(e)
    assert d.events["ike-established"] == 1
    assert "home" not in d._tries and d._tries["other"] == 2  # only its own connection's tries end
    assert seen == [e]  # the listeners still see it
    d.on_event(_established("home"))
    assert d.events["ike-established"] == 2


def test_failed_responder_counts_without_keying_tries(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    d._tries["home"] = 2
    d.on_event(ev.IkeSaFailed("home", 1, "timeout"))
    assert d.events["ike-failed"] == 1 and d.events["ike-established"] == 0
    assert d._tries["home"] == 2  # keyingtries is the initiator's (swanctl.conf)
