"""ipsec.conf / ipsec.secrets against Debian's strongswan-starter.

1. The starter (the `ipsec` tools' parser) reads the seed's moon files and hands the conns to charon
   over stroke; the connections charon then lists (vici list-conns) agree with what our loader makes of
   the same files: names, addresses, authentication per side, identities, certificates, subnets,
   virtual IP pools and requests, lifetimes, start action.
2. The seed's example live: road warrior carol is a charon started by the starter from carol's
   ipsec.conf (auto=start, leftsourceip=%config, PSK), moon is our iked reading moon's ipsec.conf
   (RSA certificate, rightsourceip=10.3.0.0/16): carol gets 10.3.0.1 and pings moon's subnet from it.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core_ike.daemon.control import conn_info
from gateway.daemon import dn_text
from gateway.ipsec_cmd import conn_lines
from gateway.ipsec_cmd import main as ipsec_cmd
from gateway.ipsecconf import load_files
from scenarios.lab import Lab
from scenarios.lab.charon import PLUGINS, Charon, decode
from scenarios.lab.creds import ca_and_host
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked
from scenarios.lab.seed import seed_files, write_pair
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan's starter and charon in network namespaces"),
]

STARTER = "/usr/lib/ipsec/starter"
A, B = "192.0.2.1", "192.0.2.2"  # moon (alice), carol (bob)
MOON_NET = "10.1.0.1"


class Starter(Charon):
    """charon started by strongswan-starter from an ipsec.conf (the stroke plugin loads the conns and
    ipsec.secrets); vici stays on for listing and the SAs."""

    def __init__(self, lab: Lab, host: str, conf: Path, secrets: Path, name: str = "starter") -> None:
        super().__init__(lab, host, name=name, plugins=PLUGINS + " stroke attr", log_levels={"cfg": 2},
                         settings=f"plugins {{\n  stroke {{\n    secrets_file = {secrets}\n  }}\n}}")
        self.ipsec_conf = conf

    def daemon_command(self) -> str:
        return f"{STARTER} --nofork --conf {self.ipsec_conf}"

    def start(self, timeout: float = 15.0, load: bool = False) -> Starter:
        """The starter loads the conns itself (over stroke): nothing to load over vici."""
        super().start(timeout, load)
        return self

    def list_conns(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with contextlib.closing(self.vici()) as s:
            for entry in s.list_conns({}):
                out.update(decode(entry))
        return out

    def statusall(self) -> str:
        """`ipsec statusall` over the stroke socket in this instance's /run."""
        res = self.lab.run(self.host, ["sh", "-c", f"mount --bind {self.run_dir} /run && exec ipsec statusall"],
                           check=False, env=self.env)
        return str(res.stdout)

    def stdout(self) -> str:
        p = self.dir / "stdout.log"
        return p.read_text(errors="replace") if p.exists() else ""


def _files(lab: Lab, host: str, which: str, pki: dict[str, Any]) -> tuple[Path, Path]:
    """The seed's files of `which` (moon or carol) with absolute paths to the certificates and key
    (the starter looks for relative ones under /etc/ipsec.d)."""
    return seed_files(lab.host_dir(host) / f"seed-{which}", which, pki, A)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    return ca_and_host("moon.strongswan.org")


def _auth_class(kind: str) -> str:
    return {"psk": "pre-shared key", "pubkey": "public key"}[kind]


