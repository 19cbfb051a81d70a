"""The cluster's messages over a real redis-server of the test's own: two servers learn each other's
peers (hello on joining), a forwarded ME_CONNECT arrives, a server that leaves is forgotten, and after
the engine is killed and restarted both reconnect and announce their peers again; registrations are
numbered by the engine, in its order and growing across an engine restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mediation_server.cluster.core import (
    Cluster,
    ClusterMessageError,
    ForwardedConnect,
    PeerElsewhere,
    RemotePeer,
    Sequenced,
    SyncAsked,
    SyncChunk,
)
from mediation_server.cluster.redis_bus import RedisBus
from scenarios.lab.redisproc import RedisProcess
from tests.guards import needs

pytestmark = needs("redis", why="the cluster's engine")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    r = RedisProcess(tmp_path)
    r.start()
    yield r
    r.kill()


class Server:
    """A server's cluster side without the IKE engine: what MediationServer does with the events."""

    def __init__(self, name: str, url: str, peers: dict[str, int]) -> None:
        self.cluster = Cluster(name)
        self.peers = peers  # identity -> the engine's number of its registration here
        self.events: list[object] = []
        self.gone: list[str] = []
        self.numbers: list[Sequenced | None] = []
        self.bus = RedisBus(url, self.cluster, self._deliver, self._synced, self._gone, sweep_interval=0.2,
                            sequenced=lambda n: self.numbers.append(self.cluster.sequenced(n)))

    def _deliver(self, data: bytes) -> None:
        try:
            ev = self.cluster.receive(data)
        except ClusterMessageError as e:
            self.events.append(e)
            return
        if isinstance(ev, SyncAsked):
            self.cluster.server_gone(ev.server)
            self._synced([ev.server])
        if isinstance(ev, SyncChunk):
            self.events.extend(ev.peers)
        elif ev is not None:
            self.events.append(ev)

    def _synced(self, servers: list[str]) -> None:
        for server in servers:
            self.cluster.start_sync(server, sorted(self.peers), self._here)

    def _here(self, identity: str) -> tuple[None, int, bool] | None:
        seq = self.peers.get(identity)
        return (None, seq, False) if seq is not None else None

    def _gone(self, server: str) -> None:
        self.gone.append(server)
        self.cluster.server_gone(server)


async def _until(cond: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met in time: {cond.__code__.co_firstlineno}")
        await asyncio.sleep(0.02)  # polling with a deadline


def test_presence_forwarding_departure_and_engine_restart(redis_server: RedisProcess) -> None:
    async def main() -> None:
        s1 = Server("ms1", redis_server.url, {"alice": 10})
        s2 = Server("ms2", redis_server.url, {"bob": 11})
        t1 = asyncio.create_task(s1.bus.run())
        await s1.bus.connected.wait()
        t2 = asyncio.create_task(s2.bus.run())
        # s2 joins later: its hello makes s1 announce alice again
        await _until(lambda: s1.cluster.where("bob") is not None and s2.cluster.where("alice") is not None)
        assert s2.cluster.where("alice").server == "ms1"  # type: ignore[union-attr]
        s1.cluster.forward_connect("ms2", (3, b"alice"), "bob", response=False, connect_id=b"\x01" * 4,
                                   key=b"\x02" * 16, endpoints=(b"\x00",))
        await _until(lambda: any(isinstance(e, ForwardedConnect) for e in s2.events))
        # malformed input on a server channel: a typed error, the bus keeps running
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server.url)
        await r.publish("ikeme.server.ms2", b"not json")
        await _until(lambda: any(isinstance(e, ClusterMessageError) for e in s2.events))
        # the engine dies and comes back: both reconnect and know each other's peers again
        redis_server.kill()
        await _until(lambda: not s1.bus.connected.is_set() and not s2.bus.connected.is_set())
        s1.events.clear()
        redis_server.start()
        await _until(lambda: s1.bus.connected.is_set() and s2.bus.connected.is_set())
        await _until(lambda: s1.cluster.where("bob") is not None and s2.cluster.where("alice") is not None)
        assert any(isinstance(e, PeerElsewhere) and e.identity == "bob" for e in s1.events)
        await r.aclose()
        # ms2 leaves: ms1 notices (no subscriber on its channel) and forgets bob
        t2.cancel()
        await asyncio.gather(t2, return_exceptions=True)
        await _until(lambda: s1.cluster.where("bob") is None)
        assert s1.gone == ["ms2"]
        t1.cancel()
        await asyncio.gather(t1, return_exceptions=True)

    asyncio.run(main())


def test_registrations_are_numbered_by_the_engine_in_order_across_a_restart(redis_server: RedisProcess) -> None:
    async def main() -> None:
        s1, s2 = Server("ms1", redis_server.url, {}), Server("ms2", redis_server.url, {})
        tasks = [asyncio.create_task(s.bus.run()) for s in (s1, s2)]
        await _until(lambda: s1.bus.connected.is_set() and s2.bus.connected.is_set())
        s1.cluster.register("alice", ("192.0.2.1", 4500))
        await _until(lambda: bool(s1.numbers) and s2.cluster.where("alice") is not None)
        (first,) = s1.numbers
        assert first is not None and first.identity == "alice"
        # what ms2 got is the message the script completed: the same number
        assert s2.cluster.where("alice") == RemotePeer("ms1", ("192.0.2.1", 4500), first.seq)
        s2.cluster.register("alice", None, relay=True)  # alice moved to ms2: a higher number
        await _until(lambda: bool(s2.numbers) and s1.cluster.where("alice") is not None)
        (second,) = s2.numbers
        assert second is not None and second.seq > first.seq
        assert s1.cluster.where("alice") == RemotePeer("ms2", None, second.seq, True)
        # the engine restarts without persistence: its counter is gone, the numbers still grow
        redis_server.kill()
        await _until(lambda: not s1.bus.connected.is_set())
        redis_server.start()
        await _until(lambda: s1.bus.connected.is_set())
        s1.cluster.register("carol", None)
        await _until(lambda: len(s1.numbers) == 2)
        third = s1.numbers[1]
        assert third is not None and third.identity == "carol" and third.seq > second.seq
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
