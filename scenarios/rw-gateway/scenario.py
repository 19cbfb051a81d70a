"""rw-gateway: the remote-access gateway of strongSwan's seed example, with our iked as moon.

One segment 192.0.2.0/24: moon 192.0.2.1 (our iked; its subnet 10.1.0.0/16, 10.1.0.1 on lo), road
warriors carol .100 and dave .200 (strongSwan charon, PSK) and erin .150 (our iked, PSK).

1. moon's configuration in SQL (strongSwan's schema), written by an operator through the SA manager
   (medmgr-sa behind lighttpd on moon): pool `rw` 10.3.0.0/24, the three PSKs, connection `rw`
   (moon @moon.strongswan.org, any road warrior, 10.1.0.0/16 === its virtual IP). iked picks the rows
   up while it runs. Each road warrior gets a virtual IP from the pool and pings 10.1.0.1 from it; the
   SA manager lists the IKE_SAs with identities and virtual IPs and the leases, and terminates a
   CHILD_SA and the IKE_SAs; each reconnects and gets its address back.
2. moon reads the seed's ipsec.conf and ipsec.secrets instead (moon with an RSA certificate,
   rightsourceip=10.3.0.0/16, carol and dave with a PSK; erin's PSK added as one line), erin reads the
   seed's road-warrior ipsec.conf (leftsourceip=%config) as carol's with erin's identity: the same
   checks, addresses from the in-memory pool in order.

erin's iked puts the virtual IP it is given on its TUN device while the IKE_SA is up (the route into the
tunnel names it as source, so erin pings without choosing one) and removes it when the IKE_SA goes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.creds import ca_and_host
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked
from scenarios.lab.netns import wait_for
from scenarios.lab.portal import Browser, PortalSite, stop_sites
from scenarios.lab.seed import seed_files as lab_seed_files
from scenarios.lab.seed import write_pair
from scenarios.lab.story import Story

TITLE = "remote-access gateway moon (ours; SQL config via the SA manager, then ipsec.conf), road warriors carol, dave (charon) and erin (ours) with virtual IPs"

ROOT = Path(__file__).resolve().parents[2]
MOON, MOON_NET = "192.0.2.1", "10.1.0.1"
RW = {"carol": "192.0.2.100", "dave": "192.0.2.200", "erin": "192.0.2.150"}
PSK = {"carol": "FpZAZqEN6Ti9sqt4ZP5EWcqX", "dave": "jVzONCF02ncsgiS1mIXeqhGN", "erin": "Kq7wUaE3rTz9pYb2nLc5"}
MOON_ID = "moon.strongswan.org"
OPERATOR, OP_PASSWORD = "op", "operator password 42"
ECHO_WAIT = 5.0  # seconds an echo reply is waited for (ends at the reply); a loaded machine delays some


def ident(name: str) -> str:
    return f"{name}@strongswan.org"


def build_lab() -> Lab:
    lab = Lab()
    try:
        lab.add_host("sw")
        ports = []
        for i, (host, addr) in enumerate([("moon", MOON), *RW.items()]):
            lab.add_host(host)
            lab.link("sw", f"p{i}", host, "eth0", None, f"{addr}/24")
            ports.append(f"p{i}")
        lab.bridge("sw", "br0", ports)
        lab.addr("moon", "lo", f"{MOON_NET}/32")
    except BaseException:
        lab.teardown()
        raise
    return lab


def pki() -> dict[str, Any]:
    """A CA and moon's certificate (SAN moon.strongswan.org), RSA 2048, as in the seed's example."""
    return ca_and_host(MOON_ID, org="strongSwan", ca_cn="strongSwan Root CA", host_basic_constraints=False)


def charon_conf(host: str, moon_auth: str) -> str:
    return f"""connections {{
  home {{
    local_addrs = {RW[host]}
    remote_addrs = {MOON}
    proposals = aes128gcm16-prfsha256-x25519
    vips = 0.0.0.0
    rekey_time = 0
    local {{
      auth = psk
      id = {ident(host)}
    }}
    remote {{
      auth = {moon_auth}
      id = {MOON_ID}
    }}
    children {{
      home {{
        remote_ts = 10.1.0.0/16
        esp_proposals = aes128gcm16
        rekey_time = 0
      }}
    }}
  }}
}}
secrets {{
  ike-1 {{
    id-1 = {ident(host)}
    {"id-2 = " + MOON_ID if moon_auth == "psk" else ""}
    secret = "{PSK[host]}"
  }}
}}
"""


def daemon_toml(addr: str, extra: str) -> str:
    """The [daemon] section of moon's and erin's iked (userspace ESP on TUN ipsec0), with `extra` keys."""
    return f"""[daemon]