def test_starter_and_our_loader_agree_on_moon(two_hosts_per_module: Lab, pki: dict[str, Any]) -> None:
    lab = two_hosts_per_module
    conf, secrets = _files(lab, "bob", "moon", pki)
    starter = Starter(lab, "bob", conf, secrets, name="starter-moon")
    try:
        starter.start()
        theirs = wait_daemons(lambda: starter.list_conns() or None, 10, [starter], what="starter's conns in charon")
        status = starter.statusall()
        log = starter.log_text()
    finally:
        starter.stop()
    ours, creds = load_files(conf, secrets)
    assert sorted(theirs) == sorted(c.name for c in ours) == ["rw"]
    for c in ours:
        t = theirs[c.name]
        assert t["local_addrs"] == c.local_addrs and t["remote_addrs"] == c.remote_addrs
        assert t["version"] == "IKEv2"
        assert t["local-1"]["class"] == _auth_class(c.local.auth)
        assert t["remote-1"]["class"] == _auth_class(c.remote.auth)
        assert t["local-1"]["id"] == str(c.local.id)
        assert t["remote-1"].get("id", "%any") == str(c.remote.id)
        assert len(t["local-1"].get("certs", [])) == len(c.local.certs) == 1
        # the pools charon made of rightsourceip= (ipsec statusall: "NAME: size/online/offline")
        pools = re.findall(r"^  (\S+): (\d+)/\d+/\d+$", status.split("Virtual IP pools")[1].split("Listening")[0], re.M)
        assert [p for p, _ in pools] == c.pools == ["10.3.0.0/16"] and pools[0][1] == "65534"
        # ipsec.conf's reauth=yes (its default) makes charon reauthenticate where we rekey, at the same time
        assert int(t["reauth_time"]) == int(c.rekey_time) == 57 * 60
        assert t["unique"] == {"replace": "UNIQUE_REPLACE", "no": "UNIQUE_NO", "keep": "UNIQUE_KEEP"}[c.unique]
        (child,) = c.children
        tc = t["children"][child.name]
        assert tc["mode"] == "TUNNEL"
        assert tc["local-ts"] == child.local_ts and tc["remote-ts"] == child.remote_ts
        assert int(tc["rekey_time"]) == int(child.rekey_time)
        assert f"{c.name}:   child:  {' '.join(child.local_ts)} === {' '.join(child.remote_ts)} TUNNEL" in status
    assert len(creds.private_keys) == 1 and len(creds.shared) == 2
    # the proposals as stroke handed them to charon (its CFG log), which accepted every algorithm in them
    (rw,) = ours
    assert re.search(r"\[CFG\]   ike=(\S+)", log).group(1).rstrip("!") == rw.proposals  # type: ignore[union-attr]
    assert re.search(r"\[CFG\]   esp=(\S+)", log).group(1).rstrip("!") == rw.children[0].esp_proposals  # type: ignore[union-attr]
    assert "invalid" not in log and "skipped" not in log, log
    # ikeme-ipsec statusall prints our connections exactly as `ipsec statusall` printed the starter's
    block = status.split("Connections:\n")[1].split("Security Associations")[0].rstrip("\n").split("\n")
    assert [line for c in ours for line in conn_lines(conn_info(c), {"certs": [dn_text(x.subject) for x in c.local.certs]})] \
        == block


@pytest.fixture(scope="module")
def seed(two_hosts_per_module: Lab, pki: dict[str, Any]) -> Iterator[tuple[Iked, Starter]]:
    lab = two_hosts_per_module
    lab.addr("alice", "lo", f"{MOON_NET}/32")
    moon_conf, moon_secrets = _files(lab, "alice", "moon", pki)
    iked = Iked(lab, "alice", f"""[daemon]
listen = ["{A}"]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
ipsec_conf = "{moon_conf}"
ipsec_secrets = "{moon_secrets}"
""")
    conf, secrets = _files(lab, "bob", "carol", pki)
    carol = Starter(lab, "bob", conf, secrets, name="starter-carol")
    try:
        iked.start()
        carol.start()
        yield iked, carol
    finally:
        carol.stop()
        iked.stop()


