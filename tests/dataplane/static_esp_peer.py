"""Run the userspace ESP backend with static keys (no IKE) inside a namespace; for the netns tests.

Usage: python static_esp_peer.py CONFIG.json
Prints READY when up, and KEEPALIVE when the first NAT-keepalive arrives (on its own UDP 4500 socket);
on SIGTERM writes the SA listing and stats to config["report"] and exits; on SIGUSR1 writes them and
goes on.
The UDP 4500 socket here is a stand-in for the IKE transport: it demultiplexes per RFC 3948 2.2
(0xFF keepalive / zero non-ESP marker = IKE / otherwise ESP) and never sets UDP_ENCAP.
With config["transport"] the daemons' own UdpTransport (with an engine that only counts IKE
datagrams) owns port 4500 and the data plane reads and sends ESP on it (attach_transport), with the
offload steps of config["offload"] (core_ike/io/fastpath.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from core_ike.constants import EncrId, IntegId
from core_ike.io.dataplane import Direction, PolicyParams, SaParams, TrafficSelector
from core_ike.io.fastpath import offload_steps
from core_ike.io.transport import UdpTransport
from core_ike.io.userspace import UserspaceDataPlane


class _CountingEngine:
    """The transport's engine side: counts IKE datagrams, sends nothing, no timers."""

    natt_port = 4500

    def __init__(self) -> None:
        self.ike = 0

    def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        self.ike += 1

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int], tuple[str, int]]]:
        return []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def next_event(self) -> Any:
        return None


class _Demux(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.backend: UserspaceDataPlane | None = None
        self.ike = 0
        self.keepalives = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if data == b"\xff":
            self.keepalives += 1  # RFC 3948 2.3
            if self.keepalives == 1:
                print("KEEPALIVE", flush=True)  # the test waits for this line, not for a report
        elif data[:4] == b"\x00\x00\x00\x00":
            self.ike += 1  # IKE would go to the engine
        elif self.backend is not None:
            self.backend.receive_esp(data, addr)


def _sa(d: dict[str, Any]) -> SaParams:
    return SaParams(
        spi=d["spi"],
        direction=Direction[d["direction"]],
        src=d["src"],
        dst=d["dst"],
        src_port=d.get("src_port", 4500),
        dst_port=d.get("dst_port", 4500),
        encap=d["encap"],
        encr_id=EncrId[d["encr"]],
        encr_key_bits=d["bits"],
        encr_key=bytes.fromhex(d["key"]),
        integ_id=IntegId[d.get("integ", "NONE")],
        integ_key=bytes.fromhex(d.get("integ_key", "")),
        reqid=d["reqid"],
    )


def _policy(d: dict[str, Any]) -> PolicyParams:
    return PolicyParams(
        local=TrafficSelector.parse(d["local"]),
        remote=TrafficSelector.parse(d["remote"]),
        direction=Direction[d["direction"]],
        reqid=d["reqid"],
    )


async def main(cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    engine = _CountingEngine()
    udp: UdpTransport | None = None
    send: Callable[[bytes, tuple[str, int]], None]
    if cfg.get("transport"):
        udp = UdpTransport(engine, ["0.0.0.0"], [4500])
        udp.start(loop)
        natt = udp

        def send_natt(data: bytes, remote: tuple[str, int]) -> None:
            natt.send(data, ("0.0.0.0", 4500), remote)

        send = send_natt
    else:
        transport, demux = await loop.create_datagram_endpoint(
            _Demux, local_addr=("0.0.0.0", cfg.get("port", 4500))
        )
        send = transport.sendto
    backend = UserspaceDataPlane(
        send,
        tun_name=cfg["tun"],
        tun_addresses=tuple(cfg["tun_addresses"]),
        keepalive_interval=cfg.get("keepalive", 20.0),
        tick_interval=0.5,
        offload=offload_steps(cfg.get("offload", "all")),
    )
    backend.start()
    if udp is not None:
        backend.attach_transport(udp, 4500)
    else:
        demux.backend = backend
    for sa in cfg["sas"]:
        backend.install_sa(_sa(sa))
    for pol in cfg["policies"]:
        backend.install_policy(_policy(pol))
    def write_report() -> None:
        report = {
            "sas": [dataclasses.asdict(r) for r in backend.list_sas()],
            "stats": backend.stats(),
            "keepalives_received": udp.stats["keepalive"] if udp else demux.keepalives,
            "ike_received": engine.ike if udp else demux.ike,
        }
        tmp = cfg["report"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f)
        os.replace(tmp, cfg["report"])  # a reader never sees half a report

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, write_report)  # the report so far, and go on
    print("READY", flush=True)
    await stop.wait()
    write_report()
    backend.close()
    if udp is not None:
        udp.close()
    else:
        transport.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    with open(sys.argv[1]) as f:
        asyncio.run(main(json.load(f)))
