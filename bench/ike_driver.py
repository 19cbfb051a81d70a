"""The load driver of bench/ike_setup_rate.py: our own sans-IO ``Engine`` as a many-SA initiator in one
process (run inside the driver's namespace as ``ike_setup_rate.py driver SPEC``), keeping ``inflight``
childless IKE_SAs (RFC 6023) in flight toward the responder, each with its own SPIs and (PSK) its own
identity, sent from several source addresses round-robin."""

from __future__ import annotations

import dataclasses
import resource
import select
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROPOSAL = "aes128gcm16-prfsha256-x25519"
PSK = "bench-shared-secret-0123456789abcdef"
RESP_IP = "192.0.2.2"
RESP_PSK_ID = "responder@bench"


def _childless_extension() -> Any:
    """An engine extension adding N(CHILDLESS_IKEV2_SUPPORTED) to our IKE_SA_INIT requests (RFC 6023 3)."""
    from core_ike.codec.message import Message
    from core_ike.codec.payloads import NotifyPayload
    from core_ike.constants import ExchangeType, NotifyType
    from core_ike.ike.context import Status, Task
    from core_ike.ike.extension import Extension
    from core_ike.ike.sa import IkeSa

    class ChildlessNotify(Task):
        exchange = ExchangeType.IKE_SA_INIT
        name = "childless"

        def build_i(self, sa: IkeSa, msg: Message, now: float) -> None:
            msg.payloads.append(NotifyPayload(NotifyType.CHILDLESS_IKEV2_SUPPORTED))

        def process_i(self, sa: IkeSa, msg: Message, now: float) -> Status:
            return Status.DONE

    class Childless(Extension):
        def tasks(self, sa: IkeSa, exchange: int, initiator: bool, msg: Message | None) -> list[Task]:
            if initiator and exchange == ExchangeType.IKE_SA_INIT:
                return [ChildlessNotify()]
            return []

    return Childless()


def _driver_engine(spec: dict[str, Any]) -> tuple[Any, Any, str, Any]:
    """(engine, base IkeConfig, auth kind, own identity or None for one per IKE_SA) of a driver."""
    from core_ike.ike.config import AuthConfig, IkeConfig, RetransmitConfig
    from core_ike.ike.creds import Credentials, load_private_key, load_public_key
    from core_ike.ike.engine import Engine, EngineConfig
    from core_ike.ike.identity import Identity

    auth = spec["auth"]
    creds = Credentials()
    kind = "psk" if auth == "psk" else "pubkey"
    if auth == "psk":
        creds.add_psk(PSK)
        resp_id = Identity.parse(RESP_PSK_ID)
        my_id = None
    else:
        creds.private_keys.append(load_private_key(Path(spec["key"]).read_bytes()))
        resp_id = creds.add_public_key(load_public_key(Path(spec["peer_pub"]).read_bytes()))
        my_id = Identity.parse(spec["my_id"])
    base = IkeConfig("bench", local_addrs=list(spec["ips"]), remote_addrs=[spec["remote"]], proposals=PROPOSAL,
                     remote=AuthConfig(kind, resp_id), children=[], rekey_time=10**7,
                     retransmit=RetransmitConfig(2.0, 1.8, 4), send_certreq=False)
    engine = Engine([base], creds, EngineConfig())
    engine.extensions.append(_childless_extension())
    return engine, base, kind, my_id


def _driver_sockets(ips: list[str]) -> tuple[dict[tuple[str, int], socket.socket], Any]:
    """Non-blocking UDP sockets on ports 500 and 4500 of each source address, and an epoll on them."""
    socks: dict[tuple[str, int], socket.socket] = {}
    poller = select.epoll()
    for ip in ips:
        for port in (500, 4500):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            s.bind((ip, port))
            s.setblocking(False)
            socks[(ip, port)] = s
            poller.register(s.fileno(), select.EPOLLIN)
    return socks, poller


def _read_ready(engine: Any, poller: Any, by_fd: dict[int, tuple[socket.socket, tuple[str, int]]],
                wait: float) -> None:
    """What arrived within `wait` seconds, to the engine (IKE on 4500 after its non-ESP marker)."""
    for fd, _ in poller.poll(wait):
        s, local = by_fd[fd]
        for _ in range(256):
            try:
                data, peer = s.recvfrom(65535)
            except BlockingIOError:
                break
            if local[1] == 4500:
                if not data.startswith(b"\0\0\0\0"):
                    continue  # ESP or keepalive: none expected
                data = data[4:]
            engine.receive(data, local, peer, time.monotonic())


@dataclass
class _Progress:
    """A driver's IKE_SAs: started, established (the last at `t_last`), failed (by reason)."""

    started: int = 0
    done: int = 0
    failed: int = 0
    t_last: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def inflight(self) -> int:
        return self.started - self.done - self.failed


def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Set up spec["count"] IKE_SAs to spec["remote"], keeping spec["inflight"] in flight; returns figures."""
    from core_ike.ike import events as ev
    from core_ike.ike.config import AuthConfig
    from core_ike.ike.identity import Identity
    from core_ike.ike.tasks.ike_auth import IkeAuth
    from core_ike.ike.tasks.ike_init import IkeInit

    count, inflight_max = int(spec["count"]), int(spec["inflight"])
    ips: list[str] = spec["ips"]
    remote = (spec["remote"], 500)
    engine, base, kind, my_id = _driver_engine(spec)
    socks, poller = _driver_sockets(ips)
    by_fd = {s.fileno(): (s, addr) for addr, s in socks.items()}

    def flush() -> None:
        for data, local, peer in engine.datagrams_to_send():
            socks[(local[0], local[1])].sendto(data, peer)

    prefix = spec["prefix"]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    deadline = t0 + float(spec["timeout"])
    p = _Progress(t_last=t0)
    while p.done + p.failed < count:
        now = time.monotonic()
        if now > deadline:
            break
        while p.inflight < inflight_max and p.started < count:
            ident = my_id or Identity.parse(f"{prefix}{p.started}@bench")
            cfg = dataclasses.replace(base, name=f"{prefix}{p.started}", local=AuthConfig(kind, ident))
            sa = engine.new_initiator(cfg, remote, (ips[p.started % len(ips)], 500))
            sa.queue.append(IkeInit())
            sa.queue.append(IkeAuth())
            sa.initiate_next(now)
            p.started += 1
        flush()
        timer = engine.get_timer()
        _read_ready(engine, poller, by_fd, 0.05 if timer is None else min(0.05, max(0.0, timer - now)))
        now = time.monotonic()
        timer = engine.get_timer()
        if timer is not None and timer <= now:
            engine.handle_timer(now)
        flush()
        while (e := engine.next_event()) is not None:
            if isinstance(e, ev.IkeSaEstablished):
                p.done += 1
                p.t_last = time.monotonic()
            elif isinstance(e, ev.IkeSaFailed):
                p.failed += 1
                p.reasons[e.reason] = p.reasons.get(e.reason, 0) + 1
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    for s in socks.values():
        s.close()
    return {"established": p.done, "failed": p.failed, "started": p.started, "t_start": t0, "t_end": p.t_last,
            "cpu": cpu, "reasons": p.reasons}