listen = ["{addr}"]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
{extra}"""


def erin_toml(extra: str = "") -> str:
    head = daemon_toml(RW["erin"], extra)
    if extra:
        return head
    return head + f"""
[[secrets.ike]]
id = ["{ident('erin')}", "@{MOON_ID}"]
secret = "{PSK['erin']}"

[connections.home]
local_addrs = ["{RW['erin']}"]
remote_addrs = ["{MOON}"]
proposals = "aes128gcm16-prfsha256-x25519"
rekey_time = 0
vips = ["0.0.0.0"]
local = {{ auth = "psk", id = "{ident('erin')}" }}
remote = {{ auth = "psk", id = "@{MOON_ID}" }}
[connections.home.children.home]
local_ts = ["dynamic"]
remote_ts = ["10.1.0.0/16"]
esp_proposals = "aes128gcm16"
rekey_time = 0
"""


class RoadWarriors:
    """carol and dave (charon) and erin (our iked): connect, the virtual IP each got, ping moon's subnet."""

    def __init__(self, lab: Lab, charons: dict[str, Charon], erin: Iked, moon: Iked) -> None:
        self.lab, self.charons, self.erin, self.moon = lab, charons, erin, moon

    def connect(self, who: str) -> str:
        if who in self.charons:
            c = self.charons[who]
            c.initiate(child="home", ike="home", timeout=20)
            (sa,) = [x for x in c.list_sas() if x["name"] == "home"]
            (vip,) = sa["local-vips"]
            return str(vip)
        self.erin.up("home", timeout=20)
        (sa,) = [x for x in self.erin.list_sas() if x["name"] == "home"]
        (vip,) = sa["local-vips"]
        return str(vip)

    def ping(self, who: str, vip: str) -> tuple[int, str]:
        """The echo replies received of three, and where the missing ones went when one is missing.

        One echo request at a time, each reply waited for up to ECHO_WAIT s (ping ends at the reply):
        `ping -c 3` waits only twice its largest round trip so far (at least its interval) after its
        last request once a reply came (ping(8), -W), so a reply a loaded machine delayed by more than
        that counted as lost while both data planes had carried it."""
        before = self.drops(who)
        # erin's route into ipsec0 names her virtual IP as its source: her ping chooses none
        source = None if who == "erin" else vip
        runs = [self.lab.ping(who, MOON_NET, source=source, count=1, wait=ECHO_WAIT) for _ in range(3)]
        received = sum(r for _, r, _ in runs)
        if received == 3:
            return received, ""
        return received, self.evidence(who, vip, "\n".join(out for _, _, out in runs), before)

    def drops(self, who: str) -> dict[str, dict[str, int]]:
        """The drops our data planes counted so far (moon's, and erin's own when she pings), by daemon."""
        ours = [("moon", self.moon)] + ([("erin", self.erin)] if who == "erin" else [])
        return {name: {k: v for k, v in d.ctl({"cmd": "stats"}).get("stats", {}).get("dataplane", {}).items()
                       if k.startswith("drop")} for name, d in ours}

    def evidence(self, who: str, vip: str, out: str, before: dict[str, dict[str, int]]) -> str:
        """ping's summaries, the route each end takes to the other's inner address, the drops our data
        planes counted while `who` pinged and the packets the CHILD_SA carried at each end (the pings
        are its first traffic): the state right after a lost echo, for its FAIL line. The drops are
        those since `before`: the totals also count the TUN device's own IPv6 router solicitations
        (0, 4, 12, 28 ... s after it came up), which meet no policy."""
        lines = [line for line in out.splitlines() if "transmitted" in line or "icmp_seq" in line]
        for host, dst in (("moon", vip), (who, MOON_NET)):
            res = self.lab.run(host, ["ip", "route", "get", dst], check=False)
            lines.append(f"{host}: {' '.join((res.stdout + res.stderr).split())}")
        for name, now in self.drops(who).items():
            grew = ", ".join(f"{k} +{v - before[name].get(k, 0)}" for k, v in now.items() if v > before[name].get(k, 0))
            lines.append(f"{name}'s data plane dropped while {who} pinged: {grew or 'nothing'}")
        moon_side = [s for s in self.moon.list_sas() if s["remote-id"] == ident(who)]
        own = self.charons[who].list_sas() if who in self.charons else self.erin.list_sas()
        lines.append(f"moon's CHILD_SA with {who}: {child_counters(moon_side)}")
        lines.append(f"{who}'s CHILD_SA: {child_counters(own)}")
        return "\n" + "\n".join(f"             {line}" for line in lines)

    def erin_vips(self) -> str:
        """The addresses on erin's TUN device (ipsec0)."""
        return self.lab.run("erin", ["ip", "-o", "addr", "show", "dev", "ipsec0"], check=False).stdout

    def gone(self, who: str) -> bool:
        if who in self.charons:
            return not self.charons[who].list_sas()
        return not self.erin.list_sas()

    def wait_gone(self, who: str, timeout: float = 10.0) -> bool:
        """Until `who` has no SA left, checked again at each line its daemon logs."""
        daemon = self.charons.get(who) or self.erin
        return wait_daemons(lambda: self.gone(who), timeout, [daemon], what=f"{who} down")


