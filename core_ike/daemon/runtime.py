"""The daemons' runtime: binds the transport, drives the engine and the data plane, serves the control
socket, and owns the lifecycle (readiness, reload, DELETE on shutdown; docs/operations.md)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Any

from ..ike.engine import Engine, EngineConfig
from ..io.transport import UdpTransport, local_addresses, route_source
from .config import DaemonConfig
from .control import ControlServer, EngineControl
from .glue import DataPlaneGlue

log = logging.getLogger("core_ike.daemon")


def make_dataplane(kind: str, tun: str, transport: UdpTransport, natt_port: int) -> Any:
    if kind == "none":
        return None
    from ..io.xfrm import choose_backend

    sources: dict[str, tuple[float, str]] = {}  # peer -> (looked up at, local source): no lookup per packet

    def send_udp(data: bytes, remote: tuple[str, int]) -> None:
        # ESP-in-UDP leaves from the NAT-T socket of the address that routes to the peer
        now = time.monotonic()
        hit = sources.get(remote[0])
        if hit is None or now - hit[0] > 1.0:
            hit = sources[remote[0]] = (now, route_source(remote[0]))
        transport.send(data, (hit[1], natt_port), remote)

    return choose_backend(kind, send_udp, tun_name=tun)


def tune_gc() -> None:
    """Startup objects (modules, config) go to the permanent generation and collections run less
    often: IKE_SAs make few reference cycles, and full collections over a large SA table cost
    ~5 % of the CPU per IKE_SA setup."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class Daemon:
    """iked's runtime; the mediation daemons reuse it with their engine extensions and commands."""

    def __init__(self, cfg: DaemonConfig, extensions: list[Any] | None = None) -> None:
        self.cfg = cfg
        st = cfg.settings
        self.engine = Engine(cfg.connections, cfg.creds,
                             EngineConfig(ike_port=st.port, natt_port=st.natt_port,
                                          cookie_threshold=st.cookie_threshold,
                                          cookie_threshold_ip=st.cookie_threshold_ip, force_cookies=st.force_cookies,
                                          half_open_timeout=st.half_open_timeout, max_half_open=st.max_half_open),
                             route_source=route_source)
        self.engine.extensions.extend(extensions or [])
        self.listeners: list[Any] = []  # extra event consumers (status writers, ...)
        self._tries: dict[str, int] = {}  # keying tries so far per connection
        addrs = st.listen or local_addresses()
        self.transport = UdpTransport(self.engine, addrs, [st.port, st.natt_port], on_event=self.on_event)
        self.dp: Any = None
        self.glue: DataPlaneGlue | None = None
        self.control = EngineControl(self.engine, self.transport.flush, self.usage)
        self.server = ControlServer(st.control, self.control.handle)
        self.stopped = asyncio.Event()

    def usage(self, spi_in: int) -> dict[str, Any]:
        if self.dp is None:
            return {}
        try:
            from ..io.dataplane import Direction

            u_in = self.dp.query_usage(spi_in, Direction.IN)
            out: dict[str, Any] = {"bytes-in": u_in.bytes, "packets-in": u_in.packets}
        except Exception:  # noqa: BLE001 - listing must work even without usage data
            return {}
        if hasattr(self.dp, "list_sas") and hasattr(self.dp, "stats"):
            # userspace backend: outbound counters (newest outbound SA of the same reqid) and drops by reason
            rows = self.dp.list_sas()
            mine = [r for r in rows if r.spi == spi_in and r.direction == "in"]
            if mine:
                c_in = mine[0].counters
                outs = [r for r in rows if r.direction == "out" and r.reqid == mine[0].reqid]
                if outs:
                    c_out = max(outs, key=lambda r: r.installed).counters
                    out.update({"bytes-out": c_out["bytes_out"], "packets-out": c_out["packets_out"]})
                out["drops"] = {k: v for k, v in c_in.items() if k.startswith("drop_")}
                out["dataplane"] = self.dp.stats()
        return out

    def on_event(self, e: object) -> None:
        log.debug("event %s", type(e).__name__)
        if self.glue is not None:
            self.glue.handle(e)
        self._keyingtries(e)
        self.control.feed(e)
        for fn in self.listeners:
            fn(e)

    def close(self) -> None:
        """After the event loop ended (also on errors): release what outlives it."""
        return None

    def _keyingtries(self, e: object) -> None:
        """swanctl keyingtries: retry a failed IKE_SA we initiated (0 = forever), with a growing delay.
        Mediation and mediated connections have their own recovery (the mediation client)."""
        from ..ike import events as ev

        if isinstance(e, ev.IkeSaEstablished):
            self._tries.pop(e.name, None)
            return
        if not isinstance(e, ev.IkeSaFailed) or not e.initiator:
            return
        try:
            cfg = self.engine.config(e.name)
        except Exception:  # noqa: BLE001 - a config removed meanwhile
            return
        if cfg.mediation or cfg.mediated_by or cfg.keyingtries == 1:
            return
        n = self._tries.get(e.name, 1)
        if cfg.keyingtries and n >= cfg.keyingtries:
            log.info("giving up on '%s' after %d keying tries", e.name, n)
            self._tries.pop(e.name, None)
            return
        self._tries[e.name] = n + 1
        delay = min(2.0 ** (n - 1), 60.0)
        log.info("keying try %d of %s for '%s' in %.0f s", n + 1, cfg.keyingtries or "unlimited", e.name, delay)

        def retry() -> None:
            if self.transport.sockets:
                self.engine.initiate(e.name, None, time.monotonic())
                self.transport.flush()

        asyncio.get_running_loop().call_later(delay, retry)

    def autostart(self, now: float) -> None:
        """Bring up every CHILD_SA with start_action = start (swanctl semantics)."""
        for c in self.cfg.connections:
            for child in c.children:
                if child.start_action == "start":
                    self.engine.initiate(c.name, child.name, now)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport.start(loop)
        self.dp = make_dataplane(self.cfg.settings.dataplane, self.cfg.settings.tun, self.transport,
                                 self.cfg.settings.natt_port)
        if self.dp is not None:
            if hasattr(self.dp, "start"):
                self.dp.start(loop)
            self.glue = DataPlaneGlue(self.dp)
            from ..io.userspace import grow_rcvbuf

            for addr in self.transport.addresses:  # ESP-in-UDP arrives on the NAT-T sockets
                if (s := self.transport.socket_for((addr, self.cfg.settings.natt_port))) is not None:
                    grow_rcvbuf(s)
            self.transport.esp_sink = self.dp
        await self.server.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopped.set)
        log.info("iked started, %d connection(s) loaded", len(self.cfg.connections))
        self.autostart(loop.time())
        self.transport.flush()
        tune_gc()
        await self.stopped.wait()
        log.info("iked stopping")
        self.server.close()
        if self.dp is not None:
            self.dp.close()
        self.transport.close()
