"""nat-matrix: every pair of NAT behaviours, ours and three charons, direct / relayed / failed.

One lab per cell (docs/nat-lab.md §3.2, NAT kinds of scenarios/lab/natkinds.py; miniupnpd of
scenarios/lab/upnpgw.py; hairpinning of scenarios/lab/natlab.py). In each cell:

- ours: carol runs our mediation server (relay on, STUN with a second address), alice and bob (or venus
  behind alice's NAT) our mediation clients with the users' defaults (relay on, port mapping on); both
  measure their NAT (RFC 5780) and the table shows what they found; `ikectl up` on alice, then the path
  of the mediated IKE_SA (direct, and to what; or relayed through carol), the time to the CHILD_SA as
  `up` reports it, and the packets alice and bob sent meanwhile (their eth0 counters); a ping through
  the tunnel confirms it carries traffic;
- charon: the same topology with three strongSwan charons (scenarios/lab/medsetup.py), the same
  measurements; a charon reports no failure of the checks, so a cell without CHILD_SA after the wait
  says so.

Every cell that does not come up says why (our daemon's reason, or the charon wait that ran out).
`--quick` runs three representative cells (for the test command); a full run writes
bench/results/nat_matrix.txt and .json. NAT_MATRIX_CELLS=key,key (environment) runs only those cells:
with `--quick` as a check that writes nothing, else their rows replace the same cells of the results
(the others keep theirs; a note names the cells re-run and when).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from scenarios.lab import nat_lab
from scenarios.lab.iked import IkedError
from scenarios.lab.mediation import OurMediation
from scenarios.lab.medsetup import CharonMediation
from scenarios.lab.natkinds import EXPECTED
from scenarios.lab.natlab import STUN_EXTRA, add_carol_alt, hairpin_ruleset, tx_packets, wait_nat
from scenarios.lab.netns import Lab
from scenarios.lab.story import Story
from scenarios.lab.topologies import CAROL, NAT_PUBLIC
from scenarios.lab.upnpgw import UPNP_PUBLIC, MiniUpnpd, readdress_wan

TITLE = "NAT matrix: each pair of NAT behaviours, ours and charon: direct / relayed / failed, time, packets"

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "nat_matrix.txt"
INNER = {"alice": "10.11.0.2", "bob": "10.12.0.2", "venus": "10.11.0.3"}  # tunnel addresses on lo
LAN = {"alice": "10.1.0.2", "bob": "10.2.0.2", "venus": "10.1.0.3"}
SHORT = {"none": "none", "full-cone": "full cone", "address-restricted": "addr-restr",
         "port-restricted": "port-restr", "symmetric-sequential": "sym seq", "symmetric-random": "sym rand"}


class Cell(NamedTuple):
    key: str
    nat_a: str
    nat_b: str
    same_nat: bool = False
    hairpin: bool = False
    upnp: bool = False      # miniupnpd on natB
    charon: bool = True

    @property
    def label(self) -> str:
        if self.same_nat:
            return f"same NAT ({SHORT[self.nat_a]}), {'hairpin' if self.hairpin else 'no hairpin'}"
        return f"{SHORT[self.nat_a]} x {SHORT[self.nat_b]}" + (" + miniupnpd" if self.upnp else "")


CELLS = [
    Cell("none-none", "none", "none"),
    Cell("fc-fc", "full-cone", "full-cone"),
    Cell("ar-ar", "address-restricted", "address-restricted"),
    Cell("pr-pr", "port-restricted", "port-restricted"),
    Cell("fc-symr", "full-cone", "symmetric-random"),
    Cell("ar-symr", "address-restricted", "symmetric-random"),
    Cell("pr-symseq", "port-restricted", "symmetric-sequential"),
    Cell("pr-symr", "port-restricted", "symmetric-random"),
    Cell("symr-pr", "symmetric-random", "port-restricted"),  # alice (the initiator) behind the random NAT
    Cell("none-symr", "none", "symmetric-random"),
    Cell("symseq-symseq", "symmetric-sequential", "symmetric-sequential"),
    Cell("symr-symr", "symmetric-random", "symmetric-random"),
    Cell("same-nat", "port-restricted", "port-restricted", same_nat=True),
    Cell("same-nat-hairpin", "port-restricted", "port-restricted", same_nat=True, hairpin=True),
    Cell("pr-symr-upnp", "port-restricted", "symmetric-random", upnp=True),
    Cell("symr-symr-upnp", "symmetric-random", "symmetric-random", upnp=True),
]
QUICK = ("pr-pr", "pr-symr", "pr-symr-upnp")


class Timing(NamedTuple):
    check_timeout: int  # our clients' [client] check_timeout
    charon_wait: float  # how long a charon gets for the CHILD_SA


FULL = Timing(check_timeout=30, charon_wait=75.0)
SHORT_RUN = Timing(check_timeout=10, charon_wait=20.0)


# ---------------------------------------------------------------------------------------------- one side


def _path(remote_host: str, remote_port: Any, peer: str) -> str:
    if remote_host == CAROL:
        return "relayed"
    if remote_host == LAN[peer] or remote_host == INNER[peer]:
        return "direct (LAN)"
    if remote_host == UPNP_PUBLIC:
        return "direct (port mapping)"
    return f"direct ({remote_host}[{remote_port}])"


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"^up \w+: ", "", text)[:200]


def run_ours(lab: Lab, cell: Cell, peer: str, t: Timing, story: Story) -> dict[str, Any]:
    res: dict[str, Any] = {"result": "failed", "ms": None, "packets": None, "reason": ""}
    med = OurMediation(lab, peers=["alice", peer])
    client = f"check_timeout = {t.check_timeout}"
    try:
        med.start_server(extra=f'{STUN_EXTRA}\nrelay = true\nrelay_ports = "50000-50099"')
        other = med.start_client(peer, ts=INNER, client=client)
        alice = med.start_client("alice", ts=INNER, client=client)
        peers = med.wait_registered("alice", peer, timeout=15)
        for who, c in (("alice", alice), (peer, other)):
            try:
                res[f"nat_{who if who == 'alice' else 'peer'}"] = wait_nat(c)["summary"]
            except TimeoutError:
                res[f"nat_{who if who == 'alice' else 'peer'}"] = "discovery did not finish"
        if cell.hairpin:
            ports = {p["identity"].split("@")[0]: int(p["endpoint"].split("[")[1].rstrip("]")) for p in peers}
            lab.nft("natA", hairpin_ruleset(NAT_PUBLIC["natA"], {LAN[h]: ports[h] for h in ("alice", peer)}))
        if cell.upnp:
            try:
                other.wait_state(lambda: "external" in (other.status()["status"].get("port_mapping") or {}), 15,
                                 what="the port mapping")  # its line "port mapping (...)" comes with it
                res["mapping"] = other.status()["status"]["port_mapping"]["external"]
            except TimeoutError:
                res["mapping"] = f"none: {(other.status()['status'].get('port_mapping') or {}).get('error')}"
        tx0 = tx_packets(lab, "alice", peer)
        try:
            r = alice.up(peer, timeout=t.check_timeout + 20)
        except IkedError as e:
            res["packets"] = tx_packets(lab, "alice", peer) - tx0
            res["reason"] = _reason(e)
            return res
        res["packets"] = tx_packets(lab, "alice", peer) - tx0
        res["ms"] = r.get("elapsed_ms")
        remote = r.get("remote") or ["?", "?"]
        res["result"] = _path(str(remote[0]), remote[1], peer)
        sent, rcvd, _ = lab.ping("alice", INNER[peer], source=INNER["alice"], count=2, interval=0.1)
        if rcvd != sent:
            res["reason"] = f"CHILD_SA up but ping {rcvd}/{sent}"
            res["result"] = "failed"
        return res
    except Exception as e:  # noqa: BLE001 - a cell reports its failure, the matrix goes on
        res["reason"] = f"{type(e).__name__}: {_reason(e)}"
        return res
    finally:
        med.stop()
        story.say(f"  ours:   {_fmt_side(res)}")


def run_charon(lab: Lab, peer: str, t: Timing, story: Story) -> dict[str, Any]:
    res: dict[str, Any] = {"result": "failed", "ms": None, "packets": None, "reason": ""}
    lab.flush_conntrack()
    cm = CharonMediation(lab, initiator="alice", responder=peer, ts_addrs=INNER)
    try:
        cm.start()
        cm.bring_up_mediation()
        tx0 = tx_packets(lab, "alice", peer)
        t0 = time.monotonic()
        try:
            secs = cm.initiate_and_wait(timeout=t.charon_wait)
        except Exception:  # noqa: BLE001 - the wait ran out: charon itself reports nothing
            res["packets"] = tx_packets(lab, "alice", peer) - tx0
            failed = [ln for ln in cm.alice.log_lines(r"failed|FAILED|unable") if "p2p" in ln or "ME_" in ln]
            res["reason"] = (f"no CHILD_SA after {time.monotonic() - t0:.0f} s"
                             + (f"; charon logged: {failed[-1][-120:]}" if failed else "; charon reported no failure"))
            return res
        res["packets"] = tx_packets(lab, "alice", peer) - tx0
        res["ms"] = round(secs * 1000, 1)
        ike = cm.alice.wait_child("net", timeout=2)["ike"]
        res["result"] = _path(str(ike["remote-host"]), ike["remote-port"], peer)
        return res
    except Exception as e:  # noqa: BLE001
        res["reason"] = f"{type(e).__name__}: {_reason(e)}"
        return res
    finally:
        cm.stop()
        story.say(f"  charon: {_fmt_side(res)}")


def run_cell(cell: Cell, t: Timing, story: Story, charon: bool) -> dict[str, Any]:
    peer = "venus" if cell.same_nat else "bob"
    out: dict[str, Any] = {"key": cell.key, "label": cell.label, "nat_a": cell.nat_a,
                           "nat_b": cell.nat_a if cell.same_nat else cell.nat_b,
                           "expected_a": "/".join(EXPECTED[cell.nat_a]), "expected_b": "/".join(
                               EXPECTED[cell.nat_a if cell.same_nat else cell.nat_b])}
    story.step(f"cell {cell.label}")
    # registered: torn down below, its directory removed by story.finish() when the story passed
    lab = story.lab(nat_lab(nat_a=cell.nat_a, nat_b=cell.nat_b, same_nat_peer=cell.same_nat))  # type: ignore[arg-type]
    gw = None
    try:
        add_carol_alt(lab)
        for h in ("alice", peer):
            lab.addr(h, "lo", f"{INNER[h]}/32")
        if cell.upnp:
            readdress_wan(lab, "natB", others=("carol", "natA"))
            gw = MiniUpnpd(lab, "natB", "10.2.0.0/24").start()
        out["ours"] = run_ours(lab, cell, peer, t, story)
        if gw is not None:
            out["ours"]["mappings_left"] = len(gw.redirects())
        if charon and cell.charon:
            out["charon"] = run_charon(lab, peer, t, story)
        else:
            out["charon"] = None
    except Exception as e:  # noqa: BLE001 - the lab itself failed: the cell says so
        out.setdefault("ours", {"result": "failed", "ms": None, "packets": None,
                                "reason": f"lab: {type(e).__name__}: {_reason(e)}"})
        out.setdefault("charon", None)
    finally:
        if gw is not None:
            gw.stop()
        if not story.keep:  # --keep: story.finish() leaves every cell's namespaces for inspection
            lab.teardown()
    return out


# ---------------------------------------------------------------------------------------------- report


def _fmt_side(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    s = r["result"]
    if r.get("ms") is not None:
        s += f", {r['ms']:.0f} ms"
    if r.get("packets") is not None:
        s += f", {r['packets']} pkts"
    if r.get("reason"):
        s += f" ({r['reason']})"
    return s


def table(cells: list[dict[str, Any]]) -> str:
    head = f"{'cell':<34} {'alice NAT (measured)':<30} {'peer NAT (measured)':<30} {'ours':<44} charon"
    lines = [head, "-" * len(head)]
    for c in cells:
        o = c["ours"]
        lines.append(f"{c['label']:<34} {_nat_short(o.get('nat_alice')):<30} {_nat_short(o.get('nat_peer')):<30} "
                     f"{_fmt_side(o):<44} {_fmt_side(c['charon'])}")
    return "\n".join(lines)


def _nat_short(summary: str | None) -> str:
    if not summary:
        return "?"
    m = re.match(r"mapping (\S+), filtering (\S+)", summary)
    if not m:
        return summary[:30]
    extra = " seq" if "sequential" in summary else " rand" if "random ports" in summary else ""
    return f"{m.group(1).rstrip(',')}/{m.group(2).rstrip(',')}{extra}"


def _merged(fresh: list[dict[str, Any]], header: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The stored cells with the fresh ones in their place, and a note saying which are from when."""
    import json

    old = json.loads(RESULTS.with_suffix(".json").read_text())
    new = {c["key"]: c for c in fresh}
    cells = [new.pop(c["key"], c) for c in old["cells"]] + list(new.values())
    oh = old["header"]
    note = (f"cells re-run {header['date']} at {header['commit']} (NAT_MATRIX_CELLS="
            f"{','.join(c['key'] for c in fresh)}); "
            f"the others from {oh['date']} at {oh['commit']} (load {oh['load_before'][0]})")
    return cells, [note]


