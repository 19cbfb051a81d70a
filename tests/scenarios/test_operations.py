"""What an administrator meets, on real daemons in network namespaces, through the installed `ikectl`:
`up` that fails with the peer's reason, reload (SIGHUP and `ikectl reload`) that keeps untouched SAs,
DELETE on SIGTERM, sd_notify readiness, `down` by name, `conns`, `stats`, `list` with both directions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scenarios.lab import Lab
from scenarios.lab.iked import Iked
from tests.guards import needs

pytestmark = [pytest.mark.netns, needs("root", why="daemons in network namespaces")]

IKECTL = str(Path(sys.executable).parent / "ikectl")  # the console command setup installs

SECRETS = """
[[secrets.ike]]
id = ["alice@example.org", "bob@example.org"]
secret = "operations-test-secret-0123456789"
"""


def conf(me: str, peer_ip: str | None, local_ts: str, remote_ts: str, extra: str = "",
         metrics: bool = False) -> str:
    other = "bob" if me == "alice" else "alice"
    metrics_line = 'metrics = "127.0.0.1:9488"\n' if metrics else ""
    remote = f'remote_addrs = ["{peer_ip}"]\n' if peer_ip else ""
    return f"""[daemon]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
{metrics_line}{SECRETS}
[connections.home]
{remote}local = {{ auth = "psk", id = "{me}@example.org" }}
remote = {{ auth = "psk", id = "{other}@example.org" }}
[connections.home.children.net]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
{extra}"""


def ikectl(d: Iked, *args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IKECTL, "-s", d.ctl_path, *args], capture_output=True, text=True, timeout=timeout)


def ikectl_json(d: Iked, *args: str) -> dict[str, Any]:
    r = ikectl(d, "--json", *args)
    reply: dict[str, Any] = json.loads(r.stdout)
    return reply


@pytest.fixture
def pair(two_hosts_per_test: Lab):  # type: ignore[no-untyped-def]
    lab = two_hosts_per_test
    a_in, b_in = lab.info["inner"]["alice"], lab.info["inner"]["bob"]
    alice = Iked(lab, "alice", conf("alice", "192.0.2.2", f"{a_in}/32", f"{b_in}/32", metrics=True))
    # bob expects another subnet on alice's side: the CHILD_SA is refused with TS_UNACCEPTABLE
    bob = Iked(lab, "bob", conf("bob", None, f"{b_in}/32", "172.16.0.0/24"))
    alice.start()  # the lab is alice's service manager: start() waits for her READY=1 (Iked.notes)
    bob.start()
    yield lab, alice, bob, alice.notes


def test_up_fails_with_the_peers_reason_then_reload_fixes_it(pair) -> None:  # type: ignore[no-untyped-def]
    lab, alice, bob, note = pair
    a_in, b_in = lab.info["inner"]["alice"], lab.info["inner"]["bob"]
    assert note.seen("READY=1")

    r = ikectl(alice, "up", "home")
    assert r.returncode == 1, r.stdout
    assert "CHILD_SA 'net' failed: TS_UNACCEPTABLE from the peer" in r.stderr
    assert f"we proposed {a_in}/32 === {b_in}/32" in r.stderr
    assert "Error" not in r.stderr and "established" not in r.stdout

    # bob's admin fixes the config and sends SIGHUP; the change needs no restart
    bob.write_config(conf("bob", None, f"{b_in}/32", f"{a_in}/32"))
    bob.reload()  # SIGHUP; returns at the READY=1 that follows its RELOADING=1
    assert "reloaded configuration: 0 added, 0 removed, 1 changed (home)" in bob.log_text()
    r = ikectl(alice, "up", "home")
    assert r.returncode == 0, r.stderr
    assert "established CHILD_SA net{" in r.stdout and f"{a_in}/32 === {b_in}/32" in r.stdout

    _sent, received, _ = lab.ping("alice", b_in, source=a_in, count=3, interval=0.1)
    assert received == 3
    (sa,) = ikectl_json(alice, "list")["sas"]
    (child,) = sa["child-sas"]
    assert child["packets-out"] >= 3 and child["packets-in"] >= 3 and child["bytes-out"] > 0
    assert "bytes_o" in ikectl(alice, "list").stdout

    # a reload that adds a connection keeps the running IKE_SA (same unique id)
    alice.write_config(conf("alice", "192.0.2.2", f"{a_in}/32", f"{b_in}/32", metrics=True) + """
