"""Presence from a running system, in headless Chromium: a real mediation server (carol, in its network
namespace) and two mediation clients behind NATs write and read med_db; the server manager runs on
another "host" (this process, outside the lab's namespaces) and reads only that database. The page
shows both peers online with their public endpoints, the NAT behaviour each client measured and reported,
and their mediated connection's path; bob's client
stops and the page, polling, shows bob offline within seconds (the wait is on the page)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from med_db import data
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.keyid import keyid_text, parse_peer_public_key
from medmgr_web import client_manager, server_manager
from medmgr_web.security import hash_password
from tests.guards import needs, require
from tests.web.medweb_client import WsgiClient
from tests.web.webtools import SHOTS, chromium, log_in, watched_page

pytestmark = [pytest.mark.web, pytest.mark.netns, needs("root", why="daemons behind NATs in network namespaces")]

PASSWORD = "presence password"
PUBLIC = {"alice": "203.0.113.1", "bob": "203.0.113.2"}  # their NATs (scenarios.lab.topologies)


@pytest.fixture
def browser() -> Iterator[object]:
    """Per test, so that it starts after the per-test lab (conftest's is per module, and would start first):
    pyroute2 builds the namespaces with this thread's asyncio loop, which Playwright's sync API keeps
    running once started."""
    require("chromium", why="the browser tests")
    with chromium() as b:
        yield b


def _client_db(url: str, server_spki: bytes, server_keyid: bytes) -> tuple[bytes, bytes]:
    """A client database as its client manager leaves it: key pair and mediation server; returns the
    client's (spki, keyid)."""
    from scenarios.lab.topologies import CAROL

    engine = make_engine(url)
    create_all(engine)
    with make_session_factory(engine).begin() as s:
        me = data.generate_client_key(s)
        data.set_server_config(s, CAROL, 500, server_spki, server_keyid)
        out = (me.public_key, me.keyid)
    engine.dispose()
    return out


def test_page_shows_a_peer_going_offline(nat_lab_per_test, browser: object) -> None:  # type: ignore[no-untyped-def]
    from scenarios.lab.creds import rsa_keypair
    from scenarios.lab.iked import Iked
    from scenarios.lab.mediation import client_toml_db, server_toml_pubkey

    lab = nat_lab_per_test
    base = lab.dir / "presence"
    base.mkdir(parents=True, exist_ok=True)
    srv_url = f"sqlite:///{base / 'med_db.sqlite'}"
    # the server manager, outside the lab: a WSGI server on this host's loopback, the same med_db
    app = server_manager.create_app(srv_url)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    daemons: list[Iked] = []
    try:
        web = WsgiClient(app)
        r = web.submit("user/add", "user/add", {"new_login": "pat", "new_password": PASSWORD,
                                                "confirm_password": PASSWORD})
        assert r.status == 200
        server_key = rsa_keypair()
        server_spki, server_keyid = parse_peer_public_key(server_key.public_pem.decode())
        cli_url = {h: f"sqlite:///{base / f'{h}.sqlite'}" for h in ("alice", "bob")}
        keys = {h: _client_db(cli_url[h], server_spki, server_keyid) for h in cli_url}
        engine = make_engine(cli_url["alice"])
        for h, other in (("alice", "bob"), ("bob", "alice")):
            engine = make_engine(cli_url[h])
            with make_session_factory(engine).begin() as s:
                data.save_connection(s, None, alias=other, spki=keys[other][0], keyid=keys[other][1],
                                     local_subnet=None, remote_subnet=None, active=True)
            engine.dispose()
        ids = {}
        srv_engine = make_engine(srv_url)
        with make_session_factory(srv_engine).begin() as s:
            user = data.get_user_by_login(s, "pat")
            assert user is not None
            for h in ("alice", "bob"):
                ids[h] = data.add_peer(s, user.id, h, keys[h][0], keys[h][1]).id
        srv_engine.dispose()

        server = Iked(lab, "carol", server_toml_pubkey(server_key.identity, srv_url), name="medsrv",
                      module="mediation_server", files={"server.key": server_key.private_pem}).start()
        daemons.append(server)
        clients = {h: Iked(lab, h, client_toml_db(h, cli_url[h]), name="medcli", module="mediation_client").start()
                   for h in ("bob", "alice")}
        daemons.extend(clients.values())

        def tunnel_up() -> bool:
            return any(sa["name"] == "bob" and sa["child-sas"] for sa in clients["alice"].list_sas())

        try:
            clients["alice"].wait_state(tunnel_up, 60, "alice's mediated tunnel to bob")
        except TimeoutError:
            raise AssertionError("no tunnel; alice: " + clients["alice"].log_tail(30) + "\nbob: "
                                 + clients["bob"].log_tail(30) + "\ncarol: " + server.log_tail(30)) from None

        SHOTS.mkdir(parents=True, exist_ok=True)
        pages = []
        for width, height, tag in ((1100, 760, "desktop"), (390, 844, "phone")):
            ctx = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
            failed: list[str] = []
            page = watched_page(ctx, failed)
            log_in(page, url + "/user/login", PASSWORD, "**/peer/list", "pat")

            def cell(host: str, field: str, page=page) -> str:  # type: ignore[no-untyped-def]
                return f'td[data-presence="{ids[host]}"][data-field="{field}"]'

            for h in ("alice", "bob"):
                page.wait_for_selector(cell(h, "state") + " .presence-online", timeout=15000)
                assert page.inner_text(cell(h, "endpoint")).startswith(PUBLIC[h] + "[")
                assert page.inner_text(cell(h, "last_seen")) == "now"
            # the mediation both clients asked carol for: direct (nat_lab's NATs let the checks through)
            page.wait_for_function(
                "sel => (document.querySelector(sel) || {}).textContent?.includes('bob: direct')",
                arg=cell("alice", "connections"), timeout=15000)
            assert "since" in page.inner_text(cell("alice", "connections"))
            # the NAT behaviour each client measured (STUN against carol) and reported to it
            for h in ("alice", "bob"):
                page.wait_for_selector(cell(h, "endpoint") + " .nat:has-text('NAT: mapping')", timeout=20000)
            page.screenshot(path=str(SHOTS / f"server-presence-online-{tag}.png"), full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
            pages.append((page, ctx, cell, tag, failed))

        # alice's client manager on alice's database and its daemon's control socket: live path and NAT,
        # Disconnect and Connect answered by the running mediation client
        cm = client_manager.create_app(cli_url["alice"], client_manager.ClientManagerConfig(
            hash_password(PASSWORD), daemon_socket=clients["alice"].ctl_path))
        cmc = WsgiClient(cm, base="/cli")
        assert cmc.submit("user/login", "user/login", {"password": PASSWORD}).status == 200
        r = cmc.get("connection/list")
        row = re.search(r'>bob</a>.*?</tr>', r.body, re.S)
        assert row is not None and 'path-direct">direct<' in row.group(0), ("path", r.text())
        assert "This client's NAT: mapping" in r.text()
        (cid,) = re.findall(r'/connection/up/(\d+)"', r.body)
        r = cmc.post(f"connection/down/{cid}", {"csrf": r.csrf()})
        assert "bob: disconnected" in r.text(), ("down", r.text())
        r = cmc.post(f"connection/up/{cid}", {"csrf": r.csrf()})
        assert "bob: connected" in r.text(), ("up", r.text())

        stopped = time.monotonic()
        clients["bob"].stop()  # SIGTERM: bob's client deletes its mediation SA at carol
        for page, _, cell, tag, failed in pages:
            # no reload: the page's own polling brings the change
            page.wait_for_selector(cell("bob", "state") + " .presence-offline", timeout=10000)
            print(f"{tag}: bob offline on the page {time.monotonic() - stopped:.1f} s after its client was "
                  "told to stop")  # a figure for the record, not a check
            assert page.inner_text(cell("bob", "last_seen")).endswith("UTC")
            page.wait_for_function(
                "sel => !(document.querySelector(sel) || {}).textContent?.includes('bob:')",
                arg=cell("alice", "connections"), timeout=10000)
            assert page.inner_text(cell("alice", "state")) == "online"
            page.screenshot(path=str(SHOTS / f"server-presence-offline-{tag}.png"), full_page=True)
            assert failed == [], failed
        # the operator's view of the same system: totals from the running server
        page = pages[0][0]
        page.goto(url + "/admin/users")
        assert page.inner_text("#total-online") == "1"
        assert int(page.inner_text("#total-mediations")) >= 1
        page.goto(url + "/admin/peers")
        assert keyid_text(keys["bob"][1]) in page.inner_text("#peers")
        page.screenshot(path=str(SHOTS / "server-operator-peers-desktop.png"), full_page=True)
        for _, ctx, _, _, _ in pages:
            ctx.close()
    finally:
        for d in reversed(daemons):
            d.stop()
        httpd.shutdown()
