"""cluster: three of our mediation servers as one service on Redis; alice and bob behind two NATs,
registered at different servers, get a direct tunnel; server 1 is killed and alice registers at the
next server of her list and gets her tunnel again. Second cell: both NATs symmetric (fully random
ports), alice at ms1 and bob at ms2 with the data relay on: the tunnel goes through ms1's relay (the
requester's server relays, docs/architecture.md "Cluster"). Third cell: natA port-restricted, natB
symmetric with random ports, alice at ms1 and bob at ms2, both measuring their NAT (RFC 5780, each
server with a second STUN address): the forwarded ME_CONNECT and its answer carry each side's NAT
behaviour, the two clients probe many ports (docs/protocol.md §11.17) and the tunnel goes direct.

Topology (scenarios/lab/topologies.py nat_lab plus three hosts on the internet bridge)::

    alice 10.1.0.2 -- natA 203.0.113.1 --+-- ms1 203.0.113.10 (carol)
    bob   10.2.0.2 -- natB 203.0.113.2 --+-- ms2 203.0.113.12, ms3 203.0.113.13
                                          +-- eng 203.0.113.30 (redis-server)
"""

from __future__ import annotations

import time

from scenarios.lab import nat_lab
from scenarios.lab.charon import Charon
from scenarios.lab.events import wait_daemons, wait_files
from scenarios.lab.iked import Iked
from scenarios.lab.mediation import LAN, PSK, client_toml, mediated_sas, ping_both, show_log
from scenarios.lab.medsetup import PeerSpec, peer_conf
from scenarios.lab.natkinds import KINDS
from scenarios.lab.natlab import CAROL_ALT, wait_nat
from scenarios.lab.netns import Lab, read_text
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL

TITLE = "three mediation servers on Redis: alice and bob at different servers, then server 1 dies"
SERVERS = {"ms1": CAROL, "ms2": "203.0.113.12", "ms3": "203.0.113.13"}
ENGINE = "203.0.113.30"
STUN_ALT = {"ms1": CAROL_ALT, "ms2": "203.0.113.14"}  # RFC 5780 second addresses (third cell)
HOSTS = {"ms1": "carol", "ms2": "ms2", "ms3": "ms3"}
# strongSwan peers on the internet, each configured with one server; inner addresses for their
# CHILD_SA (kernel-libipsec does not install one whose selectors are the IKE peers' own addresses)
CHARONS = {"dave": ("203.0.113.21", "10.4.0.1", "ms1"), "erin": ("203.0.113.22", "10.5.0.1", "ms3")}
CHARON_PSK = {c: f"{c}-medsrv-secret-0123456789" for c in CHARONS}


RELAY_PORTS = (50000, 50099)
RELAY = f'relay = true\nrelay_ports = "{RELAY_PORTS[0]}-{RELAY_PORTS[1]}"\nrelay_idle_timeout = 60\n'


def server_toml(name: str, relay: bool = False, stun: bool = False) -> str:
    addr = SERVERS[name]
    secrets = "".join(f'[[secrets.ike]]\nid = ["carol@med", "{p}@med"]\nsecret = "{psk}"\n'
                      for p, psk in {**PSK, **CHARON_PSK}.items() if p != "venus")
    return f"""[daemon]
listen = ["{addr}"]
control = "@CTL@"
dataplane = "none"

[mediation]
cluster_engine = "redis://{ENGINE}:6379/0"
cluster_name = "{name}"
{f'stun = true{chr(10)}stun_alt_address = "{STUN_ALT[name]}"' if stun else "stun = false"}
{RELAY if relay else "relay = false"}

{secrets}
[connections.medsrv]
local_addrs = ["{addr}"]
mediation = true
local = {{ auth = "psk", id = "carol@med" }}
remote = {{ auth = "psk", id = "%any" }}
"""


