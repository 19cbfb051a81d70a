"""Client manager over HTTP through lighttpd: admin login, key pair, mediation server, connections
with the status the client daemon writes."""

from __future__ import annotations

import html
import json
import os
import queue
import re
import socket
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from med_db import data
from med_db.engine import make_engine, make_session_factory
from tests.web.medweb_client import WebClient
from tests.web.webtools import ADMIN_PASSWORD, Portal

pytestmark = pytest.mark.web


def admin(portal: Portal) -> WebClient:
    c = WebClient(portal.url + "/cli")
    r = c.submit("user/login", "user/login", {"password": ADMIN_PASSWORD})
    assert r.status == 200 and "Connections" in r.text()
    return c


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_login_required_and_wrong_password(portal: Portal) -> None:
    c = WebClient(portal.url + "/cli")
    assert c.get("connection/list", follow=False).location.endswith("/cli/user/login")
    r = c.submit("user/login", "user/login", {"password": "not it"})
    assert r.status == 401 and "Invalid password." in r.text()


def test_generate_key_shows_public_never_private(portal: Portal) -> None:
    c = admin(portal)
    r = c.submit("key/show", "key/generate", {})
    assert r.status == 200
    m = re.search(r'id="keyid">keyid:#([0-9a-f]{40})<', r.body)
    assert m, r.text()
    assert f"identity keyid:#{m.group(1)}." in r.text()  # the notice names it the same way
    assert "BEGIN PUBLIC KEY" in r.text() and "PRIVATE" not in r.body.replace("private key stays", "")
    db_path = portal.base / "cli.sqlite"
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    with sqlite3.connect(db_path) as db:
        keyid, priv = db.execute('SELECT keyid, private_key FROM "client_config"').fetchone()
    assert keyid.hex() == m.group(1)
    assert ":".join(f"{b:02x}" for b in keyid) in r.text()  # and the colon form next to it
    key = serialization.load_der_private_key(priv, None)
    assert key.key_size == 2048  # type: ignore[union-attr]
    # a second generate needs the explicit "replace" box
    r = c.submit("key/show", "key/generate", {})
    assert r.status == 400 and "exists already" in r.text()
    r = c.submit("key/show", "key/generate", {"replace": "yes"})
    assert r.status == 200 and m.group(1) not in r.text()


def test_server_config(portal: Portal, reference_pem: str) -> None:
    c = admin(portal)
    r = c.submit("server/edit", "server/edit", {"address": "", "port": "99999", "public_key": "x"})
    assert r.status == 400
    for msg in ("Server address is missing.", "Port must be a number", "Parsing public key failed."):
        assert msg in r.text()
    r = c.submit("server/edit", "server/edit", {"address": "ms.example.net", "port": "4500",
                                                "public_key": reference_pem})
    assert r.status == 200 and "Mediation server saved." in r.text()
    r = c.get("server/edit")
    assert "ed:90:e6:4f:ec:a2:1f:4b:68:97:99:24:22:e0:de:21:b9:d6:26:29" in r.text()
    assert 'value="4500"' in r.body and 'value="ms.example.net"' in r.body


