"""The cluster's messages over a real redis-server of the test's own: two servers learn each other's
peers (hello on joining), a forwarded ME_CONNECT arrives, a server that leaves is forgotten, and after
the engine is killed and restarted both reconnect and announce their peers again; registrations are
numbered by the engine, in its order and growing across an engine restart.

Nothing polls: every callback of the bus under test (a message delivered, servers synced, a server gone, a
registration numbered, connected set or cleared) wakes the test's waiters, which then check their
condition again (`_until`)."""

from __future__ import annotations

import asyncio
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
    r.wait_ready()
    yield r
    r.kill()


class Signalled(asyncio.Event):
    """`RedisBus.connected` that also wakes the test's waiters when the bus sets or clears it."""

    def __init__(self, changed: asyncio.Event) -> None:
        super().__init__()
        self._changed = changed

    def set(self) -> None:
        super().set()
        self._changed.set()

    def clear(self) -> None:
        super().clear()
        self._changed.set()


class Server:
    """A server's cluster side without the IKE engine: what MediationServer does with the events.
    `changed` is set after each of the bus's callbacks."""

    def __init__(self, name: str, url: str, peers: dict[str, int], changed: asyncio.Event) -> None:
        self.cluster = Cluster(name)
        self.peers = peers  # identity -> the engine's number of its registration here
        self.events: list[object] = []
        self.gone: list[str] = []
        self.numbers: list[Sequenced | None] = []
        self.changed = changed
        self.bus = RedisBus(url, self.cluster, self._deliver, self._synced, self._gone, sweep_interval=0.2,
                            sequenced=self._sequenced)
        self.bus.connected = Signalled(changed)

    def _sequenced(self, n: int) -> None:
        self.numbers.append(self.cluster.sequenced(n))
        self.changed.set()

    def _deliver(self, data: bytes) -> None:
        try:
            ev = self.cluster.receive(data)
        except ClusterMessageError as e:
            self.events.append(e)
            self.changed.set()
            return
        if isinstance(ev, SyncAsked):
            self.cluster.server_gone(ev.server)
            self._synced([ev.server])
        if isinstance(ev, SyncChunk):
            self.events.extend(ev.peers)
        elif ev is not None:
            self.events.append(ev)
        self.changed.set()

    def _synced(self, servers: list[str]) -> None:
        for server in servers:
            self.cluster.start_sync(server, sorted(self.peers), self._here)
        self.changed.set()

    def _here(self, identity: str) -> tuple[None, int, bool] | None:
        seq = self.peers.get(identity)
        return (None, seq, False) if seq is not None else None

    def _gone(self, server: str) -> None:
        self.gone.append(server)
        self.cluster.server_gone(server)
        self.changed.set()


async def _until(cond: Callable[[], bool], changed: asyncio.Event, seconds: float = 60.0) -> None:
    """Until `cond()` holds, checked again each time a bus callback set `changed`; the deadline is
    generous (a loaded machine), it only bounds a failure."""
    try:
        async with asyncio.timeout(seconds):
            while not cond():
                changed.clear()  # no await between the check and the clear: no callback runs in between
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"not met within {seconds} s: line {cond.__code__.co_firstlineno}") from None


async def _stop(servers: list[Server], tasks: list[asyncio.Task[None]], redis_server: RedisProcess,
                changed: asyncio.Event) -> None:
    """End the buses with no command in flight: the engine goes first, then the tasks are cancelled
    while they wait to reconnect (redis-py 8.2's Pipeline.execute() can return normally when its task
    is cancelled mid-call, and a bus whose publisher goes on never ends)."""
    redis_server.kill()
    await _until(lambda: not any(s.bus.connected.is_set() for s in servers), changed)
    for t in tasks:
        t.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


