"""medsrv-rsa: the product end to end, set up the way a user does it, with RSA-2048 keys and ID_KEY_IDs.

alice and bob (behind two EIM NATs) each run a client manager (lighttpd + FastCGI on 127.0.0.1 in their
namespace): the user generates the client's key pair there and reads its public key and ID_KEY_ID.
carol runs the server manager (lighttpd + FastCGI on 203.0.113.10:80) and the mediation server on the
same med_db: the user registers an account over the internet and adds both peers by pasting their
public keys. Back in each client manager the user enters the mediation server (address and public key,
copied from the server manager's help page) and a connection to the other peer. The mediation client
daemons read everything from their client manager's database, bring the connection up by themselves
and write its status back, which the user sees on the connection list.

Checks: both peers registered at carol under their key ids, the mediated IKE_SA + CHILD_SA on both
peers, UP on both connection list pages, ping both ways, and the ESP going NAT to NAT directly.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from scenarios.lab import nat_lab, wait_for
from scenarios.lab.creds import rsa_keypair
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked
from scenarios.lab.mediation import LAN, client_toml_db, server_toml_pubkey, show_log
from scenarios.lab.netns import Lab
from scenarios.lab.portal import Browser, Page, PortalSite, stop_sites
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL

TITLE = "the user's way: client managers make RSA keys, the server manager registers the peers, direct tunnel"

ADMIN_PASSWORD = "client-admin-password"
USER, USER_PASSWORD = "pat", "pat-secret-password"
PUBLIC = {"alice": "203.0.113.1", "bob": "203.0.113.2"}


def admin_hash(lab: Lab) -> Path:
    out = subprocess.run([sys.executable, "-m", "medmgr_web.client_manager", "hash-password"],
                         input=ADMIN_PASSWORD + "\n", capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    path = lab.dir / "client-admin.hash"
    path.write_text(out.stdout)
    return path


def first_notice(page: Page) -> str:
    notes = page.flashes()
    return notes[0] if notes else "(no notice)"


def client_key(story: Story, web: Browser, host: str) -> tuple[str, str]:
    """Log in to the client manager, generate the key pair, read public key PEM and ID_KEY_ID."""
    page = web.submit("user/login", "user/login", {"password": ADMIN_PASSWORD})
    story.check("Connections" in page.text(), f"{host}: logged in to the client manager")
    page = web.submit("key/show", "key/generate", {})
    story.say(f"{host}: {first_notice(page)}")
    page = web.get("key/show")
    keyid, pem = page.element("keyid").strip(), page.element("pem").strip()
    story.say(f"{host}: identity (ID_KEY_ID) {keyid}")
    story.say(f"{host}: public key {pem.splitlines()[1][:40]}... ({len(pem)} bytes PEM)")
    return keyid, pem + "\n"


def configure_client(story: Story, web: Browser, host: str, other: str, ms_pem: str, other_pem: str) -> None:
    page = web.submit("server/edit", "server/edit", {"address": CAROL, "port": "500", "public_key": ms_pem})
    story.say(f"{host}: {first_notice(page)} ({CAROL} port 500)")
    # the subnet fields stay empty ("this host only"): each side's selector is its own inner address
    page = web.submit("connection/add", "connection/add", {
        "alias": other, "public_key": other_pem, "local_subnet": "", "remote_subnet": "", "active": "yes"})
    story.say(f"{host}: {first_notice(page)} (subnets left empty: this host only)")


def connection_row(page: Page, alias: str) -> str:
    m = re.search(rf'>{re.escape(alias)}</a>.*?</tr>', page.body, re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", m.group(0)).split()) if m else ""


def run(story: Story) -> None:
    story.step("topology: alice 10.1.0.2 | natA 203.0.113.1 -- internet -- natB 203.0.113.2 | bob 10.2.0.2; "
               f"carol {CAROL} = mediation server + server manager")
    lab = story.lab(nat_lab(nat_a="eim", nat_b="eim"))

    story.step("carol's administrator: server key pair, server manager (lighttpd + FastCGI) on port 80")
    server_key = rsa_keypair()
    carol_dir = lab.host_dir("carol") / "medsrv"
    carol_dir.mkdir(parents=True, exist_ok=True)
    (carol_dir / "server.pub").write_bytes(server_key.public_pem)
    srv = PortalSite(lab, "carol", "server_manager", bind=CAROL, port=80, mount="/medsrv",
                     args=["--ms-address", CAROL, "--ms-public-key", str(carol_dir / "server.pub")]).start()
    story.say(f"server manager at {srv.url}, med_db {srv.db_path}")
    story.say(f"mediation server identity keyid:#{server_key.keyid}")

    story.step("alice and bob: client manager (lighttpd + FastCGI on 127.0.0.1:8080), generate key pairs")
    hash_file = admin_hash(lab)
    # each client manager asks its mediation client (control socket below) to reload after a save
    cli = {h: PortalSite(lab, h, "client_manager", bind="127.0.0.1", port=8080, mount="/medcli",
                         args=["--admin-hash-file", str(hash_file), "--daemon-socket",
                               str(lab.host_dir(h) / "medcli" / "ctl.sock")]).start() for h in ("alice", "bob")}
    local_web = {h: Browser(lab, h, cli[h].url) for h in cli}
    keys = {h: client_key(story, local_web[h], h) for h in cli}

    story.step(f"the user at alice registers an account at {srv.url} and adds both peers")
    portal = Browser(lab, "alice", srv.url)
    page = portal.submit("user/add", "user/add", {"new_login": USER, "new_password": USER_PASSWORD,
                                                   "confirm_password": USER_PASSWORD})
    story.say(first_notice(page))
    for h in ("alice", "bob"):
        page = portal.submit("peer/add", "peer/add", {"alias": h, "public_key": keys[h][1]})
        note = first_notice(page)
        story.say(note)
        story.check(note.endswith(f"identity {keys[h][0]}."),
                    f"server manager computed {h}'s ID_KEY_ID as its client manager shows it")
    help_page = portal.get("user/help")
    ms_pem = help_page.element("ms_pem").strip() + "\n"
    ms_keyid = help_page.element("ms_keyid")
    story.say(f"help page: mediation server {CAROL}, identity {ms_keyid}")
    story.check(ms_keyid == server_key.identity, "the help page shows the server's key id")

    story.step("carol: mediation_server on the server manager's med_db (peers by ID_KEY_ID)")
    server = Iked(lab, "carol", server_toml_pubkey(server_key.identity, srv.db_url), name="medsrv",
                  module="mediation_server", files={"server.key": server_key.private_pem}).start()

    story.step("alice and bob: mediation server and a connection to each other, in the client managers")
    configure_client(story, local_web["alice"], "alice", "bob", ms_pem, keys["bob"][1])
    configure_client(story, local_web["bob"], "bob", "alice", ms_pem, keys["alice"][1])

    story.step("start mediation_client on bob, then on alice (configuration from the client manager DBs)")
    with lab.capture("natB", "wan0", "udp") as cap:
        clients = {h: Iked(lab, h, client_toml_db(h, cli[h].db_url), name="medcli",
                           module="mediation_client").start() for h in ("bob", "alice")}
        want = {keys[h][0]: h for h in ("alice", "bob")}
        online: dict[str, dict[str, Any]] = {}

        def registered() -> bool:
            online.update({p["identity"]: p for p in server.status()["peers"] if p["identity"] in want})
            return len(online) == 2

        wait_daemons(registered, 15, [server], what="both peers registered at carol")
        for ident, p in sorted(online.items(), key=lambda x: want[x[0]]):
            story.say(f"online at carol: {want[ident]} = {ident} from {p['endpoint']} (mediation SA #{p['ike']})")
        story.check({p["endpoint"] for p in online.values()} == {"203.0.113.1[4500]", "203.0.113.2[4500]"},
                    "carol authenticated both peers by their registered keys and learned their public endpoints")

        story.step("the connections come up by themselves (active, start_action=start)")
        final: dict[str, dict[str, Any]] = {}

        def one_pair() -> bool:
            """Each side has exactly one mediated SA and they are the two ends of the same CHILD_SA (when
            both sides initiate at once, the tie-break of core_ike/me/tiebreak.py keeps one attempt)."""
            settled = all(c["state"] in ("established", "failed")
                          for h in clients for c in clients[h].status()["status"]["connections"])
            a = [sa for sa in clients["alice"].list_sas() if sa["name"] == "bob"]
            b = [sa for sa in clients["bob"].list_sas() if sa["name"] == "alice"]
            if not settled or len(a) != 1 or len(b) != 1 or not a[0]["child-sas"] or not b[0]["child-sas"] \
                    or a[0]["child-sas"][0]["spi-in"] != b[0]["child-sas"][0]["spi-out"]:
                return False
            final.update(alice=a[0], bob=b[0])
            return True

        wait_daemons(one_pair, 30, clients.values(), what="one mediated SA on each side")
        for h in ("alice", "bob"):
            for line in clients[h].log_text().splitlines():
                if any(k in line for k in ("received ME_CALLBACK", "established in", "selected pair",
                                           "duplicate IKE_SA", "yielded", "keeping our attempt",
                                           "already the target")):
                    story.say(f"{h}: {line}")
        story.check(not any("duplicate IKE_SA" in clients[h].log_text() for h in clients),
                    "only one mediated IKE_SA was set up (no duplicate to delete)")
        m = re.search(r"mediated connection 'bob' to '[^']+' established in ([\d.]+) s", clients["alice"].log_text())
        if m:
            story.say(f"alice: from its ME_CONNECT to the mediated IKE_SA + CHILD_SA: {float(m.group(1)) * 1000:.1f} ms")

        story.step("the client managers show the status the daemons wrote back")
        rows: dict[str, str] = {}

        def both_up() -> bool:
            for h, o in (("alice", "bob"), ("bob", "alice")):
                rows[h] = connection_row(local_web[h].get("connection/list"), o)
            return all(" UP " in f" {r} " for r in rows.values())

        with contextlib.suppress(Exception):  # reported by the check below
            # polled: a web page showing what the daemons wrote back to the client managers' databases
            wait_for(both_up, 10, interval=0.1, what="UP on both connection lists")
        for h in ("alice", "bob"):
            story.say(f"{h} connection list: {rows.get(h, '')}")
        story.check(all(" UP " in f" {r} " for r in rows.values()), "both connection lists show UP")

        story.step("ping both ways through the tunnel")
        a2b = lab.ping("alice", LAN["bob"], source=LAN["alice"], count=3, interval=0.1)
        b2a = lab.ping("bob", LAN["alice"], source=LAN["bob"], count=3, interval=0.1)
    ma, mb = final["alice"], final["bob"]
    for h, sa in (("alice", ma), ("bob", mb)):
        ch = sa["child-sas"][0]
        story.say(f"{h}: {sa['local-host']}[{sa['local-port']}] ... {sa['remote-host']}[{sa['remote-port']}] "
                  f"CHILD_SA {ch['spi-in']}_i {ch['spi-out']}_o")
    story.check(ma["remote-host"] == PUBLIC["bob"] and mb["remote-host"] == PUBLIC["alice"],
                "the mediated SA runs between the two NATs' public addresses")
    story.check(ma["child-sas"][0]["local-ts"] == [f"{LAN['alice']}/32"]
                and ma["child-sas"][0]["remote-ts"] == [f"{LAN['bob']}/32"],
                f"empty subnets became each host's inner address: {LAN['alice']}/32 === {LAN['bob']}/32")
    story.check(ma["child-sas"][0]["spi-in"] == mb["child-sas"][0]["spi-out"]
                and mb["child-sas"][0]["spi-in"] == ma["child-sas"][0]["spi-out"], "both peers agree on the SPIs")
    story.check(a2b[1] == 3 and b2a[1] == 3, f"ping alice->bob {a2b[1]}/3, bob->alice {b2a[1]}/3")
    story.packets("natB wan0 (ESP)", [p for p in cap.packets if p.kind in ("esp-in-udp", "esp")])
    esp = cap.of_kind("esp-in-udp") + cap.of_kind("esp")
    direct = [p for p in esp if {p.src, p.dst} == {PUBLIC["alice"], PUBLIC["bob"]}]
    via_carol = [p for p in esp if CAROL in (p.src, p.dst)]
    story.check(len(direct) >= 6 and {p.src for p in direct} == set(PUBLIC.values()) and not via_carol,
                f"ESP went NAT to NAT directly ({len(direct)} packets), none via the mediation server")
    portal_edits(story, lab, local_web["alice"], clients, keys["bob"][1])
    story.end(*clients.values(), server)
    stop_sites(srv, *cli.values())


def portal_edits(story: Story, lab: Lab, web: Browser, clients: dict[str, Iked], bob_pem: str) -> None:
    """A save in the client manager reaches the running daemon (reload), without a restart."""
    def mediated(host: str, conn: str) -> list[dict[str, Any]]:
        return [sa for sa in clients[host].list_sas() if sa["name"] == conn and sa["child-sas"]]

    m = re.search(r'connection/edit/(\d+)"[^>]*>bob<', web.get("connection/list").body)
    assert m, "bob's connection is listed"
    edit = f"connection/edit/{m.group(1)}"
    form = {"alias": "bob", "public_key": bob_pem, "local_subnet": "", "remote_subnet": ""}

    story.step("the user at alice deactivates the connection in the client manager (the daemon keeps running)")
    story.say(f"alice: {first_notice(web.submit(edit, edit, form))}")
    wait_daemons(lambda: not mediated("alice", "bob") and not mediated("bob", "alice"), 10, clients.values(),
                 what="the tunnel closed on both sides")
    show_log(story, clients["alice"].log_text(), ("reloaded configuration",), "alice")
    story.check("reloaded configuration: 0 added, 1 removed (bob)" in clients["alice"].log_text(),
                "the save made alice's daemon reload and close the connection (DELETE: bob's side is gone too)")

    story.step("... and activates it again: the connection comes back by itself")
    story.say(f"alice: {first_notice(web.submit(edit, edit, {**form, 'active': 'yes'}))}")
    wait_daemons(lambda: mediated("alice", "bob") and mediated("bob", "alice"), 20, clients.values(),
                 what="the tunnel back on both sides")
    sent, received, _ = lab.ping("alice", LAN["bob"], source=LAN["alice"], count=3, interval=0.1)
    story.check(received == 3, f"tunnel back after the reload, ping {received}/{sent}")