def write(cells: list[dict[str, Any]], header: dict[str, Any], t: Timing, notes: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from bench import results_io as rio

    n = len(cells)
    ours_direct = sum(1 for c in cells if c["ours"]["result"].startswith("direct"))
    ours_relayed = sum(1 for c in cells if c["ours"]["result"] == "relayed")
    ch = [c for c in cells if c["charon"] is not None]
    ch_direct = sum(1 for c in ch if c["charon"]["result"].startswith("direct"))
    figures = [
        rio.figure("cells_direct", "NAT matrix cells with a direct tunnel", rio.count(ours_direct, n, "cells"),
                   rio.count(ch_direct, len(ch), "cells"), better="higher", readme=True,
                   differences=["ours with its users' defaults: relay on, port mapping on; charon has neither",
                                f"ours: check_timeout {t.check_timeout} s; charon: waited {t.charon_wait:.0f} s"]),
        rio.figure("cells_relayed", "NAT matrix cells relayed by the mediation server (ours only)",
                   rio.count(ours_relayed, n, "cells"), None, better=None, readme=False,
                   differences=["strongSwan's mediation server relays no data"]),
    ]
    h = rio.finish_header(header, quick=False, rounds=1)
    doc = {"schema": rio.SCHEMA, "bench": "nat_matrix", "header": h, "figures": figures,
           "notes": NOTES + (notes or []), "cells": cells}
    problems = rio.validate(doc)
    if problems:
        raise ValueError(f"nat_matrix results: {problems}")
    text = "\n".join(["nat_matrix", *rio.header_lines(h), "", table(cells), "", *rio.figures_lines(figures),
                      "", "notes:", *(f"- {n}" for n in doc["notes"])]) + "\n"
    RESULTS.write_text(text)
    import json
    RESULTS.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")


NOTES = [
    "one lab per cell; the time is `ikectl up` to the CHILD_SA (ours) or initiate to INSTALLED (charon); "
    "packets: what alice and the peer sent on eth0 meanwhile (every datagram, retransmissions included)",
    "full cone and address-restricted forward new inbound UDP to the one LAN host (docs/nat-lab.md §4.4); "
    "the hairpin cell hairpins the peers' mappings toward carol; the miniupnpd gateway's WAN address is "
    "198.20.0.2 (miniupnpd refuses RFC 5737 addresses)",
    "ours predicts the ports of a sequential symmetric NAT (core_ike/me/predict.py); against a random one "
    "behind a port-restricted NAT it probes many ports (core_ike/me/birthday.py: the random side opens 256 "
    "extra sockets, the port-restricted side probes at most 2048 random ports of its address, 5 s at most; "
    "their checks are in the packet count); two random ones relay; the path shown is the one at setup (a "
    "relayed tunnel probes for a direct pair afterwards, core_ike/me/upgrade.py)",
    "charon under 40 ms (no NAT; same NAT with hairpin): every one of its pairs is decided quickly (the host "
    "pair wins, no pair stays pending), so its fixed 1 s wait after the first successful check "
    "(ME_WAIT_TO_FINISH) ends early; elsewhere a pending pair keeps it",
]


def run(story: Story, quick: bool = False) -> None:
    from bench import results_io as rio

    header = rio.start_header(["nat-matrix", *(["--quick"] if quick else [])], script="scenarios/run")
    t = SHORT_RUN if quick else FULL
    only = [k for k in os.environ.get("NAT_MATRIX_CELLS", "").split(",") if k]
    cells = _cells(quick, only)
    story.step(f"{len(cells)} cells, one lab each (check_timeout {t.check_timeout} s, charon waits "
               f"{t.charon_wait:.0f} s){'; --quick' if quick else ''}")
    results = []
    for cell in cells:
        # charon in the quick run only where it connects (its failure takes the whole wait)
        charon = (not quick or cell.key == "pr-pr") and not (quick and only)
        results.append(run_cell(cell, t, story, charon))
    story.step("the matrix")
    for line in table(results).splitlines():
        story.say(line)
    _check(story, results)
    if not quick and only:
        results, notes = _merged(results, header)
        write(results, header, t, notes)
        story.say(f"written: {RESULTS.relative_to(ROOT)} and .json (cells {', '.join(only)} replaced)")
    elif not quick:
        write(results, header, t)
        story.say(f"written: {RESULTS.relative_to(ROOT)} and .json")


def _cells(quick: bool, only: list[str]) -> list[Cell]:
    """The cells to run: those named in NAT_MATRIX_CELLS (`only`), else all, or the quick ones."""
    if only:
        unknown = sorted(set(only) - {c.key for c in CELLS})
        if unknown:
            raise ValueError(f"NAT_MATRIX_CELLS: unknown cells {', '.join(unknown)}")
        return [c for c in CELLS if c.key in only]
    return [c for c in CELLS if c.key in QUICK] if quick else list(CELLS)


# what ours must show per cell (how its result starts, and why); every other cell: direct
EXPECT = {
    "pr-symr": ("direct (", "many-port probing, core_ike/me/birthday.py"),
    "symr-pr": ("direct (", "many-port probing, the random side initiating from an extra socket"),
    "symr-symr": ("relayed", "two random symmetric NATs: the relay"),
    "pr-symr-upnp": ("direct (port mapping)", "direct to the mapped endpoint"),
    "pr-symseq": ("direct (", "predicted ports, core_ike/me/predict.py"),
    "symseq-symseq": ("direct (", "predicted ports, core_ike/me/predict.py"),
}
DIRECT = ("direct", "direct in every cell but two random symmetric NATs without port mapping")


def _check(story: Story, results: list[dict[str, Any]]) -> None:
    """What the matrix must show: every failure explained, port mappings deleted, ours direct in every
    cell but random symmetric x random symmetric (relayed there), and how in the hard cells (EXPECT)."""
    for c in results:
        for side in ("ours", "charon"):
            r = c[side]
            if r is not None and r["result"] == "failed":
                story.check(bool(r["reason"]), f"{c['label']}: {side} failed and says why: {r['reason'] or '?'}")
        if c["ours"].get("mappings_left") is not None:
            story.check(c["ours"]["mappings_left"] == 0, f"{c['label']}: the port mapping was deleted at shutdown")
        start, why = EXPECT.get(c["key"], DIRECT)
        story.check(c["ours"]["result"].startswith(start), f"{c['label']}: ours {c['ours']['result']} ({why})")
