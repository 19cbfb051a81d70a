"""Interop with a real strongSwan charon (Debian 5.9.8, kernel-libipsec) in network namespaces.

Our iked on alice (192.0.2.1), charon on bob (192.0.2.2); inner tunnel addresses 10.10.1.1 / 10.10.2.1.
Matrix: {our initiator -> charon, charon -> our responder} x {PSK, RSA-2048 raw keys with ID_KEY_ID}
x {aes128gcm16-prfsha256-x25519, aes256-sha256-modp2048}; both sides must agree on SPIs and algorithms,
and a ping must cross the tunnel as ESP. Plus rekeying and deletes from each side, and a COOKIE round.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from scenarios.lab import Lab
from scenarios.lab.charon import Charon
from scenarios.lab.creds import install_keypair, rsa_keypair
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked
from tests.guards import needs
from tests.interop.charon_pair import clear, esp_on_wire, swanctl_conn

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B = "192.0.2.1", "192.0.2.2"
A_IN, B_IN = "10.10.1.1", "10.10.2.1"
PROPOSALS = {
    "gcm": ("aes128gcm16-prfsha256-x25519", "aes128gcm16", "AES_GCM_16", "CURVE_25519"),
    "cbc": ("aes256-sha256-modp2048", "aes256-sha256", "AES_CBC", "MODP_2048"),
}
CASES = [(auth, prop) for auth in ("psk", "rsa") for prop in PROPOSALS]


@dataclass
class Env:
    lab: Lab
    iked: Iked
    charon: Charon
    keys: dict[str, object]


def _charon_conf(keys: dict) -> str:  # type: ignore[type-arg]
    conns, secrets = [], []
    for auth, prop in CASES:
        ike, esp, _, _ = PROPOSALS[prop]
        name = f"{auth}-{prop}"
        if auth == "psk":
            local = f"auth = psk\n      id = bob-{prop}@lab"
            remote = f"auth = psk\n      id = alice-{prop}@lab"
            secrets.append(f"  ike-{prop} {{\n    id-1 = alice-{prop}@lab\n    id-2 = bob-{prop}@lab\n"
                           f"    secret = \"shared-secret-{prop}-0123456789\"\n  }}")
        else:
            kb, ka = keys[f"bob-{prop}"], keys[f"alice-{prop}"]
            local = f"auth = pubkey\n      id = \"{kb.identity}\"\n      pubkeys = bob-{prop}.pem"
            remote = f"auth = pubkey\n      id = \"{ka.identity}\"\n      pubkeys = alice-{prop}.pem"
        conns.append(swanctl_conn(name, local, remote, addrs=(B, A), ts=(B_IN, A_IN), proposals=ike, esp=esp))
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + "\n".join(secrets) + "\n}\n"


def _iked_conf(keys: dict) -> tuple[str, dict[str, bytes | str]]:  # type: ignore[type-arg]
    files: dict[str, bytes | str] = {}
    out = [f'[daemon]\nlisten = ["{A}"]\ncontrol = "@CTL@"\ndataplane = "userspace"\ntun = "ipsec0"\n']
    for prop in PROPOSALS:
        out.append(f'[[secrets.ike]]\nid = ["alice-{prop}@lab", "bob-{prop}@lab"]\n'
                   f'secret = "shared-secret-{prop}-0123456789"\n')
        ka, kb = keys[f"alice-{prop}"], keys[f"bob-{prop}"]
        files[f"alice-{prop}.key"] = ka.private_pem
        files[f"bob-{prop}.pub"] = kb.public_pem
        out.append(f'[[secrets.private]]\nfile = "alice-{prop}.key"\n')
        out.append(f'[[secrets.pubkey]]\nfile = "bob-{prop}.pub"\n')
    for auth, prop in CASES:
        ike, esp, _, _ = PROPOSALS[prop]
        if auth == "psk":
            lid, rid, kind = f"alice-{prop}@lab", f"bob-{prop}@lab", "psk"
        else:
            lid, rid, kind = keys[f"alice-{prop}"].identity, keys[f"bob-{prop}"].identity, "pubkey"
        out.append(f"""[connections.{auth}-{prop}]
