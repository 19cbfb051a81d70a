"""What the interop tests with one charon share: our iked on alice behind natA and charon on carol
with one PSK tunnel (``nat_pair``), a clean slate between cases, bringing the CHILD_SA up from either
side, and the checks on the wire.

NAT pair (on a ``nat_lab``): iked on alice 10.1.0.2 behind natA (203.0.113.1, masquerade, WAN drop of
new inbound UDP) plus a port forward of UDP 500/4500 on natA to alice, so that charon on carol
203.0.113.10 can initiate too. Inner (tunnel) addresses on ``lo``: alice 10.10.1.1, carol 10.10.2.1;
IKE_SA ``nat`` with CHILD_SA ``net`` on both sides, aes128gcm16 (``BASE_ESP``), no rekeying.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from scenarios.lab import Lab, Packet
from scenarios.lab.charon import Charon
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked
from scenarios.lab.tunnels import Tunnel, charon_psk_conf, iked_psk_toml

ALICE, NAT_PUB, CAROL = "10.1.0.2", "203.0.113.1", "203.0.113.10"
A_IN, C_IN = "10.10.1.1", "10.10.2.1"
PSK = "esp-interop-secret-0123456789"
BASE_ESP = "aes128gcm16"  # what iked_psk_toml / charon_psk_conf write

# natA: forward IKE and NAT-T to alice so that charon can initiate (the WAN drop rule only filters input)
PORT_FORWARD = f"""table ip portfwd {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan0" udp dport {{ 500, 4500 }} dnat to {ALICE}
  }}
}}
"""


@dataclass
class Pair:
    lab: Lab
    iked: Iked
    charon: Charon


def iked_toml(esp: str = BASE_ESP) -> str:
    """alice's side of the NAT pair, with ``esp`` as the CHILD_SA's esp_proposals."""
    toml = iked_psk_toml(Tunnel(ALICE, CAROL, "alice@lab", "carol@lab", A_IN, C_IN, PSK))
    assert f'esp_proposals = "{BASE_ESP}"' in toml
    return toml.replace(f'esp_proposals = "{BASE_ESP}"', f'esp_proposals = "{esp}"')


def charon_conf(esp: str = BASE_ESP) -> str:
    """carol's side of the NAT pair (connection ``nat``), with ``esp`` as the esp_proposals."""
    conf = charon_psk_conf(Tunnel(CAROL, NAT_PUB, "carol@lab", "alice@lab", C_IN, A_IN, PSK), conn="nat")
    assert f"esp_proposals = {BASE_ESP}" in conf
    return conf.replace(f"esp_proposals = {BASE_ESP}", f"esp_proposals = {esp}")


def swanctl_conn(name: str, local: str, remote: str, *, addrs: tuple[str, str], ts: tuple[str, str],
                 proposals: str, esp: str, no_rekey: bool = True) -> str:
    """One connection of swanctl.conf with one CHILD_SA ``net``: ``local`` and ``remote`` are the lines of
    the two auth rounds, ``addrs`` and ``ts`` (local, remote) the addresses and the /32 traffic selectors;
    ``no_rekey``: rekey_time = 0 for the IKE_SA and the CHILD_SA (a test sees no rekeying in between)."""
    def block(lines: str) -> str:
        return "\n".join(f"      {line.strip()}" for line in lines.splitlines())

    rekey, child_rekey = ("\n    rekey_time = 0", "\n        rekey_time = 0") if no_rekey else ("", "")
    return f"""  {name} {{
    local_addrs = {addrs[0]}
    remote_addrs = {addrs[1]}
    proposals = {proposals}{rekey}
    local {{
{block(local)}
    }}
    remote {{
{block(remote)}
    }}
    children {{
      net {{
        local_ts = {ts[0]}/32
        remote_ts = {ts[1]}/32
        esp_proposals = {esp}{child_rekey}
      }}
    }}
  }}"""