def child_counters(sas: list[dict[str, Any]]) -> str:
    """The packets each CHILD_SA of `sas` carried in and out (and its drops), from `list` (ours: a
    list of CHILD_SAs) or vici's list-sas (charon: a dict of them)."""
    children = [c for s in sas for c in (s["child-sas"].values() if isinstance(s["child-sas"], dict)
                                         else s["child-sas"])]
    return "; ".join(f"packets in {c.get('packets-in')} out {c.get('packets-out')}"
                     + (f" drops {c['drops']}" if c.get("drops") else "") for c in children) or "none"


def connect_all(story: Story, rws: RoadWarriors, pool: str, before: dict[str, str] | None = None) -> dict[str, str]:
    vips: dict[str, str] = {}
    for who in RW:
        vips[who] = rws.connect(who)
        if who == "erin":
            story.check(f" {vips[who]}/32 " in rws.erin_vips(),
                        f"erin's iked put her virtual IP {vips[who]} on its TUN device ipsec0")
        received, evidence = rws.ping(who, vips[who])
        story.check(vips[who].startswith(pool) and received == 3,
                    f"{who} got {vips[who]} from {pool}x and pinged {MOON_NET} from it ({received}/3){evidence}")
        if before is not None:
            story.check(vips[who] == before[who], f"{who} got the same address back ({before[who]})")
    story.check(len(set(vips.values())) == 3, "three different addresses")
    return vips


def vip_removed_check(story: Story, rws: RoadWarriors, vip: str) -> None:
    try:
        # polled: an address leaving a device is kernel state, announced to nothing the lab reads
        wait_for(lambda: f" {vip}/32 " not in rws.erin_vips(), 10, what=f"{vip} off erin's ipsec0")
        gone = True
    except TimeoutError:
        gone = False
    story.check(gone, f"erin's virtual IP {vip} left ipsec0 with her IKE_SA")


