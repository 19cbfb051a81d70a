"""`ikectl route|unroute NAME` and the routed connections in `ikectl status` (core_ike/daemon/traps.py,
docs/operations.md): a real Daemon with its control socket, a real userspace data plane (no TUN: packets
handed to its outbound path), ikectl's own main() as the client."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from core_ike.daemon import ctl
from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from core_ike.io.dataplane import Acquire
from core_ike.io.userspace import UserspaceDataPlane
from gateway.ipsec_cmd import main as ipsec_cmd
from tests.unit import fakes
from tests.unit.fakes import Clock, Wire

TOML = """\
[daemon]
listen = ["192.0.2.1"]
control = "{control}"
dataplane = "none"
[connections.home]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "bob@test" }}
[connections.home.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
start_action = "trap"
[connections.office]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.3"]
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "carol@test" }}
[connections.office.children.web]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.3.0.0/24[tcp/443]"]
[connections.roaming]
remote_addrs = ["%any"]
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "dave@test" }}
[connections.roaming.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.4.0.0/24"]
[connections.medsrv]
mediation = true
remote_addrs = ["192.0.2.9"]
local = {{ auth = "psk", id = "alice@test" }}
remote = {{ auth = "psk", id = "med@test" }}
[[secrets.ike]]
id = ["alice@test", "bob@test", "carol@test", "dave@test", "med@test"]
secret = "a-very-secret-shared-key"
"""


def test_ikectl_route_unroute_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(tmp_path / "iked.ctl")
    path = tmp_path / "iked.toml"
    path.write_text(textwrap.dedent(TOML.format(control=sock)))
    daemon = Daemon(load(path))
    daemon.config_path = str(path)
    daemon.shutdown_timeout = 0.1
    clock = Clock()
    dp = UserspaceDataPlane(lambda d, a: None, clock=clock)
    daemon.dp = dp
    wire = Wire()
    daemon.transport.sockets = {("192.0.2.1", 500): wire, ("192.0.2.1", 4500): wire}  # type: ignore[dict-item]

    async def ikectl(*argv: str) -> tuple[int, str, str]:
        rc = await asyncio.to_thread(ctl.main, ["-s", sock, *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err

    async def routed() -> dict[str, dict[str, Any]]:
        rc, out, _ = await ikectl("--json", "status")
        assert rc == 0
        return {r["name"]: r for r in json.loads(out)["routed"]}

    def remote_subnets() -> set[str]:
        return {str(p.remote.subnet) for p in dp._policies}

    async def go() -> None:
        await daemon.server.start()
        daemon.autostart(time.monotonic())

        home = (await routed())["home"]
        assert (home["child"], home["local-ts"], home["remote-ts"]) == ("net", ["10.1.0.0/24"], ["10.2.0.0/24"])
        assert (home["routed-by"], home["acquire-pending"], home["child-up"]) == ("config", None, False)
        rc, out, _ = await ikectl("status")
        assert rc == 0 and f"home/net, reqid {home['reqid']}, TRAP, routed by config: waiting for traffic" in out
        assert "    remote 10.2.0.0/24" in out

        # a connection without start_action = "trap" is routed on demand, its selectors with their ports
        rc, out, _ = await ikectl("route", "office")
        assert (rc, out.strip()) == (0, "routed 'office' (web): trap policies installed")
        office = (await routed())["office"]
        assert (office["remote-ts"], office["routed-by"]) == (["10.3.0.0/24[tcp/443]"], "command")
        assert remote_subnets() == {"10.2.0.0/24", "10.3.0.0/24"}
        assert not daemon.engine.ike_sas()  # routed, nothing negotiated
        # `ikeme-ipsec status` against this iked (no gateway sources) lists the same traps
        assert await asyncio.to_thread(ipsec_cmd, ["-s", sock, "status"]) == 0
        out = capsys.readouterr().out
        assert "Routed Connections:\n" \
               f"         net{{1}}:  ROUTED, TUNNEL, reqid {home['reqid']}\n" \
               "         net{1}:   10.1.0.0/24 === 10.2.0.0/24\n" \
               f"         web{{2}}:  ROUTED, TUNNEL, reqid {office['reqid']}\n" \
               "         web{2}:   10.1.0.0/24 === 10.3.0.0/24[tcp/443]\n" in out, out

        # what cannot be routed says why, and changes nothing
        for name, why in (("nosuch", "no connection named 'nosuch'"),
                          ("roaming", "needs remote_addrs to name the peer's address (not \"%any\")"),
                          ("medsrv", "and no mediation")):
            rc, out, err = await ikectl("route", name)
            assert rc == 1 and out == "" and why in err, err
        rc, _, err = await ikectl("unroute", "roaming")
        assert rc == 1 and "ikectl: conn 'roaming' is not routed" in err
        rc, _, err = await ikectl("unroute", "nosuch")
        assert rc == 1 and "no connection named 'nosuch'" in err
        assert set(await routed()) == {"home", "office"}

        # a packet meets home's trap: the attempt it starts is shown while under way
        clock.t += 1.5
        dp._outbound(fakes.ipv4("10.1.0.5", "10.2.0.9", 17, 5000, 53, filler=8), clock.t)
        while (e := dp.next_event()) is not None:
            assert isinstance(e, Acquire)
            daemon.on_acquire(e, time.monotonic())
        assert len(daemon.engine.ike_sas()) == 1 and wire.sent[0][1] == ("192.0.2.2", 500)
        home = (await routed())["home"]
        assert home["acquire-pending"] is not None and home["acquire-pending"] >= 0
        rc, out, _ = await ikectl("status")
        assert "home/net" in out and "routed by config: acquire under way for" in out
        # `down` of that IKE_SA while it is being set up ends the attempt (no event says so): shown, and
        # the next packet starts a new one
        rc, out, _ = await ikectl("down", "home")
        assert rc == 0 and not daemon.engine.ike_sas()
        rc, out, _ = await ikectl("status")
        assert "home/net" in out and "routed by config: waiting for traffic" in out, out
        clock.t += 1.5
        dp.check_timers(clock.t)  # the data plane forgets the flow it dropped (core_ike/io/acquire.py)
        dp._outbound(fakes.ipv4("10.1.0.5", "10.2.0.9", 17, 5000, 53, filler=8), clock.t)
        while (e := dp.next_event()) is not None:
            assert isinstance(e, Acquire)
            daemon.on_acquire(e, time.monotonic())
        assert len(daemon.engine.ike_sas()) == 1

        # unroute of a config-routed connection: gone until the next reload routes it again
        rc, out, _ = await ikectl("unroute", "home")
        assert (rc, out.strip()) == (0, "unrouted 'home': trap policies removed")
        assert set(await routed()) == {"office"} and remote_subnets() == {"10.3.0.0/24"}
        assert daemon.traps is not None
        daemon.traps.sync(daemon.engine.configs)  # what a refresh of the gateway's database does
        assert set(await routed()) == {"office"} and remote_subnets() == {"10.3.0.0/24"}
        rc, out, _ = await ikectl("reload")
        assert rc == 0
        assert {n: r["routed-by"] for n, r in (await routed()).items()} == {"home": "config", "office": "command"}
        assert remote_subnets() == {"10.2.0.0/24", "10.3.0.0/24"}

        # a route by command outlasts a reload that changes the connection, not one that removes it
        path.write_text(path.read_text().replace('"10.3.0.0/24[tcp/443]"', '"10.3.0.0/16[tcp/443]"'))
        rc, _, _ = await ikectl("reload")
        assert rc == 0 and (await routed())["office"]["remote-ts"] == ["10.3.0.0/16[tcp/443]"]
        text = path.read_text()
        start = text.index("[connections.office]")
        path.write_text(text[:start] + text[text.index("[connections.roaming]"):])
        rc, _, _ = await ikectl("reload")
        assert rc == 0 and set(await routed()) == {"home"} and remote_subnets() == {"10.2.0.0/24"}

        rc, out, _ = await ikectl("unroute", "home")
        assert rc == 0
        rc, out, _ = await ikectl("status")
        assert (rc, out.strip()) == (0, "no routed connections")
        await daemon.shutdown()
        assert dp._policies == []

    asyncio.run(go())


def test_ikectl_route_without_a_data_plane(tmp_path: Path) -> None:
    """iked without a data plane (dataplane = "none") has nothing to route in: a clear error."""
    sock = str(tmp_path / "iked.ctl")
    path = tmp_path / "iked.toml"
    path.write_text(textwrap.dedent(TOML.format(control=sock)))
    daemon = Daemon(load(path))
    daemon.shutdown_timeout = 0.1

    async def go() -> None:
        await daemon.server.start()
        daemon.autostart(time.monotonic())
        reply = await asyncio.to_thread(ctl.call, sock, {"cmd": "route", "conn": "office"})
        assert reply == {"ok": False, "error": "cannot route 'office': conn office: no data plane to route it in "
                                               "([daemon] dataplane = none)"}
        assert (await asyncio.to_thread(ctl.call, sock, {"cmd": "status"})) == {"ok": True, "routed": []}
        await daemon.shutdown()

    asyncio.run(go())