def nat_pair(lab: Lab) -> Iterator[Pair]:
    """The NAT pair on ``lab`` (a ``nat_lab``), both daemons started; a generator for a fixture."""
    iked = charon = None
    try:
        lab.nft("natA", PORT_FORWARD)
        lab.addr("alice", "lo", f"{A_IN}/32")
        lab.addr("carol", "lo", f"{C_IN}/32")
        charon = Charon(lab, "carol", name="charon", conf=charon_conf(), settings="retransmit_tries = 2")
        iked = Iked(lab, "alice", iked_toml())
        charon.start()
        iked.start()
        yield Pair(lab, iked, charon)
    finally:
        if iked is not None:
            iked.stop()
        if charon is not None:
            charon.stop()


def clear(iked: Iked, charon: Charon) -> None:
    """Delete every SA on both sides and wait until both list none."""
    iked.down_all()
    charon.terminate_all()
    wait_daemons(lambda: not iked.list_sas() and not charon.list_sas(), 10, [iked, charon], what="SAs gone")


def one_child(d: Iked) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until ``d`` has one IKE_SA with one INSTALLED CHILD_SA; returns (IKE_SA, CHILD_SA)."""
    sas = d.wait_sas(lambda s: len(s) == 1 and len(s[0]["child-sas"]) == 1
                     and s[0]["child-sas"][0]["state"] == "INSTALLED")
    return sas[0], sas[0]["child-sas"][0]


def bring_up(pair: Pair, who: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """From a clean slate, ``who`` ("ours" or "charon") initiates; both sides agree on the SPIs and
    encapsulate (we are behind natA). Returns (our IKE_SA, our CHILD_SA, charon's CHILD_SA)."""
    clear(pair.iked, pair.charon)
    pair.lab.flush_conntrack()
    if who == "ours":
        pair.iked.up("net", "net")
    else:
        pair.charon.initiate(child="net", ike="nat", timeout=15)
    sa, child = one_child(pair.iked)
    theirs = pair.charon.wait_child("net", timeout=5)
    assert child["spi-in"] == theirs["spi-out"] and child["spi-out"] == theirs["spi-in"]
    assert sa["nat-local"] is True, sa  # we are behind natA
    assert child["encap"] is True
    return sa, child, theirs


def esp_on_wire(packets: list[Packet], kinds: tuple[str, ...], spis: set[str], at_least: int) -> list[Packet]:
    """At least ``at_least`` ESP packets of ``kinds`` with exactly the CHILD_SA's SPIs (hex), no other ESP
    encapsulation and no plain ICMP; returns the ESP packets."""
    esp = [p for p in packets if p.kind in kinds]
    assert len(esp) >= at_least, [str(p) for p in packets]
    assert {f"{p.spi:08x}" for p in esp} == spis, [str(p) for p in esp]
    assert all(p.spi != 0 for p in esp)
    assert not [p for p in packets if p.kind == "other" and p.proto == 1], "plain ICMP on the wire"
    assert not [p for p in packets if p.kind in ("esp", "esp-in-udp") and p.kind not in kinds], \
        "unexpected ESP encapsulation"
    return esp


# an nftables drop of what one host sends to its peer's IKE ports: holds back a request (or an answer) so
# that a race becomes certain; retransmissions get through once it is lifted
IKE_HOLD = "ike_hold"
_IKE_HOLD_RULESET = """table inet {table} {{
  chain output {{
    type filter hook output priority filter; policy accept;
    ip daddr {peer} udp dport {{ 500, 4500 }} counter drop
  }}
}}
"""


@contextmanager
def ike_held(lab: Lab, host: str, peer: str) -> Iterator[None]:
    """What `host` sends to `peer`'s IKE ports (UDP 500, 4500) is dropped meanwhile."""
    lab.nft(host, _IKE_HOLD_RULESET.format(table=IKE_HOLD, peer=peer))
    try:
        yield
    finally:
        lift_ike_hold(lab, host)


def lift_ike_hold(lab: Lab, host: str) -> None:
    """No `ike_held` drop on `host` (none there is fine)."""
    lab.run(host, ["nft", "delete", "table", "inet", IKE_HOLD], check=False)
