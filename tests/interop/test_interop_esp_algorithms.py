"""Every ESP AEAD our userspace data plane runs, against charon (kernel-libipsec; its openssl plugin
provides AES-GCM-8/12/16, AES-CCM-8/12/16 and ChaCha20-Poly1305 here), ESP-in-UDP across a NAT.

The NAT pair of tests/interop/charon_pair.py: our iked on alice 10.1.0.2 behind natA (203.0.113.1, UDP 500/4500
forwarded to alice so that charon can initiate), charon on carol 203.0.113.10; tunnel addresses on
``lo``: alice 10.10.1.1, carol 10.10.2.1. Per case both sides get the CHILD_SA's esp_proposals (a
reload on each side), the SA comes up, pings go both ways, and the capture on the NAT's WAN side shows
ESP-in-UDP with exactly the CHILD_SA's SPIs whose length carries the negotiated ICV.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.guards import needs
from tests.interop.charon_pair import (
    A_IN,
    C_IN,
    NAT_PUB,
    Pair,
    bring_up,
    charon_conf,
    clear,
    esp_on_wire,
    iked_toml,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

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


def _configure(env: Pair, ours: str, theirs: str) -> None:
    """Close every SA, then give both sides new esp_proposals (iked reload, swanctl --load-all)."""
    clear(env.iked, env.charon)
    env.iked.write_config(iked_toml(ours))
    r = env.iked.ctl({"cmd": "reload"})
    assert r.get("ok"), r
    env.charon.conf = charon_conf(theirs)
    env.charon.write_config()
    env.charon.load()


def _up(env: Pair, who: str) -> tuple[dict[str, Any], dict[str, Any]]:
    _, ours, theirs = bring_up(env, who)
    return ours, theirs


def _ping_both_ways(env: Pair, ours: dict[str, Any], icv: int) -> None:
    with env.lab.capture("natA", "wan0", "udp or esp or icmp") as cap:
        for host, dst, src in (("alice", C_IN, A_IN), ("carol", A_IN, C_IN)):
            sent, received, out = env.lab.ping(host, dst, source=src, count=3, interval=0.05)
            assert (sent, received) == (3, 3), f"{out}\n{env.iked.log_tail()}\n{env.charon.log_tail()}"
    esp = esp_on_wire(cap.packets, ("esp-in-udp",), {ours["spi-in"], ours["spi-out"]}, 12)
    # ours: SPI | Seq | 8-octet IV | 84-octet ICMP packet + 2 trailer octets padded to 88 | ICV
    mine = [p for p in esp if p.src == NAT_PUB]
    assert mine and {len(p.payload) for p in mine} == {8 + 8 + 88 + icv}, [str(p) for p in mine]


@pytest.mark.parametrize("keyword", list(AEADS))
def test_aead_with_charon(nat_pair: Pair, keyword: str) -> None:
    alg, keysize, icv, name = AEADS[keyword]
    _configure(nat_pair, keyword, keyword)
    ours, theirs = _up(nat_pair, "ours")
    assert theirs["encr-alg"] == alg and theirs.get("encr-keysize") == keysize, theirs
    assert "integ-alg" not in theirs, theirs
    assert ours["proposal"] == f"{name}/NO_EXT_SEQ", ours
    _ping_both_ways(nat_pair, ours, icv)
    c = nat_pair.iked.wait_sas(lambda s: s and s[0]["child-sas"])[0]["child-sas"][0]
    assert c["packets-in"] >= 6 and c["packets-out"] >= 6 and not any(c["drops"].values()), c


def test_chacha20_poly1305_charon_initiates(nat_pair: Pair) -> None:
    _configure(nat_pair, "chacha20poly1305", "chacha20poly1305")
    ours, theirs = _up(nat_pair, "charon")
    assert theirs["encr-alg"] == "CHACHA20_POLY1305" and ours["proposal"] == "CHACHA20_POLY1305/NO_EXT_SEQ"
    _ping_both_ways(nat_pair, ours, 16)


@pytest.mark.parametrize("ours_esp,expect", [
    ("chacha20poly1305,aes128gcm16", "CHACHA20_POLY1305"),  # charon's first choice, and we run it
    ("aes128gcm16,chacha20poly1305", "CHACHA20_POLY1305"),  # the initiator's order decides (RFC 7296 2.7)
    ("aes128gcm16", "AES_GCM_16"),
])
def test_responder_to_chacha_then_gcm_offer_picks_a_working_one(nat_pair: Pair, ours_esp: str,
                                                                expect: str) -> None:
    """charon offers chacha20poly1305,aes128gcm16; whatever we answer carries traffic."""
    _configure(nat_pair, ours_esp, "chacha20poly1305,aes128gcm16")
    ours, theirs = _up(nat_pair, "charon")
    assert theirs["encr-alg"] == expect and ours["proposal"].startswith(expect), (ours, theirs)
    _ping_both_ways(nat_pair, ours, 16)