def test_presence_forwarding_departure_and_engine_restart(redis_server: RedisProcess) -> None:
    async def main() -> None:
        changed = asyncio.Event()
        s1 = Server("ms1", redis_server.url, {"alice": 10}, changed)
        s2 = Server("ms2", redis_server.url, {"bob": 11}, changed)
        t1 = asyncio.create_task(s1.bus.run())
        await s1.bus.connected.wait()
        t2 = asyncio.create_task(s2.bus.run())
        # s2 joins later: its hello makes s1 announce alice again
        await _until(lambda: s1.cluster.where("bob") is not None and s2.cluster.where("alice") is not None, changed)
        assert s2.cluster.where("alice").server == "ms1"  # type: ignore[union-attr]
        s1.cluster.forward_connect("ms2", (3, b"alice"), "bob", response=False, connect_id=b"\x01" * 4,
                                   key=b"\x02" * 16, endpoints=(b"\x00",))
        await _until(lambda: any(isinstance(e, ForwardedConnect) for e in s2.events), changed)
        # malformed input on a server channel: a typed error, the bus keeps running
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server.url)
        await r.publish("ikeme.server.ms2", b"not json")
        await _until(lambda: any(isinstance(e, ClusterMessageError) for e in s2.events), changed)
        # the engine dies and comes back: both reconnect and know each other's peers again
        redis_server.kill()
        await _until(lambda: not s1.bus.connected.is_set() and not s2.bus.connected.is_set(), changed)
        s1.events.clear()
        redis_server.start()
        await _until(lambda: s1.bus.connected.is_set() and s2.bus.connected.is_set(), changed)
        await _until(lambda: s1.cluster.where("bob") is not None and s2.cluster.where("alice") is not None, changed)
        assert any(isinstance(e, PeerElsewhere) and e.identity == "bob" for e in s1.events)
        await r.aclose()
        # ms2 leaves once both resynchronisations are acknowledged (nothing left to publish): redis-py
        # 8.2's Pipeline.execute() can return normally when its task is cancelled mid-call, and the bus
        # then never ends (its publisher goes on); a cancel while idle is what this step is about
        await _until(lambda: not s1.cluster.syncs and not s2.cluster.syncs, changed)
        t2.cancel()
        await asyncio.wait_for(asyncio.gather(t2, return_exceptions=True), 60)
        await _until(lambda: s1.cluster.where("bob") is None, changed)
        assert s1.gone == ["ms2"]
        await _stop([s1], [t1], redis_server, changed)

    asyncio.run(main())


def test_registrations_are_numbered_by_the_engine_in_order_across_a_restart(redis_server: RedisProcess) -> None:
    async def main() -> None:
        changed = asyncio.Event()
        s1, s2 = Server("ms1", redis_server.url, {}, changed), Server("ms2", redis_server.url, {}, changed)
        tasks = [asyncio.create_task(s.bus.run()) for s in (s1, s2)]
        await _until(lambda: s1.bus.connected.is_set() and s2.bus.connected.is_set(), changed)
        s1.cluster.register("alice", ("192.0.2.1", 4500))
        await _until(lambda: bool(s1.numbers) and s2.cluster.where("alice") is not None, changed)
        (first,) = s1.numbers
        assert first is not None and first.identity == "alice"
        # what ms2 got is the message the script completed: the same number
        assert s2.cluster.where("alice") == RemotePeer("ms1", ("192.0.2.1", 4500), first.seq)
        s2.cluster.register("alice", None, relay=True)  # alice moved to ms2: a higher number
        await _until(lambda: bool(s2.numbers) and s1.cluster.where("alice") is not None, changed)
        (second,) = s2.numbers
        assert second is not None and second.seq > first.seq
        assert s1.cluster.where("alice") == RemotePeer("ms2", None, second.seq, True)
        # the engine restarts without persistence: its counter is gone, the numbers still grow
        redis_server.kill()
        await _until(lambda: not s1.bus.connected.is_set(), changed)
        redis_server.start()
        await _until(lambda: s1.bus.connected.is_set(), changed)
        s1.cluster.register("carol", None)
        await _until(lambda: len(s1.numbers) == 2, changed)
        third = s1.numbers[1]
        assert third is not None and third.identity == "carol" and third.seq > second.seq
        await _stop([s1, s2], tasks, redis_server, changed)

    asyncio.run(main())