def _add_public_host(lab: Lab, host: str, addr: str, port: str) -> None:
    lab.add_host(host)
    lab.link(host, "eth0", "inet", port, f"{addr}/24")
    lab.run("inet", ["ip", "link", "set", port, "master", "br0"])


def _client(lab: Lab, me: str, other: str, servers: list[str], extra: str = "", discovery: bool = False) -> Iked:
    addrs = ", ".join(f'"{SERVERS[s]}"' for s in servers)
    # the mediation connection's liveness settings are a cluster client's defaults (failover.py)
    toml = client_toml(me, [other], client=f"servers = [{addrs}]\nnat_discovery = {str(discovery).lower()}\n"
                       "port_mapping = false\n" + extra)
    toml = toml.replace(f'remote_addrs = ["{CAROL}"]', f"remote_addrs = [{addrs}]")
    return Iked(lab, me, toml, name="medcli", module="mediation_client").start()


def _where(servers: dict[str, Iked], identity: str) -> list[str]:
    out = []
    for name, srv in servers.items():
        if srv.proc is not None and any(p["identity"] == identity for p in srv.status()["peers"]):
            out.append(name)
    return out


def _cluster_lab(story: Story, nat: str, names: list[str], relay: bool = False, nat_b: str | None = None,
                 stun: bool = False) -> tuple[Lab, dict[str, Iked]]:
    """The NAT lab with `nat` on natA (and natB unless `nat_b`), the servers `names` (ms1 is carol) and
    Redis on the internet; `stun`: the servers answer STUN, with their second address (STUN_ALT)."""
    assert nat in KINDS and (nat_b or nat) in KINDS
    lab = story.lab(nat_lab(nat_a=nat, nat_b=nat_b or nat))  # type: ignore[arg-type]
    for i, n in enumerate(names):
        if n != "ms1":
            _add_public_host(lab, n, SERVERS[n], f"pM{i}")
        if stun:
            lab.addr(HOSTS[n], "eth0", f"{STUN_ALT[n]}/24")
    _add_public_host(lab, "eng", ENGINE, "pE")
    story.step(f"start redis-server on eng, our mediation server on {', '.join(names)}"
               + (f" (data relay on, ports {RELAY_PORTS[0]}-{RELAY_PORTS[1]})" if relay else ""))
    redis_log = lab.host_dir("eng") / "redis.log"
    redis = lab.popen("eng", ["redis-server", "--bind", ENGINE, "--port", "6379", "--save", "", "--appendonly", "no",
                      "--protected-mode", "no", "--dir", str(lab.host_dir("eng"))], redis_log)
    wait_files(lambda: "Ready to accept connections" in read_text(redis_log), 15, [redis_log], what="redis-server ready",
               procs=[redis])
    servers = {n: Iked(lab, HOSTS[n], server_toml(n, relay, stun), name=f"medsrv-{n}",
                       module="mediation_server").start()
               for n in names}
    for srv in servers.values():
        srv.wait_log("cluster: connected", 15)
    return lab, servers


def run(story: Story) -> None:
    _direct_and_failover(story)
    _relayed(story)
    _probed(story)


