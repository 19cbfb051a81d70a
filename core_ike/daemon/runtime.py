"""The daemons' runtime: binds the transport, drives the engine and the data plane, serves the control
socket, and owns the lifecycle (readiness, reload, DELETE on shutdown; docs/operations.md)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..errors import LocalError
from ..ike import events as ev
from ..ike.config import IkeConfig
from ..ike.engine import Engine, EngineConfig
from ..io.transport import UdpTransport, local_addresses, route_source
from ..sysrng import SystemRng
from .config import DaemonConfig, load
from .control import ControlServer, EngineControl
from .glue import DataPlaneGlue, engine_child_deleter
from .lifecycle import diff_configs, monotonic_usec, sd_notify
from .traps import TrapManager, install_control

if TYPE_CHECKING:
    from .workers import WorkerSpec

log = logging.getLogger("core_ike.daemon")


def make_dataplane(kind: str, tun: str, transport: UdpTransport, natt_port: int, esp_offload: str = "all") -> Any:
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
        pool = getattr(transport, "pool", None)  # an extra socket of many-port probing (io/portpool.py)
        pinned = pool.local_to(remote) if pool is not None else None
        transport.send(data, pinned or (hit[1], natt_port), remote)

    from ..io.fastpath import offload_steps

    return choose_backend(kind, send_udp, tun_name=tun, offload=offload_steps(esp_offload))


def tune_gc() -> None:
    """Startup objects (modules, config) go to the permanent generation and collections run less
    often: IKE_SAs make few reference cycles, and full collections over a large SA table cost
    ~5 % of the CPU per IKE_SA setup."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


WALL_CLOCK_REFRESH = 10.0  # seconds


