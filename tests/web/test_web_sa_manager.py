"""SA manager in process (Flask test client): operator login, the SA / connection / pool pages from
iked's control socket (a stand-in answering the JSON-lines protocol of docs/operations.md on a real
unix socket), terminate and initiate, and the editing pages writing rows that iked's SQL loader
reads back (gateway/sqlconf/loader.py)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.sqlconf import models as m
from gateway.sqlconf.loader import load
from gateway.sqlconf.source import open_config_db
from med_db import data
from med_db.engine import create_all, make_engine, make_session_factory
from medmgr_web.sa_manager import SaManagerConfig, create_app
from medmgr_web.security import hash_password
from tests.web.medweb_client import FakeClock, WsgiClient

pytestmark = pytest.mark.web
PASSWORD = "operator password 1"

SA = {
    "name": "rw", "uniqueid": 7, "state": "ESTABLISHED", "local-host": "192.0.2.1", "local-port": 4500,
    "local-id": "moon.strongswan.org", "remote-host": "192.0.2.100", "remote-port": 4500,
    "remote-id": "carol@strongswan.org", "initiator": False, "initiator-spi": "11" * 8, "responder-spi": "22" * 8,
    "nat-local": False, "nat-remote": True, "proposal": "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
    "established": 75, "rekey-time": 3400, "local-vips": [], "remote-vips": ["10.3.0.1"],
    "child-sas": [{"name": "rw", "uniqueid": 9, "reqid": 1, "state": "INSTALLED", "mode": "TUNNEL",
                   "protocol": "ESP", "encap": True, "spi-in": "c8d1a2b3", "spi-out": "c0a17e55",
                   "proposal": "AES_GCM_16_128", "local-ts": ["10.1.0.0/16"], "remote-ts": ["10.3.0.1/32"],
                   "install-time": 70, "rekey-time": 3100, "life-time": 3500, "bytes-in": 2048,
                   "bytes-out": 3 * 1024 * 1024, "packets-in": 20, "packets-out": 30}],
}
CONN = {"name": "rw", "local-addrs": ["192.0.2.1"], "remote-addrs": [], "local": {"auth": "pubkey", "id": "moon"},
        "remote": {"auth": "psk", "id": "%any"}, "vips": [],
        "children": [{"name": "rw", "local-ts": ["10.1.0.0/16"], "remote-ts": ["dynamic"]}]}


class StandIn:
    """A unix socket answering iked's control requests (one JSON object per line each way)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.sas = [json.loads(json.dumps(SA))]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def reply(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        fixed = {"list": {"ok": True, "sas": self.sas}, "conns": {"ok": True, "conns": [CONN]},
                 "ipsec-status": {"ok": True, "pools": {"10.9.0.0/24": {"size": 254, "online": 1, "offline": 0}}}}
        if cmd in fixed:
            return fixed[str(cmd)]
        if cmd == "down":
            if req.get("ike") != "7" or not self.sas:
                return {"ok": False, "error": f"no IKE_SA with unique id {req.get('ike')!r}"}
            if req.get("child"):
                self.sas[0]["child-sas"] = []
                return {"ok": True, "done": ["rw{9}"]}
            self.sas = []
            return {"ok": True, "done": ["rw[7]"]}
        if cmd == "up":
            if req.get("conn") != "rw":
                return {"ok": False, "error": f"no connection named {req.get('conn')!r}"}
            return {"ok": True, "conn": "rw", "ike": 8, "children": []}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf)
                self.requests.append(req)
                conn.sendall(json.dumps(self.reply(req)).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Any, StandIn, str]]:
    med = f"sqlite:///{tmp_path / 'med.sqlite'}"
    engine = make_engine(med)
    create_all(engine)
    with make_session_factory(engine).begin() as s:
        op = data.create_user(s, "op", hash_password(PASSWORD))
        op.admin = True
        data.create_user(s, "plain", hash_password(PASSWORD))
    stand_in = StandIn(tmp_path / "iked.ctl")
    cfg_db = f"sqlite:///{tmp_path / 'ipsec.db'}"
    clock = FakeClock()
    app = create_app(med, SaManagerConfig(control=str(tmp_path / "iked.ctl"), config_db=cfg_db),
                     clock=clock, sleep=clock.sleep)
    yield app, stand_in, cfg_db
    stand_in.close()