local_addrs = ["{A}"]
remote_addrs = ["{B}"]
proposals = "{ike}"
rekey_time = 0
local = {{ auth = "{kind}", id = "{lid}" }}
remote = {{ auth = "{kind}", id = "{rid}" }}
[connections.{auth}-{prop}.children.net]
local_ts = ["{A_IN}/32"]
remote_ts = ["{B_IN}/32"]
esp_proposals = "{esp}"
rekey_time = 0
""")
    return "\n".join(out), files


@pytest.fixture(scope="module")
def env(two_hosts_per_module: Lab) -> Iterator[Env]:
    lab = two_hosts_per_module
    keys = {f"{who}-{prop}": rsa_keypair() for who in ("alice", "bob") for prop in PROPOSALS}
    charon = Charon(lab, "bob", name="charon", conf=_charon_conf(keys), settings="retransmit_tries = 2")
    for prop in PROPOSALS:
        install_keypair(charon, f"bob-{prop}", keys[f"bob-{prop}"], own=True)
        install_keypair(charon, f"alice-{prop}", keys[f"alice-{prop}"], own=False)
    toml, files = _iked_conf(keys)
    iked = Iked(lab, "alice", toml, files=files)
    try:
        charon.start()
        iked.start()
        yield Env(lab, iked, charon, keys)
    finally:
        iked.stop()
        charon.stop()


def _check_agree(env: Env, conn: str, prop: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    ours = env.iked.wait_sas(lambda s: any(x["name"] == conn and x["child-sas"] for x in s))
    (our,) = [x for x in ours if x["name"] == conn]
    theirs = env.charon.wait_child("net", timeout=5)
    ike = theirs["ike"]
    assert ike["state"] == "ESTABLISHED" and our["state"] == "ESTABLISHED"
    assert ike["initiator-spi"] == our["initiator-spi"] and ike["responder-spi"] == our["responder-spi"]
    _, _, encr, dh = PROPOSALS[prop]
    assert ike["encr-alg"] == encr and ike["dh-group"] == dh
    assert encr in our["proposal"] and dh in our["proposal"]
    (child,) = our["child-sas"]
    assert child["spi-in"] == theirs["spi-out"] and child["spi-out"] == theirs["spi-in"]
    assert theirs["encr-alg"] in child["proposal"]
    return our, theirs


def _ping_is_esp(env: Env, spis: set[str]) -> None:
    with env.lab.capture("bob", "eth0", "udp or esp") as cap:
        sent, received, out = env.lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.05)
    assert (sent, received) == (3, 3), out + "\n" + env.iked.log_tail()
    esp_on_wire(cap.packets, ("esp-in-udp", "esp"), spis, 6)


@pytest.mark.parametrize("auth,prop", CASES)
def test_we_initiate(env: Env, auth: str, prop: str) -> None:
    clear(env.iked, env.charon)
    conn = f"{auth}-{prop}"
    r = env.iked.up(conn, "net")
    our, theirs = _check_agree(env, conn, prop)
    assert our["initiator"] is True
    assert r["spi-in"] == our["child-sas"][0]["spi-in"]
    _ping_is_esp(env, {theirs["spi-in"], theirs["spi-out"]})


@pytest.mark.parametrize("auth,prop", CASES)
def test_charon_initiates(env: Env, auth: str, prop: str) -> None:
    clear(env.iked, env.charon)
    conn = f"{auth}-{prop}"
    env.charon.initiate(child="net", ike=conn, timeout=15)
    our, theirs = _check_agree(env, conn, prop)
    assert our["initiator"] is False
    _ping_is_esp(env, {theirs["spi-in"], theirs["spi-out"]})


def _our_sa(env: Env) -> dict:  # type: ignore[type-arg]
    (sa,) = env.iked.list_sas()
    return sa


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_rekey_and_delete(env: Env, who: str) -> None:
    clear(env.iked, env.charon)
    env.iked.up("psk-gcm", "net")
    _check_agree(env, "psk-gcm", "gcm")
    old = _our_sa(env)
    old_child = old["child-sas"][0]
    # CHILD_SA rekey
    if who == "ours":
        env.iked.ctl({"cmd": "rekey-child", "ike": old["uniqueid"], "child": old_child["uniqueid"]})
    else:
        env.charon.swanctl("--rekey", "--child", "net")
    sa = env.iked.wait_sas(lambda s: len(s) == 1 and s[0]["child-sas"]
                           and s[0]["child-sas"][0]["spi-in"] != old_child["spi-in"]
                           and len(s[0]["child-sas"]) == 1)[0]
    theirs = env.charon.wait_child("net", timeout=5)
    wait_daemons(lambda: len(env.charon.child_sas()) == 1, 5, [env.charon], what="charon old CHILD_SA gone")
    theirs = env.charon.child_sas()[0]
    assert sa["child-sas"][0]["spi-in"] == theirs["spi-out"]
    _ping_is_esp(env, {theirs["spi-in"], theirs["spi-out"]})
    # IKE_SA rekey
    if who == "ours":
        env.iked.ctl({"cmd": "rekey", "ike": sa["uniqueid"]})
    else:
        env.charon.swanctl("--rekey", "--ike", "psk-gcm")
    new = env.iked.wait_sas(lambda s: len(s) == 1 and s[0]["initiator-spi"] != old["initiator-spi"])[0]
    wait_daemons(lambda: len(env.charon.list_sas()) == 1
                 and env.charon.list_sas()[0]["initiator-spi"] == new["initiator-spi"], 5, [env.charon],
                 what="charon rekeyed")
    assert new["child-sas"], "CHILD_SA must move to the rekeyed IKE_SA"
    _ping_is_esp(env, {theirs["spi-in"], theirs["spi-out"]})
    # delete
    if who == "ours":
        env.iked.ctl({"cmd": "down", "ike": new["uniqueid"]})
    else:
        env.charon.terminate(ike="psk-gcm")
    wait_daemons(lambda: not env.iked.list_sas() and not env.charon.list_sas(), 10, [env.iked, env.charon],
                 what="SA deleted on both")


def test_cookie_round_when_loaded(env: Env) -> None:
    """charon initiates to our responder that demands COOKIEs (RFC 7296 2.6)."""
    clear(env.iked, env.charon)
    env.iked.stop()
    toml = env.iked.template.replace('tun = "ipsec0"', 'tun = "ipsec0"\nforce_cookies = true')
    loaded = Iked(env.lab, "alice", toml, name="iked-cookie")
    for f in env.iked.dir.iterdir():
        if f.suffix in (".key", ".pub"):
            (loaded.dir / f.name).write_bytes(f.read_bytes())
    loaded.start()
    try:
        env.charon.initiate(child="net", ike="psk-gcm", timeout=15)
        sa = loaded.wait_sas(lambda s: len(s) == 1 and s[0]["child-sas"])[0]
        assert sa["state"] == "ESTABLISHED"
        assert "sending COOKIE" in loaded.log_text()
        env.charon.terminate(ike="psk-gcm")
    finally:
        loaded.stop()
        env.iked.start()


JUNK = r'''
import os, socket, struct
s500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hdr = os.urandom(8) + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4)
cases = [b"", b"\x01", os.urandom(27), hdr + struct.pack("!I", 28), hdr + struct.pack("!I", 500),
         hdr + struct.pack("!I", 60) + os.urandom(32), os.urandom(1400), os.urandom(9000)]
for c in cases:
    s500.sendto(c, ("192.0.2.1", 500))
    s4500.sendto(b"\x00\x00\x00\x00" + c, ("192.0.2.1", 4500))
    s4500.sendto(os.urandom(4) + c, ("192.0.2.1", 4500))   # looks like ESP with an unknown SPI
print(len(cases))
'''


def test_daemon_survives_garbage(env: Env) -> None:
    """Malformed datagrams on 500 and 4500 are dropped with a log line; the daemon keeps serving."""
    clear(env.iked, env.charon)
    before = env.iked.log_text().count("dropping")
    out = env.lab.run("bob", ["python3", "-c", JUNK])
    assert out.stdout.strip() == "8"
    env.iked.wait_log("dropping", 5, count=before + 6)
    assert env.iked.proc.poll() is None
    env.iked.up("psk-gcm", "net")
    _check_agree(env, "psk-gcm", "gcm")
