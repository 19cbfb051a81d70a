"""A test network namespace for the XFRM data plane's tests, and what the kernel shows in one: the
source routes in table 220 (`ip route show table 220`) and the templates of the XFRM policies
(`ip xfrm policy`). Read through iproute2, as an operator would; the lab's hosts are namespaces too
(`Lab.ns(host)`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.guards import require


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def route_table(ns: str, table: int = 220) -> str:
    """The routes of `table` in namespace `ns`, "" when it has none."""
    r = subprocess.run(["ip", "-n", ns, "route", "show", "table", str(table)], capture_output=True, text=True,
                       timeout=30)
    return r.stdout.strip() if r.returncode == 0 else ""  # a table without routes does not exist


def policy_templates(ns: str) -> set[tuple[str, str, str]]:
    """(direction, tmpl src, tmpl dst) of every XFRM policy in namespace `ns`."""
    out: set[tuple[str, str, str]] = set()
    direction = ""
    for line in sh("ip", "-n", ns, "xfrm", "policy").splitlines():
        w = line.split()
        if "dir" in w:
            direction = w[w.index("dir") + 1]
        elif w[:1] == ["tmpl"]:
            out.add((direction, w[w.index("src") + 1], w[w.index("dst") + 1]))
    return out


@contextmanager
def inside_namespace(ns: str, setup: Sequence[Sequence[str]], why: str) -> Iterator[None]:
    """Namespace `ns` with `lo` up and `setup` run in it (each an `ip -n ns` command line without that
    prefix), entered for the sockets, threads and netlink the test makes; deleted afterwards."""
    require("root", "iproute2", why=why)
    from pyroute2 import netns

    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for argv in setup:
            sh("ip", "-n", ns, *argv)
        netns.pushns(ns)
        try:
            yield
        finally:
            netns.popns()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def veth(a: str, b: str) -> list[list[str]]:
    """A veth pair `a`/`b` inside the namespace, both ends up (an interface with routes, no peer host)."""
    return [["link", "add", a, "type", "veth", "peer", "name", b], ["link", "set", a, "up"], ["link", "set", b, "up"]]


def run_in_new_namespace(ns: str, code: str, why: str) -> Any:
    """Run the Python program `code` in a new namespace `ns` (deleted afterwards), with the repository on
    its path; the JSON its last output line holds."""
    require("root", why=why)
    root = Path(__file__).resolve().parents[2]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], cwd=root, text=True,
                           capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