class Daemon:
    """iked's runtime; the mediation daemons reuse it with their engine extensions and commands."""

    def __init__(self, cfg: DaemonConfig, extensions: list[Any] | None = None,
                 worker: WorkerSpec | None = None) -> None:
        self.cfg = cfg
        st = cfg.settings
        if worker is None:
            from . import workers

            worker = workers.CURRENT
        self.worker = worker  # one of several processes (core_ike/daemon/workers.py)
        self.initiates = worker is None or worker.index == 0  # only one worker starts connections
        self.engine = Engine(cfg.connections, cfg.creds,
                             EngineConfig(ike_port=st.port, natt_port=st.natt_port,
                                          cookie_threshold=st.cookie_threshold,
                                          cookie_threshold_ip=st.cookie_threshold_ip, force_cookies=st.force_cookies,
                                          half_open_timeout=st.half_open_timeout, max_half_open=st.max_half_open,
                                          frag_max_per_sa=st.frag_max_per_sa, frag_max_total=st.frag_max_total,
                                          init_rate_ip=st.init_rate_ip,
                                          spi_tag=worker.index if worker else None,
                                          unique_id_stride=worker.count if worker else 1,
                                          cookie_seed=worker.cookie_seed if worker else None),
                             route_source=route_source, rng=SystemRng())
        self.engine.extensions.extend(extensions or [])
        self._wall_clock()
        self.listeners: list[Any] = []  # extra event consumers (status writers, ...)
        self._tries: dict[str, int] = {}  # keying tries so far per connection
        self._retry_due: set[str] = set()  # connections whose next keying try is scheduled
        self.traps: TrapManager | None = None  # start_action = trap, once the data plane runs (traps.py)
        addrs = st.listen or local_addresses()
        self.transport = UdpTransport(self.engine, addrs, [st.port, st.natt_port], on_event=self.on_event,
                                      receive_buffer=st.receive_buffer,
                                      groups=worker.sockets() if worker else None)
        self.dp: Any = None
        self.glue: DataPlaneGlue | None = None
        self.control = EngineControl(self.engine, self.transport.flush, self.usage)
        self.server = ControlServer(worker.control_path(st.control) if worker else st.control, self.control.handle)
        self.control.extra.update({"reload": self._reload_cmd, "stats": self._stats_cmd,
                                   "loglevel": self._loglevel_cmd})
        # `ikectl route|unroute NAME`; the routed connections in `ikectl status` (the mediation daemons' too)
        install_control(self.control, lambda: self.traps, time.monotonic)
        self.stopped = asyncio.Event()
        self.prog = "iked"  # name in log lines; run_main sets it
        self.config_path: str | None = None  # re-read on reload; run_main sets it
        self.started_at = time.monotonic()
        self.stopping = False
        self.shutdown_timeout = 2.0  # seconds to wait for the peers' DELETE responses
        self.events: Counter[str] = Counter()  # IKE_SA / CHILD_SA outcomes, failures by reason
        self._all_gone = asyncio.Event()
        self.metrics: Any = None  # MetricsServer when [daemon] metrics is set

    def usage(self, spi_in: int, spi_out: int) -> dict[str, Any]:
        """Bytes and packets of one CHILD_SA, both directions, from the data plane (and, for the
        userspace one, drops by reason)."""
        if self.dp is None:
            return {}
        from ..io.dataplane import Direction

        out: dict[str, Any] = {}
        for spi, d, key in ((spi_in, Direction.IN, "in"), (spi_out, Direction.OUT, "out")):
            try:
                u = self.dp.query_usage(spi, d)
            except Exception:  # noqa: BLE001 - listing must work even without usage data
                continue
            out.update({f"bytes-{key}": u.bytes, f"packets-{key}": u.packets})
        if hasattr(self.dp, "list_sas"):
            mine = [r for r in self.dp.list_sas() if r.spi == spi_in and r.direction == "in"]
            if mine:
                out["drops"] = {k: v for k, v in mine[0].counters.items() if k.startswith("drop_") and v}
        return out

    def on_event(self, e: object) -> None:
        if log.isEnabledFor(logging.DEBUG):  # Logger.debug's frame and its argument only when it logs
            log.debug("event %s", type(e).__name__)
        if self.glue is not None:
            e = self.glue.handle(e)  # a CHILD_SA the data plane refused comes back as ChildSaFailed
        self._count(e)
        if self.stopping and isinstance(e, ev.IkeSaDeleted | ev.IkeSaFailed) and not self.engine.ike_sas():
            self._all_gone.set()
        self._keyingtries(e)
        self.control.feed(e)
        for fn in self.listeners:
            fn(e)

    def close(self) -> None:
        """After the event loop ended (also on errors): release what outlives it."""

    def _keyingtries(self, e: object) -> None:
        """swanctl keyingtries: retry a failed IKE_SA we initiated (0 = forever), with a growing delay.
        Mediation and mediated connections have their own recovery (the mediation client)."""
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
            if e.name not in self._retry_due:
                return  # the connection was stopped or changed meanwhile
            self._retry_due.discard(e.name)
            if self.transport.sockets and not self.stopping:
                now = time.monotonic()
                # an IKE_SA an acquire started asks for that CHILD_SA again, the packet's selectors first
                try:
                    if self.traps is None or not self.traps.keying_try(e.name, e.unique_id, now):
                        self.engine.initiate(e.name, None, now)
                except LocalError as err:  # gone meanwhile: a refresh of the gateway's database cancels no try
                    log.info("no keying try of '%s': %s", e.name, err)
                self.transport.flush()

        self._retry_due.add(e.name)  # one attempt at a time: no acquire starts another meanwhile (traps.py)
        asyncio.get_running_loop().call_later(delay, retry)

    def autostart(self, now: float) -> None:
        """Route the CHILD_SAs with start_action = trap, then bring up those with start_action = start
        (swanctl semantics)."""
        if not self.initiates:
            return
        self.route_traps()
        for c in self.cfg.connections:
            self.start_connection(c, now)

    def route_traps(self) -> None:
        """Install the trap policies of the connections that ask for them (traps.py); the mediation
        client's own autostart calls it as well."""
        self.traps = TrapManager(self.engine, self.dp, route_source, lambda conn: conn in self._retry_due)
        self.listeners.append(self.traps.on_event)
        self.traps.sync(self.engine.configs)

    def start_connection(self, cfg: IkeConfig, now: float, force: bool = False) -> None:
        """Initiate the CHILD_SAs of `cfg` with start_action = start (all of them when `force`)."""
        children = [ch for ch in cfg.children if force or ch.start_action == "start"]
        for ch in children:
            self.engine.initiate(cfg.name, ch.name, now)

    def stop_connection(self, name: str, now: float) -> bool:
        """Close every IKE_SA of connection `name` (DELETE when established); True if one was up
        that we had initiated (a changed connection is then brought up again)."""
        was_up = False
        for sa in self.engine.ike_sas():
            if sa.config.name == name:
                was_up = was_up or (sa.established and sa.is_original_initiator)
                self.engine.terminate(sa, now)
        self._tries.pop(name, None)
        self._retry_due.discard(name)
        return was_up

    # ------------------------------------------------------------------ reload
    def load_config(self) -> DaemonConfig:
        """Read the configuration again (the mediation daemons add their database's part)."""
        if self.config_path is None:
            raise LocalError("no configuration file to reload")
        return load(self.config_path)

    def reload(self) -> dict[str, Any]:
        """SIGHUP / `ikectl reload`: re-read the configuration; added connections start, removed ones
        close, changed ones are closed and brought up again, untouched SAs stay (docs/operations.md)."""
        sd_notify("RELOADING=1", monotonic_usec())
        try:
            new = self.load_config()
        except (LocalError, OSError, ValueError) as e:
            log.error("reload failed, configuration unchanged: %s", e)
            sd_notify("READY=1", f"STATUS=reload failed: {e}")
            return {"ok": False, "error": f"reload failed, configuration unchanged: {e}"}
        for w in new.warnings if self.initiates else []:  # one worker says it (certcheck.py)
            log.warning("%s", w)
        now = time.monotonic()
        diff, merged = diff_configs(self.engine.configs, new.connections)
        restart = self._settings_needing_restart(new)
        if new.settings.log_level != self.cfg.settings.log_level:
            logging.getLogger().setLevel(new.settings.log_level.upper())
        if new.creds.resolver is None:
            new.creds.resolver = self.engine.creds.resolver  # the mediation server's database lookup
        reinit = [n for n in diff.changed if self.stop_connection(n, now)]
        for n in diff.removed:
            self.stop_connection(n, now)
        self.engine.configs[:] = merged
        self.engine.creds = new.creds
        self.cfg = DaemonConfig(self.cfg.settings, merged, new.creds)
        by_name = {c.name: c for c in merged}
        if self.traps is not None:
            self.traps.sync(merged, reload=True)  # routes again what `unroute` took out (traps.py)
        for n in self._start_order([*diff.added, *diff.changed]) if self.initiates else []:
            self.start_connection(by_name[n], now, force=n in reinit)
        self.transport.flush()
        log.info("reloaded configuration: %s%s", diff.summary(),
                 f"; needs a restart to change: {', '.join(restart)}" if restart else "")
        sd_notify("READY=1", f"STATUS={self._status_line()}")
        return {"ok": True, "added": diff.added, "removed": diff.removed, "changed": diff.changed,
                "unchanged": diff.unchanged, "restart-needed": restart}

    def _start_order(self, names: list[str]) -> list[str]:
        """Mediation connections before the connections they mediate."""
        by_name = {c.name: c for c in self.engine.configs}
        return sorted(names, key=lambda n: 0 if by_name[n].mediation else 1)

    def _settings_needing_restart(self, new: DaemonConfig) -> list[str]:
        old, cur = vars(self.cfg.settings), vars(new.settings)
        return [k for k in cur if k != "log_level" and cur[k] != old.get(k)]

    # ------------------------------------------------------------------ control commands
    async def _reload_cmd(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.reload()

    async def _loglevel_cmd(self, req: dict[str, Any]) -> dict[str, Any]:
        """`ikectl loglevel [SUBSYSTEM] LEVEL`: subsystems are logger names below the package
        (ike, me, dataplane, control, ...; "any" = all)."""
        level = str(req.get("level", "")).upper()
        if level not in LOG_LEVELS:
            return {"ok": False, "error": f"unknown log level {req.get('level')!r} (one of {', '.join(LOG_LEVELS)})"}
        sub = str(req.get("subsystem") or "any")
        if sub not in SUBSYSTEMS:
            return {"ok": False, "error": f"unknown subsystem {sub!r} (one of {', '.join(SUBSYSTEMS)})"}
        logger = logging.getLogger() if sub == "any" else logging.getLogger(_logger_name(sub))
        logger.setLevel(level)
        log.info("log level of %s set to %s", sub, level)
        return {"ok": True, "subsystem": sub, "level": level}

    def stats(self) -> dict[str, Any]:
        """`ikectl stats` (swanctl --stats): uptime, SAs by state, half-open, cookies, drops, outcomes."""
        by_state: Counter[str] = Counter(sa.state.value for sa in self.engine.ike_sas())
        children = sum(len(sa.children) for sa in self.engine.ike_sas())
        dp: dict[str, Any] = {}
        if self.dp is not None and hasattr(self.dp, "stats"):
            dp = {k: v for k, v in self.dp.stats().items() if isinstance(v, int | float)}
        esp_in = esp_out = 0
        if self.dp is not None:
            for sa in self.engine.ike_sas():
                for c in sa.children.values():
                    u = self.usage(c.spi_in, c.spi_out)
                    esp_in, esp_out = esp_in + u.get("bytes-in", 0), esp_out + u.get("bytes-out", 0)
        return {"daemon": self.prog, "uptime": round(time.monotonic() - self.started_at, 1),
                "esp-bytes-in": esp_in, "esp-bytes-out": esp_out,
                "ike-sas": dict(by_state), "ike-sas-total": sum(by_state.values()), "child-sas": children,
                "half-open": self.engine.half_open, "counters": dict(self.engine.counters),
                "events": dict(self.events), "connections": len(self.engine.configs), "dataplane": dp}

    async def _stats_cmd(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "stats": self.stats()}

    def _count(self, e: object) -> None:
        if isinstance(e, ev.IkeSaEstablished):
            self.events["ike-established"] += 1
        elif isinstance(e, ev.IkeSaFailed):
            self.events["ike-failed"] += 1
            self.events[f"ike-failed:{failure_kind(e.reason)}"] += 1
        elif isinstance(e, ev.ChildSaEstablished):
            self.events["child-established"] += 1
        elif isinstance(e, ev.ChildSaFailed):
            self.events["child-failed"] += 1
            self.events[f"child-failed:{failure_kind(e.reason)}"] += 1

    def _status_line(self) -> str:
        n = len([sa for sa in self.engine.ike_sas() if sa.established])
        return f"{n} IKE_SA(s) up, {len(self.engine.configs)} connection(s) loaded"

    def _wall_clock(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """The engine's wall-clock input (certificate validity, RFC 5280 4.1.2.5), refreshed every
        WALL_CLOCK_REFRESH seconds: a step of the system clock reaches it within that time."""
        self.engine.set_wall_clock(time.time(), time.monotonic())
        if loop is not None and not self.stopping:
            loop.call_later(WALL_CLOCK_REFRESH, self._wall_clock, loop)

    # ------------------------------------------------------------------ run and stop
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._wall_clock(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):  # from the first moment: a stop during start-up is clean
            loop.add_signal_handler(sig, self.stopped.set)
        self.transport.start(loop)
        self.dp = make_dataplane(self.cfg.settings.dataplane, self.cfg.settings.tun, self.transport,
                                 self.cfg.settings.natt_port, self.cfg.settings.esp_offload)
        if self.dp is not None:
            if hasattr(self.dp, "start"):
                self.dp.start(loop)
            if hasattr(self.dp, "route_settings"):  # XFRM: routes with our source address (io/srcroutes.py)
                from ..io.srcroutes import RouteSettings

                st = self.cfg.settings
                self.dp.route_settings = RouteSettings(st.install_routes, st.routing_table, st.routing_table_prio)
            self.glue = DataPlaneGlue(self.dp, engine_child_deleter(self.engine))
            self.engine.extensions.append(self.glue)  # CHILD_SA proposals: only what the data plane installs
            self.control.outbound_pending = self.glue.outbound_pending
            if hasattr(self.dp, "on_mapping"):
                self.dp.on_mapping = self._esp_mapping
            if hasattr(self.dp, "read_events"):  # XFRM: the kernel's expire/acquire messages
                loop.add_reader(self.dp.fileno(), self._read_kernel_events)
            elif hasattr(self.dp, "wakeup"):  # userspace: it calls us when it queued an event
                self.dp.wakeup = lambda: loop.call_soon(self._dataplane_events)
            if hasattr(self.dp, "attach_transport"):  # userspace: it reads ESP-in-UDP on the NAT-T sockets
                self.dp.attach_transport(self.transport, self.cfg.settings.natt_port)
            self.transport.esp_sink = self.dp
        await self.server.start()
        if self.cfg.settings.metrics and self.worker is None:  # the workers' supervisor serves them
            from .metrics import MetricsServer  # prometheus_client only when asked for

            self.metrics = MetricsServer(self.cfg.settings.metrics, self.stats)
            await self.metrics.start()
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        log.info("%s started, %d connection(s) loaded", self.prog, len(self.cfg.connections))
        self.autostart(time.monotonic())
        self.transport.flush()
        tune_gc()
        sd_notify("READY=1", f"STATUS={self._status_line()}")
        await self.stopped.wait()
        await self.shutdown()
        self.server.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.dp is not None:
            self.dp.close()
        self.transport.close()

    def _dataplane_events(self) -> None:
        """Lifetime expiry from the data plane (RFC 7296 2.8): soft -> rekey that CHILD_SA, hard -> it
        is gone there, so delete it (DELETE to the peer). Acquires (traffic met a trap policy) go to
        `on_acquire`."""
        from ..io.dataplane import Acquire

        now = time.monotonic()
        while (e := self.dp.next_event()) is not None:
            if isinstance(e, Acquire):
                self.on_acquire(e, now)
                continue
            hit = self._child_by_spi(e.spi)
            if hit is None:
                continue
            sa, uid = hit
            log.info("CHILD_SA %s{%d}: %s lifetime (%s) reached, %s", sa.children[uid].name, uid,
                     "hard" if e.hard else "soft", e.reason, "deleting it" if e.hard else "rekeying")
            (self.engine.terminate_child if e.hard else self.engine.rekey_child)(sa, uid, now)
        self.transport.flush()

    def on_acquire(self, e: Any, now: float) -> None:
        """Traffic matched a trap policy without an SA: its CHILD_SA starts (traps.py)."""
        if self.traps is None:
            log.info("ignoring acquire for reqid %d (%s -> %s): no trap policies", e.reqid, e.src, e.dst)
        elif self.traps.on_acquire(e, now):
            self.transport.flush()

    def _read_kernel_events(self) -> None:
        self.dp.read_events()
        self._dataplane_events()

    def _child_by_spi(self, spi: int) -> tuple[Any, int] | None:
        for sa in self.engine.ike_sas():
            for uid, c in sa.children.items():
                if spi in (c.spi_in, c.spi_out) and c.state == "INSTALLED":
                    return sa, uid
        return None

    def _esp_mapping(self, spi_in: int, src: tuple[str, int]) -> None:
        """The data plane saw the peer's ESP from a new NAT mapping: the IKE_SA follows and checks it."""
        ike = self.glue.ike_of(spi_in) if self.glue is not None else None
        if ike is not None:
            self.engine.peer_mapping(ike, src, time.monotonic())
            self.transport.flush()

    def _sighup(self) -> None:
        log.info("received SIGHUP, reloading the configuration")
        self.reload()

    async def shutdown(self) -> None:
        """SIGTERM / SIGINT: DELETE every IKE_SA (the peers and the mediation server learn at once) and
        wait up to `shutdown_timeout` for the answers."""
        self.stopping = True
        self.engine.accepting = False  # a peer told to go must reach the next instance, not this one
        sd_notify("STOPPING=1")
        sas = self.engine.ike_sas()
        up = [sa for sa in sas if sa.established]
        log.info("%s stopping: deleting %d IKE_SA(s)", self.prog, len(up))
        now = time.monotonic()
        for sa in sas:
            self.engine.terminate(sa, now)
        self.transport.flush()
        if self.engine.ike_sas():
            try:
                await asyncio.wait_for(self._all_gone.wait(), self.shutdown_timeout)
            except TimeoutError:
                left = self.engine.ike_sas()
                log.info("%d IKE_SA(s) did not confirm the DELETE within %.0f s: %s", len(left),
                         self.shutdown_timeout, ", ".join(sa.label for sa in left))
        if self.traps is not None:
            self.traps.unroute_all()
        log.info("%s stopped", self.prog)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SUBSYSTEMS = ("any", "ike", "me", "dataplane", "control", "daemon", "io", "net", "mediation_server",
              "mediation_client")  # logger names below core_ike, and the mediation daemons'


def _logger_name(subsystem: str) -> str:
    """`ike` -> core_ike.ike, `mediation_server` stays as it is."""
    return subsystem if subsystem.startswith("mediation") else f"core_ike.{subsystem}"


def failure_kind(reason: str) -> str:
    """A short label for a failure reason (metrics and stats): the notify name when the reason starts
    with one (`TS_UNACCEPTABLE from the peer`), else its first words."""
    head = reason.split(" ", 1)[0]
    if head.isupper() and "_" in head:
        return head
    return " ".join(reason.split()[:3]).rstrip(":,")
