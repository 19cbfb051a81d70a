"""The scenarios with our own daemons, each through ``scenarios/run`` to a PASSED verdict (exit code 0).

medsrv-psk, medsrv-rsa (portals over HTTP: lighttpd + FastCGI in the namespaces), behind-same-nat
(callback path, LAN pair), symmetric-nat (relay off: clear failure within check_timeout),
symmetric-nat-relay(-both) (through the mediation server's data relay), dual-stack (v4 NATs, global
v6: the direct IPv6 host pair wins) and ike-charon (the
earlier demo, our iked with a real charon). About 30 s together.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import needs

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "scenarios" / "run"

pytestmark = [pytest.mark.netns, needs("root", why="scenarios in network namespaces")]

OURS = ["medsrv-psk", "behind-same-nat", "symmetric-nat", "symmetric-nat-relay", "symmetric-nat-relay-both",
        "dual-stack"]


def run_scenario(name: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), name], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def assert_passed(name: str, res: subprocess.CompletedProcess[str]) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"{name}: PASSED" in res.stdout, out
    assert "FAIL " not in res.stdout, out


def test_runner_lists_ours() -> None:
    out = subprocess.run([sys.executable, str(RUN)], capture_output=True, text=True, check=True).stdout
    for name in [*OURS, "medsrv-rsa", "ike-charon"]:
        assert name in out


@pytest.mark.parametrize("name", OURS)
def test_scenario_ours(name: str) -> None:
    res = run_scenario(name)
    assert_passed(name, res)
    if name == "symmetric-nat":
        # bounded, no hang: the scenario checks the failure came at check_timeout
        assert "checks failed" in res.stdout and "PASS  failure reported in" in res.stdout
    if name.startswith("symmetric-nat-relay"):
        assert "through carol's data relay" in res.stdout and "PASS  carol relays the ESP-in-UDP" in res.stdout
    if name == "dual-stack":
        assert "PASS  the IPv6 HOST-HOST pair was selected" in res.stdout


@needs("lighttpd", why="the portals of medsrv-rsa")
def test_scenario_medsrv_rsa() -> None:
    res = run_scenario("medsrv-rsa")
    assert_passed("medsrv-rsa", res)
    assert "both connection lists show UP" in res.stdout
    assert res.stdout.count("Peer ") >= 2  # "Peer alice added, identity ..." from the server manager


@pytest.mark.interop
@needs("strongswan", why="ike-charon runs a charon")
def test_scenario_ike_charon() -> None:
    res = run_scenario("ike-charon")
    assert_passed("ike-charon", res)


def test_demo_is_medsrv_rsa() -> None:
    from scenarios import demo

    assert demo.DEMO == "medsrv-rsa"
