"""The cluster's paced resynchronisation (cluster/core.py `start_sync`): 300k registrations reach
another server in "sync" messages of at most SYNC_CHUNK, never more than SYNC_WINDOW of them
unacknowledged, so an engine restart is never one burst of every registration; a "down" between the
snapshot and its message is not undone; a second hello starts the sync over."""

from __future__ import annotations

import json

from mediation_server.cluster.core import (
    SYNC_CHUNK,
    SYNC_WINDOW,
    CallbackElsewhere,
    Cluster,
    PeerElsewhere,
    RemotePeer,
    SyncChunk,
    server_channel,
)


def _types(out: list[tuple[str, bytes]]) -> list[str]:
    return [json.loads(data)["t"] for _, data in out]


def test_300k_peers_resync_in_bounded_acknowledged_chunks() -> None:
    a, b = Cluster("a"), Cluster("b")
    here = {f"peer{i}@example.org": i + 1 for i in range(300_000)}
    a.start_sync("b", sorted(here), lambda i: (None, here[i], False) if i in here else None,
                 [("bob@example.org", "alice@example.org", 1.0, 99.0)])
    ticks, most = 0, 0
    while a.outbox:
        out = a.take_outbox()
        ticks += 1
        most = max(most, len(out))
        # what one tick puts on the engine: the window, not the registrations
        assert len(out) <= SYNC_WINDOW and all(ch == server_channel("b") for ch, _ in out)
        for _, data in out:
            assert len(json.loads(data)["up"]) + len(json.loads(data)["cb"]) <= SYNC_CHUNK
            ev = b.receive(data)
            assert isinstance(ev, SyncChunk)
        acks = b.take_outbox()
        assert _types(acks) == ["ack"] * len(out) and {ch for ch, _ in acks} == {server_channel("a")}
        for _, data in acks:
            assert a.receive(data) is None
    assert b.known() == 300_000 and b.where("peer123@example.org").seq == 124  # type: ignore[union-attr]
    assert most == SYNC_WINDOW and ticks >= 300_000 // (SYNC_CHUNK * SYNC_WINDOW)
    assert a.syncs == {}  # done and acknowledged: nothing kept


def test_without_acknowledgement_the_sync_stops_at_the_window() -> None:
    a = Cluster("a")
    a.start_sync("b", [f"p{i}" for i in range(100_000)], lambda i: (None, 1, False))
    assert len(a.take_outbox()) == SYNC_WINDOW
    assert a.take_outbox() == []  # b did not answer: nothing more, whatever the registrations left


def test_a_down_after_the_snapshot_is_not_undone_and_a_hello_starts_over() -> None:
    a, b = Cluster("a"), Cluster("b")
    here = {f"p{i:06d}": 1 for i in range(SYNC_CHUNK * (SYNC_WINDOW + 1))}
    a.start_sync("b", sorted(here), lambda i: (("192.0.2.1", 4500), here[i], True) if i in here else None)
    first = a.take_outbox()
    late = f"p{SYNC_CHUNK * SYNC_WINDOW:06d}"  # in the message not sent yet
    del here[late]
    a.withdraw(late)
    evs = [b.receive(d) for _, d in first + a.take_outbox()]
    for _, d in b.take_outbox():
        a.receive(d)
    for _, d in a.take_outbox():
        evs.append(b.receive(d))
    peers = [p for e in evs if isinstance(e, SyncChunk) for p in e.peers]
    assert len(peers) == len(here) and late not in {p.identity for p in peers}
    assert b.where(late) is None and b.where("p000000") == RemotePeer("a", ("192.0.2.1", 4500), 1, True)
    assert peers[0] == PeerElsewhere("p000000", "a", 1, True)
    # b said hello again (it restarted): the sync to it starts from the first registration
    a.start_sync("b", ["p000000", "p000001"], lambda i: (None, 2 if i == "p000000" else 0, False),
                 [("t", "r", 1.0, 2.0)])
    ev = b.receive(a.take_outbox()[0][1])
    # p000001's number has not come back yet: not in the sync (its own "up" follows)
    assert isinstance(ev, SyncChunk) and [(p.identity, p.seq) for p in ev.peers] == [("p000000", 2)]
    assert ev.callbacks == (CallbackElsewhere("t", "r", 1.0, 2.0),)
    # stale acknowledgements (of the first stream) do not move the new one
    assert a.receive(json.dumps({"t": "ack", "s": 1, "n": 0, "srv": "b"}).encode()) is None
    assert "b" in a.syncs


def test_a_server_that_leaves_ends_its_sync() -> None:
    a = Cluster("a")
    a.start_sync("b", [f"p{i}" for i in range(10_000)], lambda i: (None, 1, False))
    a.server_gone("b")
    assert a.syncs == {}
