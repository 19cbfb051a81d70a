"""The charon initiator bench's child shape (bench/charon_child.py): every IKE_SA of the batch has its
CHILD_SA installed on both responders (ours in its default data plane, charon in kernel-libipsec), so the
figure cannot silently be childless; and a packet crosses such a CHILD_SA through each responder's ESP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from bench_run import figures, readme_rows, run_quick

from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", "tun", why="network namespaces, a strongSwan charon and TUN devices"),
]


def test_child_shape_installs_a_child_sa_per_ike_sa(tmp_path: Path) -> None:
    doc = run_quick("charon_initiator", tmp_path, "--shape", "child", "--no-split", timeout=600)
    figs = figures(doc)
    assert "charon_initiator_cpu_psk" not in figs  # --shape child: the childless sides did not run
    text = (tmp_path / "charon_initiator.txt").read_text()
    assert "failed" not in text
    for auth, count in (("psk", 20), ("rsa", 10)):  # --quick: 4 warmup IKE_SAs, then 20 (PSK) or 10 (RSA)
        f = figs[f"charon_initiator_cpu_{auth}_child"]
        assert f["readme"] and f["ours"]["n"] == 1 and f["charon"]["n"] == 1 and f["ratio"] is not None
        # CHILD_SAs INSTALLED (ikectl list / vici list-sas) with their route into the TUN device, at the end
        # of the batch: [held, IKE_SAs initiated] per run
        assert f["child_sas_held"] == {"ours": [[4 + count, 4 + count]], "charon": [[4 + count, 4 + count]]}
        assert any("kernel-libipsec" in d and 'dataplane = "auto"' in d for d in f["differences"])
    rows = readme_rows(tmp_path)  # bench/readme_table.py takes the child figures into README.md's table
    assert sum("with one CHILD_SA per IKE_SA" in r for r in rows) == 2


def test_a_packet_crosses_each_responders_child_sa(load_bench: Callable[[str], ModuleType]) -> None:
    ci = load_bench("charon_initiator")
    cc = ci.charon_child
    from scenarios.lab import two_hosts

    with two_hosts(prefix="cchild", inner=False) as lab:
        cc.add_addresses(lab, 2)
        pki = ci.make_pki(0)
        for impl in cc.SIDES:
            resp = ci.responder(lab, impl, "psk", pki)
            init = ci.initiator(lab, "psk", pki, 2, f"init-{impl}", child=True)
            resp.start()
            try:
                init.start()
                assert ci.initiate_all(init, ["c0", "c1"], 2, 30.0) == (2, [])
                assert resp.held() == 2
                ping = lab.run("alice", ["ping", "-c", "1", "-W", "5", "-I", cc.inner(1), cc.RESP_INNER],
                               check=False, timeout=20)
                assert ping.returncode == 0, f"{impl}: {ping.stdout}{ping.stderr}"
                child = next(c for c in init.child_sas() if c["ike"]["name"] == "c1")
                assert int(child["packets-out"]) == 1 and int(child["packets-in"]) == 1, (impl, child)
            finally:
                init.stop()
                resp.stop()