def login(app: Any, who: str = "op") -> WsgiClient:
    c = WsgiClient(app, base="/sa")
    r = c.submit("user/login", "user/login", {"login": who, "password": PASSWORD})
    assert r.status == 200, r.text()
    return c


def test_login_operators_only(env: tuple[Any, StandIn, str]) -> None:
    app, _, _ = env
    c = WsgiClient(app, base="/sa")
    assert c.get("sa/list", follow=False).location.endswith("/sa/user/login")
    r = c.submit("user/login", "user/login", {"login": "plain", "password": PASSWORD})
    assert r.status == 403 and "may not manage the gateway" in r.text()
    assert c.get("sa/list", follow=False).status == 303
    r = c.submit("user/login", "user/login", {"login": "op", "password": "wrong"})
    assert r.status == 401
    c = login(app)
    r = c.post("user/logout", {"csrf": c.get("sa/list").csrf()})
    assert "Log in" in r.text() and c.get("sa/list", follow=False).status == 303


def test_sa_list_shows_ike_and_child_sas(env: tuple[Any, StandIn, str]) -> None:
    app, _, _ = env
    r = login(app).get("sa/list")
    t = r.text()
    assert "AES_GCM_16_128/<wbr>PRF_HMAC_SHA2_256/<wbr>CURVE_25519" in r.body  # may wrap after each /
    for expected in ("rw", "#7", "192.0.2.100[4500]", "carol@strongswan.org", "moon.strongswan.org", "10.3.0.1",
                     "75 s / 56 min", "10.1.0.0/16 === 10.3.0.1/32",
                     "2.0 KiB / 3.0 MiB", "20 / 30 packets", "c8d1a2b3_i c0a17e55_o"):
        assert expected in t, expected
    assert 'data-ike="7"' in r.body and 'data-child="9"' in r.body


def test_terminate_child_then_ike(env: tuple[Any, StandIn, str]) -> None:
    app, stand_in, _ = env
    c = login(app)
    r = c.submit("sa/list", "sa/terminate", {"ike": "7", "child": "9"})
    assert "Terminated rw{9}." in r.text()
    assert stand_in.requests[-2] == {"cmd": "down", "ike": "7", "child": "9", "timeout": 10}
    r = c.submit("sa/list", "sa/terminate", {"ike": "7"})
    assert "Terminated rw[7]." in r.text() and "No IKE_SAs" in r.text()
    r = c.submit("sa/list", "sa/terminate", {"ike": "7"})
    assert "Not terminated: no IKE_SA with unique id '7'" in r.text()
    for bad in ({"ike": "x"}, {"ike": "7", "child": "1;2"}, {}):
        assert c.submit("sa/list", "sa/terminate", bad).status == 400


def test_post_without_csrf_refused(env: tuple[Any, StandIn, str]) -> None:
    app, stand_in, _ = env
    c = login(app)
    r = c.post("sa/terminate", {"ike": "7"})
    assert r.status == 403
    assert not any(q.get("cmd") == "down" for q in stand_in.requests)


def test_connections_and_initiate(env: tuple[Any, StandIn, str]) -> None:
    app, stand_in, _ = env
    c = login(app)
    r = c.get("conn/list")
    assert "192.0.2.1 … %any" in r.text() and "10.1.0.0/16 === dynamic" in r.text()
    r = c.submit("conn/list", "conn/initiate", {"name": "rw"})
    assert "Connection rw established (IKE_SA #8)." in r.text()
    assert {"cmd": "up", "conn": "rw", "timeout": 30} in stand_in.requests
    r = c.submit("conn/list", "conn/initiate", {"name": "nope"})
    assert "Connection nope not established: no connection named 'nope'" in r.text()
    assert c.submit("conn/list", "conn/initiate", {"name": "<script>"}).status == 400


