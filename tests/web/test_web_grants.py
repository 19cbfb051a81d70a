"""Who a peer may reach (mediation_grant rows), managed in the server manager over HTTP through a real
lighttpd (FastCGI), and honoured by the mediation server's "grants" policy reading the same database."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_web_server_manager import add_peer, register

from core_ike.ike.identity import Identity
from med_db.engine import make_engine, make_session_factory
from med_db.keyid import format_keyid, keyid_of
from mediation_server.db import PortalPeers
from mediation_server.registry import Authorizer, Policy
from tests.web.medweb_client import Reply, WebClient
from tests.web.webtools import Portal

pytestmark = pytest.mark.web


class Key:
    def __init__(self) -> None:
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        self.pem = pub.public_bytes(serialization.Encoding.PEM,
                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.keyid = keyid_of(pub)
        self.text = format_keyid(self.keyid)
        self.identity = Identity.key_id(self.keyid).canonical()


def user_with_peers(portal: Portal, *aliases: str) -> tuple[WebClient, dict[str, int], dict[str, Key]]:
    c, _ = register(portal)
    keys = {a: Key() for a in aliases}
    for alias, key in keys.items():
        assert add_peer(c, alias, key.pem).status == 200
    r = c.get("peer/list")
    ids = {alias: int(pid) for pid, alias in re.findall(r'/peer/edit/(\d+)">([^<]+)</a>', r.body)}
    assert set(ids) == set(aliases)
    return c, ids, keys


def save(c: WebClient, pid: int, scope: str, targets: Sequence[int] = (), keyids: str = "",
         token: str | None = None) -> Reply:
    form = {"scope": scope, "add_keyids": keyids, **{f"target_{t}": "1" for t in targets}}
    form["csrf"] = token if token is not None else c.get(f"peer/access/{pid}").csrf()
    return c.post(f"peer/access/{pid}", form)


def grant_rows(portal: Portal, pid: int) -> list[int]:
    db = sqlite3.connect(portal.base / "srv.sqlite")
    try:
        # schema.sql: a restricted peer also has a row naming itself (kept when its targets go away)
        rows = db.execute('SELECT "target" FROM mediation_grant WHERE "peer" = ?', (pid,))
        return sorted(t for (t,) in rows if t != pid)
    finally:
        db.close()


def checked_targets(r: Reply) -> list[int]:
    return sorted(int(x) for x in re.findall(r'name="target_(\d+)" value="1" checked', r.body))


def test_set_and_clear_grants(portal: Portal) -> None:
    c, ids, _ = user_with_peers(portal, "home", "office", "laptop")
    home, office, laptop = ids["home"], ids["office"], ids["laptop"]
    r = c.get(f"peer/access/{home}")
    assert r.status == 200 and "This peer may reach:" in r.text()
    assert 'id="scope_all" name="scope" value="all" checked' in r.body
    assert sorted(int(x) for x in re.findall(r'name="target_(\d+)"', r.body)) == sorted([office, laptop])
    assert checked_targets(r) == []
    r = c.get("peer/list")
    assert "every peer" in r.text() and 'class="restricted"' not in r.body

    r = save(c, home, "listed", [office])
    assert r.status == 200 and "Peer home may now reach only 1 listed peer." in r.text()
    assert grant_rows(portal, home) == [office]
    assert re.search(rf'/peer/access/{home}" class="restricted">only 1 peer<', r.body)
    assert f'/peer/access/{office}">every peer<' in r.body
    r = c.get(f"peer/access/{home}")
    assert 'id="scope_listed" name="scope" value="listed" checked' in r.body
    assert checked_targets(r) == [office]
    assert "only 1 listed peer" in c.get(f"peer/edit/{home}").text()

    r = save(c, home, "listed", [office, laptop])
    assert grant_rows(portal, home) == sorted([office, laptop]) and "only 2 peers" in r.text()
    # "every registered peer" removes the list (the ticked boxes do not matter then)
    r = save(c, home, "all", [office])
    assert r.status == 200 and "Peer home may now reach every registered peer." in r.text()
    assert grant_rows(portal, home) == [] and 'class="restricted"' not in r.body


def test_form_errors(portal: Portal) -> None:
    c, ids, keys = user_with_peers(portal, "one", "two")
    one = ids["one"]
    r = save(c, one, "listed")
    assert r.status == 400 and "Select at least one peer" in r.text()
    r = save(c, one, "")
    assert r.status == 400 and "Choose who this peer may reach." in r.text()
    r = save(c, one, "listed", [ids["two"]], keyids="zz:11")
    assert r.status == 400 and "is not an ID_KEY_ID" in r.text()
    assert checked_targets(r) == [ids["two"]] and 'value="zz:11"' in r.body  # the form keeps its state
    r = save(c, one, "listed", keyids="ab:" * 19 + "ab")
    assert r.status == 400 and "No peer with this ID_KEY_ID is registered." in r.text()
    r = save(c, one, "listed", keyids=keys["one"].text)
    assert r.status == 400 and "is this peer itself" in r.text()
    r = save(c, one, "listed", keyids='"><script>alert(1)</script>')
    assert r.status == 400 and "<script>alert(1)" not in r.body and "&lt;script&gt;" in r.body
    assert grant_rows(portal, one) == []  # nothing saved by any of these


def test_keyid_of_another_users_peer_accepted(portal: Portal) -> None:
    a, a_ids, _ = user_with_peers(portal, "mine")
    b, b_ids, b_keys = user_with_peers(portal, "bobshost")
    mine, bobs = a_ids["mine"], b_ids["bobshost"]
    # any spelling parse_keyid knows: colon hex (upper case too), plain hex, swanctl's #hex
    for spelling in (b_keys["bobshost"].text.upper(), b_keys["bobshost"].keyid.hex(),
                     "#" + b_keys["bobshost"].keyid.hex()):
        r = save(a, mine, "listed", keyids=spelling)
        assert r.status == 200 and "may now reach only 1 listed peer" in r.text(), spelling
        assert grant_rows(portal, mine) == [bobs]
    # the access page shows the other user's peer by its keyid, never by its alias
    r = a.get(f"peer/access/{mine}")
    assert b_keys["bobshost"].text in r.text() and "bobshost" not in r.text()
    assert checked_targets(r) == [bobs]
    # once granted, its id is part of this form: saving again keeps it, unticking drops it
    assert save(a, mine, "listed", [bobs]).status == 200 and grant_rows(portal, mine) == [bobs]
    assert save(a, mine, "all").status == 200 and grant_rows(portal, mine) == []
    # b's list is untouched and b's peer is not restricted by a's choice
    assert 'class="restricted"' not in b.get("peer/list").body


def test_foreign_peer_ids_rejected(portal: Portal) -> None:
    a, a_ids, _ = user_with_peers(portal, "p1", "p2")
    b, b_ids, _ = user_with_peers(portal, "other")
    p1, p2, other = a_ids["p1"], a_ids["p2"], b_ids["other"]
    # another user's peer id as a target (not named by keyid): 404, same as an id that does not exist
    r = save(a, p1, "listed", [p2, other])
    assert r.status == 404 and "Peer not found." in r.text()
    r_missing = save(a, p1, "listed", [p2, other + 100000])
    assert r_missing.status == 404 and r_missing.text() == r.text()
    assert save(a, p1, "all", [other]).status == 404
    for bad in ("x", "-1", "1e3", "9" * 30, "\u0661"):  # \u0661: ARABIC-INDIC DIGIT ONE
        token = a.get(f"peer/access/{p1}").csrf()
        assert a.post(f"peer/access/{p1}", {"csrf": token, "scope": "listed", f"target_{bad}": "1"}).status == 404
    assert grant_rows(portal, p1) == []
    # the access page of another user's peer: 404, for GET and POST alike
    assert a.get(f"peer/access/{other}").status == 404
    token = a.get("peer/list").csrf()
    assert a.post(f"peer/access/{other}", {"csrf": token, "scope": "listed", f"target_{p1}": "1"}).status == 404
    assert grant_rows(portal, other) == []
    assert a.get("peer/access/").status == 404 and a.get(f"peer/access/{p1}/x").status == 404
    # a peer of b's cannot be restricted to a's peers by a, nor b's page reached anonymously
    anon = WebClient(portal.url + "/srv")
    assert anon.get(f"peer/access/{p1}", follow=False).location.endswith("/srv/user/login")
    assert b.get(f"peer/access/{other}").status == 200


def test_csrf_and_post_only(portal: Portal) -> None:
    c, ids, _ = user_with_peers(portal, "x1", "x2")
    x1, x2 = ids["x1"], ids["x2"]
    r = c.post(f"peer/access/{x1}", {"scope": "listed", f"target_{x2}": "1"})
    assert r.status == 403 and "did not come from this site" in r.text()
    assert save(c, x1, "listed", [x2], token="forged").status == 403
    other, _ = register(portal)  # another session's valid token is no good either
    assert save(c, x1, "listed", [x2], token=other.get("peer/list").csrf()).status == 403
    # GET never changes state
    assert c.get(f"peer/access/{x1}?scope=listed&target_{x2}=1").status == 200
    assert grant_rows(portal, x1) == []
    assert c.request("PUT", f"peer/access/{x1}").status == 405


def test_mediation_server_honours_saved_grants(portal: Portal) -> None:
    """End to end without IKE: what the portal saves is what the mediation server's "grants" policy
    (mediation_server.daemon: PortalPeers.granted as the Authorizer's allow function) decides on."""
    a, a_ids, a_keys = user_with_peers(portal, "alice", "alice2")
    _, _b_ids, b_keys = user_with_peers(portal, "bob")
    _, _, c_keys = user_with_peers(portal, "carol")
    alice, alice2 = a_keys["alice"].identity, a_keys["alice2"].identity
    bob, carol = b_keys["bob"].identity, c_keys["carol"].identity
    sessions = make_session_factory(make_engine(f"sqlite:///{portal.base / 'srv.sqlite'}"))
    peers = PortalPeers(sessions)
    peers.refresh()  # the server's snapshot of med_db (refreshed off its event loop, mediation_server/db.py)
    auth = Authorizer(Policy.ALLOW_LIST, allowed_fn=peers.granted)
    assert auth.check(alice, bob) is None and auth.check(alice, carol) is None  # no rows: everyone

    r = save(a, a_ids["alice"], "listed", [a_ids["alice2"]], keyids=b_keys["bob"].text)
    assert r.status == 200
    peers.refresh()
    assert peers.granted(alice, bob) and peers.granted(alice, alice2)
    assert not peers.granted(alice, carol)
    assert auth.check(alice, bob) is None
    refused = auth.check(alice, carol)
    assert refused is not None and "may not reach" in refused.detail
    assert auth.check(bob, alice) is None and auth.check(carol, alice) is None  # they are unrestricted

    assert save(a, a_ids["alice"], "all").status == 200
    peers.refresh()
    assert peers.granted(alice, carol) and auth.check(alice, carol) is None


def test_help_explains_the_policy(portal: Portal) -> None:
    r = WebClient(portal.url + "/srv").get("user/help")
    assert r.status == 200 and "Who may reach whom" in r.text()
    assert 'policy = "grants"' in r.text() and "ID_KEY_ID" in r.text()
