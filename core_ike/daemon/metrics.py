"""Prometheus text-format metrics on an opt-in local port (`[daemon] metrics = "127.0.0.1:9488"`).

A collector reads the daemon's `stats()` at each scrape (nothing is counted twice), and a small
asyncio HTTP responder serves `GET /metrics` from the event loop's own thread, so the scrape never
races the engine. Metric names: docs/operations.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import LocalError

log = logging.getLogger("core_ike.daemon")

MAX_REQUEST = 8192  # bytes of request head we read before answering


class StatsCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats()
        yield _gauge("ikeme_uptime_seconds", "Seconds since the daemon started", st["uptime"])
        sas = GaugeMetricFamily("ikeme_ike_sas", "IKE_SAs by state", labels=["state"])
        for state, n in sorted(st["ike-sas"].items()):
            sas.add_metric([state], n)
        yield sas
        yield _gauge("ikeme_child_sas", "CHILD_SAs", st["child-sas"])
        yield _gauge("ikeme_half_open_ike_sas", "Half-open IKE_SAs (responder)", st["half-open"])
        yield _gauge("ikeme_connections", "Loaded connections", st["connections"])
        ev: dict[str, int] = st["events"]
        for kind, what in (("ike", "IKE_SA"), ("child", "CHILD_SA")):
            yield _counter(f"ikeme_{kind}_sa_setups", f"{what}s established", ev.get(f"{kind}-established", 0))
            fail = CounterMetricFamily(f"ikeme_{kind}_sa_failures", f"{what}s that failed, by reason",
                                       labels=["reason"])
            for key, n in sorted(ev.items()):
                if key.startswith(f"{kind}-failed:"):
                    fail.add_metric([key.split(":", 1)[1]], n)
            yield fail
        c: dict[str, int] = st["counters"]
        yield _counter("ikeme_cookies_sent", "IKE_SA_INIT answered with a COOKIE", c.get("cookies-sent", 0))
        drops = CounterMetricFamily("ikeme_packets_dropped", "Packets dropped, by reason", labels=["reason"])
        for key, n in sorted({**c, **st.get("dataplane", {})}.items()):
            if key.startswith(("drop-", "drop_")):
                drops.add_metric([key[5:].replace("_", "-")], n)
        yield drops
        esp = CounterMetricFamily("ikeme_esp_bytes", "ESP payload bytes of the current CHILD_SAs",
                                  labels=["direction"])
        esp.add_metric(["in"], st.get("esp-bytes-in", 0))
        esp.add_metric(["out"], st.get("esp-bytes-out", 0))
        yield esp
        for key, name, what in (("registered-peers", "ikeme_registered_peers", "Peers registered (online)"),
                                ("callbacks-waiting", "ikeme_callbacks_waiting", "Callbacks waiting"),
                                ("relays", "ikeme_relays", "Data relays allocated")):
            if key in st:
                yield _gauge(name, what, st[key])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:9488`, `[::1]:9488` or a bare port (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics {text!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:9488")
    return host, int(port)


def check_listen(listen: str) -> None:
    """Start-up check: the metrics address can be bound (one clear line instead of a late failure)."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server binds it
        try:
            s.bind((host, port))
        except OSError as e:
            raise LocalError(f"cannot serve metrics on {host}[{port}]: {e.strerror or e}") from None


class MetricsServer:
    def __init__(self, listen: str, stats: Callable[[], dict[str, Any]]) -> None:
        self.host, self.port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(stats))
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self.server = await asyncio.start_server(self._client, self.host, self.port)
        except OSError as e:
            raise LocalError(f"cannot serve metrics on {self.host}[{self.port}]: {e.strerror or e}") from None
        log.info("serving Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            parts = head[:MAX_REQUEST].split(b" ", 2)
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body = generate_latest(self.registry)
                status, ctype = b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found: try /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype +
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