def test_daemon_down_is_reported(env: tuple[Any, StandIn, str]) -> None:
    app, stand_in, _ = env
    c = login(app)
    stand_in.close()
    stand_in.path.unlink()
    r = c.get("sa/list")
    assert r.status == 503 and "iked cannot be reached at" in r.text()


def _conn_form(**kw: str) -> dict[str, str]:
    f = {"name": "rw", "local_addrs": "192.0.2.1", "remote_addrs": "%any", "local_id": "@moon.strongswan.org",
         "remote_id": "%any", "auth": "psk", "pool": "", "local_ts": "10.1.0.0/16", "remote_ts": "dynamic",
         "ike_proposal": "aes128-sha256-modp3072", "esp_proposal": "aes128gcm16", "rekeytime": "4h",
         "dpd_delay": "30s"}
    f.update(kw)
    return f


def _snapshot(url: str) -> Any:
    with Session(open_config_db(url)) as s:
        return load(s)


def test_edit_pool_identity_secret_connection(env: tuple[Any, StandIn, str]) -> None:
    app, _, url = env
    c = login(app)
    r = c.submit("pool/list", "pool/add", {"name": "rw", "range": "10.3.0.0/28", "end": "", "timeout": "1h"})
    assert "Pool rw added: 14 addresses" in r.text() and "10.3.0.1 \u2013 10.3.0.14" in r.text()
    assert "10.9.0.0/24" in r.text()  # iked's in-memory pool, from ipsec-status
    r = c.submit("pool/list", "pool/add", {"name": "rw", "range": "10.4.0.0/28", "end": "", "timeout": "0"})
    assert r.status == 400 and "exists already" in r.text()
    r = c.submit("pool/list", "pool/add", {"name": "x", "range": "10.4.0.9", "end": "10.4.0.1", "timeout": "0"})
    assert r.status == 400 and "is empty" in r.text()
    r = c.submit("identity/list", "identity/add", {"identity": "@moon.strongswan.org"})
    assert "Identity @moon.strongswan.org added." in r.text()
    r = c.submit("identity/list", "identity/add", {"identity": "@moon.strongswan.org"})
    assert r.status == 400 and "exists already" in r.text()
    r = c.submit("secret/list", "secret/add", {"kind": "1", "id1": "@moon.strongswan.org", "id2": "carol@strongswan.org",
                                               "secret": "short"})
    assert r.status == 400 and "at least 8 characters" in r.text()
    r = c.submit("secret/list", "secret/add", {"kind": "7", "id1": "@moon.strongswan.org", "id2": "",
                                               "secret": "carol-secret-0123456789"})
    # the error stands at its field, which keeps the choice made (none of the offered ones here)
    assert r.status == 400 and '<p class="field-error" id="kind-error">Choose IKE (PSK) or EAP.</p>' in r.body
    assert 'aria-describedby="kind-error"' in r.body and " selected" not in r.body
    r = c.submit("secret/list", "secret/add", {"kind": "1", "id1": "@moon.strongswan.org", "id2": "carol@strongswan.org",
                                               "secret": "carol-secret-0123456789"})
    assert "Secret for moon.strongswan.org and carol@strongswan.org added." in r.text()
    assert "carol-secret" not in r.body  # never shown again
    # a connection with errors in several fields: each named, nothing written
    r = c.submit("conn/add", "conn/add", _conn_form(name="bad name!", local_addrs="moon.example", pool="nope",
                                                    local_ts="10.1.0.0/33", ike_proposal="aes999-foo", auth="eap"))
    assert r.status == 400
    for message in ("Name invalid", "'moon.example' is not an address", "No pool named 'nope'",
                    "Local subnets is not a valid subnet", "IKE proposals:"):
        assert message in r.text(), message
    assert '<p class="field-error" id="auth-error">Choose pre-shared key or public key.</p>' in r.body
    assert _snapshot(url).connections == []
    r = c.submit("conn/add", "conn/add", _conn_form(pool="rw"))
    assert "Connection rw saved" in r.text()
    conns = _snapshot(url).connections
    assert len(conns) == 1
    rw = conns[0]
    assert rw.name == "rw" and str(rw.local.id) == "moon.strongswan.org" and rw.remote.id.is_any
    assert rw.local_addrs == ["192.0.2.1"] and rw.pools == ["rw"] and rw.proposals == "aes128-sha256-modp3072"
    assert rw.children[0].local_ts == ["10.1.0.0/16"] and rw.children[0].remote_ts == ["dynamic"]
    assert rw.children[0].esp_proposals == "aes128gcm16"
    # edit: the page shows the stored values; a change replaces the rows
    with Session(open_config_db(url)) as s:
        pid = s.scalar(select(m.PeerConfigRow.id))
    r = c.get(f"conn/edit/{pid}")
    assert 'value="10.1.0.0/16"' in r.body and 'value="aes128-sha256-modp3072"' in r.body
    assert '<option value="psk" selected>' in r.body and '<option value="pubkey">' in r.body
    r = c.submit(f"conn/edit/{pid}", f"conn/edit/{pid}", _conn_form(local_ts="10.1.0.0/16, 10.2.0.0/24"))
    assert "Connection rw saved" in r.text()
    (rw,) = _snapshot(url).connections
    assert rw.children[0].local_ts == ["10.1.0.0/16", "10.2.0.0/24"]
    with Session(open_config_db(url)) as s:  # the old rows went with the edit
        assert s.scalar(select(m.IkeConfigRow.id).order_by(m.IkeConfigRow.id)) is not None
        assert len(list(s.scalars(select(m.ChildConfigRow)))) == 1
        assert len(list(s.scalars(select(m.IkeConfigRow)))) == 1
    # an identity in use is not deleted; the connection is, then the identity can be
    with Session(open_config_db(url)) as s:
        moon = s.scalar(select(m.SqlIdentity.id).where(m.SqlIdentity.data == b"moon.strongswan.org"))
    r = c.submit("identity/list", f"identity/delete/{moon}", {})
    assert "is used" in r.text()
    r = c.submit("conn/list", f"conn/delete/{pid}", {})
    assert "Connection rw deleted" in r.text()
    assert _snapshot(url).connections == []
    with Session(open_config_db(url)) as s:
        assert list(s.scalars(select(m.ChildConfigRow))) == [] and list(s.scalars(select(m.TrafficSelectorRow))) == []
    assert c.submit("conn/list", f"conn/edit/{pid}", {}).status == 404
    # a row that is gone, or an id that is no number, is the 404 page naming what was not found
    for what, page, action in (("Connection", "conn/list", "conn/delete"), ("Identity", "identity/list",
                               "identity/delete"), ("Secret", "secret/list", "secret/delete")):
        for bad in ("99999", "1x", "9" * 30):
            r = c.submit(page, f"{action}/{bad}", {})
            assert r.status == 404 and f"{what} not found." in r.text(), (action, bad)
    r = c.submit("pool/list", "pool/delete/rw", {})
    assert "Pool rw deleted" in r.text()


