"""The two sides :mod:`mediated_setup` times, each a :class:`~scenarios.lab.medsetup.MediatedSetupDriver`
ending a setup at the same event: the reply of the control call that started it (ours: the ``up`` reply,
charon: its blocking vici ``initiate``), each confirmed by one list outside the clock, with the three
daemons' CPU time per setup (:func:`mediated_trace.cpu_ns`)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import vici
from mediated_trace import cpu_ns
from results_io import ROOT

from core_ike.daemon.ctl import Connection
from scenarios.lab import Lab
from scenarios.lab.charon import CharonError
from scenarios.lab.iked import Iked, IkedError
from scenarios.lab.mediation import OurMediation, client_toml, server_toml
from scenarios.lab.medsetup import CharonMediation, forget_direct_mappings
from scenarios.lab.topologies import CAROL


class OursMediation:
    """Our mediation_server on carol (default settings), our mediation_client on alice and bob.

    Measured externally: from writing ``{"cmd": "up", "conn": "bob"}`` to alice's control socket (connected before
    the clock, as charon's vici socket is) until its reply, the event charon's side ends at (its blocking vici
    ``initiate`` returning, :class:`CharonBlocking`). The reply is sent once the mediated IKE_SA is established; the
    CHILD_SA comes in the same IKE_AUTH response, its events (data-plane install included) handled in the same flush
    before the reply is written. One ``list`` after the reply, outside the clock, confirms the INSTALLED CHILD_SA;
    if it is not listed yet, ``list`` is polled every 2 ms and the clock runs on until it is (counted in ``polled``).
    """

    name = "ours"

    def __init__(
        self,
        lab: Lab,
        ts: dict[str, str] | None = None,
        root: str | None = None,
        path_first: str | None = None,
        client: str = "",
    ) -> None:
        self.lab = lab
        self.med = OurMediation(lab)
        self.ts = ts
        self.client = client  # more [client] settings of both peers (``relay = false``)
        self.root = root  # run the daemons from this checkout instead (``--before``)
        self.path_first = path_first  # a directory put before the checkout on PYTHONPATH (``--trace``)
        self.polled = 0  # runs where the CHILD_SA was not yet listed when `up` returned
        self.relayed = 0  # runs whose tunnel went through the relay
        self.cpu = 0  # the last run's CPU time of the three daemons from the `up` to its reply, ns
        self.marks: dict[str, float] = {}  # wall-clock times of the last run's steps seen from here

    def start(self) -> None:
        if self.root is None and self.path_first is None:
            self.med.start_server()
            self.med.start_client("bob", ts=self.ts, client=self.client)
            self.med.start_client("alice", ts=self.ts, client=self.client)
            return
        root = self.root or str(ROOT)
        # PYTHONSAFEPATH: `python -m` would put the working directory (this tree) first on sys.path, and the
        # --before side would run this tree's daemons
        env = {"PYTHONPATH": f"{self.path_first}:{root}" if self.path_first else root, "PYTHONSAFEPATH": "1"}
        m = self.med
        m.server = Iked(
            self.lab, "carol", server_toml(m.peers), name="medsrv", module="mediation_server"
        ).start(env=env)
        for me in ("bob", "alice"):
            others = [p for p in m.peers if p != me]
            m.clients[me] = Iked(
                self.lab,
                me,
                client_toml(me, others, self.ts, client=self.client),
                name="medcli",
                module="mediation_client",
            ).start(env=env)

    def bring_up_mediation(self, timeout: float = 15.0) -> None:
        """Both registered, and both clients' NAT discovery (RFC 5780, after the mediation SA came up)
        done: until then a client holds its ME_CONNECTs back (at most its nat_wait), which a daemon that
        has been running a while never does."""
        self.med.wait_registered("alice", "bob", timeout=timeout)
        deadline = time.monotonic() + timeout
        for c in (self.med.clients["alice"], self.med.clients["bob"]):
            while "nat" not in c.status().get("status", {}):
                if time.monotonic() > deadline:
                    raise IkedError("NAT discovery of the mediation clients not done")
                time.sleep(0.02)

    @staticmethod
    def _installed(sas: list[dict[str, Any]], name: str) -> bool:
        return any(
            s["name"] == name
            and s["state"] == "ESTABLISHED"
            and any(c["state"] == "INSTALLED" for c in s["child-sas"])
            for s in sas
        )

    def pids(self) -> list[int]:
        """The three daemons: carol's server, alice's and bob's clients."""
        daemons = [self.med.server, *self.med.clients.values()]
        return [d.proc.pid for d in daemons if d is not None and d.proc is not None]

    def initiate_and_wait(self, timeout: float) -> float:
        alice, pids = self.med.clients["alice"], self.pids()
        with Connection(alice.ctl_path, timeout + 2) as conn:  # connected before the clock, as vici's is
            self.cpu = -cpu_ns(pids)
            self.marks = {"up sent": time.time()}  # the marks bracket the request alone, not the CPU reads
            t0 = time.monotonic()
            r = conn.request({"cmd": "up", "conn": "bob", "timeout": timeout})
            took = time.monotonic() - t0
            self.marks["up reply received"] = time.time()
            self.cpu += cpu_ns(pids)
        if r.get("ok") and (r.get("remote") or [None])[0] == CAROL:
            self.relayed += 1  # the tunnel went through the mediation server's relay
        if not r.get("ok"):
            raise IkedError(f"up bob: {r.get('error')}")
        if self._installed(alice.list_sas(), "bob"):
            self.marks["CHILD_SA listed"] = time.time()
            return took
        self.polled += 1  # not installed at the reply: the clock runs on until it is listed
        deadline = t0 + timeout
        while not self._installed(alice.list_sas(), "bob"):
            if time.monotonic() > deadline:
                raise IkedError("mediated CHILD_SA not installed on alice")
            time.sleep(0.002)
        took = time.monotonic() - t0
        self.marks["CHILD_SA listed"] = time.time()
        return took

    def reset(self, timeout: float = 10.0) -> None:
        """``down`` the mediated IKE_SA on alice (DELETE reaches bob), wait until both forgot it."""
        alice, bob = self.med.clients["alice"], self.med.clients["bob"]
        for sa in alice.list_sas():
            if sa["name"] == "bob":
                alice.ctl({"cmd": "down", "ike": sa["uniqueid"]})
        deadline = time.monotonic() + timeout
        forced = False
        while any(s["name"] == "bob" for s in alice.list_sas()) or any(
            s["name"] == "alice" for s in bob.list_sas()
        ):
            if time.monotonic() > deadline:
                if forced:
                    raise IkedError("mediated SAs not gone after down on both peers")
                for sa in bob.list_sas():  # DELETE lost: remove bob's side directly
                    if sa["name"] == "alice":
                        bob.ctl({"cmd": "down", "ike": sa["uniqueid"]})
                forced, deadline = True, time.monotonic() + timeout
            time.sleep(0.005)
        forget_direct_mappings(self.lab)

    def stop(self) -> None:
        self.med.stop()


