"""Presence and the operator view, in process: the mediation server's presence writer on one database,
the server manager reading it (as it would on another host); who may see what; disabled accounts,
closed registration, the operator role."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from core_ike.ike.identity import Identity
from core_ike.me import events as mev
from med_db import presence as pr
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.keyid import keyid_text, parse_peer_public_key
from med_db.models import Peer, PeerPresence, User
from mediation_server.db import PortalPeers
from mediation_server.presence import PresenceWriter
from medmgr_web import server_manager
from medmgr_web.portal import Portal
from tests.web.medweb_client import FakeClock, WsgiClient

PASSWORD = "correct horse battery"


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'med.sqlite'}"


@pytest.fixture
def srv(url: str) -> Portal:
    clock = FakeClock()
    return server_manager.create_app(url, clock=clock, sleep=clock.sleep)


def register(app: Portal, login: str) -> WsgiClient:
    c = WsgiClient(app)
    r = c.submit("user/add", "user/add", {"new_login": login, "new_password": PASSWORD,
                                          "confirm_password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text(), r.text()
    return c


def add_peer(c: WsgiClient, alias: str) -> str:
    """Adds a peer; returns its identity as the mediation server sees it (keyid:...)."""
    pem = ec_pem()
    r = c.submit("peer/add", "peer/add", {"alias": alias, "public_key": pem})
    assert r.status == 200 and f"Peer {alias} added" in r.text(), r.text()
    _, keyid = parse_peer_public_key(pem)
    return Identity.key_id(keyid).canonical()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def writer(url: str, clock: Clock, server: str = "ms") -> PresenceWriter:
    sessions = make_session_factory(make_engine(url))
    peers = PortalPeers(sessions)
    peers.refresh()
    w = PresenceWriter(sessions, peers, wall=clock, nat_of=lambda i: "endpoint-independent mapping", server=server)
    w.start()
    return w


def presence_json(c: WsgiClient) -> dict:  # type: ignore[type-arg]
    r = c.get("peer/presence")
    assert r.status == 200 and r.headers["content-type"] == "application/json", r.text()
    return json.loads(r.body)  # type: ignore[no-any-return]


def test_presence_from_the_server_to_the_owner_only(srv: Portal, url: str) -> None:
    import time

    alice_user = register(srv, "pat")
    home, office = add_peer(alice_user, "home"), add_peer(alice_user, "office")
    eve_user = register(srv, "eve")
    evil = add_peer(eve_user, "evil")
    clock = Clock(time.time())
    w = writer(url, clock)
    w.on_event(mev.PeerOnline(home, 1, ("192.0.2.7", 4500), None))
    w.on_event(mev.PeerOnline(office, 2, ("198.51.100.9", 61000), None))
    w.on_event(mev.PeerOnline(evil, 3, ("203.0.113.66", 500), None))
    w.on_event(mev.ConnectRelayed(office, home, "00", True))
    w.on_event(mev.ConnectRelayed(evil, home, "01", True))  # a mediation with another user's peer
    w.flush(stopping=False)

    data = presence_json(alice_user)
    assert data["server"]["reporting"] is True
    states = {p["endpoint"]: p for p in data["peers"].values()}
    assert set(states) == {"192.0.2.7[4500]", "198.51.100.9[61000]"}  # eve's peer is not there
    home_p = states["192.0.2.7[4500]"]
    assert home_p["state"] == "online" and home_p["nat"] == "endpoint-independent mapping"
    paths = {c["peer"]: c["path"] for c in home_p["connections"]}
    _, evil_keyid = next(iter([("", bytes.fromhex(evil.split("#")[1]))]))
    # own peers by alias, another user's peer only by its keyid (its alias stays private)
    assert paths == {"office": "direct", keyid_text(evil_keyid): "direct"}
    page = alice_user.get("peer/list").text()
    assert "192.0.2.7[4500]" in page and "203.0.113.66" not in page and "evil" not in page
    assert "203.0.113.66" not in json.dumps(data)

    # the peer goes offline: the next write says so, with the time it was last seen
    clock.t += 3
    w.on_event(mev.PeerOffline(office, 2))
    w.flush(stopping=False)
    data = presence_json(alice_user)
    by_state = sorted(p["state"] for p in data["peers"].values())
    assert by_state == ["offline", "online"]
    off = next(p for p in data["peers"].values() if p["state"] == "offline")
    assert off["endpoint"] == "" and off["connections"] == [] and off["last_seen"].endswith("UTC")
    home_p = next(p for p in data["peers"].values() if p["state"] == "online")
    assert [c["peer"] for c in home_p["connections"]] == [keyid_text(evil_keyid)]

    # a server that stops reporting: presence is unknown, not the last thing written
    with make_session_factory(make_engine(url)).begin() as s:
        (state,) = pr.server_states(s)
        assert state is not None and state.peers_online == 2 and state.mediations == 2
        state.updated = state.updated.replace(year=2000)
    data = presence_json(alice_user)
    assert data["server"]["reporting"] is False
    assert {p["state"] for p in data["peers"].values()} == {"unknown"}
    assert "has not reported since" in data["server"]["message"]

    # a restarted server marks what the old one left online as offline
    w2 = writer(url, clock)
    assert w2 is not None
    with make_session_factory(make_engine(url))() as s:
        assert s.scalars(select(PeerPresence).where(PeerPresence.online.is_(True))).all() == []


def test_presence_writes_are_batched_off_the_loop(url: str) -> None:
    """Many events, few writes: the writer coalesces while a write runs in its thread."""
    import time

    srv = server_manager.create_app(url)
    c = register(srv, "pat")
    ids = [add_peer(c, f"p{i}") for i in range(5)]
    clock = Clock(time.time())
    w = writer(url, clock)
    w.tick = 0.05

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        written = asyncio.Event()
        write = w.write

        def write_and_tell(rows: list[pr.PresenceRow], totals: pr.Totals) -> None:  # the writer's thread
            write(rows, totals)
            loop.call_soon_threadsafe(written.set)

        w.write = write_and_tell  # type: ignore[method-assign]
        task = asyncio.create_task(w.run())
        await asyncio.sleep(0)  # the writer's first wait begins
        for _ in range(20):  # 200 events in one burst of the loop
            for n, ident in enumerate(ids):
                w.on_event(mev.PeerOnline(ident, n + 1, ("192.0.2.1", 1000 + n), None))
                w.on_event(mev.PeerOffline(ident, n + 1))
        for n, ident in enumerate(ids):
            w.on_event(mev.PeerOnline(ident, n + 1, ("192.0.2.1", 2000 + n), None))
        deadline = loop.time() + 10
        while True:  # checked after each batch the writer's thread committed
            try:
                await asyncio.wait_for(written.wait(), deadline - loop.time())
            except TimeoutError:
                raise AssertionError("the presence rows never showed all peers online") from None
            written.clear()
            with make_session_factory(make_engine(url))() as s:
                online = s.scalars(select(PeerPresence).where(PeerPresence.online.is_(True))).all()
            if len(online) == 5 and all(p.endpoint and p.endpoint.startswith("192.0.2.1[20") for p in online):
                break
        task.cancel()

    asyncio.run(scenario())
    assert 1 <= w.writes <= 3, w.writes  # one batch for the burst (plus perhaps a heartbeat)


def test_operator_role_search_disable_and_registration(srv: Portal, url: str) -> None:
    op = register(srv, "operator")  # the first account is an operator
    users = {f"user{i:02d}": register(srv, f"user{i:02d}") for i in range(30)}
    add_peer(users["user07"], "laptop")
    # non-operators: 403 on every operator page, GET and POST
    u = users["user01"]
    token = u.get("peer/list").csrf()
    assert u.get("admin/users").status == 403 and u.get("admin/peers").status == 403
    assert u.post("admin/settings", {"csrf": token, "registration": "closed"}).status == 403
    assert u.post("admin/user/1", {"csrf": token, "action": "disable"}).status == 403
    assert "/admin/users" not in u.get("peer/list").text()

    r = op.get("admin/users")
    assert r.status == 200 and "Page 1 of 2" in r.text() and "Accounts</dt><dd>31</dd>" in r.body
    assert "user29" not in r.text() and "user29" in op.get("admin/users?page=2").text()
    r = op.get("admin/users?q=user0")
    assert "10 accounts matching" in r.text() and "user10" not in r.text()
    r = op.get("admin/peers?q=user07")
    assert "laptop" in r.text() and "1 peer matching" in r.text()
    assert op.get("admin/users?page=x&q=%25").status == 200  # junk paging, LIKE wildcards taken literally
    r = op.get("admin/users?q=%25")
    assert "0 accounts matching" in r.text() and "No accounts found." in r.text() and 'id="users"' not in r.body
    r = op.get("admin/peers?q=nosuchpeer")
    assert "0 peers matching" in r.text() and "No peers found." in r.text() and 'id="peers"' not in r.body
    assert 'id="users"' in op.get("admin/users").body and 'class="pager"' in op.get("admin/users").body

    # disable user07: its session ends, it cannot log in, its peer leaves the server's snapshot
    with make_session_factory(make_engine(url))() as s:
        uid = s.scalars(select(User.id).where(User.login == "user07")).one()
        peer_keyid = s.scalars(select(Peer.keyid).where(Peer.user_id == uid)).one()
    sessions = make_session_factory(make_engine(url))
    snapshot = PortalPeers(sessions)
    snapshot.refresh()
    ident = Identity.key_id(peer_keyid)
    assert snapshot.public_key(ident) is not None
    token = op.get("admin/users").csrf()
    r = op.post(f"admin/user/{uid}", {"csrf": token, "action": "disable"})
    assert "Account user07 disabled" in r.text()
    assert users["user07"].get("peer/list", follow=False).status == 303  # logged out
    c = WsgiClient(srv)
    r = c.submit("user/login", "user/login", {"login": "user07", "password": PASSWORD})
    assert r.status == 403 and "This account is disabled" in r.text()
    snapshot.refresh()
    assert snapshot.known(ident.canonical()) is None
    assert snapshot.public_key(ident) is None  # the credential lookup: AUTHENTICATION_FAILED
    r = op.post(f"admin/user/{uid}", {"csrf": token, "action": "enable"})
    assert "Account user07 enabled" in r.text()
    snapshot.refresh()
    assert snapshot.known(ident.canonical()) is not None
    # an operator cannot disable itself
    with make_session_factory(make_engine(url))() as s:
        op_id = s.scalars(select(User.id).where(User.login == "operator")).one()
    assert "cannot disable your own" in op.post(f"admin/user/{op_id}", {"csrf": token, "action": "disable"}).text()

    # registration closed: the form is gone, a POST is refused, logins still work
    r = op.post("admin/settings", {"csrf": token, "registration": "closed"})
    assert "Self-registration is now closed" in r.text()
    c = WsgiClient(srv)
    r = c.get("user/add")
    assert r.status == 403 and "Registration is closed" in r.text() and 'name="new_login"' not in r.text()
    assert "/user/add" not in c.get("user/login").text()
    r = c.submit("user/login", "user/login", {"login": "user01", "password": PASSWORD})
    assert r.status == 200 and "Your peers" in r.text()
    op.post("admin/settings", {"csrf": token, "registration": "open"})
    assert WsgiClient(srv).get("user/add").status == 200


def test_make_admin_command(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(url)
    create_all(engine)
    from medmgr_web.security import hash_password

    with make_session_factory(engine).begin() as s:
        s.add(User(login="ops", password=hash_password(PASSWORD)))
    assert server_manager.main(["--db", url, "--make-admin", "ops"]) == 0
    assert server_manager.main(["--db", url, "--make-admin", "nobody"]) == 1
    assert "no account 'nobody'" in capsys.readouterr().err
    with make_session_factory(engine)() as s:
        assert s.scalars(select(User.admin).where(User.login == "ops")).one() is True


def test_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    """A med_db made before the operator role: the portal adds user.admin / user.disabled."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "user" ("id" INTEGER NOT NULL PRIMARY KEY, "login" VARCHAR(64) NOT NULL, '
                '"password" VARCHAR(255) NOT NULL, "created" DATETIME NOT NULL)')
    con.execute("""INSERT INTO "user" VALUES (1, 'old', 'x', '2020-01-01 00:00:00')""")
    con.commit()
    con.close()
    engine = make_engine(f"sqlite:///{path}")
    create_all(engine)
    with make_session_factory(engine)() as s:
        user = s.scalars(select(User)).one()
        assert (user.login, user.admin, user.disabled) == ("old", False, False)
    assert re.search(r'"admin"', sqlite3.connect(path).execute(
        "SELECT sql FROM sqlite_master WHERE name = 'user'").fetchone()[0])


