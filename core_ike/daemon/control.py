"""Control socket (JSON lines over a unix socket) and the SA listing shared by the daemons.

Requests: {"cmd": "up", "conn": "home", "child": "net", "timeout": 30}, {"cmd": "down", "ike": 3},
{"cmd": "down-child", "ike": 3, "child": 5}, {"cmd": "rekey", "ike": 3}, {"cmd": "rekey-child", "ike": 3,
"child": 5}, {"cmd": "list"}, {"cmd": "conns"}, {"cmd": "stats"}. Replies: {"ok": bool, ...}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import LocalError, ProtocolError
from ..ike import events as ev
from ..ike import ts as tsmod
from ..ike.config import IkeConfig
from ..ike.engine import Engine
from ..ike.sa import IkeSa
from ..ike.tasks.informational import OutboundWaits
from ..me import events as mev
from .startup import flush_logs

log = logging.getLogger("core_ike.control")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def sa_info(sa: IkeSa, now: float, usage: Callable[[int, int], dict[str, Any]] | None = None,
            outbound_pending: Callable[[int], bool] | None = None) -> dict[str, Any]:
    """One IKE_SA as swanctl --list-sas shows it (state, SPIs, algorithms, addresses, rekey times).
    `outbound_pending(child_unique_id)`: whether the data plane has that CHILD_SA's outbound SA not yet
    (the glue's `DataPlaneGlue.outbound_pending`); such a CHILD_SA gets an "outbound" field saying so."""
    children = []
    for c in sa.children.values():
        d: dict[str, Any] = {
            "name": c.name, "uniqueid": c.unique_id, "reqid": c.reqid, "state": c.state,
            "mode": "TUNNEL", "protocol": "ESP",
            "encap": bool(sa.nat_here or sa.nat_there or sa.uses_marker),
            "spi-in": f"{c.spi_in:08x}", "spi-out": f"{c.spi_out:08x}", "proposal": c.proposal_text,
            "local-ts": [tsmod.to_text(t) for t in c.local_ts], "remote-ts": [tsmod.to_text(t) for t in c.remote_ts],
            "install-time": round(now - c.established_at),
            "rekey-time": round(c.rekey_at - now) if c.rekey_at else None,
            "life-time": round(c.expire_at - now) if c.expire_at else None,
        }
        if usage is not None:
            d.update(usage(c.spi_in, c.spi_out))
        if outbound_pending is not None and outbound_pending(c.unique_id):
            d["outbound"] = _outbound_wait(sa, c.unique_id)
        children.append(d)
    return {
        "name": sa.name, "uniqueid": sa.unique_id, "state": sa.state.value,
        "local-host": sa.local[0], "local-port": sa.local[1], "local-id": str(sa.my_id),
        "remote-host": sa.remote[0], "remote-port": sa.remote[1], "remote-id": str(sa.peer_id),
        "initiator": sa.is_original_initiator, "initiator-spi": sa.spi_i.hex(), "responder-spi": sa.spi_r.hex(),
        "nat-local": sa.nat_here, "nat-remote": sa.nat_there, "proposal": sa.proposal_text,
        "established": round(now - sa.established_at) if sa.established_at else None,
        "rekey-time": round(sa.rekey_at - now) if sa.rekey_at else None,
        # RFC 7296 2.19: the virtual IP the peer gave us, the one we gave the peer
        "local-vips": [str(sa.vip)] if sa.vip is not None else [],
        "remote-vips": [str(sa.peer_vip)] if sa.peer_vip is not None else [],
        "child-sas": children,
    }


def _outbound_wait(sa: IkeSa, unique_id: int) -> str:
    """What CHILD_SA `unique_id`, whose outbound SA is not installed, waits for: the end of the CHILD_SA
    it replaces (RFC 7296 2.8, the engine's `OutboundWaits`), or nothing (the redundant SA of a rekey
    collision, 2.8.1, or one replaced itself meanwhile: it never sends)."""
    waits = sa.find_extension(OutboundWaits)
    old = next((o for o, new in waits.waiting.items() if new.unique_id == unique_id), None) if waits else None
    return "not installed" if old is None else f"pending until the replaced CHILD_SA #{old} ends"


def conn_info(c: IkeConfig) -> dict[str, Any]:
    """One loaded connection as swanctl --list-conns shows it."""
    info: dict[str, Any] = {
        "name": c.name, "local-addrs": c.local_addrs, "remote-addrs": c.remote_addrs,
        "remote-port": c.remote_port, "proposals": c.proposals,
        "local": {"auth": c.local.auth, "id": str(c.local.id)}, "remote": {"auth": c.remote.auth, "id": str(c.remote.id)},
        "rekey-time": c.rekey_time, "dpd-delay": c.dpd_delay, "unique": c.unique, "keyingtries": c.keyingtries,
        "encap": c.encap, "vips": c.vips, "mediation": c.mediation, "mediated-by": c.mediated_by,
        "mediation-peer": str(c.mediation_peer) if c.mediation_peer is not None else None,
        "children": [{"name": ch.name, "mode": ch.mode.upper(), "local-ts": ch.local_ts, "remote-ts": ch.remote_ts,
                      "esp-proposals": ch.esp_proposals, "rekey-time": ch.rekey_time, "start-action": ch.start_action}
                     for ch in c.children],
    }
    return info


class Waiter:
    """Collects events for a pending `up` until the IKE_SA and every requested CHILD_SA are established
    (ok) or the first of them fails (the reason, in the peer's words where it gave one)."""

    def __init__(self, conn: str, children: list[str]) -> None:
        self.conn = conn
        self.pending = set(children)
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.ike: int | None = None
        self.established: list[dict[str, Any]] = []
        self.mediated: dict[str, Any] = {}

    def _fail(self, error: str) -> None:
        self.done.set_result({"ok": False, "conn": self.conn, "error": error})

    def expire(self, timeout: float) -> None:
        """The `up`'s timeout passed: what was not established yet, as the reply."""
        if not self.done.done():
            what = "its CHILD_SA(s) " + ", ".join(sorted(self.pending)) if self.ike is not None else "the IKE_SA"
            self._fail(f"'{self.conn}': {what} not established after {timeout:g} s")

    def _maybe_done(self) -> None:
        if self.ike is not None and not self.pending:
            res: dict[str, Any] = {"ok": True, "conn": self.conn, "ike": self.ike, "children": self.established}
            if self.established:  # the first CHILD_SA, as swanctl --initiate prints it
                first = self.established[0]
                res.update({"child": first["name"], "uniqueid": first["uniqueid"],
                            "spi-in": first["spi-in"], "spi-out": first["spi-out"]})
            res.update(self.mediated)
            self.done.set_result(res)

    def feed(self, e: object) -> None:
        if self.done.done():
            return
        if isinstance(e, ev.IkeSaFailed) and e.name == self.conn:
            self._fail(f"IKE_SA '{self.conn}' failed: {e.reason}")
        elif isinstance(e, mev.MediationFailed) and e.name == self.conn:
            self._fail(f"'{self.conn}' failed: {e.reason}")
        elif isinstance(e, ev.ChildSaFailed) and e.ike_name == self.conn and e.name in self.pending:
            self._fail(f"CHILD_SA '{e.name}' failed: {e.reason}")
        elif isinstance(e, ev.IkeSaEstablished) and e.name == self.conn and self.ike is None:
            self.ike = e.unique_id
            self._maybe_done()
        elif isinstance(e, mev.MediatedEstablished) and e.name == self.conn:
            self.mediated = {"remote": list(e.remote), "elapsed_ms": round(e.elapsed * 1000, 1)}
        elif isinstance(e, ev.ChildSaEstablished) and e.ike_name == self.conn and e.name in self.pending:
            self.pending.discard(e.name)
            self.ike = e.ike_unique_id  # the IKE_SA carrying it (a crossing mediated SA may win)
            self.established.append({"name": e.name, "uniqueid": e.unique_id, "spi-in": f"{e.keys.spi_in:08x}",
                                     "spi-out": f"{e.keys.spi_out:08x}", "local-ts": list(e.local_ts),
                                     "remote-ts": list(e.remote_ts)})
            self._maybe_done()


def control_socket_in_use(path: str) -> bool:
    """Does a process accept connections on the unix socket at `path`?"""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if os.path.exists(self.path):
            if control_socket_in_use(self.path):
                raise LocalError(f"control socket {self.path} is in use by another running daemon")
            os.unlink(self.path)  # left behind by a daemon that did not stop cleanly
        self.server = await asyncio.start_unix_server(self._client, path=self.path)
        os.chmod(self.path, 0o600)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("a request is a JSON object")
                    log.debug("control: %s request read", req.get("cmd"))
                    resp = await self.handler(req)
                except (LocalError, ProtocolError, ValueError) as e:
                    resp = {"ok": False, "error": str(e)}
                except KeyError as e:
                    resp = {"ok": False, "error": f"missing {e} in the request"}
                except Exception as e:  # a bad request must not kill the daemon
                    log.exception("control request %r failed", line[:200])
                    resp = {"ok": False, "error": f"internal error: {e} (details in the daemon's log)"}
                flush_logs()  # the request's log lines are in the log when its reply arrives
                writer.write(json.dumps(resp).encode() + b"\n")
                log.debug("control: reply written")
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class EngineControl:
    """Command handlers over an Engine; the daemon forwards every event to `feed`."""

    def __init__(self, engine: Engine, flush: Callable[[], None],
                 usage: Callable[[int, int], dict[str, Any]] | None = None) -> None:
        self.engine = engine
        self.flush = flush
        self.usage = usage
        # whether a CHILD_SA's outbound SA is not installed yet (DataPlaneGlue.outbound_pending, set by the
        # daemon that has a data plane)
        self.outbound_pending: Callable[[int], bool] | None = None
        self.waiters: list[Waiter] = []
        self.extra: dict[str, Handler] = {}
        # parts of every `status` reply, whichever daemon's own handler (extra["status"]) makes the rest:
        # the routed connections (core_ike/daemon/traps.py), in iked and the mediation daemons alike
        self.status_parts: dict[str, Callable[[], Any]] = {}
        self._changed = asyncio.Event()  # set on every event while `down` waits for its SAs to go
        self._gone_waiting = 0  # `_gone` calls waiting on _changed

    def feed(self, e: object) -> None:
        if self.waiters:  # a copy: a waiter that finishes removes itself
            for w in list(self.waiters):
                w.feed(e)
        if self._gone_waiting:
            self._changed.set()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        now = time.monotonic()
        handler = self._status if cmd == "status" else self.extra.get(str(cmd))
        if handler is not None:
            return await handler(req)
        if cmd == "list":
            return {"ok": True, "sas": [sa_info(s, now, self.usage, self.outbound_pending)
                                        for s in self.engine.ike_sas()]}
        if cmd == "conns":
            return {"ok": True, "conns": [conn_info(c) for c in self.engine.configs]}
        if cmd == "up":
            return await self._up(req, now)
        if cmd in ("down-child", "rekey-child"):  # older request forms
            cmd = cmd.split("-")[0]
        if cmd not in ("down", "rekey"):
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        targets = self._targets(req.get("ike"), req.get("child"))
        if isinstance(targets, str):
            return {"ok": False, "error": targets}
        done: list[str] = []
        for sa, child in targets:
            if child is None:
                (self.engine.terminate if cmd == "down" else self.engine.rekey_ike)(sa, now)
            else:
                (self.engine.terminate_child if cmd == "down" else self.engine.rekey_child)(sa, child, now)
            done.append(f"{sa.name}[{sa.unique_id}]" if child is None else
                        f"{sa.children[child].name}{{{child}}}")
        self.flush()
        if cmd == "down":
            gone = await self._gone(targets, float(req.get("timeout", 10)))
            if not gone:
                return {"ok": False, "error": f"the peer did not confirm the DELETE of {', '.join(done)} "
                                              f"within {float(req.get('timeout', 10)):g} s"}
        return {"ok": True, "done": done}

    async def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        own = self.extra.get("status")
        reply = await own(req) if own is not None else {"ok": True}
        if reply.get("ok"):
            for key, part in self.status_parts.items():
                reply[key] = part()
        return reply

    def _targets(self, ike: Any, child: Any) -> list[tuple[IkeSa, int | None]] | str:
        """IKE_SAs and CHILD_SAs named by unique id or by connection / CHILD_SA name (swanctl
        --terminate / --rekey with --ike, --ike-id, --child, --child-id); an error text when none."""
        sas = self.engine.ike_sas()
        if ike not in (None, ""):
            key = str(ike)
            sas = [sa for sa in sas if (str(sa.unique_id) == key if key.isdigit() else sa.name == key)]
            if not sas:
                return f"no IKE_SA {'with unique id' if key.isdigit() else 'of connection'} {key!r}"
        if child in (None, ""):
            if ike in (None, ""):
                return "name an IKE_SA or a CHILD_SA (by name or unique id)"
            return [(sa, None) for sa in sas]
        key = str(child)
        hits: list[tuple[IkeSa, int | None]] = [(sa, uid) for sa in sas for uid, c in sa.children.items()
                if (str(uid) == key if key.isdigit() else c.name == key)]
        return hits or f"no CHILD_SA {'with unique id' if key.isdigit() else 'named'} {key!r}"

    async def _gone(self, targets: list[tuple[IkeSa, int | None]], timeout: float) -> bool:
        """Wait until every targeted SA is gone (the peer answered the DELETE, or it timed out)."""
        def left() -> bool:
            live = {id(sa) for sa in self.engine.ike_sas()}
            return any(id(sa) in live and (c is None or c in sa.children) for sa, c in targets)

        deadline = time.monotonic() + timeout
        self._gone_waiting += 1
        try:
            while left():
                self._changed.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return not left()
            return True
        finally:
            self._gone_waiting -= 1

    async def _up(self, req: dict[str, Any], now: float,
                  start: Callable[[str, str | None, float], None] | None = None) -> dict[str, Any]:
        """`up CONN [--child NAME]`: initiate and wait for the IKE_SA and the CHILD_SA(s) (all of the
        connection's children when none is named); `start` replaces engine.initiate (mediated ones)."""
        conn = str(req["conn"])
        child = req.get("child") or None
        cfg = self.engine.config(conn)
        if child is not None:
            cfg.child(child)  # unknown child: LocalError, reported as such
        w = Waiter(conn, [child] if child else [c.name for c in cfg.children])
        self.waiters.append(w)
        timeout = float(req.get("timeout", 30))
        # the timeout ends the same future the events end: the reply leaves on the loop's next turn after
        # the CHILD_SA's event (asyncio.wait_for would take a turn more, through a second future)
        expiry = asyncio.get_running_loop().call_later(timeout, w.expire, timeout)
        try:
            (start or self._initiate)(conn, child, now)
            self.flush()
            log.debug("control: up %s started", conn)
            return await w.done
        finally:
            expiry.cancel()
            self.waiters.remove(w)

    def _initiate(self, conn: str, child: str | None, now: float) -> None:
        self.engine.initiate(conn, child, now)