def test_connections_crud_and_live_status(portal: Portal) -> None:
    c = admin(portal)
    pem = ec_pem()
    r = c.submit("connection/add", "connection/add", {
        "alias": "bob", "public_key": pem, "local_subnet": "10.1.0.0/24", "remote_subnet": "10.2.0.1/16",
        "active": "yes"})
    assert r.status == 200 and "Connection bob added." in r.text()
    assert "10.1.0.0/24 → 10.2.0.0/16" in r.text()  # normalized CIDR
    assert "DOWN" in r.text()
    (cid,) = [int(x) for x in re.findall(r'/connection/edit/(\d+)"', r.body)]
    r = c.submit("connection/add", "connection/add", {
        "alias": "bad alias", "public_key": "", "local_subnet": "10.1.0.0/33", "remote_subnet": "nope"})
    assert r.status == 400
    for msg in ("Alias invalid", "Public key is missing.", "Local subnet is not a valid subnet",
                "Remote subnet is not a valid subnet"):
        assert msg in r.text()
    r = c.submit("connection/add", "connection/add", {"alias": "bob", "public_key": ec_pem()})
    assert r.status == 400 and "already exists" in r.text()
    # the client daemon writes the status; the page shows it
    engine = make_engine(f"sqlite:///{portal.base / 'cli.sqlite'}")
    with make_session_factory(engine)() as s:
        data.set_connection_status(s, cid, 2)
        s.commit()
    assert "CONNECTING" in c.get("connection/list").text()
    with make_session_factory(engine)() as s:
        data.set_connection_status(s, cid, 1, error="no response from peer (connectivity checks failed)")
        s.commit()
    r = c.get("connection/list")
    assert "no response from peer (connectivity checks failed)" in r.text() and "DOWN" in r.text()
    engine.dispose()
    # edit: deactivate and clear subnets
    r = c.get(f"connection/edit/{cid}")
    assert "BEGIN PUBLIC KEY" in r.text()
    r = c.post(f"connection/edit/{cid}", {"csrf": r.csrf(), "alias": "bob2", "public_key": pem,
                                         "local_subnet": "", "remote_subnet": "fd00::/64"})
    assert r.status == 200 and "bob2" in r.text() and "(inactive)" in r.text()
    assert "dynamic → fd00::/64" in r.text()
    assert c.get("connection/edit/424242").status == 404
    r = c.post(f"connection/delete/{cid}", {"csrf": r.csrf()})
    assert "Connection bob2 deleted." in r.text()


def test_connection_status_says_why_it_failed(portal: Portal) -> None:
    """The daemon's last error is shown next to the status (list and edit page), escaped, and goes
    away with the next status the daemon writes without one."""
    c = admin(portal)
    r = c.submit("connection/add", "connection/add", {"alias": "carolx", "public_key": ec_pem(), "active": "yes"})
    (cid,) = [int(x) for x in re.findall(r'/connection/edit/(\d+)">carolx<', r.body)]
    engine = make_engine(f"sqlite:///{portal.base / 'cli.sqlite'}")
    why = "peer <b>offline</b>: ME_CONNECT_FAILED, no ME_CALLBACK within 120 s"
    try:
        with make_session_factory(engine)() as s:
            data.set_connection_status(s, cid, 1, error=why)
            s.commit()
        r = c.get("connection/list")
        cell = re.search(r'>carolx</a>.*?<td data-label="Status">(.*?)</td>', r.body, re.S)
        assert cell, r.body
        assert "DOWN" in cell.group(1) and f"Last error: {html.escape(why, quote=False)}" in cell.group(1)
        assert "<b>offline" not in r.body  # autoescaped
        r = c.get(f"connection/edit/{cid}")
        assert f"Last error: {why}" in r.text() and "DOWN" in r.text()
        with make_session_factory(engine)() as s:
            data.set_connection_status(s, cid, 3)
            s.commit()
        r = c.get("connection/list")
        assert "Last error" not in r.text() and "UP" in r.text()
    finally:
        engine.dispose()
        c.post(f"connection/delete/{cid}", {"csrf": r.csrf()})


