"""A direct IKE_SA + CHILD_SA across a :func:`~scenarios.lab.topologies.nat_lab`: alice (behind natA) initiates,
carol (on the internet segment) responds; PSK, one CHILD_SA ``net``. Ours (iked on both) or charon on both.

Both drivers have the :class:`DirectSetupDriver` surface the loss benchmark and tests use: ``start()``,
``setup(timeout)`` (seconds until alice has the IKE_SA and its CHILD_SA, an exception when not within
``timeout``), ``reset()`` (both sides forget the SAs) and ``stop()``. The CHILD_SA is negotiated only: no data
plane (``dataplane = "none"``; charon installs into kernel-libipsec but no traffic is sent). The traffic
selectors are inner addresses on ``lo`` (alice 10.10.1.1, carol 10.10.3.1): kernel-libipsec refuses a route
for the IKE peers' own addresses ("conflicts with IKE traffic").
"""

from __future__ import annotations

import time
from typing import Generic, Protocol, TypeVar

from scenarios.lab.charon import Charon
from scenarios.lab.events import wait_files
from scenarios.lab.iked import Iked, IkedError
from scenarios.lab.netns import Lab
from scenarios.lab.topologies import CAROL

PSK = "direct-loss-secret-0123456789"
IDS = {"alice": "alice@direct", "carol": "carol@direct"}
INNER = {"alice": "10.10.1.1", "carol": "10.10.3.1"}


def add_inner(lab: Lab) -> None:
    """The traffic-selector addresses, once per lab."""
    if not lab.info.get("direct_inner"):
        for host, ip in INNER.items():
            lab.addr(host, "lo", f"{ip}/32")
        lab.info["direct_inner"] = dict(INNER)


class DirectSetupDriver(Protocol):
    name: str

    def start(self) -> None: ...

    def setup(self, timeout: float) -> float: ...

    def reset(self, timeout: float = 10.0) -> None: ...

    def stop(self) -> None: ...


def iked_toml(me: str, retransmit: str = "") -> str:
    """`retransmit`: lines of a ``[connections.home.retransmit]`` table (empty: the defaults)."""
    other = "carol" if me == "alice" else "alice"
    remote = f'remote_addrs = ["{CAROL}"]\n' if me == "alice" else ""
    local = f'local_addrs = ["{CAROL}"]\n' if me == "carol" else ""
    ts = INNER
    rt = f"[connections.home.retransmit]\n{retransmit}\n" if retransmit else ""
    return f"""[daemon]
control = "@CTL@"
dataplane = "none"

[[secrets.ike]]
id = ["{IDS['alice']}", "{IDS['carol']}"]
secret = "{PSK}"

[connections.home]
{remote}{local}local = {{ auth = "psk", id = "{IDS[me]}" }}
remote = {{ auth = "psk", id = "{IDS[other]}" }}
[connections.home.children.net]
local_ts = ["{ts[me]}/32"]
remote_ts = ["{ts[other]}/32"]
{rt}"""


D = TypeVar("D", Iked, Charon)


class _Pair(Generic[D]):
    """What both drivers do alike: carol starts before alice; both stop; both forget every SA."""

    lab: Lab
    alice: D
    carol: D

    def start(self) -> None:
        add_inner(self.lab)
        self.carol.start()
        self.alice.start()

    def _wait_gone(self, timeout: float, what: str) -> None:
        # checked again at each line either side logs (a deletion logs one); charon may write its line
        # before `list-sas` drops the SA: then a check 0.1 s later
        wait_files(lambda: not self.alice.list_sas() and not self.carol.list_sas(), timeout,
                   [self.alice.log_path, self.carol.log_path], what=what,
                   backstop=0.1 if isinstance(self.alice, Charon) else None)

    def stop(self) -> None:
        self.alice.stop()
        self.carol.stop()


class OurDirect(_Pair[Iked]):
    """iked on carol (responder) and alice (initiator, ``up home``)."""

    name = "ours"

    def __init__(self, lab: Lab, retransmit: str = "") -> None:
        self.lab = lab
        self.carol = Iked(lab, "carol", iked_toml("carol", retransmit), name="iked-direct")
        self.alice = Iked(lab, "alice", iked_toml("alice", retransmit), name="iked-direct")

    def setup(self, timeout: float) -> float:
        t0 = time.monotonic()
        r = self.alice.ctl({"cmd": "up", "conn": "home", "timeout": timeout}, timeout=timeout + 5)
        if not r.get("ok"):
            raise IkedError(f"up home: {r.get('error')}")
        return time.monotonic() - t0

    def reset(self, timeout: float = 10.0) -> None:
        for d in (self.alice, self.carol):
            for sa in d.list_sas():
                d.ctl({"cmd": "down", "ike": sa["uniqueid"], "timeout": 2}, timeout=5)
        self._wait_gone(timeout, "direct SAs gone")


def charon_conf(me: str) -> str:
    other = "carol" if me == "alice" else "alice"
    ts = INNER
    addrs = f"remote_addrs = {CAROL}" if me == "alice" else f"local_addrs = {CAROL}"
    return f"""connections {{
  home {{
    {addrs}
    local {{
      auth = psk
      id = {IDS[me]}
    }}
    remote {{
      auth = psk
      id = {IDS[other]}
    }}
    children {{
      net {{
        local_ts = {ts[me]}/32
        remote_ts = {ts[other]}/32
      }}
    }}
  }}
}}
secrets {{
  ike-home {{
    id-1 = {IDS['alice']}
    id-2 = {IDS['carol']}
    secret = "{PSK}"
  }}
}}
"""


class CharonDirect(_Pair[Charon]):
    """charon on carol and alice with strongSwan's default retransmission (4 s * 1.8^n, 5 tries)."""

    name = "charon"

    def __init__(self, lab: Lab, settings: str = "") -> None:
        self.lab = lab
        self.carol = Charon(lab, "carol", name="charon-direct", conf=charon_conf("carol"), settings=settings)
        self.alice = Charon(lab, "alice", name="charon-direct", conf=charon_conf("alice"), settings=settings)

    def setup(self, timeout: float) -> float:
        t0 = time.monotonic()
        self.alice.initiate(child="net", wait=False)
        self.alice.wait_child("net", timeout=timeout, interval=0.005)
        return time.monotonic() - t0

    def reset(self, timeout: float = 10.0) -> None:
        for c in (self.alice, self.carol):
            for sa in c.list_sas():
                c.terminate(ike=sa["name"], timeout=timeout)
        self._wait_gone(timeout, "charon direct SAs gone")
