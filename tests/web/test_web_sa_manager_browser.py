"""The SA manager through lighttpd (FastCGI, the real `medmgr-sa` launcher) in headless Chromium, in front
of a real gateway: our iked as moon (192.0.2.1, configuration from SQL) in a network namespace, road
warrior carol (our iked asking for a virtual IP) and dave (our iked, a site moon initiates to).

The operator writes moon's configuration with the pages' forms (pool, PSKs, two connections), iked
picks it up without a restart, carol connects and gets an address of the pool; the SA page shows her
IKE_SA and CHILD_SA, the Pools page her lease; the Initiate button brings up moon -> dave, the Terminate
buttons (with their confirmation dialogs) close a CHILD_SA and the IKE_SAs. Screenshots at desktop and
phone width go to test-output/screenshots/sa-*.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from gateway.sqlconf.models import Base
from scenarios.lab import Lab
from scenarios.lab.events import wait_daemons, wait_files
from scenarios.lab.iked import Iked
from scenarios.lab.netns import wait_for
from tests.guards import require
from tests.web.webtools import LIGHTTPD, SHOTS, free_port, log_in, socket_activated, watched_page

pytestmark = [pytest.mark.web, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
MOON, CAROL, DAVE = "192.0.2.1", "192.0.2.100", "192.0.2.200"
MOON_IN, DAVE_IN = "10.1.0.1", "10.2.0.1"
PASSWORD = "operator password 7"
PSK = {"carol": "carol-browser-psk-0123456789", "dave": "dave-browser-psk-9876543210"}

DAEMON = """[daemon]
listen = ["{addr}"]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
"""


def rw_toml(name: str, addr: str, conn: str) -> str:
    return DAEMON.format(addr=addr) + f"""
[[secrets.ike]]
id = ["{name}@strongswan.org", "@moon.strongswan.org"]
secret = "{PSK[name]}"

[connections.{conn}]
local_addrs = ["{addr}"]
remote_addrs = ["{MOON}"]
proposals = "aes128gcm16-prfsha256-x25519"
rekey_time = 0
{'vips = ["0.0.0.0"]' if name == "carol" else ""}
local = {{ auth = "psk", id = "{name}@strongswan.org" }}
remote = {{ auth = "psk", id = "@moon.strongswan.org" }}
[connections.{conn}.children.{conn}]
local_ts = ["{'dynamic' if name == 'carol' else DAVE_IN + '/32'}"]
remote_ts = ["{'10.1.0.0/16' if name == 'carol' else MOON_IN + '/32'}"]
esp_proposals = "aes128gcm16"
rekey_time = 0
"""


@dataclass
class Gateway:
    lab: Lab
    moon: Iked
    carol: Iked
    dave: Iked
    url: str


def _lab() -> Lab:
    lab = Lab()
    try:
        lab.add_host("sw")
        for i, (host, addr) in enumerate((("moon", MOON), ("carol", CAROL), ("dave", DAVE))):
            lab.add_host(host)
            lab.link("sw", f"p{i}", host, "eth0", None, f"{addr}/24")
        lab.bridge("sw", "br0", ["p0", "p1", "p2"])
        lab.addr("moon", "lo", f"{MOON_IN}/32")
        lab.addr("dave", "lo", f"{DAVE_IN}/32")
    except BaseException:
        lab.teardown()
        raise
    return lab


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    require("root", "lighttpd", "chromium", why="a gateway in namespaces behind the SA manager in Chromium")
    lab = _lab()
    base = Path(tempfile.mkdtemp(prefix="medsa-"))
    procs: list[subprocess.Popen[bytes]] = []
    moon = Iked(lab, "moon", DAEMON.format(addr=MOON) + 'config_db = "sqlite:///@DIR@/ipsec.db"\n')
    carol = Iked(lab, "carol", rw_toml("carol", CAROL, "home"))
    dave = Iked(lab, "dave", rw_toml("dave", DAVE, "moon"))
    try:
        db_url = f"sqlite:///{moon.dir / 'ipsec.db'}"
        Base.metadata.create_all(create_engine(db_url))
        moon.start()
        carol.start()
        dave.start()
        med = f"sqlite:///{base / 'sa.sqlite'}"
        py = os.environ.get("PYTHON", sys.executable)
        subprocess.run([py, "-m", "medmgr_web.sa_manager", "--add-operator", "op", "--db", med],
                       input=PASSWORD + "\n", text=True, check=True, capture_output=True, cwd=REPO)
        sock = base / "sa.sock"
        log = open(base / "sa.log", "wb")  # noqa: SIM115  (closed with the process)
        procs.append(subprocess.Popen([py, "-m", "medmgr_web.sa_manager", "--socket", str(sock), "--db", med,
                                       "--control", moon.ctl_path, "--config-db", db_url],
                                      cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        wait_files(sock.exists, 30, [sock], what="the SA manager's FastCGI socket", procs=procs[-1:])
        port = free_port()
        (base / "www").mkdir()
        conf = base / "lighttpd.conf"
        conf.write_text(f"""server.modules += ( "mod_fastcgi" )