class CharonBlocking(CharonMediation):
    """Charon's side, ended at the event ours ends at: alice's vici ``initiate`` of child ``net`` with a
    timeout (it returns when charon's controller sees the CHILD_SA INSTALLED, as ``swanctl --initiate``
    does), ``loglevel = -1`` so that charon streams no log lines to the caller during the setup (our ``up``
    streams none). One ``list-sas`` after the return, outside the clock, confirms the INSTALLED CHILD_SA;
    if it is not listed yet, ``list-sas`` is polled every 2 ms and the clock runs on (counted in ``polled``)."""

    def __init__(self, lab: Lab, ts_addrs: dict[str, str] | None = None) -> None:
        super().__init__(lab, ts_addrs=ts_addrs)
        self.polled = 0
        self.cpu = 0  # the last run's CPU time of the three charons from the initiate to its return, ns

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.charons if c.proc is not None]

    def _installed(self) -> bool:
        return any(
            c.get("name") == self.child and c.get("state") == "INSTALLED" for c in self.alice.child_sas()
        )

    def initiate_and_wait(self, timeout: float = 30.0) -> float:
        req = {"child": self.child, "timeout": int(timeout * 1000), "loglevel": -1}
        pids = self.pids()
        with contextlib.closing(self.alice.vici()) as s:
            self.cpu = -cpu_ns(pids)
            t0 = time.monotonic()
            try:
                for _ in s.initiate(req):
                    pass
            except vici.exception.CommandException as e:
                raise CharonError(f"initiate {self.child} on alice: {e}") from None
            took = time.monotonic() - t0
            self.cpu += cpu_ns(pids)
        if self._installed():
            return took
        self.polled += 1
        deadline = t0 + timeout
        while not self._installed():
            if time.monotonic() > deadline:
                raise CharonError("mediated CHILD_SA not installed on alice")
            time.sleep(0.002)
        return time.monotonic() - t0
