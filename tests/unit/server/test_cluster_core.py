"""The cluster's sans-IO core: presence (newest wins, stale and foreign "down" ignored), forwarded
messages round-trip, malformed messages are typed errors."""

from __future__ import annotations

import json

import pytest

from mediation_server.cluster.core import (
    PRESENCE,
    SEQUENCE,
    CallbackElsewhere,
    CallbackFiredElsewhere,
    Cluster,
    ClusterMessageError,
    ForwardedConnect,
    ForwardedFailure,
    PeerElsewhere,
    PeerGoneElsewhere,
    RemotePeer,
    Sequenced,
    SyncAsked,
    server_channel,
)


def _pass(src: Cluster, dst: Cluster) -> list[object]:
    return [dst.receive(data) for _, data in src.take_outbox()]


def test_presence_newest_wins_and_down_only_from_the_holder() -> None:
    a, b, c = Cluster("a"), Cluster("b"), Cluster("c")
    a.announce("alice", ("192.0.2.1", 4500), 10, relay=True)
    assert _pass(a, c) == [PeerElsewhere("alice", "a", 10, True)]
    assert c.where("alice") == RemotePeer("a", ("192.0.2.1", 4500), 10, True)
    b.announce("alice", ("2001:db8::7", 4501), 20)
    assert _pass(b, c) == [PeerElsewhere("alice", "b", 20)]
    assert c.where("alice") == RemotePeer("b", ("2001:db8::7", 4501), 20, False)
    a.announce("alice", ("192.0.2.1", 4500), 10)  # late, older: ignored
    assert _pass(a, c) == [None]
    a.withdraw("alice")  # a no longer holds it: ignored
    assert _pass(a, c) == [None] and c.where("alice") is not None
    b.withdraw("alice")
    assert _pass(b, c) == [PeerGoneElsewhere("alice", "b")] and c.where("alice") is None
    a.hello()
    assert _pass(a, c) == [SyncAsked("a")]
    a.announce("x", None, 1)
    assert _pass(a, a) == [None]  # our own messages come back from the engine: nothing to do


def test_forwarded_messages_round_trip() -> None:
    a, b = Cluster("a"), Cluster("b")
    a.forward_connect("b", (3, b"alice@example.net"), "bob@example.net", response=False,
                      connect_id=b"\x01" * 4, key=b"\x02" * 16, endpoints=(b"\x00\x01", b"\xff"))
    a.forward_failure("b", "bob@example.net", b"\x01" * 4, (3, b"alice@example.net"))
    (ch1, _), (ch2, _) = a.outbox
    assert ch1 == ch2 == server_channel("b")
    assert _pass(a, b) == [
        ForwardedConnect("a", (3, b"alice@example.net"), "bob@example.net", False, b"\x01" * 4, b"\x02" * 16,
                         (b"\x00\x01", b"\xff")),
        ForwardedFailure("bob@example.net", b"\x01" * 4, (3, b"alice@example.net"))]
    a.callback_added("bob", "alice", 1.0, 601.0)
    a.callback_fired("bob", "alice")
    assert _pass(a, b) == [CallbackElsewhere("bob", "alice", 1.0, 601.0), CallbackFiredElsewhere("bob", "alice")]


@pytest.mark.parametrize("data", [
    b"\xff\xfe", b"[]", b"{}", json.dumps({"srv": "a"}).encode(), json.dumps({"srv": "a", "t": "nope"}).encode(),
    json.dumps({"srv": "a", "t": "up", "id": "x"}).encode(),
    json.dumps({"srv": "a", "t": "up", "id": "x", "seq": 1, "ep": ["h"]}).encode(),
    json.dumps({"srv": "a", "t": "up", "id": "x", "seq": 1, "ep": ["not an address", 1]}).encode(),
    json.dumps({"srv": "a", "t": "up", "id": "x", "seq": 0, "ep": None}).encode(),
    json.dumps({"srv": "a", "t": "up", "id": "x", "seq": 1.5, "ep": None}).encode(),
    json.dumps({"srv": "a", "t": "sync", "s": 1, "n": 0, "up": [["x", None, 1.0]], "cb": []}).encode(),
    json.dumps({"srv": "a", "t": "connect", "req": [3, "zz"], "target": "t", "response": False, "cid": "",
                "key": "", "eps": []}).encode(),
    json.dumps({"srv": "a", "t": "failed", "to": "t", "cid": "xx", "about": [3, ""]}).encode(),
])
def test_malformed_messages_are_typed_errors(data: bytes) -> None:
    with pytest.raises(ClusterMessageError):
        Cluster("b").receive(data)


def test_server_gone_forgets_its_peers_and_names_are_checked() -> None:
    a, c = Cluster("a"), Cluster("c")
    a.announce("alice", None, 1)
    a.announce("bob", None, 2)
    _pass(a, c)
    assert c.known() == 2 and c.held_by("a") == 2 and c.servers_holding_peers() == ["a"]
    assert sorted(c.server_gone("a")) == ["alice", "bob"] and c.where("alice") is None
    assert c.known() == 0 and c.servers_holding_peers() == []
    with pytest.raises(ValueError):
        Cluster("two words")
    assert server_channel("a") != PRESENCE


def test_outbox_is_bounded_while_the_engine_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    from mediation_server.cluster import core

    monkeypatch.setattr(core, "MAX_OUTBOX", 3)
    a = Cluster("a")
    for i in range(5):
        a.register(f"p{i}", None)
    assert len(a.outbox) == 3 and a.dropped == 2
    # only the three queued wait for their number
    assert [a.sequenced(n) for n in (1, 2, 3, 4)] == [Sequenced("p0", 1), Sequenced("p1", 2), Sequenced("p2", 3),
                                                      None]
    # the two that did not fit ask for their number after the reconnection (MediationServer.sync_to)
    a.reset()
    assert a.take_lost() == ["p3", "p4"]


def test_a_registration_is_numbered_by_the_engine_and_lost_numbers_are_asked_again() -> None:
    a, c = Cluster("a"), Cluster("c")
    a.register("alice", ("192.0.2.1", 4500), relay=True)
    a.register("bob", None)
    ((ch, data), (_, data_b)) = a.take_outbox()
    # the engine completes the message with its number (redis_bus.py SEQUENCE_SCRIPT)
    assert ch == SEQUENCE and data.endswith(b',"seq":')
    assert c.receive(data + b"41}") == PeerElsewhere("alice", "a", 41, True)
    assert a.sequenced(41) == Sequenced("alice", 41)
    a.reset()  # the engine connection closed before bob's number came back
    assert a.sequenced(42) is None and a.take_lost() == ["bob"] and a.take_lost() == []
    del data_b
