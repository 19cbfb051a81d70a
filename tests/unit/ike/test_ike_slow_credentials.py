"""A slow credential store must not stall IKE: the mediation server's med_db lookups answer from a
snapshot (mediation_server/db.py PortalPeers), whose queries run in a worker thread. Here every query
blocks on an Event (a PostgreSQL server under load) while another IKE_SA authenticates by a key from
that store: the exchange completes on the event loop meanwhile."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ike_pair import make_pair

from core_ike.ike import events as ev
from core_ike.ike.creds import keyid_of
from med_db import data
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.keyid import spki_der
from mediation_server.db import PortalPeers


class _SlowSessions:
    """A session factory whose every session waits for `gate` (and says so in `entered`)."""

    def __init__(self, real: Any) -> None:
        self.real, self.gate, self.entered = real, threading.Event(), threading.Event()

    def __call__(self) -> Any:
        self.entered.set()
        assert self.gate.wait(30.0), "the test never opened the gate"
        return self.real()


class _Portal(PortalPeers):
    """PortalPeers that calls `refreshed` after each refresh (in the refresher's worker thread)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.refreshed: Callable[[], None] = lambda: None

    def refresh(self) -> None:
        super().refresh()
        self.refreshed()


async def _after_refreshes(portal: _Portal, pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until `pred()` holds, checked again after each refresh of `portal`."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    portal.refreshed = lambda: loop.call_soon_threadsafe(done.set)
    deadline = loop.time() + timeout
    while True:
        done.clear()  # before the check: a refresh ending between the check and the wait still wakes it
        if pred():
            return
        try:
            await asyncio.wait_for(done.wait(), deadline - loop.time())
        except TimeoutError:
            raise AssertionError("condition not reached in time") from None


def _portal_db_and_pair(tmp_path: Path) -> tuple[Any, Any, Any]:
    """An empty med_db, and a pair authenticating by public keys whose responder knows the initiator's
    key only from that database; the initiator's public key."""
    sessions = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'med.sqlite'}"))
    create_all(sessions.kw["bind"])
    p = make_pair(auth="pubkey")
    key_a = p.a.creds.private_keys[0].public_key()
    p.b.creds.raw_keys.clear()
    p.b.creds.public_keys.clear()
    return sessions, p, key_a


def test_blocked_refresh_does_not_stall_an_ike_auth(tmp_path: Path) -> None:
    sessions, p, key_a = _portal_db_and_pair(tmp_path)
    with sessions.begin() as s:
        user = data.create_user(s, "pat", "x")
        data.add_peer(s, user.id, "alice", spki_der(key_a), keyid_of(key_a))
    portal = _Portal(sessions, refresh_interval=0.05)
    portal.refresh()
    p.b.creds.resolver = portal.public_key
    slow = _SlowSessions(sessions)
    portal.sessions = slow  # from now on every query blocks until the gate opens

    async def scenario() -> None:
        refresher = asyncio.create_task(portal.refresh_loop())
        assert await asyncio.to_thread(slow.entered.wait, 10.0)  # a refresh is stuck in its query
        p.a.initiate("home", now=p.now)
        p.pump()  # on the event loop, while the worker thread waits for the database
        assert [e.name for e in p.of("b", ev.IkeSaEstablished)] == ["gw"]
        assert p.of("a", ev.ChildSaEstablished) and not slow.gate.is_set() and not refresher.done()
        # a peer registered meanwhile shows up once the database answers again
        key_c = p.b.creds.private_keys[0].public_key()
        with sessions.begin() as s:
            data.add_peer(s, user.id, "carol", spki_der(key_c), keyid_of(key_c))
        slow.gate.set()
        await _after_refreshes(portal, lambda: portal.alias_of("keyid:#" + keyid_of(key_c).hex()) == "carol")
        refresher.cancel()

    asyncio.run(scenario())


def test_a_peer_registered_after_the_snapshot_gets_in_on_the_retransmission(tmp_path: Path) -> None:
    """The IKE_AUTH of a key id the snapshot does not know yet waits unanswered (CredentialsPending)
    while the refresher looks; the initiator's retransmission (RFC 7296 2.1) is then answered."""
    sessions, p, key_a = _portal_db_and_pair(tmp_path)
    portal = PortalPeers(sessions)
    portal.refresh()  # empty
    woken: list[int] = []
    portal.on_miss = lambda: woken.append(1)
    p.b.creds.resolver = portal.public_key
    with sessions.begin() as s:
        data.add_peer(s, data.create_user(s, "pat", "x").id, "alice", spki_der(key_a), keyid_of(key_a))
    p.a.initiate("home", now=p.now)
    p.pump()
    assert woken and not p.of("b", ev.IkeSaEstablished) and not p.of("b", ev.IkeSaFailed)
    assert not p.of("a", ev.IkeSaFailed)
    portal.refresh()  # the worker thread's query returns
    p.advance(3.0)  # the initiator retransmits its IKE_AUTH
    assert p.of("b", ev.IkeSaEstablished) and p.of("a", ev.ChildSaEstablished)