server.document-root = "{base / 'www'}"
server.bind = "127.0.0.1"
server.port = {port}
server.pid-file = "{base / 'lighttpd.pid'}"
server.errorlog = "{base / 'lighttpd-error.log'}"
server.systemd-socket-activation = "enable"
fastcgi.server = ( "/medsa" => (( "socket" => "{sock}", "check-local" => "disable" )) )
""")
        procs.append(socket_activated([str(LIGHTTPD), "-D", "-f", str(conf)], port, base))
        yield Gateway(lab, moon, carol, dave, f"http://127.0.0.1:{port}/medsa")
    finally:
        for p in procs:  # our own children, by PID
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        for d in (carol, dave, moon):
            d.stop()
        lab.teardown()
        shutil.rmtree(base, ignore_errors=True)


def _fill(page: Any, fields: dict[str, str]) -> None:
    for k, v in fields.items():
        if page.locator(f"select#{k}").count():
            page.select_option(f"#{k}", v)
        else:
            page.fill(f"#{k}", v)


def test_operator_configures_sees_and_terminates_in_chromium(gateway: Gateway, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    page = watched_page(ctx, failed)
    page.on("dialog", lambda d: d.accept())  # the Terminate / Delete buttons ask first
    base = gateway.url
    page.goto(base + "/user/login")
    page.screenshot(path=str(SHOTS / "sa-login-desktop.png"), full_page=True)
    log_in(page, base + "/user/login", PASSWORD, "**/sa/list", "op")
    assert "No IKE_SAs" in page.locator("main").inner_text()

    # moon's configuration, written with the forms
    page.goto(base + "/pool/list")
    _fill(page, {"name": "rw", "range": "10.3.0.0/28", "timeout": "1h"})
    page.click("button[name=add]")
    assert "Pool rw added: 14 addresses" in page.locator(".notice").inner_text()
    for who in ("carol", "dave"):
        page.goto(base + "/secret/list")
        _fill(page, {"kind": "1", "id1": "@moon.strongswan.org", "id2": f"{who}@strongswan.org", "secret": PSK[who]})
        page.click("button[name=add]")
        assert "added" in page.locator(".notice").inner_text()
    page.screenshot(path=str(SHOTS / "sa-secrets-desktop.png"), full_page=True)
    common = {"local_addrs": MOON, "local_id": "@moon.strongswan.org", "auth": "psk",
              "ike_proposal": "aes128gcm16-prfsha256-x25519", "esp_proposal": "aes128gcm16", "rekeytime": "0",
              "dpd_delay": "0"}
    for form in ({"name": "rw", "remote_addrs": "%any", "remote_id": "%any", "pool": "rw", "local_ts": "10.1.0.0/16",
                  "remote_ts": "dynamic"},
                 {"name": "todave", "remote_addrs": DAVE, "remote_id": "dave@strongswan.org", "pool": "",
                  "local_ts": f"{MOON_IN}/32", "remote_ts": f"{DAVE_IN}/32"}):
        page.goto(base + "/conn/add")
        _fill(page, {**common, **form})
        if form["name"] == "rw":
            page.screenshot(path=str(SHOTS / "sa-conn-add-desktop.png"), full_page=True)
        page.click("button[name=save]")
        page.wait_for_url("**/conn/list")
        assert f"Connection {form['name']} saved" in page.locator(".notice").inner_text()
    # a mistake is shown next to its field, nothing is saved
    page.goto(base + "/conn/add")
    _fill(page, {**common, "name": "bad", "remote_addrs": "%any", "remote_id": "%any", "local_ts": "10.1.0.0/99"})
    page.click("button[name=save]")
    assert "Local subnets is not a valid subnet" in page.locator("#local_ts-error").inner_text()
    assert page.get_attribute("#local_ts", "aria-invalid") == "true"

    # iked uses the rows without a restart: carol connects and gets the pool's first address
    gateway.moon.wait_state(lambda: {"rw", "todave"} <= {c["name"] for c in gateway.moon.ctl({"cmd": "conns"})["conns"]},
                            10, "moon loading the connections")
    gateway.moon.wait_log("virtual IP pool 'rw' loaded", 10)
    gateway.carol.up("home")
    (sa,) = gateway.carol.list_sas()
    assert sa["local-vips"] == ["10.3.0.1"]

    page.goto(base + "/conn/list")
    page.click("tr[data-conn=todave] button[name=initiate]")
    page.wait_for_url("**/sa/list")
    assert "Connection todave established" in page.locator(".notice").inner_text()
    rows = page.locator("tr.ike-sa")
    assert rows.count() == 2
    carol_row = page.locator("tr.ike-sa", has_text="carol@strongswan.org")
    assert "10.3.0.1" in carol_row.locator("td.vip").inner_text()
    assert "AES_GCM_16_128" in carol_row.inner_text()
    ike = carol_row.get_attribute("data-ike")
    assert page.locator(f"tr.child-sa[data-ike='{ike}']").count() == 1
    page.screenshot(path=str(SHOTS / "sa-list-desktop.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1201
    page.goto(base + "/conn/list")
    page.screenshot(path=str(SHOTS / "sa-conns-desktop.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1201
    # the card holds its table: no column sticks out of it
    assert page.evaluate("Math.max(...[...document.querySelectorAll('table.list')].map(t => "
                         "t.getBoundingClientRect().right - t.closest('.card').getBoundingClientRect().right))") <= 0
    page.goto(base + "/sa/list")
    assert page.evaluate("document.querySelector('table.list').getBoundingClientRect().right - "
                         "document.querySelector('.card').getBoundingClientRect().right") <= 0

    def leases_shown() -> bool:
        page.goto(base + "/pool/list")
        return "carol@strongswan.org" in page.locator("#leases").inner_text() if page.locator("#leases").count() else False

    # polled: the page shows what the database holds, read at each load: reloaded until the lease is there
    wait_for(leases_shown, 10, interval=0.3, what="carol's lease on the Pools page")
    assert "online" in page.locator("tr[data-lease='10.3.0.1']").inner_text()
    page.screenshot(path=str(SHOTS / "sa-pools-desktop.png"), full_page=True)

    # terminate carol's CHILD_SA, then every IKE_SA, with the buttons
    page.goto(base + "/sa/list")
    page.click(f"tr.child-sa[data-ike='{ike}'] button[name=terminate-child]")
    assert "Terminated" in page.locator(".notice").inner_text()
    assert page.locator(f"tr.child-sa[data-ike='{ike}']").count() == 0
    assert not gateway.carol.list_sas()[0]["child-sas"]  # carol saw the DELETE
    while page.locator("tr.ike-sa").count():
        page.locator("tr.ike-sa button[name=terminate-ike]").first.click()
        page.wait_for_load_state()
    assert "No IKE_SAs" in page.locator("main").inner_text()
    wait_daemons(lambda: not gateway.carol.list_sas() and not gateway.dave.list_sas(), 10,
                 [gateway.carol, gateway.dave], what="the peers' SAs gone")

    # phone width: the lists stay readable without horizontal scrolling
    phone = browser.new_context(viewport={"width": 390, "height": 844})
    p2 = watched_page(phone, failed)
    log_in(p2, base + "/user/login", PASSWORD, "**/sa/list", "op")
    gateway.carol.up("home")
    for path, name in (("/sa/list", "sa-list-phone"), ("/conn/list", "sa-conns-phone"), ("/pool/list", "sa-pools-phone")):
        p2.goto(base + path)
        p2.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        assert p2.evaluate("document.documentElement.scrollWidth") <= 391, path
    phone.close()
    ctx.close()
    assert failed == [], failed