def _direct_and_failover(story: Story) -> None:
    story.step("topology: alice | natA -- internet -- natB | bob; ms1 (carol), ms2, ms3 and Redis on the internet")
    lab, servers = _cluster_lab(story, "eim", list(SERVERS))

    story.step("alice registers at ms1 (her list: ms1, ms2), bob at ms2")
    bob = _client(lab, "bob", "alice", ["ms2"])
    alice = _client(lab, "alice", "bob", ["ms1", "ms2"])
    servers["ms1"].wait_peers({"alice@med"}, 15)
    servers["ms2"].wait_peers({"bob@med"}, 15)
    wait_daemons(lambda: _where(servers, "alice@med") == ["ms1"] and _where(servers, "bob@med") == ["ms2"], 10,
                 servers.values(), what="one registration each")
    story.check(True, "alice at ms1 only, bob at ms2 only")

    story.step("alice: up bob (ME_CONNECT ms1 -> Redis -> ms2 -> bob, the answer back the same way)")
    r = alice.up("bob", timeout=30)
    story.say(f"mediated connection up in {r['elapsed_ms']} ms, peer at {r['remote'][0]}[{r['remote'][1]}]")
    show_log(story, servers["ms1"].log_text(), ("forwarding ME_CONNECT",), who="ms1")
    show_log(story, servers["ms2"].log_text(), ("relaying ME_CONNECT",), who="ms2")
    ma, mb = mediated_sas(alice, bob, "bob", "alice")
    a2b, b2a = ping_both(lab, "alice", "bob", LAN)
    story.check(ma["remote-host"] == "203.0.113.2" and mb["remote-host"] == "203.0.113.1",
                "the mediated SA runs between the two NATs' public addresses (not through a server)")
    story.check(a2b == 3 and b2a == 3, f"ping alice->bob {a2b}/3, bob->alice {b2a}/3")

    story.step("strongSwan: charon dave (configured with ms1) and charon erin (with ms3) get mediated")
    specs = {c: PeerSpec(c, f"{c}@med", CHARON_PSK[c], f"{c}@p2p",
                         {"net": (f"{inner}/32", f"{CHARONS['erin' if c == 'dave' else 'dave'][1]}/32")})
             for c, (_, inner, _) in CHARONS.items()}
    charons = {}
    for i, (c, (addr, inner, srv)) in enumerate(CHARONS.items()):
        _add_public_host(lab, c, addr, f"pC{i}")
        lab.run(c, ["ip", "addr", "add", f"{inner}/32", "dev", "lo"])
        other = specs["erin" if c == "dave" else "dave"]
        charons[c] = Charon(lab, c, conf=peer_conf(specs[c], other, "dave-erin-p2p-secret-0123456789",
                                                   server_addr=SERVERS[srv])).start()
    for c in ("erin", "dave"):
        charons[c].initiate(ike="medsrv", timeout=15)
    servers["ms1"].wait_peers({"dave@med"}, 15)
    servers["ms3"].wait_peers({"erin@med"}, 15)
    charons["dave"].initiate(child="net", wait=False)
    cd = charons["dave"].wait_child("net", timeout=30)
    ce = charons["erin"].wait_child("net", timeout=30)
    show_log(story, servers["ms1"].log_text(), ("from 'dave@med'",), who="ms1")
    show_log(story, servers["ms3"].log_text(), ("to 'erin@med'", "from 'erin@med'"), who="ms3")
    story.check(cd["spi-in"] == ce["spi-out"] and cd["spi-out"] == ce["spi-in"],
                "dave's and erin's CHILD_SA agree on the SPIs (mediated across ms1 and ms3)")
    p2p = [sa for sa in charons["dave"].list_sas() if sa["name"] == "p2p"]
    story.check(bool(p2p) and p2p[0].get("remote-host") == CHARONS["erin"][0],
                f"dave's mediated IKE_SA runs to erin at {CHARONS['erin'][0]} directly")
    for c in charons.values():
        c.stop()

    story.step("kill ms1 (SIGKILL): alice notices (a cluster client's defaults: DPD after 10 s idle, 12 s of "
               "retransmissions), registers at the next server of her list")
    t0 = time.monotonic()
    servers["ms1"].signal(9)
    servers["ms1"].stop()
    servers["ms2"].wait_peers({"alice@med"}, 40)
    moved = time.monotonic() - t0
    show_log(story, alice.log_text(), ("mediation connection 'medsrv' lost", "initiating mediation connection"),
             who="alice")
    story.check(moved < 30, f"alice registered at ms2 {moved:.1f} s after ms1 died (goal: under 30 s)")
    live = {k: v for k, v in servers.items() if k != "ms1"}
    wait_daemons(lambda: _where(live, "alice@med") == ["ms2"], 10, live.values(), what="alice at ms2 only")
    a2b, b2a = ping_both(lab, "alice", "bob", LAN)
    story.check(a2b == 3 and b2a == 3, f"the direct tunnel outlived ms1: ping {a2b}/3, {b2a}/3")

    story.step("alice moves on: her tunnel to bob goes down and she brings it up again through ms2")
    for sa in alice.list_sas():
        if sa.get("name") == "bob":
            alice.ctl({"cmd": "down", "ike": sa["uniqueid"]})
    alice.wait_sas(lambda sas: not any(x.get("name") == "bob" for x in sas), 10)
    r = alice.up("bob", timeout=30)
    story.say(f"mediated connection up again in {r['elapsed_ms']} ms")
    show_log(story, servers["ms2"].log_text(), ("relaying ME_CONNECT",), who="ms2")
    a2b, b2a = ping_both(lab, "alice", "bob", LAN)
    story.check(a2b == 3 and b2a == 3, f"after the move: ping alice->bob {a2b}/3, bob->alice {b2a}/3")

    story.step("restart ms1: it joins again, nobody is registered twice")
    servers["ms1"] = Iked(lab, "carol", server_toml("ms1"), name="medsrv-ms1b", module="mediation_server").start()
    servers["ms1"].wait_log("cluster: connected", 15)
    story.check(_where(servers, "alice@med") == ["ms2"] and _where(servers, "bob@med") == ["ms2"],
                "after ms1's restart alice and bob are each registered once")
    for c in (alice, bob):
        c.stop()
    for s in servers.values():
        if s.proc is not None:
            s.stop()
    lab.teardown()


