"""The cluster's sans-IO core: presence (newest wins, stale and foreign "down" ignored), forwarded
messages round-trip, malformed messages are typed errors."""

from __future__ import annotations

import json

import pytest

from mediation_server.cluster.core import (
    PRESENCE,
    CallbackElsewhere,
    CallbackFiredElsewhere,
    Cluster,
    ClusterMessageError,
    ForwardedConnect,
    ForwardedFailure,
    PeerElsewhere,
    PeerGoneElsewhere,
    SyncAsked,
    server_channel,
)


def _pass(src: Cluster, dst: Cluster) -> list[object]:
    return [dst.receive(data) for _, data in src.take_outbox()]


def test_presence_newest_wins_and_down_only_from_the_holder() -> None:
    a, b, c = Cluster("a"), Cluster("b"), Cluster("c")
    a.announce("alice", ("192.0.2.1", 4500), 10.0)
    assert _pass(a, c) == [PeerElsewhere("alice", "a", 10.0)]
    b.announce("alice", None, 20.0)
    assert _pass(b, c) == [PeerElsewhere("alice", "b", 20.0)]
    a.announce("alice", ("192.0.2.1", 4500), 10.0)  # late, older: ignored
    assert _pass(a, c) == [None]
    a.withdraw("alice")  # a no longer holds it: ignored
    assert _pass(a, c) == [None] and c.where("alice") is not None
    b.withdraw("alice")
    assert _pass(b, c) == [PeerGoneElsewhere("alice", "b")] and c.where("alice") is None
    a.hello()
    assert _pass(a, c) == [SyncAsked("a")]
    a.announce("x", None, 1.0)
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
    json.dumps({"srv": "a", "t": "up", "id": "x", "since": 1, "ep": ["h"]}).encode(),
    json.dumps({"srv": "a", "t": "connect", "req": [3, "zz"], "target": "t", "response": False, "cid": "",
                "key": "", "eps": []}).encode(),
    json.dumps({"srv": "a", "t": "failed", "to": "t", "cid": "xx", "about": [3, ""]}).encode(),
])
def test_malformed_messages_are_typed_errors(data: bytes) -> None:
    with pytest.raises(ClusterMessageError):
        Cluster("b").receive(data)


def test_server_gone_forgets_its_peers_and_names_are_checked() -> None:
    a, c = Cluster("a"), Cluster("c")
    a.announce("alice", None, 1.0)
    a.announce("bob", None, 1.0)
    _pass(a, c)
    assert sorted(c.server_gone("a")) == ["alice", "bob"] and c.where("alice") is None
    with pytest.raises(ValueError):
        Cluster("two words")
    assert server_channel("a") != PRESENCE


def test_outbox_is_bounded_while_the_engine_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    from mediation_server.cluster import core

    monkeypatch.setattr(core, "MAX_OUTBOX", 3)
    a = Cluster("a")
    for i in range(5):
        a.announce(f"p{i}", None, 1.0)
    assert len(a.outbox) == 3 and a.dropped == 2