def sa_manager_checks(story: Story, web: Browser, moon: Iked, vips: dict[str, str], db_pool: bool) -> None:
    """The SA manager lists the three IKE_SAs with identities and virtual IPs, the leases, and
    terminates a CHILD_SA and then every IKE_SA."""
    page = web.get("sa/list")
    text = page.text()
    story.check(page.status == 200 and all(ident(w) in text and vips[w] in text for w in RW),
                "the SA manager lists the three IKE_SAs with their identities and virtual IPs")
    story.check("AES_GCM_16_128" in text and " B / " in text, "with their algorithms and byte counters")
    want = [f"rw {vips[w]} {ident(w)} online" for w in RW] if db_pool else ["10.3.0.0/16 65534 3"]
    try:  # polled: iked writes the leases behind, each second (docs/gateway.md, "Pools"); a web page
        wait_for(lambda: all(x in web.get("pool/list").text() for x in want), 10, what="the leases on the Pools page")
        shown = True
    except TimeoutError:
        shown = False
    story.check(shown, "the Pools page shows pool rw's three leases online, each with its identity" if db_pool else
                "the Pools page shows the in-memory pool 10.3.0.0/16 with 3 addresses online")
    carol = next(s for s in moon.list_sas() if s["remote-id"] == ident("carol"))
    child = carol["child-sas"][0]["uniqueid"]
    page = web.submit("sa/list", "sa/terminate", {"ike": str(carol["uniqueid"]), "child": str(child)})
    story.check(f"Terminated rw{{{child}}}." in page.flashes(), f"terminate carol's CHILD_SA from the SA manager: {page.flashes()}")
    moon.wait_state(lambda: not rws_child(moon, carol["uniqueid"]), 10, what="carol's CHILD_SA gone")
    story.check(any(s["uniqueid"] == carol["uniqueid"] for s in moon.list_sas()), "carol's CHILD_SA is gone, her IKE_SA stays")
    for s in moon.list_sas():
        page = web.submit("sa/list", "sa/terminate", {"ike": str(s["uniqueid"])})
        story.say(" ".join(page.flashes()))
    moon.wait_sas(lambda sas: not sas, 15)
    story.check("No IKE_SAs" in web.get("sa/list").text(), "after terminating the three IKE_SAs the SA list is empty")


def rws_child(moon: Iked, uid: int) -> bool:
    return any(s["uniqueid"] == uid and s["child-sas"] for s in moon.list_sas())