def _relayed(story: Story) -> None:
    story.step("cell 2: natA and natB symmetric (a new random port per destination); alice at ms1, bob at ms2")
    lab, servers = _cluster_lab(story, "symmetric", ["ms1", "ms2"], relay=True)
    bob = _client(lab, "bob", "alice", ["ms2"], extra="check_timeout = 10")
    alice = _client(lab, "alice", "bob", ["ms1"], extra="check_timeout = 10")
    servers["ms1"].wait_peers({"alice@med"}, 15)
    servers["ms2"].wait_peers({"bob@med"}, 15)
    story.step("alice: up bob (ms1 allocates the relay and forwards bob's RELAYED endpoint; ms2 passes it on)")
    relay_ports = set(range(RELAY_PORTS[0], RELAY_PORTS[1] + 1))
    with lab.capture("carol", "eth0", "udp", natt_ports=(4500, *sorted(relay_ports))) as cap:
        r = alice.up("bob", timeout=40)
        story.say(f"mediated connection up in {r['elapsed_ms']} ms, peer at {r['remote'][0]}[{r['remote'][1]}]")
        show_log(story, servers["ms1"].log_text(), ("forwarding ME_CONNECT", "relay 1 allocated"), who="ms1")
        show_log(story, servers["ms2"].log_text(), ("relaying ME_CONNECT",), who="ms2")
        ma, mb = mediated_sas(alice, bob, "bob", "alice")
        a2b, b2a = ping_both(lab, "alice", "bob", LAN)
        st1, st2 = servers["ms1"].status(), servers["ms2"].status()
    story.check(ma["remote-host"] == CAROL and int(ma["remote-port"]) in relay_ports
                and mb["remote-host"] == CAROL and int(mb["remote-port"]) in relay_ports
                and ma["remote-port"] != mb["remote-port"],
                f"both mediated SAs run to ms1's relay ({CAROL}[{ma['remote-port']}] and [{mb['remote-port']}]), "
                "though bob is registered at ms2")
    story.check(a2b == 3 and b2a == 3, f"ping through ms1's relay: alice->bob {a2b}/3, bob->alice {b2a}/3")
    relays = st1.get("relays", [])
    for rl in relays:
        story.say(f"ms1 relay #{rl['id']}: {rl['a']} {rl['a_latched']} -> :{rl['a_port']} | :{rl['b_port']} <- "
                  f"{rl['b_latched']} {rl['b']}: {rl['bytes_a_to_b']} B ->, {rl['bytes_b_to_a']} B <-")
    story.check(len(relays) == 1 and relays[0]["bytes_a_to_b"] > 0 and relays[0]["bytes_b_to_a"] > 0
                and str(relays[0]["b_latched"]).startswith("203.0.113.2["),
                "ms1 relays both ways for alice (its peer) and bob (ms2's peer, latched at natB's address)")
    story.check(not st2.get("relays"), "ms2 added no relay of its own for the pair")
    esp = [p for p in cap.of_kind("esp-in-udp") if p.dport in relay_ports or p.sport in relay_ports]
    story.check(len({p.src for p in esp if p.dst == CAROL}) == 2,
                f"carol (ms1) sees ESP-in-UDP from both NATs on its relay ports ({len(esp)} packets)")
    for c in (alice, bob):
        c.stop()
    for s in servers.values():
        s.stop()