class FakeDaemon:
    """A stand-in for the mediation client's control socket (JSON lines, as ``ikectl`` talks to it):
    records each request together with what the client database held at that moment, and answers
    with ``reply``; ``status`` (asked by every connection list) is answered with ``status`` and
    counted in ``status_asked``, not recorded."""

    def __init__(self, path: Path, db_path: Path, reply: dict[str, Any],
                 status: dict[str, Any] | None = None) -> None:
        self.path, self.db_path, self.reply = path, db_path, reply
        self.status = status or {"ok": True, "status": {"mediation": [], "connections": [], "target_lists": []}}
        self.status_asked = 0
        self.sas: list[dict[str, Any]] = []  # the answer to ``list``
        self.requests: queue.Queue[tuple[dict[str, Any], list[str]]] = queue.Queue()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn, conn.makefile("rwb") as f:
                req = json.loads(f.readline())
                if req.get("cmd") in ("status", "list"):
                    self.status_asked += 1
                    answer = self.status if req["cmd"] == "status" else {"ok": True, "sas": self.sas}
                    f.write(json.dumps(answer).encode() + b"\n")
                    f.flush()
                    continue
                with sqlite3.connect(self.db_path) as db:
                    aliases = sorted(a for (a,) in db.execute('SELECT alias FROM "connection"'))
                self.requests.put((req, aliases))
                f.write(json.dumps(self.reply).encode() + b"\n")
                f.flush()

    def next(self) -> tuple[dict[str, Any], list[str]]:
        return self.requests.get(timeout=10)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def dadmin(portal: Portal) -> WebClient:
    c = WebClient(portal.url + "/dcli")
    r = c.submit("user/login", "user/login", {"password": ADMIN_PASSWORD})
    assert r.status == 200 and "Connections" in r.text()
    return c


def test_every_save_reloads_the_mediation_client(portal: Portal, reference_pem: str) -> None:
    c = dadmin(portal)
    db = portal.base / "dcli.sqlite"
    fake = FakeDaemon(portal.daemon_socket, db, {"ok": True, "added": [], "removed": [], "changed": [],
                                                 "unchanged": [], "restart-needed": []})
    try:
        r = c.submit("connection/add", "connection/add", {"alias": "rl1", "public_key": ec_pem(), "active": "yes"})
        assert "Connection rl1 added. The mediation client reloaded its configuration." in r.text()
        req, aliases = fake.next()
        assert req == {"cmd": "reload"} and "rl1" in aliases  # the change was in the database already
        (cid,) = [int(x) for x in re.findall(r'/connection/edit/(\d+)">rl1<', r.body)]
        r = c.get(f"connection/edit/{cid}")
        r = c.post(f"connection/edit/{cid}", {"csrf": r.csrf(), "alias": "rl2", "public_key": ec_pem()})
        assert "Connection rl2 saved. The mediation client reloaded" in r.text()
        assert fake.next()[1].count("rl2") == 1
        r = c.submit("server/edit", "server/edit", {"address": "ms.example.net", "port": "500",
                                                    "public_key": reference_pem})
        assert "Mediation server saved. The mediation client reloaded" in r.text()
        assert fake.next()[0] == {"cmd": "reload"}
        r = c.submit("key/show", "key/generate", {"replace": "yes"})
        assert "key pair generated" in r.text() and "The mediation client reloaded" in r.text()
        assert fake.next()[0] == {"cmd": "reload"}
        r = c.post(f"connection/delete/{cid}", {"csrf": r.csrf()})
        assert "Connection rl2 deleted. The mediation client reloaded" in r.text()
        assert "rl2" not in fake.next()[1]
        # nothing saved, nothing reloaded: a form with errors, and a page view
        c.submit("connection/add", "connection/add", {"alias": "bad alias", "public_key": ""})
        c.get("connection/list")
        assert fake.requests.empty()
        # the daemon refuses: saved anyway, and the page says why it was not reloaded
        fake.reply = {"ok": False, "error": "client.toml: [client] database cannot be opened"}
        r = c.submit("connection/add", "connection/add", {"alias": "rl3", "public_key": ec_pem()})
        assert ("Connection rl3 added \u2014 saved; the mediation client was not reloaded: "
                "client.toml: [client] database cannot be opened") in r.text()
        assert "rl3" in fake.next()[1] and ">rl3<" in r.body
    finally:
        fake.close()
    # no daemon at all (the socket is gone): saved, with the reason
    r = c.submit("connection/add", "connection/add", {"alias": "rl4", "public_key": ec_pem()})
    assert r.status == 200 and ">rl4<" in r.body
    assert (f"Connection rl4 added \u2014 saved; the mediation client was not reloaded: no control socket at "
            f"{portal.daemon_socket} (is the mediation client running?)") in r.text()


