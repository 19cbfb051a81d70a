"""The routed connections in `ikectl status` of the mediation daemons, as in iked's (core_ike/daemon/traps.py,
EngineControl.status_parts; docs/operations.md): a real mediation client and a real mediation server
daemon, each with a plain connection whose CHILD_SA says start_action = "trap", their control sockets,
a userspace data plane (no TUN), ikectl's own main() as the client."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

import pytest

from core_ike.daemon import ctl
from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from core_ike.io.userspace import UserspaceDataPlane
from mediation_client.daemon import _build as build_client
from mediation_server.daemon import _build as build_server
from tests.unit.fakes import Clock, Wire

SITE = """\
[connections.site]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "bob@test" }}
[connections.site.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24[tcp/443]"]
start_action = "trap"
[[secrets.ike]]
id = ["alice@test", "bob@test", "med@test"]
secret = "a-very-secret-shared-key"
"""

CLIENT = """\
[daemon]
listen = ["192.0.2.1"]
control = "{control}"
dataplane = "none"
[client]
nat_discovery = false
port_mapping = false
[connections.medsrv]
mediation = true
remote_addrs = ["192.0.2.9"]
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "med@test" }}
""" + SITE

SERVER = """\
[daemon]
listen = ["192.0.2.1"]
control = "{control}"
[mediation]
relay = false
""" + SITE


def start(tmp_path: Path, text: str, build: object) -> tuple[Daemon, str]:
    sock = str(tmp_path / "daemon.ctl")
    path = tmp_path / "daemon.toml"
    path.write_text(textwrap.dedent(text.format(control=sock)))
    cfg = load(path)
    daemon = build(cfg, cfg.raw)  # type: ignore[operator]
    assert isinstance(daemon, Daemon)
    daemon.config_path = str(path)
    daemon.shutdown_timeout = 0.1
    daemon.dp = UserspaceDataPlane(lambda d, a: None, clock=Clock())
    wire = Wire()
    daemon.transport.sockets = {("192.0.2.1", 500): wire, ("192.0.2.1", 4500): wire}  # type: ignore[dict-item]
    return daemon, sock


@pytest.mark.parametrize(("text", "build", "own"), [
    (CLIENT, build_client, "mediation medsrv: #1 CONNECTING"),
    (SERVER, build_server, "0 peer(s) online:"),
], ids=["mediation-client", "mediation-server"])
def test_mediation_daemons_list_their_routed_connections(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        text: str, build: object, own: str) -> None:
    daemon, sock = start(tmp_path, text, build)

    async def ikectl(*argv: str) -> tuple[int, str, str]:
        rc = await asyncio.to_thread(ctl.main, ["-s", sock, *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err

    async def go() -> None:
        await daemon.server.start()
        daemon.autostart(time.monotonic())
        daemon.transport.flush()
        rc, out, _ = await ikectl("--json", "status")
        reply = json.loads(out)
        assert rc == 0 and ("status" in reply or "peers" in reply)  # the daemon's own part is there
        (site,) = reply["routed"]
        assert (site["name"], site["child"], site["remote-ts"], site["routed-by"], site["state"]) == \
            ("site", "net", ["10.2.0.0/24[tcp/443]"], "config", "waiting")
        rc, out, _ = await ikectl("status")
        assert rc == 0 and own in out, out
        assert f"1 routed CHILD_SA config(s):\n  site/net, reqid {site['reqid']}, TRAP, routed by config: " \
               "waiting for traffic\n    local  10.1.0.0/24\n    remote 10.2.0.0/24[tcp/443]" in out, out
        # unroute / route work there as in iked, and status follows
        rc, out, _ = await ikectl("unroute", "site")
        assert (rc, out.strip()) == (0, "unrouted 'site': trap policies removed")
        rc, out, _ = await ikectl("status")
        assert rc == 0 and own in out and "routed" not in out, out
        rc, out, _ = await ikectl("route", "site")
        assert rc == 0 and daemon.traps is not None and daemon.traps.routed() == {"site": ["net"]}
        rc, out, _ = await ikectl("status")
        assert "routed by command: waiting for traffic" in out, out
        await daemon.shutdown()
        assert daemon.dp._policies == []
        daemon.server.close()

    asyncio.run(go())
