"""The server manager's strongSwan configuration, taken from the live Help page, works in a real charon.

``nat_lab``: alice 10.1.0.2 behind natA 203.0.113.1, bob 10.2.0.2 behind natB 203.0.113.2 (EIM NATs),
carol 203.0.113.10 runs the server manager (lighttpd + FastCGI) and our mediation server on its med_db.
A user at alice registers, adds both peers with their RSA keys (alice's pasted as an OpenSSH line,
bob's as an X.509 certificate), enters the hosts' addresses as the tunnel subnets and reads, for each
peer, the swanctl.conf and the public key files from the Help page over HTTP. Each snippet goes,
as it is, into a charon's swanctl directory (plus the peer's own private key):

- ``swanctl --load-all`` takes it without any "ignoring"/error line (charon's log included) and
  ``swanctl --list-conns`` shows the mediation connection and the mediated one with the keyid
  identities and the entered traffic selectors;
- both charons register at our server under their ID_KEY_IDs; alice initiates the child ``bob``,
  the mediated CHILD_SA 10.1.0.2/32 === 10.2.0.2/32 comes up NAT to NAT and pings pass both ways.
"""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.creds import RsaKeyPair, rsa_keypair
from scenarios.lab.iked import Iked
from scenarios.lab.mediation import LAN, PUBLIC, server_toml_pubkey
from scenarios.lab.portal import Browser, Page, PortalSite, stop_sites
from scenarios.lab.topologies import CAROL
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", "lighttpd", why="charon and the portal in network namespaces"),
]

PASSWORD = "snippet-user-password"
_FILE_RE = re.compile(r'<pre class="file"[^>]*data-file="([^"]+)"[^>]*>(.*?)</pre>', re.S)


def openssh_line(key: RsaKeyPair, comment: str) -> str:
    pub = serialization.load_pem_public_key(key.public_pem)
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() \
        + f" {comment}\n"