def test_live_path_nat_and_connect_buttons(portal: Portal) -> None:
    """The connection list asks the daemon for each connection's path and the NAT behaviour; Connect /
    Disconnect send ``up`` / ``down`` on the control socket and show its answer or error."""
    c = dadmin(portal)
    db = portal.base / "dcli.sqlite"
    status = {"ok": True, "status": {"mediation": [], "target_lists": [], "connections": [
        {"name": "via-relay", "state": "established", "selected": "#3 10.1.0.2[4500] - 203.0.113.10[50001] "
                                                                 "(HOST->RELAYED) succeeded", "reason": ""},
        {"name": "straight", "state": "established", "selected": "#1 10.1.0.2[4500] - 203.0.113.2[4500] "
                                                                 "(HOST->SERVER_REFLEXIVE) succeeded", "reason": ""}],
        "nat": {"summary": "mapping EIM, filtering APDF, port preserving"}}}
    fake = FakeDaemon(portal.daemon_socket, db, {"ok": True}, status)
    try:
        ids = {}
        for alias in ("via-relay", "straight"):
            r = c.submit("connection/add", "connection/add", {"alias": alias, "public_key": ec_pem(), "active": "yes"})
            ids[alias] = int(re.findall(rf'/connection/edit/(\d+)">{alias}<', r.body)[0])
            fake.next()  # the reload
        with sqlite3.connect(db) as con:  # the daemon reports both UP
            con.execute('UPDATE "connection" SET status = 3 WHERE alias IN (\'via-relay\', \'straight\')')
        r = c.get("connection/list")
        assert "mapping EIM, filtering APDF, port preserving" in r.text()
        row = {a: re.search(rf'>{a}</a>.*?</tr>', r.body, re.S).group(0) for a in ids}  # type: ignore[union-attr]
        assert 'path-relayed">relayed<' in row["via-relay"] and 'path-direct">direct<' in row["straight"]
        # the tunnels themselves decide (whoever initiated): one to the mediation server's address is relayed
        status["status"]["mediation"] = [{"name": "medsrv", "remote": ["203.0.113.10", 4500]}]
        status["status"]["connections"] = []
        fake.sas = [{"name": "via-relay", "remote-host": "203.0.113.10", "child-sas": [{}]},
                    {"name": "straight", "remote-host": "203.0.113.2", "child-sas": [{}]}]
        r = c.get("connection/list")
        row = {a: re.search(rf'>{a}</a>.*?</tr>', r.body, re.S).group(0) for a in ids}  # type: ignore[union-attr]
        assert 'path-relayed">relayed<' in row["via-relay"] and 'path-direct">direct<' in row["straight"]
        fake.reply = {"ok": True}
        r = c.post(f"connection/up/{ids['straight']}", {"csrf": r.csrf()})
        assert fake.next()[0] == {"cmd": "up", "conn": "straight", "timeout": 30}
        assert "straight: connected." in r.text()
        fake.reply = {"ok": False, "error": "no IKE_SA of connection 'straight'"}
        r = c.post(f"connection/down/{ids['straight']}", {"csrf": r.csrf()})
        assert fake.next()[0] == {"cmd": "down", "ike": "straight"}
        assert "straight: the mediation client answered: no IKE_SA of connection 'straight'" in r.text()
        # CSRF: a POST without the token does nothing
        assert c.post(f"connection/up/{ids['straight']}", {}).status == 403
        assert fake.requests.empty()
        assert c.post("connection/up/99999", {"csrf": r.csrf()}).status == 404
    finally:
        fake.close()
    r = c.post(f"connection/up/{ids['straight']}", {"csrf": r.csrf()})
    assert "straight: not connected: no control socket at" in r.text()
    assert "Live state unavailable: no control socket at" in r.text()
