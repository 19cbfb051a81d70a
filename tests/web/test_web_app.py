"""The portals' Flask apps in process (Flask's test client): error pages, request limits, static
files, security headers, and forms that keep what was typed and put each error next to its field."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medmgr_web import client_manager, server_manager
from medmgr_web.portal import MAX_BODY, Portal
from medmgr_web.security import hash_password
from medmgr_web.validation import NAME_RE, html_rules
from tests.web.medweb_client import FakeClock, WsgiClient

PASSWORD = "correct horse battery"


@pytest.fixture
def srv(tmp_path: Path) -> Portal:
    clock = FakeClock()
    return server_manager.create_app(f"sqlite:///{tmp_path / 'srv.sqlite'}", clock=clock, sleep=clock.sleep)


@pytest.fixture
def cli(tmp_path: Path) -> WsgiClient:
    clock = FakeClock()
    app = client_manager.create_app(f"sqlite:///{tmp_path / 'cli.sqlite'}",
                                    client_manager.ClientManagerConfig(hash_password(PASSWORD)),
                                    clock=clock, sleep=clock.sleep)
    c = WsgiClient(app, base="/cli")
    assert c.submit("user/login", "user/login", {"password": PASSWORD}, follow=False).status == 303
    return c


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_error_pages_and_headers(srv: Portal) -> None:
    c = WsgiClient(srv)
    r = c.get("no/such/page")
    assert r.status == 404 and "Page not found." in r.text() and r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert c.get("peer/edit").status == 404  # no id
    r = c.get("user/logout")
    assert r.status == 405 and "Method not allowed." in r.text() and "POST" in r.headers["allow"]
    token = c.get("user/login").csrf()
    r = c.post("user/login", {"csrf": token, "login": "x" * MAX_BODY, "password": "y"})
    assert r.status == 413 and "Form too large." in r.text()
    r = c.request("POST", "user/login", None)  # no body at all: no token
    assert r.status == 403
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    status, _, body = c._send("POST", "/srv/user/login", b"--x\r\n", {
        "Content-Type": "multipart/form-data; boundary=x", "Cookie": cookie})
    assert status == 415 and "Unsupported form encoding." in body


def test_static_files(srv: Portal) -> None:
    c = WsgiClient(srv)
    r = c.get("static/style.css")
    assert r.status == 200 and r.headers["content-type"].startswith("text/css")
    assert "max-age=3600" in r.headers["cache-control"] and r.set_cookies == []
    assert c.get("static/../schema.sql").status == 404 and c.get("static/nope.css").status == 404


def test_repeated_fields_use_the_first_value(srv: Portal) -> None:
    c = WsgiClient(srv)
    token = c.get("user/add").csrf()
    body = (f"csrf={token}&new_login=first&new_login=second&new_password={PASSWORD}"
            f"&confirm_password={PASSWORD}").replace(" ", "+").encode()
    status, _, _ = c._send("POST", "/srv/user/add", body, {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": "; ".join(f"{k}={v}" for k, v in c.cookies.items())})
    assert status == 303


def test_bad_input_message_next_to_the_field_nothing_lost(cli: WsgiClient) -> None:
    pem = ec_pem()
    form = {"alias": "bob", "public_key": pem, "local_subnet": "10.1.0.0/33", "remote_subnet": "10.2.0.0/24"}
    r = cli.submit("connection/add", "connection/add", form)
    assert r.status == 400
    error = re.search(r'<p class="field-error" id="local_subnet-error">(.*?)</p>', r.body)
    assert error and "Local subnet is not a valid subnet in CIDR notation" in html.unescape(error[1])
    assert re.search(r'id="local_subnet"[^>]*aria-invalid="true"', r.body)
    assert 'value="bob"' in r.body and 'value="10.1.0.0/33"' in r.body and 'value="10.2.0.0/24"' in r.body
    assert html.escape(pem.strip(), quote=False) in r.body
    assert 'name="active" value="yes" checked' not in r.body  # unticked stays unticked
    assert "remote_subnet-error" not in r.body and "alias-error" not in r.body
    # fixed, it saves
    r = cli.submit("connection/add", "connection/add", {**form, "local_subnet": "10.1.0.0/24", "active": "yes"})
    assert r.status == 200 and "Connection bob added." in r.text()


def test_server_form_port_and_address(cli: WsgiClient) -> None:
    r = cli.submit("server/edit", "server/edit", {"address": "ms example", "port": "99999", "public_key": ec_pem()})
    assert r.status == 400
    assert re.search(r'id="address-error">Server address invalid', r.body)
    assert re.search(r'id="port-error">Port must be a number between 1 and 65535\.', r.body)
    assert 'value="ms example"' in r.body and 'value="99999"' in r.body


def test_templates_take_their_patterns_from_validation(srv: Portal) -> None:
    rules = html_rules()
    body = WsgiClient(srv).get("user/add").body
    assert f'pattern="{html.escape(rules["name"]["pattern"])}"' in body
    assert f'maxlength="{rules["name"]["maxlength"]}"' in body
    pattern = re.compile(rules["name"]["pattern"])
    for name in ("alice", "a.b-c_d@e", "x" * 64, "x" * 65, "bad name!", "\u00e9t\u00e9", ""):
        browser = pattern.fullmatch(name) is not None and len(name) <= int(rules["name"]["maxlength"])
        assert browser == (NAME_RE.fullmatch(name) is not None), name


def test_processes_starting_at_once_on_a_new_database(db_url: str) -> None:
    """Several portal processes started together on an empty database (SQLite, PostgreSQL, MariaDB):
    one creates the tables, the others take them and the same signing key."""
    import subprocess
    import sys

    code = ("import sys; from medmgr_web import server_manager; "
            "app = server_manager.create_app(sys.argv[1]); print(app.config['SECRET_KEY'].hex())")
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
