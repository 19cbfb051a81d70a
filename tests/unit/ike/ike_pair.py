"""Two sans-IO engines wired back to back with a fake clock (design principle 14)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core_ike.constants import NON_ESP_MARKER
from core_ike.ike import events as ev
from core_ike.ike.config import AuthConfig, ChildConfig, IkeConfig
from core_ike.ike.creds import Credentials
from core_ike.ike.engine import Engine, EngineConfig
from core_ike.ike.identity import Identity
from core_ike.rng import SeededRng

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
WALL0 = time.time()  # wall-clock time (UNIX seconds) at the fake clock's start


@dataclass
class Pair:
    a: Engine
    b: Engine
    now: float = 1000.0
    events_a: list[ev.Event] = field(default_factory=list)
    events_b: list[ev.Event] = field(default_factory=list)
    wire: list[tuple[str, bytes]] = field(default_factory=list)  # ("a->b" / "b->a", datagram)
    drop: Callable[[str, bytes], bool] | None = None  # return True to lose a datagram
    tamper: Callable[[str, bytes], bytes] | None = None
    nat: dict[str, str] = field(default_factory=dict)  # inner address -> public address of a NAT in front
    # call Engine.prepare after each datagram's answers were made, as the transport does after sending
    # them (core_ike/io/transport.py); False: an adapter that never calls it
    prepare: bool = True

    def _translate(self, local: tuple[str, int], remote: tuple[str, int]) -> tuple[tuple[str, int], tuple[str, int]]:
        """What the receiver sees: the sender's NAT rewrites the source, the receiver's NAT the destination."""
        inner = {pub: priv for priv, pub in self.nat.items()}
        return (inner.get(remote[0], remote[0]), remote[1]), (self.nat.get(local[0], local[0]), local[1])

    def engine(self, side: str) -> Engine:
        return self.a if side == "a" else self.b

    def pump(self, max_rounds: int = 50) -> int:
        """Deliver datagrams until both sides are quiet; returns the number delivered."""
        n = 0
        for _ in range(max_rounds):
            moved = False
            for side, src, dst in (("a->b", self.a, self.b), ("b->a", self.b, self.a)):
                for data, local, remote in src.datagrams_to_send():
                    self.wire.append((side, data))
                    if self.drop and self.drop(side, data):
                        continue
                    if self.tamper:
                        data = self.tamper(side, data)
                    moved = True
                    n += 1
                    if data == b"\xff":
                        continue  # NAT keepalive
                    if remote[1] == dst.natt_port:
                        assert data.startswith(NON_ESP_MARKER)
                        data = data[4:]
                    at, frm = self._translate(local, remote)
                    dst.receive(data, at, frm, self.now)
                    if self.prepare:
                        dst.prepare()
            self._drain()
            if not moved:
                break
        return n

    def _drain(self) -> None:
        for eng, out in ((self.a, self.events_a), (self.b, self.events_b)):
            while (e := eng.next_event()) is not None:
                out.append(e)

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every timer due on the way."""
        end = self.now + seconds
        while True:
            ts = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None and t <= end]
            if not ts:
                break
            self.now = max(self.now, min(ts))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()
        self.now = end
        self._drain()

    def of(self, side: str, kind: type) -> list[ev.Event]:
        return [e for e in (self.events_a if side == "a" else self.events_b) if isinstance(e, kind)]


def make_pair(  # noqa: PLR0913 - a test factory: each parameter has a default, callers name what they vary
    proposals: str = "aes128gcm16-prfsha256-x25519", esp: str = "aes128gcm16", auth: str = "psk", *,
    a_kw: dict | None = None, b_kw: dict | None = None, b_proposals: str | None = None,
    b_esp: str | None = None, engine_b: EngineConfig | None = None, a_conf: dict | None = None,
    b_conf: dict | None = None, seed: int = 0,
) -> Pair:
    ca, cb = Credentials(), Credentials()
    ida, idb = Identity.parse("alice@test"), Identity.parse("bob@test")
    if auth == "psk":
        for c in (ca, cb):
            c.add_psk("a-very-secret-shared-key", "alice@test", "bob@test")
    else:
        from cryptography.hazmat.primitives.asymmetric import rsa

        ka = _key(1)
        kb = _key(2)
        ca.private_keys.append(ka)
        cb.private_keys.append(kb)
        ida = cb.add_public_key(ka.public_key())
        idb = ca.add_public_key(kb.public_key())
        del rsa
    child_a = ChildConfig("net", local_ts=["10.1.0.0/24"], remote_ts=["10.2.0.0/24"], esp_proposals=esp)
    child_b = ChildConfig("net", local_ts=["10.2.0.0/24"], remote_ts=["10.1.0.0/24"], esp_proposals=b_esp or esp)
    kind = "psk" if auth == "psk" else "pubkey"
    cfg_a = IkeConfig("home", local_addrs=[A_IP], remote_addrs=[B_IP], proposals=proposals,
                      local=AuthConfig(kind, ida), remote=AuthConfig(kind, idb), children=[child_a],
                      **(a_conf or {}))
    cfg_b = IkeConfig("gw", local_addrs=[B_IP], remote_addrs=["%any"], proposals=b_proposals or proposals,
                      local=AuthConfig(kind, idb), remote=AuthConfig(kind, ida), children=[child_b],
                      **(b_conf or {}))
    a = Engine([cfg_a], ca, EngineConfig(**(a_kw or {})), rng=SeededRng(f"a{seed}"))
    b = Engine([cfg_b], cb, engine_b or EngineConfig(**(b_kw or {})), rng=SeededRng(f"b{seed}"))
    pair = Pair(a, b)
    # the adapter's wall-clock input (certificate validity): the time the test's certificates are
    # made at, a fixed point of the fake clock from then on
    for eng in (a, b):
        eng.set_wall_clock(WALL0, pair.now)
    return pair


_KEYS: dict[int, object] = {}


def _key(n: int):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import rsa

    if n not in _KEYS:
        _KEYS[n] = rsa.generate_private_key(65537, 2048)
    return _KEYS[n]