def certificate_pem(key: RsaKeyPair, cn: str) -> str:
    import datetime

    priv = serialization.load_pem_private_key(key.private_pem, None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(priv.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(priv, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def snippet_files(page: Page) -> dict[str, str]:
    """The files the Help page shows: ``swanctl.conf`` and ``pubkey/<name>.pem``."""
    return {name: html.unescape(body) for name, body in _FILE_RE.findall(page.body)}


def test_help_page_snippet_runs_in_charon_through_our_server(nat_lab_per_module: Lab) -> None:
    lab = nat_lab_per_module
    server_key = rsa_keypair()
    keys = {"alice": rsa_keypair(), "bob": rsa_keypair()}
    ms_dir = lab.host_dir("carol") / "snippet-ms"
    ms_dir.mkdir(parents=True, exist_ok=True)
    (ms_dir / "server.pub").write_bytes(server_key.public_pem)
    srv = PortalSite(lab, "carol", "server_manager", bind=CAROL, port=80, mount="/medsrv",
                     name="snippet-portal",
                     args=["--ms-address", CAROL, "--ms-public-key", str(ms_dir / "server.pub")]).start()
    parts: list[Any] = []
    try:
        web = Browser(lab, "alice", srv.url)
        web.submit("user/add", "user/add", {"new_login": "snip", "new_password": PASSWORD,
                                            "confirm_password": PASSWORD})
        pasted = {"alice": openssh_line(keys["alice"], "root@alice"), "bob": certificate_pem(keys["bob"], "bob")}
        for host in ("alice", "bob"):
            page = web.submit("peer/add", "peer/add", {"alias": host, "public_key": pasted[host]})
            assert f"Peer {host} added, identity {keys[host].identity}." in page.flashes(), page.flashes()
        ids = {alias: int(pid) for pid, alias in
               re.findall(r'/peer/edit/(\d+)">([^<]+)</a>', web.get("peer/list").body)}
        nets = "&".join(f"net_{ids[h]}={LAN[h]}/32" for h in ("alice", "bob"))

        server = Iked(lab, "carol", server_toml_pubkey(server_key.identity, srv.db_url), name="snippet-medsrv",
                      module="mediation_server", files={"server.key": server_key.private_pem}).start()
        parts.append(server)

        charons: dict[str, Charon] = {}
        for host, other in (("alice", "bob"), ("bob", "alice")):
            page = web.get(f"user/help?peer={ids[host]}&{nets}")
            assert page.status == 200 and not page.errors(), page.errors()
            files = snippet_files(page)
            assert set(files) == {"swanctl.conf", "pubkey/medsrv.pem", f"pubkey/{host}.pem",
                                  f"pubkey/{other}.pem"}, sorted(files)
            assert files["pubkey/medsrv.pem"].strip() == server_key.public_pem.decode().strip()
            c = Charon(lab, host, name="snippet-charon", conf=files["swanctl.conf"])
            for name, body in files.items():
                if name.startswith("pubkey/"):
                    c.add_file("pubkey", name.removeprefix("pubkey/"), body)
            c.add_file("private", f"{host}.pem", keys[host].private_pem)
            c.start(load=False)
            parts.append(c)
            charons[host] = c
            out = c.swanctl("--load-all", "--noprompt")
            bad = [ln for ln in out.splitlines() + c.log_text().splitlines()
                   if re.search(r"ignoring|invalid|error|failed|unknown", ln, re.I)]
            assert not bad, f"{host}: swanctl --load-all:\n{out}\ncharon:\n{c.log_tail(40)}"
            assert "successfully loaded 2 connections" in out and "loaded private key" in out, out
            conns = c.swanctl("--list-conns")
            me, peer = keys[host], keys[other]
            mediation, mediated = _conn_block(conns, "medsrv"), _conn_block(conns, other)
            assert mediation.startswith("medsrv: IKEv2,") and mediated.startswith(f"{other}: IKEv2,"), conns
            assert CAROL in mediation and _ids(mediation) == [me.keyid, server_key.keyid], conns
            assert _ids(mediated) == [me.keyid, peer.keyid], conns
            assert re.search(rf"^\s+local:\s+{re.escape(LAN[host])}/32$", mediated, re.M), conns
            assert re.search(rf"^\s+remote:\s+{re.escape(LAN[other])}/32$", mediated, re.M), conns
            assert "dynamic" not in mediated, conns

        for host in ("bob", "alice"):
            charons[host].initiate(ike="medsrv", timeout=15)
        want = {me.identity for me in keys.values()}
        online = {p["identity"]: p["endpoint"] for p in server.wait_peers(want, 15) if p["identity"] in want}
        assert sorted(online.values()) == ["203.0.113.1[4500]", "203.0.113.2[4500]"], online

        charons["alice"].initiate(child="bob", wait=False)
        a = charons["alice"].wait_child("bob", timeout=30)
        b = charons["bob"].wait_child("alice", timeout=10)
        assert a["ike"]["remote-host"] == PUBLIC["bob"] and b["ike"]["remote-host"] == PUBLIC["alice"], (a, b)
        assert a["spi-in"] == b["spi-out"] and a["spi-out"] == b["spi-in"]
        assert a["local-ts"] == [f"{LAN['alice']}/32"] and a["remote-ts"] == [f"{LAN['bob']}/32"], a
        assert lab.ping("alice", LAN["bob"], source=LAN["alice"], count=3, interval=0.1)[1] == 3
        assert lab.ping("bob", LAN["alice"], source=LAN["bob"], count=3, interval=0.1)[1] == 3
    except BaseException:
        for p in parts:
            print(f"--- {p.host} {p.name} ---\n{p.log_tail(60)}")
        raise
    finally:
        for p in reversed(parts):
            p.stop()
        stop_sites(srv)


def _conn_block(listing: str, name: str) -> str:
    """One connection of ``swanctl --list-conns`` (its header line up to the next connection)."""
    m = re.search(rf"^{re.escape(name)}: .*?(?=^\S|\Z)", listing, re.M | re.S)
    assert m, f"connection {name} not loaded:\n{listing}"
    return m.group(0)


def _ids(block: str) -> list[str]:
    """The local and remote identities of a connection block, as hex key ids."""
    return [x.replace(":", "").lower() for x in re.findall(r"^\s+id: (?:keyid:#?)?([0-9a-fA-F:]+)$", block, re.M)]