def test_pages_escape_daemon_text(env: tuple[Any, StandIn, str]) -> None:
    app, stand_in, _ = env
    stand_in.sas[0]["remote-id"] = "<script>alert(1)</script>"
    r = login(app).get("sa/list")
    assert "<script>alert(1)</script>" not in r.body and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.body


def test_ikectl_pool_and_the_pools_page_share_the_database(env: tuple[Any, StandIn, str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from core_ike.daemon.ctl import main as ikectl

    app, _, url = env
    assert ikectl(["pool", "--db", url, "add", "cli", "10.5.0.1", "10.5.0.8", "--timeout", "30m"]) == 0
    assert "added pool 'cli': 8 addresses, lease timeout 1800 s" in capsys.readouterr().out
    c = login(app)
    assert "10.5.0.1 \u2013 10.5.0.8" in c.get("pool/list").text()
    c.submit("pool/list", "pool/add", {"name": "web", "range": "10.6.0.0/29", "end": "", "timeout": "0"})
    assert ikectl(["pool", "--db", url, "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(x.split()[:6] == ["cli", "10.5.0.1", "10.5.0.8", "1800", "8", "0"] for x in lines), lines
    assert any(x.split()[:6] == ["web", "10.6.0.1", "10.6.0.6", "static", "6", "0"] for x in lines), lines
    assert ikectl(["pool", "--db", url, "del", "nope"]) == 1
    assert "no pool named 'nope'" in capsys.readouterr().err


POSTS = ["user/logout", "sa/terminate", "conn/initiate", "conn/add", "conn/edit/1", "conn/delete/1", "identity/add",
         "identity/delete/1", "secret/add", "secret/delete/1", "pool/add", "pool/delete/rw"]


@pytest.mark.parametrize("path", POSTS)
def test_every_post_needs_a_login_and_a_csrf_token(env: tuple[Any, StandIn, str], path: str) -> None:
    app, stand_in, url = env
    anonymous = WsgiClient(app, base="/sa")
    r = anonymous.post(path, {"ike": "7", "name": "rw", "identity": "@x.example"}, follow=False)
    assert r.status == 303 and r.location.endswith("/sa/user/login")
    c = login(app)
    before = len(stand_in.requests)
    r = c.post(path, {"ike": "7", "name": "rw", "identity": "@x.example"})
    assert r.status == 403 and "did not come from this site" in r.text()
    assert len(stand_in.requests) == before  # nothing reached iked
    with Session(open_config_db(url)) as s:
        assert s.scalar(select(m.SqlIdentity.id)) is None  # nothing written


def test_headers_and_losing_the_operator_role(env: tuple[Any, StandIn, str], tmp_path: Path) -> None:
    app, _, _ = env
    c = login(app)
    r = c.get("sa/list")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    fresh = WsgiClient(app, base="/sa")
    token = fresh.get("user/login").csrf()
    r = fresh.post("user/login", {"csrf": token, "login": "op", "password": PASSWORD}, follow=False)
    sid = [sc for sc in r.set_cookies if sc.startswith("iksa_sid=")]
    assert r.status == 303 and sid and "HttpOnly" in sid[0] and "SameSite=Strict" in sid[0] and "Path=/sa" in sid[0]
    engine = make_engine(f"sqlite:///{tmp_path / 'med.sqlite'}")
    with make_session_factory(engine).begin() as s:
        op = data.get_user_by_login(s, "op")
        assert op is not None
        op.admin = False
    assert c.get("sa/list", follow=False).location.endswith("/sa/user/login")  # the login ended at once


def test_a_connection_with_several_children_is_not_collapsed(env: tuple[Any, StandIn, str]) -> None:
    app, _, url = env
    c = login(app)
    c.submit("conn/add", "conn/add", _conn_form())
    with Session(open_config_db(url)) as s, s.begin():
        pid = s.scalar(select(m.PeerConfigRow.id))
        child = m.ChildConfigRow(name="second")
        s.add(child)
        s.flush()
        s.add(m.PeerConfigChildConfig(peer_cfg=pid, child_cfg=child.id))
    assert c.get(f"conn/edit/{pid}").status == 409
    r = c.submit("conn/list", f"conn/edit/{pid}", _conn_form(local_ts="10.9.0.0/16"))
    assert r.status == 409 and "several CHILD_SA configs" in r.text()
    assert [ch.name for ch in _snapshot(url).connections[0].children] == ["rw", "second"]
