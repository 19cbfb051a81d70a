"""The cluster's messages over Redis pub/sub (docs/architecture.md, "Cluster": chosen by
bench/cluster_engine.py). Redis carries them and forgets them: the presence lives in the servers, which
announce their peers again whenever a server (re)joins (`hello`), so an engine restart loses nothing
that the next hello does not bring back; the durable data stays in med_db.

A server that is gone is noticed without a protocol of ours: PUBLISH answers how many subscribers got
the message, and a server channel with none means that server is not connected; the servers of the
peers it held are forgotten at once (`Cluster.server_gone`), and a sweep every `sweep_interval` seconds
asks Redis (PUBSUB NUMSUB) about every server that holds peers.

The order of registrations ("newest wins", cluster/core.py) is Redis's: `SEQUENCE_SCRIPT` takes the next
number and publishes the "up" with it in one step, so no server's clock plays a part and the numbers
follow the order in which the registrations reached the engine. The number is max(last + 1, Redis's
TIME in microseconds): it keeps growing across an engine restart, where Redis (without persistence)
forgets the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .core import PRESENCE, SEQUENCE, Cluster, server_channel

log = logging.getLogger("mediation_server.cluster")
SERVER_PREFIX = server_channel("")
T = TypeVar("T")
BATCH = 1000  # messages per pipelined round trip
SEQ_KEY = "ikeme.seq"
# KEYS[1] the counter; ARGV[1] the channel, ARGV[2] the message up to its number (cluster/core.py)
SEQUENCE_SCRIPT = """
local t = redis.call('TIME')
local n = math.max((tonumber(redis.call('GET', KEYS[1])) or 0) + 1, t[1] * 1000000 + t[2])
local s = string.format('%.0f', n)
redis.call('SET', KEYS[1], s)
redis.call('PUBLISH', ARGV[1], ARGV[2] .. s .. '}')
return s
"""


async def uncancelled(aw: Awaitable[T]) -> T:
    """`await aw`, then CancelledError if this task was cancelled meanwhile: redis-py (8.2) can catch the
    cancellation of a call in progress (it closes the connection) and return normally, and a task that
    went on would never end (its owner's cancel and gather would wait for ever)."""
    result = await aw
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result


class RedisBus:
    """Runs as one asyncio task: `deliver(data)` gets each message from the others; `synced(servers)` runs
    after each (re)connection's hello with the servers connected then (the daemon starts a paced sync of
    its peers to each, `Cluster.start_sync`; a server that subscribes later says hello and gets its
    own); `gone(server)` when one disappeared; `sequenced(n)` with the number of each registration
    announced (`Cluster.register`, in order; default: handed to `Cluster.sequenced` and dropped)."""

    def __init__(self, url: str, cluster: Cluster, deliver: Callable[[bytes], None],
                 synced: Callable[[list[str]], None],
                 gone: Callable[[str], None], retry: float = 0.05, sweep_interval: float = 5.0,
                 sequenced: Callable[[int], object] | None = None) -> None:
        self.url, self.cluster, self.deliver, self.synced, self.gone = url, cluster, deliver, synced, gone
        self.sequenced: Callable[[int], object] = sequenced or cluster.sequenced
        self.retry, self.sweep_interval = retry, sweep_interval
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._warned = False

    async def run(self) -> None:
        import redis.asyncio as aioredis  # only a server configured with a cluster engine loads redis-py
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()
        self.cluster.on_output = lambda: loop.call_soon(self._wake.set)
        while True:
            # no silent reconnection inside redis-py: a lost connection must end here, so that the
            # next one says hello and the presence is sent again (messages of the gap are lost)
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2, socket_keepalive=True,
                                             retry=Retry(NoBackoff(), 0))
            tasks: list[asyncio.Task[None]] = []
            ps = client.pubsub()
            try:
                await uncancelled(ps.subscribe(PRESENCE, server_channel(self.cluster.name)))
                # loaded on each connection: a restarted engine has forgotten it (EVALSHA then sends 40
                # bytes of digest per registration, not the script)
                sha = await uncancelled(client.script_load(SEQUENCE_SCRIPT))
                log.info("cluster: connected to %s as server %s", self.url, self.cluster.name)
                self._warned = False
                self.connected.set()
                # a fresh start: the others announce their peers again, and we ours; what was queued
                # while the engine was unreachable is stale (the announcements below replace it)
                self.cluster.reset()  # the acknowledgements and numbers went with the old connection
                self.cluster.hello()
                # subscribed before listing: a server missing from the list subscribes after us, and
                # its hello reaches us (either way each pair of servers syncs at least once)
                listed = await uncancelled(client.pubsub_channels(server_channel("*")))
                names = sorted({(c.decode() if isinstance(c, bytes) else str(c))[len(SERVER_PREFIX):]
                                for c in listed} - {self.cluster.name})
                self.synced(names)
                tasks = [asyncio.create_task(self._publish(client, sha)), asyncio.create_task(self._sweep(client))]
                tasks.append(asyncio.create_task(self._read(ps)))
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()  # raises what ended it
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the engine is down or unreachable: retry
                if not self._warned:
                    log.warning("cluster: engine %s unreachable (%s); retrying", self.url, e)
                    self._warned = True
            finally:
                self.connected.clear()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)  # their errors are the one we handled
                with contextlib.suppress(Exception):
                    await ps.aclose()  # its own connection: closing it unsubscribes us at once
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(self.retry)  # pacing of the reconnection attempts

    async def _read(self, ps: Any) -> None:
        while True:
            m = await uncancelled(ps.get_message(ignore_subscribe_messages=True, timeout=5.0))
            if m is not None and m.get("type") == "message":
                self.deliver(m["data"])

    async def _publish(self, client: Any, sha: str) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while out := self.cluster.take_outbox():
                # one pipeline per batch: one round trip to Redis for however many messages queued
                for i in range(0, len(out), BATCH):
                    batch = out[i:i + BATCH]
                    pipe = client.pipeline(transaction=False)
                    for channel, data in batch:
                        if channel == SEQUENCE:
                            pipe.evalsha(sha, 1, SEQ_KEY, PRESENCE, data)
                        else:
                            pipe.publish(channel, data)
                    counts = await uncancelled(pipe.execute())
                    for (channel, _), n in zip(batch, counts, strict=True):
                        if channel == SEQUENCE:
                            self.sequenced(int(n))
                        elif n == 0 and channel.startswith(SERVER_PREFIX):
                            self._server_gone(channel[len(SERVER_PREFIX):])

    async def _sweep(self, client: Any) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)  # a period, not a synchronisation
            servers = self.cluster.servers_holding_peers()
            if not servers:
                continue
            counts = await uncancelled(client.pubsub_numsub(*(server_channel(s) for s in servers)))
            for channel, n in counts:
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                if n == 0:
                    self._server_gone(name[len(SERVER_PREFIX):])

    def _server_gone(self, server: str) -> None:
        if server != self.cluster.name:
            log.info("cluster: server %s is not connected to the engine; forgetting its peers", server)
            self.gone(server)
