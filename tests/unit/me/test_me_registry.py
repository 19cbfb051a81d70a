"""Mediation server registry (docs/protocol.md §5, §11.5, §11.7), fake clock."""

from __future__ import annotations

import pytest

from core_ike.constants import NotifyType
from mediation_server.registry import (
    Authorizer,
    MemoryStore,
    Policy,
    RefusalReason,
    Refused,
    Registry,
    RegistryConfig,
    SendCallback,
    TargetOffline,
    TargetOnline,
)


def test_register_replace_and_remove() -> None:
    reg = Registry()
    r1 = reg.update_sa_id("alice", 1, 10.0, ("203.0.113.1", 4500))
    assert r1.replaced_sa_id is None and reg.check("alice") == 1
    r2 = reg.update_sa_id("alice", 2, 20.0, ("203.0.113.1", 4501))
    assert r2.replaced_sa_id == 1 and reg.check("alice") == 2
    rec = reg.lookup("alice")
    assert rec is not None and rec.since == 20.0 and rec.endpoint == ("203.0.113.1", 4501)
    assert reg.remove_sa(1, "alice") is None  # the replaced SA going away must not unregister the new one
    assert reg.check("alice") == 2
    reg.touch("alice", 25.0)
    assert reg.online_peers()[0].last_activity == 25.0
    assert reg.remove_sa(2, "bob") is None  # not bob's SA: nothing of bob's to remove
    assert reg.remove_sa(2, "alice") == "alice" and reg.check("alice") is None and len(reg) == 0


def test_rekey_same_sa_keeps_since() -> None:
    reg = Registry()
    reg.update_sa_id("alice", 1, 10.0)
    reg.update_sa_id("alice", 1, 30.0)
    rec = reg.lookup("alice")
    assert rec is not None and rec.since == 10.0 and rec.last_activity == 30.0


def test_callbacks_fire_once_deduplicated() -> None:
    reg = Registry()
    reg.update_sa_id("alice", 1, 0.0)
    assert reg.check_and_register("bob", "alice", 1.0) is None
    assert reg.check_and_register("bob", "alice", 2.0) is None  # dedup
    assert reg.waiting_for("bob") == ["alice"]
    r = reg.update_sa_id("bob", 7, 3.0)
    assert r.callbacks == (SendCallback("alice", 1, "bob"),)
    reg.remove_sa(7, "bob")
    assert reg.update_sa_id("bob", 8, 4.0).callbacks == ()  # one-shot


def test_callbacks_expire() -> None:
    reg = Registry(RegistryConfig(callback_ttl=60.0))
    reg.update_sa_id("alice", 1, 0.0)
    reg.check_and_register("bob", "alice", 0.0)
    assert reg.get_timer() == 60.0
    assert reg.handle_timer(59.0) == []
    expired = reg.handle_timer(60.0)
    assert [(e.target, e.requester) for e in expired] == [("bob", "alice")]
    assert reg.update_sa_id("bob", 2, 61.0).callbacks == ()


def test_callbacks_survive_restart() -> None:
    store = MemoryStore()
    reg = Registry(store=store)
    reg.update_sa_id("alice", 1, 100.0)
    reg.check_and_register("bob", "alice", 100.0)
    assert len(store.saved) == 1
    # server restarts: SAs are gone, registrations come back from the store
    reg2 = Registry(store=store)
    assert reg2.waiting_for("bob") == ["alice"]
    assert reg2.update_sa_id("bob", 5, 110.0).callbacks == ()  # alice not back yet: kept
    reg2.remove_sa(5, "bob")
    reg2.update_sa_id("alice", 9, 120.0)
    assert reg2.update_sa_id("bob", 6, 130.0).callbacks == (SendCallback("alice", 9, "bob"),)
    assert store.saved == []


def test_offline_peer_leaves_nothing_stale() -> None:
    reg = Registry()
    reg.update_sa_id("alice", 1, 0.0)
    reg.update_sa_id("carol", 2, 0.0)
    reg.check_and_register("bob", "alice", 0.0)
    reg.check_and_register("dave", "carol", 0.0)
    reg.remove_sa(1, "alice")
    reg.remove_sa(2, "carol")
    assert reg.online_peers() == []


