"""Every ESP AEAD our userspace data plane runs, against charon (kernel-libipsec; its openssl plugin
provides AES-GCM-8/12/16, AES-CCM-8/12/16 and ChaCha20-Poly1305 here), ESP-in-UDP across a NAT.

Lab as in test_interop_esp.py: our iked on alice 10.1.0.2 behind natA (203.0.113.1, UDP 500/4500
forwarded to alice so that charon can initiate), charon on carol 203.0.113.10; tunnel addresses on
``lo``: alice 10.10.1.1, carol 10.10.2.1. Per case both sides get the CHILD_SA's esp_proposals (a
reload on each side), the SA comes up, pings go both ways, and the capture on the NAT's WAN side shows
ESP-in-UDP with exactly the CHILD_SA's SPIs whose length carries the negotiated ICV.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scenarios.lab import Lab, cleanup_orphans, nat_lab
from scenarios.lab.charon import Charon
from scenarios.lab.iked import Iked
from scenarios.lab.netns import wait_for
from scenarios.lab.tunnels import charon_psk_conf, iked_psk_toml
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

ALICE, NAT_PUB, CAROL = "10.1.0.2", "203.0.113.1", "203.0.113.10"
A_IN, C_IN = "10.10.1.1", "10.10.2.1"
PSK = "esp-algorithms-interop-secret-0123"
PORT_FORWARD = f"""table ip portfwd {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan0" udp dport {{ 500, 4500 }} dnat to {ALICE}
  }}
}}
"""
BASE_ESP = "aes128gcm16"  # what iked_psk_toml / charon_psk_conf write

# keyword -> (charon's encr-alg, its encr-keysize, ICV octets, our log name)
AEADS = {
    "chacha20poly1305": ("CHACHA20_POLY1305", None, 16, "CHACHA20_POLY1305"),
    "aes128gcm8": ("AES_GCM_8", "128", 8, "AES_GCM_8_128"),
    "aes192gcm12": ("AES_GCM_12", "192", 12, "AES_GCM_12_192"),
    "aes256gcm16": ("AES_GCM_16", "256", 16, "AES_GCM_16_256"),
    "aes128ccm8": ("AES_CCM_8", "128", 8, "AES_CCM_8_128"),
    "aes192ccm12": ("AES_CCM_12", "192", 12, "AES_CCM_12_192"),
    "aes256ccm16": ("AES_CCM_16", "256", 16, "AES_CCM_16_256"),
}


@dataclass
class Env:
    lab: Lab
    iked: Iked
    charon: Charon


def _iked_toml(esp: str) -> str:
    toml = iked_psk_toml(ALICE, CAROL, "alice@lab", "carol@lab", A_IN, C_IN, PSK)
    assert f'esp_proposals = "{BASE_ESP}"' in toml
    return toml.replace(f'esp_proposals = "{BASE_ESP}"', f'esp_proposals = "{esp}"')


def _charon_conf(esp: str) -> str:
    conf = charon_psk_conf(CAROL, NAT_PUB, "carol@lab", "alice@lab", C_IN, A_IN, PSK, conn="nat")
    assert f"esp_proposals = {BASE_ESP}" in conf
    return conf.replace(f"esp_proposals = {BASE_ESP}", f"esp_proposals = {esp}")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    cleanup_orphans()
    lab = nat_lab()
    iked = charon = None
    try:
        lab.nft("natA", PORT_FORWARD)
        lab.addr("alice", "lo", f"{A_IN}/32")
        lab.addr("carol", "lo", f"{C_IN}/32")
        charon = Charon(lab, "carol", name="charon", conf=_charon_conf(BASE_ESP), settings="retransmit_tries = 2")
        iked = Iked(lab, "alice", _iked_toml(BASE_ESP))
        charon.start()
        iked.start()
        yield Env(lab, iked, charon)
    finally:
        if iked is not None:
            iked.stop()
        if charon is not None:
            charon.stop()
        lab.teardown()


def _configure(env: Env, ours: str, theirs: str) -> None:
    """Close every SA, then give both sides new esp_proposals (iked reload, swanctl --load-all)."""
    for sa in env.iked.list_sas():
        env.iked.ctl({"cmd": "down", "ike": sa["uniqueid"]})
    for sa in env.charon.list_sas():
        env.charon.terminate(ike=sa["name"])
    wait_for(lambda: not env.iked.list_sas() and not env.charon.list_sas(), 10, what="SAs gone")
    env.lab.flush_conntrack()
    env.iked.write_config(_iked_toml(ours))
    r = env.iked.ctl({"cmd": "reload"})
    assert r.get("ok"), r
    env.charon.conf = _charon_conf(theirs)
    env.charon.write_config()
    env.charon.load()


def _up(env: Env, who: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if who == "ours":
        env.iked.up("net", "net")
    else:
        env.charon.initiate(child="net", ike="nat", timeout=15)
    sas = env.iked.wait_sas(lambda s: len(s) == 1 and len(s[0]["child-sas"]) == 1
                            and s[0]["child-sas"][0]["state"] == "INSTALLED")
    ours = sas[0]["child-sas"][0]
    theirs = env.charon.wait_child("net", timeout=5)
    assert ours["spi-in"] == theirs["spi-out"] and ours["spi-out"] == theirs["spi-in"]
    assert ours["encap"] is True
    return ours, theirs


def _ping_both_ways(env: Env, ours: dict[str, Any], icv: int) -> None:
    with env.lab.capture("natA", "wan0", "udp or esp or icmp") as cap:
        for host, dst, src in (("alice", C_IN, A_IN), ("carol", A_IN, C_IN)):
            sent, received, out = env.lab.ping(host, dst, source=src, count=3, interval=0.05)
            assert (sent, received) == (3, 3), f"{out}\n{env.iked.log_tail()}\n{env.charon.log_tail()}"
    esp = cap.of_kind("esp-in-udp")
    assert len(esp) >= 12, [str(p) for p in cap.packets]
    assert {f"{p.spi:08x}" for p in esp} == {ours["spi-in"], ours["spi-out"]}, [str(p) for p in esp]
    assert not [p for p in cap.packets if p.kind == "other" and p.proto == 1], "plain ICMP on the wire"
    # ours: SPI | Seq | 8-octet IV | 84-octet ICMP packet + 2 trailer octets padded to 88 | ICV
    mine = [p for p in esp if p.src == NAT_PUB]
    assert mine and {len(p.payload) for p in mine} == {8 + 8 + 88 + icv}, [str(p) for p in mine]


@pytest.mark.parametrize("keyword", list(AEADS))
def test_aead_with_charon(env: Env, keyword: str) -> None:
    alg, keysize, icv, name = AEADS[keyword]
    _configure(env, keyword, keyword)
    ours, theirs = _up(env, "ours")
    assert theirs["encr-alg"] == alg and theirs.get("encr-keysize") == keysize, theirs
    assert "integ-alg" not in theirs, theirs
    assert ours["proposal"] == f"{name}/NO_EXT_SEQ", ours
    _ping_both_ways(env, ours, icv)
    c = env.iked.wait_sas(lambda s: s and s[0]["child-sas"])[0]["child-sas"][0]
    assert c["packets-in"] >= 6 and c["packets-out"] >= 6 and not any(c["drops"].values()), c


def test_chacha20_poly1305_charon_initiates(env: Env) -> None:
    _configure(env, "chacha20poly1305", "chacha20poly1305")
    ours, theirs = _up(env, "charon")
    assert theirs["encr-alg"] == "CHACHA20_POLY1305" and ours["proposal"] == "CHACHA20_POLY1305/NO_EXT_SEQ"
    _ping_both_ways(env, ours, 16)


@pytest.mark.parametrize("ours_esp,expect", [
    ("chacha20poly1305,aes128gcm16", "CHACHA20_POLY1305"),  # charon's first choice, and we run it
    ("aes128gcm16,chacha20poly1305", "CHACHA20_POLY1305"),  # the initiator's order decides (RFC 7296 2.7)
    ("aes128gcm16", "AES_GCM_16"),
])
def test_responder_to_chacha_then_gcm_offer_picks_a_working_one(env: Env, ours_esp: str, expect: str) -> None:
    """charon offers chacha20poly1305,aes128gcm16; whatever we answer carries traffic."""
    _configure(env, ours_esp, "chacha20poly1305,aes128gcm16")
    ours, theirs = _up(env, "charon")
    assert theirs["encr-alg"] == expect and ours["proposal"].startswith(expect), (ours, theirs)
    _ping_both_ways(env, ours, 16)