def test_carol_gets_a_virtual_ip_from_moon_reading_ipsec_conf(seed: tuple[Iked, Starter], two_hosts_per_module: Lab,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    iked, carol = seed
    lab = two_hosts_per_module
    child = carol.wait_child("home", timeout=30)  # auto=start
    ike = child["ike"]
    assert ike["state"] == "ESTABLISHED" and ike["remote-id"] == "moon.strongswan.org"
    assert ike["local-vips"] == ["10.3.0.1"]
    assert child["local-ts"] == ["10.3.0.1/32"] and child["remote-ts"] == ["10.1.0.0/16"]
    (ours,) = iked.wait_sas(lambda s: len(s) == 1 and s[0]["child-sas"])
    assert ours["name"] == "rw" and ours["remote-id"] == "carol@strongswan.org"
    assert ours["child-sas"][0]["spi-in"] == child["spi-out"]
    sent, received, out = lab.ping("bob", MOON_NET, source="10.3.0.1", count=3, interval=0.05)
    assert (sent, received) == (3, 3), out + "\n" + iked.log_tail()
    # the ipsec commands on moon
    assert ipsec_cmd(["-s", iked.ctl_path, "statusall"]) == 0
    out = capsys.readouterr().out
    assert "  10.3.0.0/16: 65534/1/0\n" in out
    assert f"          rw[{ours['uniqueid']}]: ESTABLISHED" in out
    assert f"{A}[moon.strongswan.org]...{B}[carol@strongswan.org]" in out
    assert f"_i {child['spi-in']}_o" in out and "   10.1.0.0/16 === 10.3.0.1/32" in out
    assert ipsec_cmd(["-s", iked.ctl_path, "down", "rw"]) == 0
    iked.wait_sas(lambda s: not s)
    assert ipsec_cmd(["-s", iked.ctl_path, "status"]) == 0
    assert "Security Associations (0 up, 0 connecting):" in capsys.readouterr().out
    assert ipsec_cmd(["-s", iked.ctl_path, "up", "nosuch"]) == 1
    assert "nosuch" in capsys.readouterr().err


RICH = """
config setup
    uniqueids=keep

conn %default
    keyexchange=ikev2
    authby=secret
    ikelifetime=2h
    lifetime=30m
    margintime=5m
    keyingtries=%forever
    dpdaction=restart
    dpddelay=45s

conn base
    left=192.0.2.2
    leftid=@gw.example.org
    leftsubnet=10.1.0.0/24,10.1.1.0/24
    esp=aes256gcm16
    auto=ignore

conn net-a
    also=base
    right=198.51.100.7
    rightid=site-a@example.org
    rightsubnet=10.7.0.0/16
    rightprotoport=tcp/443
    auto=add

conn net-b
    also=base
    right=%any
    rightid=@site-b.example.org
    rightsourceip=10.9.0.0/24
    ike=aes256-sha256-modp3072!
    auto=add

conn roam
    left=%any
    leftsourceip=%config
    leftid=roamer@example.org
    right=198.51.100.9
    rightid=@gw2.example.org
    rightsubnet=0.0.0.0/0
    auto=add
"""


def _ports(text: str) -> str:
    """charon names well-known ports (`[tcp/https]`), we give the number (`[tcp/443]`)."""
    return re.sub(r"\[(\w+)/([a-z][\w-]*)\]", lambda mt: f"[{mt[1]}/{socket.getservbyname(mt[2], mt[1])}]", text)


def test_starter_and_our_loader_agree_on_also_default_and_more(two_hosts_per_module: Lab) -> None:
    """%default, also= chains, several subnets, protoport, keyingtries=%forever, dpd, pools, %config and
    uniqueids: the same conns, side by side with the starter."""
    lab = two_hosts_per_module
    d = lab.host_dir("bob") / "rich"
    d.mkdir(parents=True, exist_ok=True)
    conf, secrets = write_pair(d, RICH, ': PSK "rich-secret-0123456789"\n')
    starter = Starter(lab, "bob", conf, secrets, name="starter-rich")
    try:
        starter.start()
        theirs = wait_daemons(lambda: ((c := starter.list_conns()) and len(c) == 3 and c) or None, 10, [starter],
                              what="the starter's three conns in charon")
        status = starter.statusall()
    finally:
        starter.stop()
    ours, _ = load_files(conf, secrets, local_addresses=[B])
    assert sorted(theirs) == sorted(c.name for c in ours) == ["net-a", "net-b", "roam"]
    unique = {"replace": "UNIQUE_REPLACE", "no": "UNIQUE_NO", "keep": "UNIQUE_KEEP"}
    for c in ours:
        t = theirs[c.name]
        assert t["local_addrs"] == c.local_addrs and t["remote_addrs"] == c.remote_addrs, c.name
        assert t["local-1"]["class"] == _auth_class(c.local.auth) and t["remote-1"]["class"] == _auth_class(c.remote.auth)
        assert t["local-1"].get("id", "%any") == str(c.local.id) and t["remote-1"].get("id", "%any") == str(c.remote.id)
        assert t["unique"] == unique[c.unique] == "UNIQUE_KEEP"
        assert int(t["reauth_time"]) == int(c.rekey_time) == 115 * 60
        assert int(t.get("dpd_delay", 0)) == int(c.dpd_delay) == 45, t
        (child,) = c.children
        tc = t["children"][child.name]
        assert tc["local-ts"] == child.local_ts and [_ports(x) for x in tc["remote-ts"]] == child.remote_ts, tc
        assert int(tc["rekey_time"]) == int(child.rekey_time) == 25 * 60
        assert c.keyingtries == 0
    pools = re.findall(r"^  (\S+): (\d+)/\d+/\d+$", status.split("Virtual IP pools")[1].split("Listening")[0], re.M)
    assert [p for p, _ in pools] == [p for c in ours for p in c.pools] == ["10.9.0.0/24"]
    by_name = {c.name: c for c in ours}
    assert by_name["roam"].vips == ["0.0.0.0"] and by_name["net-a"].children[0].esp_proposals == "aes256gcm16"
    block = status.split("Connections:\n")[1].split("Security Associations")[0].rstrip("\n").split("\n")
    # charon adds the CHILD_SA's dpdaction; ours has none to show (docs/gateway.md: a dead peer's SAs go)
    assert [line for c in ours for line in conn_lines(conn_info(c), {})] == \
        [_ports(re.sub(r", dpdaction=\w+$", "", x)) for x in block]
