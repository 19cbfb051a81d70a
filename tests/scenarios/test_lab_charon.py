"""The lab proven with strongSwan alone: charon<->charon PSK tunnel, and mediation through NATs.

docs/nat-lab.md §7. One topology per test case group (module-scoped), conntrack flushed between cases.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.creds import install_keypair, rsa_keypair
from scenarios.lab.medsetup import LAN, CharonMediation
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

PSK_CONF = """connections {{
  host {{
    local_addrs = {me}
    remote_addrs = {peer}
    proposals = aes128gcm16-prfsha256-x25519
    local {{
      auth = psk
      id = {myid}
    }}
    remote {{
      auth = psk
      id = {peerid}
    }}
    children {{
      net {{
        local_ts = {myin}/32
        remote_ts = {peerin}/32
        esp_proposals = aes128gcm16-x25519
      }}
    }}
  }}
}}
secrets {{
  ike {{
    id-1 = alice@lab
    id-2 = bob@lab
    secret = "alice-bob-0123456789abcdef"
  }}
}}
"""


RSA_CONF = """connections {{
  host {{
    local_addrs = {me}
    remote_addrs = {peer}
    local {{
      auth = pubkey
      id = "{myid}"
      pubkeys = {mykey}
    }}
    remote {{
      auth = pubkey
      id = "{peerid}"
      pubkeys = {peerkey}
    }}
    children {{
      net {{
        local_ts = {myin}/32
        remote_ts = {peerin}/32
      }}
    }}
  }}
}}
"""


@pytest.fixture(scope="module")
def direct(two_hosts_per_module: Lab) -> Lab:
    return two_hosts_per_module


@pytest.fixture(scope="module")
def natted(nat_lab_per_module: Lab) -> Lab:
    return nat_lab_per_module


@pytest.fixture()
def mediation(natted: Lab) -> Iterator[CharonMediation]:
    natted.flush_conntrack()
    med = CharonMediation(natted)
    med.start()
    yield med
    med.stop()
    natted.flush_conntrack()


def test_two_hosts_psk_tunnel(direct: Lab) -> None:
    inner = direct.info["inner"]
    alice = Charon(direct, "alice", conf=PSK_CONF.format(
        me="192.0.2.1", peer="192.0.2.2", myid="alice@lab", peerid="bob@lab",
        myin=inner["alice"], peerin=inner["bob"])).start()
    bob = Charon(direct, "bob", conf=PSK_CONF.format(
        me="192.0.2.2", peer="192.0.2.1", myid="bob@lab", peerid="alice@lab",
        myin=inner["bob"], peerin=inner["alice"])).start()
    try:
        alice.initiate(child="net", timeout=10)
        a_child = alice.wait_child("net", timeout=5)
        b_child = bob.wait_child("net", timeout=5)
        assert a_child["ike"]["state"] == "ESTABLISHED"
        assert a_child["spi-in"] == b_child["spi-out"] and a_child["spi-out"] == b_child["spi-in"]
        assert a_child["encr-alg"] == "AES_GCM_16"
        with direct.capture("bob", "eth0", "udp") as cap:
            sent, received, out = direct.ping("alice", inner["bob"], source=inner["alice"], count=3,
                                              interval=0.05)
        assert (sent, received) == (3, 3), out
        esp = cap.of_kind("esp-in-udp", "esp")
        assert len(esp) >= 6
        assert {f"{p.spi:08x}" for p in esp} == {a_child["spi-in"], a_child["spi-out"]}
        alice.wait_log(r"CHILD_SA net\{\d+\} established", timeout=1)
    finally:
        alice.stop()
        bob.stop()


def test_two_hosts_rsa_keyid(direct: Lab) -> None:
    """Raw RSA-2048 public keys with ID_KEY_ID identities: our keyid derivation is the one charon uses."""
    inner = direct.info["inner"]
    keys = {"alice": rsa_keypair(), "bob": rsa_keypair()}
    addrs = {"alice": "192.0.2.1", "bob": "192.0.2.2"}
    charons = {}
    for me, peer in (("alice", "bob"), ("bob", "alice")):
        c = Charon(direct, me, name="charon-rsa", conf=RSA_CONF.format(
            me=addrs[me], peer=addrs[peer], myid=keys[me].identity, peerid=keys[peer].identity,
            mykey=f"{me}.pem", peerkey=f"{peer}.pem", myin=inner[me], peerin=inner[peer]))
        install_keypair(c, me, keys[me], own=True)
        install_keypair(c, peer, keys[peer], own=False)
        charons[me] = c.start()
    try:
        charons["alice"].initiate(child="net", timeout=10)
        sa = charons["bob"].wait_ike("host", timeout=5)[0]
        assert sa["remote-id"].replace(":", "") == keys["alice"].keyid   # charon prints 01:ad:98:...
        assert sa["local-id"].replace(":", "") == keys["bob"].keyid
        assert direct.ping("alice", inner["bob"], source=inner["alice"], count=1)[1] == 1
    finally:
        for c in charons.values():
            c.stop()


def test_charon_mediation_eim(natted: Lab, mediation: CharonMediation) -> None:
    med = mediation
    med.bring_up_mediation()
    carol_sas = med.carol.list_sas("medsrv")
    assert sorted(sa["remote-host"] for sa in carol_sas) == ["203.0.113.1", "203.0.113.2"]
    assert {sa["remote-port"] for sa in carol_sas} == {"4500"}

    mark = med.alice.log_mark()
    elapsed = med.initiate_and_wait(timeout=20)
    assert elapsed < 15
    child = med.alice.wait_child("net")
    ike = child["ike"]
    assert ike["name"] == "p2p" and ike["state"] == "ESTABLISHED"
    assert (ike["remote-host"], ike["remote-port"]) == ("203.0.113.2", "4500")
    assert child["local-ts"] == [f"{LAN['alice']}/32"] and child["remote-ts"] == [f"{LAN['bob']}/32"]
    med.bob.wait_child("net", timeout=5)
    med.alice.wait_log(r"IKE_SA p2p\[\d+\] established between 10\.1\.0\.2\[alice@p2p\]\.\.\."
                       r"203\.0\.113\.2\[bob@p2p\]", since=mark, timeout=2)

    with natted.capture("natB", "wan0", "udp port 4500") as wan, \
            natted.capture("carol", "eth0", "udp") as at_carol:
        sent, received, out = natted.ping("alice", LAN["bob"], source=LAN["alice"], count=3, interval=0.05)
        assert (sent, received) == (3, 3), out
        sent, received, out = natted.ping("bob", LAN["alice"], source=LAN["bob"], count=2, interval=0.05)
        assert (sent, received) == (2, 2), out
    esp = wan.of_kind("esp-in-udp")
    directions = {(p.src, p.sport, p.dst, p.dport) for p in esp}
    assert ("203.0.113.1", 4500, "203.0.113.2", 4500) in directions
    assert ("203.0.113.2", 4500, "203.0.113.1", 4500) in directions
    assert {f"{p.spi:08x}" for p in esp} <= {child["spi-in"], child["spi-out"]}
    assert not at_carol.of_kind("esp-in-udp", "esp"), "ESP went through the mediation server"