def test_relayed_path_and_its_end(srv: Portal, url: str) -> None:
    """A mediation whose relay starts carrying the tunnel shows "relayed"; freed after its idle timeout,
    the mediation is gone; a relay only checks went through leaves the mediation "direct"."""
    import time

    from mediation_server.datarelay import DataRelay, RelayConfig

    c = register(srv, "pat")
    a, b = add_peer(c, "a"), add_peer(c, "b")
    clock = Clock(time.time())
    sessions = make_session_factory(make_engine(url))
    peers = PortalPeers(sessions)
    peers.refresh()
    relay = DataRelay(RelayConfig())
    w = PresenceWriter(sessions, peers, relay=relay, wall=clock)
    w.start()
    w.on_event(mev.PeerOnline(a, 1, ("192.0.2.1", 4500), None))
    w.on_event(mev.PeerOnline(b, 2, ("192.0.2.2", 4500), None))
    r = relay.allocate(b"\x01" * 4, "203.0.113.10", (a, "192.0.2.1"), (b, "192.0.2.2"), 0.0)
    w.on_event(mev.RelayAllocated(r.id, a, b, "01010101", r.address, r.a.port, r.b.port))
    w.on_event(mev.ConnectRelayed(b, a, "01010101", True))
    w.flush(stopping=False)

    def paths() -> list[str]:
        return [m["path"] for p in presence_json(c)["peers"].values() for m in p["connections"]]

    assert paths() == ["direct", "direct"]
    relay.receive(b"\x00" * 40, r.b.port, ("192.0.2.2", 4500), 1.0)  # b latches (a check would do too)
    ike = b"\x00" * 4 + b"\x11" * 8 + b"\x00" * 8 + b"\x00\x20\x25" + b"\x00" * 40  # an IKE message, not a check
    assert relay.receive(ike, r.a.port, ("192.0.2.1", 4500), 1.1)  # forwarded: the relay is in use
    w.flush(stopping=False)
    assert paths() == ["relayed", "relayed"]
    with sessions() as s:
        (state,) = pr.server_states(s)
        assert state is not None and (state.relays_active, state.relays_total, state.mediations) == (1, 1, 1)
    w.on_event(mev.RelayFreed(r.id, a, b, "idle", 10, 10))
    w.flush(stopping=False)
    assert paths() == []
    with sessions() as s:
        (state,) = pr.server_states(s)
        assert state is not None and state.relays_active == 0 and state.relays_total == 1