def _probed(story: Story) -> None:
    story.step("cell 3: natA port-restricted, natB symmetric with random ports; alice at ms1, bob at ms2; both "
               "measure their NAT (RFC 5780) against their server")
    t0 = time.monotonic()
    lab, servers = _cluster_lab(story, "port-restricted", ["ms1", "ms2"], relay=True, nat_b="symmetric-random",
                                stun=True)
    bob = _client(lab, "bob", "alice", ["ms2"], extra="check_timeout = 10", discovery=True)
    alice = _client(lab, "alice", "bob", ["ms1"], extra="check_timeout = 10", discovery=True)
    servers["ms1"].wait_peers({"alice@med"}, 15)
    servers["ms2"].wait_peers({"bob@med"}, 15)
    nats = {who: wait_nat(c)["summary"] for who, c in (("alice", alice), ("bob", bob))}
    story.say(f"alice measured: {nats['alice']}; bob measured: {nats['bob']}")
    story.check("filtering APDF" in nats["alice"] and "mapping EIM" in nats["alice"]
                and "mapping APDM" in nats["bob"] and "random ports" in nats["bob"],
                "alice's NAT is port-restricted, bob's symmetric with random ports (as measured)")
    story.step("alice: up bob (ME_CONNECT ms1 -> Redis -> ms2 -> bob with alice's NAT, the answer back with bob's)")
    r = alice.up("bob", timeout=40)
    story.say(f"mediated connection up in {r['elapsed_ms']} ms, peer at {r['remote'][0]}[{r['remote'][1]}]")
    show_log(story, servers["ms1"].log_text(), ("forwarding ME_CONNECT", "NAT behaviour"), who="ms1")
    show_log(story, servers["ms2"].log_text(), ("forwarding ME_CONNECT", "NAT behaviour"), who="ms2")
    show_log(story, alice.log_text(), ("many-port probing",), who="alice")
    show_log(story, bob.log_text(), ("many-port probing",), who="bob")
    ma, mb = mediated_sas(alice, bob, "bob", "alice")
    a2b, b2a = ping_both(lab, "alice", "bob", LAN)
    story.check("many-port probing (spray)" in alice.log_text() and "many-port probing (open)" in bob.log_text(),
                "alice sprays and bob opens extra sockets: each got the other's NAT behaviour across the cluster")
    story.check(ma["remote-host"] == "203.0.113.2" and mb["remote-host"] == "203.0.113.1",
                f"the mediated SA runs between the NATs' public addresses, not through ms1's relay "
                f"(alice -> {ma['remote-host']}[{ma['remote-port']}])")
    story.check(a2b == 3 and b2a == 3, f"ping direct: alice->bob {a2b}/3, bob->alice {b2a}/3")
    for c in (alice, bob):
        c.stop()
    for s in servers.values():
        s.stop()
    story.say(f"cell 3 took {time.monotonic() - t0:.0f} s")