def operator_setup(story: Story, lab: Lab, site: PortalSite) -> Browser:
    res = subprocess.run([sys.executable, "-m", "medmgr_web.sa_manager", "--add-operator", OPERATOR, "--db", site.db_url],
                         input=OP_PASSWORD + "\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    story.check(res.returncode == 0, f"medmgr-sa --add-operator: {res.stdout.strip()} {res.stderr.strip()}")
    web = Browser(lab, "moon", site.url)
    page = web.submit("user/login", "user/login", {"login": OPERATOR, "password": OP_PASSWORD})
    story.check("Security associations" in page.text(), "the operator logs in to the SA manager")
    return web


def configure_sql(story: Story, web: Browser) -> None:
    page = web.submit("pool/list", "pool/add", {"name": "rw", "range": "10.3.0.0/24", "end": "", "timeout": "1h"})
    story.say(" ".join(page.flashes()))
    for who in RW:
        page = web.submit("secret/list", "secret/add", {"kind": "1", "id1": f"@{MOON_ID}", "id2": ident(who),
                                                        "secret": PSK[who]})
        story.say(" ".join(page.flashes()))
    page = web.submit("conn/add", "conn/add", {
        "name": "rw", "local_addrs": MOON, "remote_addrs": "%any", "local_id": f"@{MOON_ID}", "remote_id": "%any",
        "auth": "psk", "pool": "rw", "local_ts": "10.1.0.0/16", "remote_ts": "dynamic",
        "ike_proposal": "aes128gcm16-prfsha256-x25519", "esp_proposal": "aes128gcm16", "rekeytime": "0",
        "dpd_delay": "0"})
    story.check(any("Connection rw saved" in f for f in page.flashes()), f"connection rw saved: {page.flashes()}")


def run(story: Story) -> None:
    story.step("topology: moon 192.0.2.1 (10.1.0.0/16) | carol .100, dave .200 (charon), erin .150 (ours)")
    lab = story.lab(build_lab())
    moon_dir = lab.host_dir("moon") / "iked"
    moon_dir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{moon_dir / 'ipsec.db'}"
    moon = Iked(lab, "moon", daemon_toml(MOON, f'config_db = "{db_url}"\n'))
    story.step("1. moon from SQL: the SA manager (lighttpd + medmgr-sa) creates the tables, then iked starts")
    site = PortalSite(lab, "moon", "sa_manager", mount="/sa",
                      args=["--control", moon.ctl_path, "--config-db", db_url]).start()
    charons: dict[str, Charon] = {}
    erin: Iked | None = None
    try:
        moon.start()
        web = operator_setup(story, lab, site)
        configure_sql(story, web)
        moon.wait_state(lambda: any(c["name"] == "rw" for c in moon.ctl({"cmd": "conns"})["conns"]), 10,
                        what="iked loading connection rw from the database")
        moon.wait_log("virtual IP pool 'rw' loaded")
        story.check(True, "iked loaded connection rw and pool rw from the database without a restart")
        for who in ("carol", "dave"):
            charons[who] = Charon(lab, who, conf=charon_conf(who, "psk")).start()
        erin = Iked(lab, "erin", erin_toml(), name="iked").start()
        rws = RoadWarriors(lab, charons, erin, moon)
        story.step("carol, dave and erin connect and ping 10.1.0.1 from their virtual IPs")
        vips = connect_all(story, rws, "10.3.0.")
        story.step("the SA manager shows them and terminates them")
        sa_manager_checks(story, web, moon, vips, db_pool=True)
        story.check(all(rws.wait_gone(w) for w in RW),
                    "the road warriors saw the DELETEs")
        vip_removed_check(story, rws, vips["erin"])
        story.step("they reconnect")
        connect_all(story, rws, "10.3.0.", before=vips)
        for c in charons.values():
            c.stop()
        erin.stop()
        moon.stop()

        story.step("2. moon reads the seed's ipsec.conf / ipsec.secrets (RSA certificate, rightsourceip=10.3.0.0/16)")
        creds = pki()
        conf, secrets = seed_files(lab.host_dir("moon") / "seed", "moon", creds)
        with secrets.open("a") as f:
            f.write(f'{ident("erin")} : PSK "{PSK["erin"]}"\n')
        moon = Iked(lab, "moon", daemon_toml(MOON, f'ipsec_conf = "{conf}"\nipsec_secrets = "{secrets}"\n'),
                    name="iked-conf").start()
        stop_sites(site)
        site = PortalSite(lab, "moon", "sa_manager", mount="/sa", name="sa_manager_conf",
                          args=["--control", moon.ctl_path]).start()
        web = operator_setup(story, lab, site)
        ca_pem = creds["ca"].public_bytes(serialization.Encoding.PEM)
        for who in ("carol", "dave"):
            charons[who] = Charon(lab, who, name="charon-conf", conf=charon_conf(who, "pubkey"))
            charons[who].add_file("x509ca", "caCert.pem", ca_pem)
            charons[who].start()
        econf, esecrets = seed_files(lab.host_dir("erin") / "seed", "carol", creds, as_erin=True)
        erin = Iked(lab, "erin", erin_toml(f'ipsec_conf = "{econf}"\nipsec_secrets = "{esecrets}"\n'),
                    name="iked-conf").start()
        rws = RoadWarriors(lab, charons, erin, moon)
        vips = connect_all(story, rws, "10.3.0.")
        sa_manager_checks(story, web, moon, vips, db_pool=False)
        rws.wait_gone("erin")
        vip_removed_check(story, rws, vips["erin"])
        story.step("they reconnect, one after the other")
        connect_all(story, rws, "10.3.0.", before=vips)
    finally:
        stop_sites(site)
        for c in charons.values():
            c.stop()
        if erin is not None:
            erin.stop()
        moon.stop()


def seed_files(d: Path, which: str, creds: dict[str, Any], as_erin: bool = False) -> tuple[Path, Path]:
    """The seed's files of `which` (moon, or carol's as a template for erin) with absolute paths to
    the certificates and the key."""
    conf, secrets = lab_seed_files(d, which, creds, MOON)
    if as_erin:  # carol's road-warrior files with erin's identity and PSK
        text = conf.read_text().replace("left=%defaultroute", f"left={RW['erin']}")
        text = text.replace(ident("carol"), ident("erin")).replace("auto=start", "auto=add")  # we bring it up
        return write_pair(d, text, f'{ident("erin")} : PSK "{PSK["erin"]}"\n')
    return conf, secrets
