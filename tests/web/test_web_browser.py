"""End to end in headless Chromium (Debian's /usr/bin/chromium via playwright): register, add a
peer, check the keyid shown; screenshots of the main pages at desktop and phone width."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.web.medweb_client import WebClient
from tests.web.webtools import ADMIN_PASSWORD, SHOTS, Portal, log_in, watched_page

pytestmark = pytest.mark.web

REFERENCE_KEYID = "keyid:#ed90e64feca21f4b6897992422e0de21b9d62629"
REFERENCE_KEYID_COLON = "ed:90:e6:4f:ec:a2:1f:4b:68:97:99:24:22:e0:de:21:b9:d6:26:29"
_n = itertools.count()


def _ec_pem() -> str:
    """A fresh P-256 public key, PEM (a peer's key for the forms)."""
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_register_add_peer_keyid_in_browser(portal: Portal, browser: object, reference_pem: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    logins: list[str] = []
    for width, height, tag in ((1100, 760, "desktop"), (390, 844, "phone")):
        ctx = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
        page = watched_page(ctx, failed)
        base = portal.url + "/srv"
        page.goto(base + "/user/login")
        page.screenshot(path=str(SHOTS / f"server-login-{tag}.png"), full_page=True)
        page.click("text=Register")
        login = f"browser{tag}{next(_n)}"
        logins.append(login)
        page.fill("#new_login", login)
        page.fill("#new_password", "browser password")
        page.fill("#confirm_password", "browser password")
        page.screenshot(path=str(SHOTS / f"server-register-{tag}.png"), full_page=True)
        page.click("button[name=register]")
        page.wait_for_url("**/peer/list")
        assert page.locator("h1").inner_text() == "Your peers"
        page.click("text=Add peer")
        page.fill("#alias", "sidv150")
        # each key once: the desktop run registers the reference key, the phone run an error case first
        if tag == "desktop":
            page.fill("#public_key", reference_pem)
        else:
            # the alias field's pattern (validation.py's rule) as Chromium applies it
            for alias, bad in (("bad name!", True), ("x" * 64, False), ("a.b-c_d@e", False), ("été", True)):
                page.fill("#alias", alias)
                assert page.evaluate("document.querySelector('#alias').validity.patternMismatch") is bad, alias
            page.fill("#alias", "sidv150")
            page.fill("#public_key", "not a key")
            page.click("button[name=add]")
            assert "Parsing public key failed." in page.locator(".errors").inner_text()
            # the message also stands under its field, which is marked invalid; the alias is kept
            assert "Parsing public key failed." in page.locator("#public_key-error").inner_text()
            assert page.get_attribute("#public_key", "aria-invalid") == "true"
            assert page.input_value("#alias") == "sidv150"
            page.screenshot(path=str(SHOTS / f"server-peer-add-error-{tag}.png"), full_page=True)
            page.fill("#public_key", reference_pem)
        page.screenshot(path=str(SHOTS / f"server-peer-add-{tag}.png"), full_page=True)
        page.click("button[name=add]")
        if tag == "desktop":
            page.wait_for_url("**/peer/list")
            assert page.locator("code.keyid").first.inner_text() == REFERENCE_KEYID
            assert page.locator(".keyid-colon").first.inner_text() == REFERENCE_KEYID_COLON
            assert "sidv150" in page.locator("table.list").inner_text()
            page.screenshot(path=str(SHOTS / f"server-peer-list-{tag}.png"), full_page=True)
        else:
            assert "Peer already exists" in page.locator(".errors").inner_text()
        page.goto(base + "/user/help")
        assert REFERENCE_KEYID in page.locator("dl.facts").inner_text()
        page.screenshot(path=str(SHOTS / f"server-help-{tag}.png"), full_page=True)
        # client manager
        cli = portal.url + "/cli"
        log_in(page, cli + "/user/login", ADMIN_PASSWORD, "**/connection/list")
        page.screenshot(path=str(SHOTS / f"client-connections-{tag}.png"), full_page=True)
        page.goto(cli + "/key/show")
        page.screenshot(path=str(SHOTS / f"client-key-{tag}.png"), full_page=True)
        # no horizontal scrolling at phone width
        scroll_w = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_w <= width + 1, (tag, scroll_w)
        ctx.close()
    assert failed == [], failed
    # free the reference key again (a key is registered once per server) for the other tests
    c = WebClient(portal.url + "/srv")
    c.submit("user/login", "user/login", {"login": logins[0], "password": "browser password"})
    r = c.get("peer/list")
    (pid,) = re.findall(r'/peer/edit/(\d+)"', r.body)
    assert "deleted" in c.post(f"peer/delete/{pid}", {"csrf": r.csrf()}).text()


def test_peer_access_page_in_browser(portal: Portal, browser: object) -> None:
    """Restrict a peer to another one by ticking it (the page's script selects "only these peers"),
    see it marked on the list; screenshots of the access page at desktop and phone width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for width, height, tag in ((1100, 760, "desktop"), (390, 844, "phone")):
        c = WebClient(portal.url + "/srv")
        login = f"access{tag}{next(_n)}"
        c.submit("user/add", "user/add", {"new_login": login, "new_password": "browser password",
                                          "confirm_password": "browser password"})
        for alias in ("home", "office"):
            c.submit("peer/add", "peer/add", {"alias": alias, "public_key": _ec_pem()})
        ctx = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
        page = watched_page(ctx, failed)
        log_in(page, portal.url + "/srv/user/login", "browser password", "**/peer/list", login)
        page.click("tr:has-text('home') >> text=every peer")
        page.wait_for_url("**/peer/access/*")
        assert page.is_checked("#scope_all")
        page.check("label.target:has-text('office') input")
        assert page.is_checked("#scope_listed")  # app.js
        page.screenshot(path=str(SHOTS / f"server-peer-access-{tag}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.click("button[name=save]")
        page.wait_for_url("**/peer/list")
        assert "may now reach only 1 listed peer" in page.locator(".notice").inner_text()
        assert page.locator("tr:has-text('home') a.restricted").inner_text() == "only 1 peer"
        page.screenshot(path=str(SHOTS / f"server-peer-list-restricted-{tag}.png"), full_page=True)
        ctx.close()
    assert failed == [], failed


def test_operator_and_client_pages_in_browser(portal: Portal, browser: object) -> None:
    """The operator pages (an account made operator with ``--make-admin``), the client manager's key
    copy and download buttons and its Connect button with no daemon to answer; desktop and phone."""
    from medmgr_web import server_manager

    SHOTS.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    login = f"operator{next(_n)}"
    c = WebClient(portal.url + "/srv")
    c.submit("user/add", "user/add", {"new_login": login, "new_password": "browser password",
                                      "confirm_password": "browser password"})
    c.submit("peer/add", "peer/add", {"alias": "opbox", "public_key": _ec_pem()})
    assert server_manager.main(["--db", f"sqlite:///{portal.base / 'srv.sqlite'}", "--make-admin", login]) == 0
    d = WebClient(portal.url + "/dcli")
    d.submit("user/login", "user/login", {"password": ADMIN_PASSWORD})
    d.submit("key/show", "key/generate", {"replace": "yes"})
    d.submit("connection/add", "connection/add", {"alias": f"peer{next(_n)}", "active": "yes", "public_key": _ec_pem()})
    for width, height, tag in ((1100, 760, "desktop"), (390, 844, "phone")):
        ctx = browser.new_context(viewport={"width": width, "height": height},  # type: ignore[attr-defined]
                                  accept_downloads=True)
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.url)
        page = watched_page(ctx, failed)
        log_in(page, portal.url + "/srv/user/login", "browser password", "**/peer/list", login)
        page.click("nav >> text=Operator")
        page.wait_for_url("**/admin/users")
        assert page.inner_text("#registration-state") == "open"
        page.fill("#q", login)
        page.click("form.search button")
        assert page.locator("#users tbody tr").count() == 1 and "operator" in page.inner_text("#users")
        page.screenshot(path=str(SHOTS / f"server-operator-users-{tag}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.goto(portal.url + f"/srv/admin/peers?q={login}")
        assert "opbox" in page.inner_text("#peers")
        page.screenshot(path=str(SHOTS / f"server-operator-peers-{tag}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        # client manager: copy and download the public key
        log_in(page, portal.url + "/dcli/user/login", ADMIN_PASSWORD, "**/connection/list")
        page.goto(portal.url + "/dcli/key/show")
        pem = page.input_value("#pem")
        page.click("#copy-pem")
        page.wait_for_selector("#copy-result:has-text('Copied.')")
        assert page.evaluate("navigator.clipboard.readText()") == pem
        with page.expect_download() as dl:
            page.click("#download-pem")
        path = dl.value.path()
        assert Path(path).read_text() == pem and dl.value.suggested_filename.endswith(".pub.pem")
        page.screenshot(path=str(SHOTS / f"client-key-buttons-{tag}.png"), full_page=True)
        # Connect with no mediation client listening: the page says why
        page.goto(portal.url + "/dcli/connection/list")
        assert "Live state unavailable: no control socket" in page.inner_text("#daemon-error")
        page.locator("button[name=connect]").first.click()
        page.wait_for_url("**/connection/list")
        assert "not connected: no control socket" in page.locator(".notice").first.inner_text()
        page.screenshot(path=str(SHOTS / f"client-connections-actions-{tag}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        ctx.close()
    assert failed == [], failed