[connections.spare]
remote_addrs = ["192.0.2.2"]
local = { auth = "psk", id = "alice@example.org" }
remote = { auth = "psk", id = "bob@example.org" }
""")
    since = note.mark()
    r = ikectl(alice, "reload")
    assert r.returncode == 0 and "1 added, 0 removed, 0 changed, 1 unchanged" in r.stdout, r.stdout + r.stderr
    note.wait("RELOADING=1", 10, since)  # read by the lab's own thread: it may come in after the reply
    (sa2,) = ikectl_json(alice, "list")["sas"]
    assert sa2["uniqueid"] == sa["uniqueid"]
    conns = ikectl(alice, "conns").stdout
    assert "spare: IKEv2" in conns and f"local:  {a_in}/32" in conns and "pre-shared key" in conns

    stats = ikectl(alice, "stats")
    assert stats.returncode == 0 and "IKE_SAs: 1 total, 0 half-open, 1 ESTABLISHED" in stats.stdout
    st = ikectl_json(alice, "stats")["stats"]
    assert st["events"]["child-failed:TS_UNACCEPTABLE"] == 1 and st["events"]["child-established"] == 1

    r = ikectl(alice, "loglevel", "ike", "debug")
    assert r.returncode == 0 and "log level of ike is now DEBUG" in r.stdout
    r = ikectl(alice, "loglevel", "bogus")
    assert r.returncode == 1 and "unknown log level 'bogus'" in r.stderr

    # Prometheus metrics on alice's loopback (opt-in; the scrape runs inside alice's namespace)
    scrape = lab.run("alice", [sys.executable, "-c", "import urllib.request as u; print(u.urlopen("
                               "'http://127.0.0.1:9488/metrics', timeout=5).read().decode())"]).stdout
    assert 'ikeme_ike_sas{state="ESTABLISHED"} 1.0' in scrape
    assert 'ikeme_child_sa_failures_total{reason="TS_UNACCEPTABLE"} 1.0' in scrape
    assert "ikeme_child_sa_setups_total 1.0" in scrape
    out_bytes = [ln for ln in scrape.splitlines() if ln.startswith('ikeme_esp_bytes_total{direction="out"}')]
    assert out_bytes and float(out_bytes[0].split()[-1]) > 0

    # a bad edit: the reload is refused, nothing changes
    alice.write_config(conf("alice", "192.0.2.2", f"{a_in}/32", f"{b_in}/32",
                            'esp_proposals = "aes128-sha256-modp9999"\n', metrics=True))
    r = ikectl(alice, "reload")
    assert r.returncode == 1 and "reload failed, configuration unchanged" in r.stderr
    assert len(ikectl_json(alice, "list")["sas"]) == 1

    # down by connection name; both sides lose the SA
    r = ikectl(alice, "down", "home")
    assert r.returncode == 0 and "closed home[" in r.stdout, r.stderr
    assert ikectl_json(alice, "list")["sas"] == []
    bob.wait_sas(lambda sas: not sas, timeout=5)
    r = ikectl(alice, "down", "home")
    assert r.returncode == 1 and "no IKE_SA of connection 'home'" in r.stderr


def test_sigterm_sends_delete(pair) -> None:  # type: ignore[no-untyped-def]
    lab, alice, bob, note = pair
    a_in, b_in = lab.info["inner"]["alice"], lab.info["inner"]["bob"]
    bob.write_config(conf("bob", None, f"{b_in}/32", f"{a_in}/32"))
    assert ikectl(bob, "reload").returncode == 0
    assert ikectl(alice, "up", "home").returncode == 0
    bob.wait_sas(lambda sas: len(sas) == 1, timeout=5)
    # the daemon's own exit is the event (at most 2 s for the DELETE's answer, then the close); SIGKILL
    # only ends a hang (on a loaded host the exit can take longer than the harness's usual 3 s)
    rc = alice.stop(timeout=30.0)
    log = alice.log_text()
    assert rc == 0, log[-3000:]
    assert "stopping: deleting 1 IKE_SA(s)" in log and "did not confirm" not in log, log[-1500:]
    assert note.seen("STOPPING=1")
    # bob learnt it from the DELETE, not from a DPD timeout
    assert bob.list_sas() == []
    assert "received DELETE for IKE_SA" in bob.log_text()
