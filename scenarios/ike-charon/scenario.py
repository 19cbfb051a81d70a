"""ike-charon: our iked (alice) brings up an IKE_SA + CHILD_SA with a real strongSwan charon (bob).

RSA-2048 raw public keys with ID_KEY_ID identities (the keyid the portal shows), proposals
aes128gcm16-prfsha256-x25519 / aes128gcm16; then a ping crosses the tunnel as ESP-in-UDP.
"""

from __future__ import annotations

from scenarios.lab import two_hosts
from scenarios.lab.charon import Charon
from scenarios.lab.creds import install_keypair, rsa_keypair
from scenarios.lab.iked import Iked
from scenarios.lab.story import Story

TITLE = "our IKEv2 initiator (iked) with a real strongSwan charon: RSA keys, ID_KEY_ID, CHILD_SA, ping"

A, B, A_IN, B_IN = "192.0.2.1", "192.0.2.2", "10.10.1.1", "10.10.2.1"

CHARON_CONF = """connections {{
  home {{
    local_addrs = {B}
    remote_addrs = {A}
    proposals = aes128gcm16-prfsha256-x25519
    local {{
      auth = pubkey
      id = "{bid}"
      pubkeys = bob.pem
    }}
    remote {{
      auth = pubkey
      id = "{aid}"
      pubkeys = alice.pem
    }}
    children {{
      net {{
        local_ts = {B_IN}/32
        remote_ts = {A_IN}/32
        esp_proposals = aes128gcm16
      }}
    }}
  }}
}}
"""

IKED_CONF = """[daemon]
listen = ["{A}"]
control = "@CTL@"
dataplane = "userspace"

[[secrets.private]]
file = "alice.key"
[[secrets.pubkey]]
file = "bob.pub"

[connections.home]
remote_addrs = ["{B}"]
proposals = "aes128gcm16-prfsha256-x25519"
local = {{ auth = "pubkey", id = "{aid}" }}
remote = {{ auth = "pubkey", id = "{bid}" }}
[connections.home.children.net]
local_ts = ["{A_IN}/32"]
remote_ts = ["{B_IN}/32"]
esp_proposals = "aes128gcm16"
"""


def run(story: Story) -> None:
    story.step(f"two hosts on one link: alice {A} (our iked), bob {B} (strongSwan charon 5.9.8)")
    lab = story.lab(two_hosts())
    ka, kb = rsa_keypair(), rsa_keypair()
    story.say(f"alice's RSA-2048 key, ID_KEY_ID {ka.identity}")
    story.say(f"bob's   RSA-2048 key, ID_KEY_ID {kb.identity}")
    ids = {"A": A, "B": B, "A_IN": A_IN, "B_IN": B_IN, "aid": ka.identity, "bid": kb.identity}
    charon = Charon(lab, "bob", conf=CHARON_CONF.format(**ids))
    install_keypair(charon, "bob", kb, own=True)
    install_keypair(charon, "alice", ka, own=False)
    charon.start()
    iked = Iked(lab, "alice", IKED_CONF.format(**ids),
                files={"alice.key": ka.private_pem, "bob.pub": kb.public_pem}).start()

    story.step("ikectl up home  (alice initiates)")
    iked.up("home", "net")
    for line in iked.log_text().splitlines():
        if any(k in line for k in ("generating", "parsed", "sending packet", "received packet", "authentication",
                                   "established", "selected proposal", "installed CHILD_SA")):
            story.say(line)

    story.step("SA status on alice (ikectl list)")
    from core_ike.daemon.ctl import format_sas

    ours = iked.list_sas()
    story.say(format_sas(ours))
    story.step("SA status on bob (swanctl --list-sas)")
    story.say(charon.swanctl("--list-sas"))
    theirs = charon.wait_child("net", timeout=5)
    child = ours[0]["child-sas"][0]
    story.check(ours[0]["initiator-spi"] == theirs["ike"]["initiator-spi"], "both sides hold the same IKE_SA SPIs")
    story.check(child["spi-in"] == theirs["spi-out"] and child["spi-out"] == theirs["spi-in"],
                "both sides hold the same CHILD_SA SPIs")

    story.step(f"ping {B_IN} from {A_IN} through the tunnel, capturing on bob's link")
    with lab.capture("bob", "eth0", "udp or esp") as cap:
        sent, received, _ = lab.ping("alice", B_IN, source=A_IN, count=3, interval=0.1)
    story.check((sent, received) == (3, 3), f"ping {received}/{sent} replies")
    story.packets("on the wire", cap.packets)
    esp = cap.of_kind("esp-in-udp", "esp")
    story.check(len(esp) >= 6 and not [p for p in cap.packets if p.proto == 1 and p.kind == "other"],
                "the ICMP travelled inside ESP-in-UDP, never in the clear")
    story.end(iked, charon)
