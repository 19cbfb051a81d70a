"""The mediation server's med_db side: callbacks survive a restart and expire; portal peers
authenticate by ID_KEY_ID without a restart; owners and grants drive the authorization policies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from core_ike.errors import CredentialsPending
from core_ike.ike.creds import keyid_of
from core_ike.ike.identity import Identity
from med_db import data
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.keyid import spki_der
from mediation_server.db import DbCallbackStore, PortalPeers
from mediation_server.registry import Authorizer, Policy, Registry, RegistryConfig, TargetOffline


def _sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'med.sqlite'}")
    create_all(engine)
    return make_session_factory(engine)


def test_callbacks_survive_restart_and_expire(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    now = time.time()
    cfg = RegistryConfig(callback_ttl=60.0)
    first = Registry(cfg, store=DbCallbackStore(sessions))
    first.update_sa_id("alice@med", 1, now)
    d = first.request_connect("alice@med", "keyid:#" + "ab" * 20, now, n_endpoints=2, callback=True)
    assert isinstance(d, TargetOffline) and d.callback_registered
    del first  # the server restarts
    second = Registry(cfg, store=DbCallbackStore(sessions))
    assert [(r.requester, r.target) for r in second.registrations()] == [("alice@med", "keyid:#" + "ab" * 20)]
    second.update_sa_id("alice@med", 7, now + 1)
    reg = second.update_sa_id("keyid:#" + "ab" * 20, 8, now + 2)
    assert [(c.requester, c.requester_sa) for c in reg.callbacks] == [("alice@med", 7)]
    # expiry: a fresh registration that outlives its TTL is gone after a restart too
    second.update_sa_id("bob@med", 9, now)
    second.request_connect("bob@med", "carol@med", now, n_endpoints=1, callback=True)
    second.handle_timer(now + 61)
    third = Registry(cfg, store=DbCallbackStore(sessions))
    assert third.registrations() == []


def test_portal_peer_authenticates_by_keyid_without_restart(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    portal = PortalPeers(sessions)
    portal.refresh()
    misses: list[int] = []
    portal.on_miss = lambda: misses.append(1)
    key = rsa.generate_private_key(65537, 2048).public_key()
    ident = Identity.key_id(keyid_of(key))
    # not in the snapshot: the refresher is woken and the IKE_AUTH waits for its retransmission
    with pytest.raises(CredentialsPending):
        portal.public_key(ident)
    assert misses
    portal.refresh()  # what the daemon's refresh_loop runs in a worker thread
    with pytest.raises(CredentialsPending):  # a refresh already running at the miss may predate the row
        portal.public_key(ident)
    portal.refresh()
    assert portal.public_key(ident) is None  # two refreshes later: not registered, a definite answer
    with sessions.begin() as s:
        user = data.create_user(s, "pat", "x")
        data.add_peer(s, user.id, "laptop", spki_der(key), keyid_of(key))
    portal.refresh()
    found = portal.public_key(ident)
    assert found is not None and found.public_numbers() == key.public_numbers()
    assert portal.alias_of(ident.canonical()) == "laptop"


def test_same_owner_and_grant_policies(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    portal = PortalPeers(sessions)
    keys = [rsa.generate_private_key(65537, 2048).public_key() for _ in range(3)]
    ids = [Identity.key_id(keyid_of(k)).canonical() for k in keys]
    with sessions.begin() as s:
        u1 = data.create_user(s, "pat", "x")
        u2 = data.create_user(s, "sam", "x")
        p = [data.add_peer(s, u.id, f"p{i}", spki_der(k), keyid_of(k))
             for i, (u, k) in enumerate(zip((u1, u1, u2), keys, strict=True))]
        data.grant_mediation(s, p[0].id, p[1].id)
    portal.refresh()
    same = Authorizer(Policy.SAME_OWNER, owner_of=portal.owner_of)
    assert same.check(ids[0], ids[1]) is None
    assert same.check(ids[0], ids[2]) is not None
    grants = Authorizer(Policy.ALLOW_LIST, allowed_fn=portal.granted)
    assert grants.check(ids[0], ids[1]) is None  # listed
    assert grants.check(ids[0], ids[2]) is not None  # p0 has grants, p2 is not among them
    assert grants.check(ids[2], ids[0]) is None  # p2 has no grant rows: may reach everyone


def test_restriction_survives_deleting_every_granted_peer(tmp_path: Path) -> None:
    """A restricted peer whose only granted target is deleted must not become open to everyone."""
    sessions = _sessions(tmp_path)
    portal = PortalPeers(sessions)
    keys = [rsa.generate_private_key(65537, 2048).public_key() for _ in range(3)]
    ids = [Identity.key_id(keyid_of(k)).canonical() for k in keys]
    with sessions.begin() as s:
        u = data.create_user(s, "pat", "x")
        p = [data.add_peer(s, u.id, f"p{i}", spki_der(k), keyid_of(k)) for i, k in enumerate(keys)]
        data.set_grants(s, p[0].id, [p[1].id])
    portal.refresh()
    assert portal.granted(ids[0], ids[1]) and not portal.granted(ids[0], ids[2])
    with sessions.begin() as s:
        assert data.delete_peer(s, u.id, p[1].id)
    portal.refresh()
    assert portal.alias_of(ids[1]) is None  # the deleted peer is gone from the snapshot
    assert not portal.granted(ids[0], ids[2])  # still restricted, now to nobody