def test_a_tick_costs_what_changed_not_what_is_online(url: str) -> None:
    """Once the online peers' NAT reports are in (or their wait is over), a tick asks for none of them,
    and a collect with nothing changed builds no row."""
    engine = make_engine(url)
    create_all(engine)
    sessions = make_session_factory(engine)
    asked: list[str] = []

    def nat_of(identity: str) -> str | None:
        asked.append(identity)
        return "mapping EIM, filtering EIF" if identity.split("@")[0].endswith("0") else None

    clock = Clock(1_700_000_000.0)
    w = PresenceWriter(sessions, PortalPeers(sessions), nat_of=nat_of, wall=clock)
    for n in range(1000):
        w.on_event(mev.PeerOnline(f"peer{n}@example.org", n + 1, ("192.0.2.1", 1000 + n), None))
    w.collect()
    assert len(asked) == 1000  # each once: a tenth of them reported
    asked.clear()
    w.collect()
    assert len(asked) == 900  # the others are still waiting for theirs
    asked.clear()
    clock.t += 61  # NAT_WAIT over
    w.collect()
    asked.clear()
    rows, _ = w.collect()
    assert asked == [] and rows == []


def test_servers_of_a_cluster_share_the_database(srv: Portal, url: str) -> None:
    """Two servers write presence to one med_db: a peer that moved from ms1 to ms2 stays online when ms1
    reports it gone; a restarting server marks only its own rows offline; a silent server's peers are
    unknown while the other's stay known."""
    import time

    c = register(srv, "pat")
    roamer, stayer = add_peer(c, "roamer"), add_peer(c, "stayer")
    clock = Clock(time.time())
    ms1, ms2 = writer(url, clock, "ms1"), writer(url, clock, "ms2")
    ms1.on_event(mev.PeerOnline(roamer, 1, ("192.0.2.1", 4500), None))
    ms1.on_event(mev.PeerOnline(stayer, 2, ("192.0.2.2", 4500), None))
    ms1.flush(stopping=False)
    ms2.on_event(mev.PeerOnline(roamer, 7, ("192.0.2.1", 4501), None))  # registered at ms2 now
    ms2.flush(stopping=False)
    ms1.on_event(mev.PeerOffline(roamer, 1))  # ms1 tears its old registration down afterwards
    ms1.flush(stopping=False)
    states = {p["endpoint"] or "none": p["state"] for p in presence_json(c)["peers"].values()}
    assert states == {"192.0.2.1[4501]": "online", "192.0.2.2[4500]": "online"}
    writer(url, clock, "ms2")  # ms2 restarts: roamer, its own, goes offline; ms1's stayer does not
    assert sorted(p["state"] for p in presence_json(c)["peers"].values()) == ["offline", "online"]
    with make_session_factory(make_engine(url)).begin() as s:  # ms1 falls silent
        next(st for st in pr.server_states(s) if st.server == "ms1").updated = clock_utc(clock.t - 60)
    data = presence_json(c)
    assert sorted(p["state"] for p in data["peers"].values()) == ["offline", "unknown"]
    assert "Not reporting: ms1" in data["server"]["message"]


def clock_utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None)