def test_request_connect_online_offline() -> None:
    reg = Registry()
    reg.update_sa_id("alice", 1, 0.0)
    assert reg.request_connect("alice", "bob", 1.0, n_endpoints=2, callback=True) == TargetOffline(True)
    assert reg.request_connect("alice", "bob", 1.0, n_endpoints=2, callback=False) == TargetOffline(False)
    reg.update_sa_id("bob", 2, 2.0)
    assert reg.request_connect("alice", "bob", 3.0, n_endpoints=2, callback=True) == TargetOnline(2)


def test_limits() -> None:
    reg = Registry(RegistryConfig(max_endpoints=4, max_pending_callbacks=2, connect_rate=1.0,
                                  connect_burst=3))
    reg.update_sa_id("alice", 1, 0.0)
    too_many = reg.request_connect("alice", "bob", 0.0, n_endpoints=5, callback=True)
    assert isinstance(too_many, Refused) and too_many.reason is RefusalReason.TOO_MANY_ENDPOINTS
    assert too_many.notify == NotifyType.INVALID_SYNTAX
    reg.request_connect("alice", "p1", 10.0, n_endpoints=1, callback=True)
    reg.request_connect("alice", "p2", 20.0, n_endpoints=1, callback=True)
    d = reg.request_connect("alice", "p3", 30.0, n_endpoints=1, callback=True)
    assert isinstance(d, TargetOffline) and not d.callback_registered
    assert d.callback_refused is not None and d.callback_refused.reason is RefusalReason.TOO_MANY_CALLBACKS


def test_rate_limit_token_bucket() -> None:
    reg = Registry(RegistryConfig(connect_rate=2.0, connect_burst=3))
    reg.update_sa_id("alice", 1, 0.0)
    reg.update_sa_id("bob", 2, 0.0)
    results = [reg.request_connect("alice", "bob", 100.0, n_endpoints=1, callback=False) for _ in range(4)]
    assert [isinstance(r, Refused) for r in results] == [False, False, False, True]
    assert isinstance(results[3], Refused) and results[3].reason is RefusalReason.RATE_LIMITED
    assert results[3].notify == NotifyType.TEMPORARY_FAILURE  # fail fast, not "offline"
    assert isinstance(reg.request_connect("alice", "bob", 100.5, n_endpoints=1, callback=False), TargetOnline)
    assert isinstance(reg.request_connect("alice", "bob", 100.5, n_endpoints=1, callback=False), Refused)


def test_authorization_same_owner() -> None:
    owners = {"alice": "u1", "bob": "u1", "mallory": "u2"}
    reg = Registry(authorizer=Authorizer(Policy.SAME_OWNER, owner_of=owners.get))
    for i, who in enumerate(owners):
        reg.update_sa_id(who, i, 0.0)
    assert isinstance(reg.request_connect("alice", "bob", 1.0, n_endpoints=1, callback=True), TargetOnline)
    refused = reg.request_connect("mallory", "bob", 1.0, n_endpoints=1, callback=True)
    assert isinstance(refused, Refused) and refused.reason is RefusalReason.NOT_AUTHORIZED
    assert refused.notify == NotifyType.ME_CONNECT_FAILED and "same user" in refused.detail
    assert reg.authorizer.check("alice", "unknown") is not None
    with pytest.raises(ValueError):
        Authorizer(Policy.SAME_OWNER)


def test_authorization_allow_list() -> None:
    auth = Authorizer(Policy.ALLOW_LIST, allowed=[("alice", "bob")])
    assert auth.check("alice", "bob") is None and auth.check("bob", "alice") is None
    assert auth.check("alice", "carol") is not None
    one_way = Authorizer(Policy.ALLOW_LIST, allowed=[("alice", "bob")], symmetric=False)
    assert one_way.check("bob", "alice") is not None
    assert Authorizer().check("x", "y") is None  # "all" is the default


def test_repeated_request_refreshes_expiry() -> None:
    reg = Registry(RegistryConfig(callback_ttl=600.0))
    reg.update_sa_id("alice", 1, 0.0)
    reg.check_and_register("bob", "alice", 0.0)
    reg.check_and_register("bob", "alice", 100.0)
    assert reg.handle_timer(650.0) == []  # the stale heap entry is ignored
    assert [r.expires for r in reg.registrations()] == [700.0]
    assert len(reg.handle_timer(700.0)) == 1 and reg.registrations() == []
