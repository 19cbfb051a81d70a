"""ikectl output and the daemon's TOML config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from core_ike.daemon.config import duration, load
from core_ike.daemon.ctl import format_sas, format_status
from core_ike.errors import LocalError

ROOT = Path(__file__).resolve().parents[3]


def test_format_status_server_and_client() -> None:
    server = {"ok": True, "peers": [{"identity": "alice@med", "endpoint": "203.0.113.1[4500]", "since": 5,
                                     "idle": 1, "ike": 3}],
              "callbacks": [{"requester": "alice@med", "target": "bob@med", "expires_in": 590}]}
    text = format_status(server)
    assert "alice@med @ 203.0.113.1[4500]" in text and "alice@med waits for bob@med" in text
    client = {"ok": True, "status": {
        "mediation": [{"name": "medsrv", "unique_id": 1, "state": "ESTABLISHED", "local": ["10.1.0.2", 4500],
                       "remote": ["203.0.113.10", 4500], "srflx": ["203.0.113.1", 4500]}],
        "connections": [{"name": "bob", "peer": "bob@med", "state": "failed", "since": 0, "connect_id": "ab",
                         "pairs": ["#1 a - b FAILED"], "selected": None, "sa_id": None,
                         "reason": "checks failed: no check succeeded"}],
        "target_lists": []}}
    text = format_status(client)
    assert "public endpoint 203.0.113.1[4500]" in text
    assert "bob -> bob@med: failed (checks failed: no check succeeded)" in text and "#1 a - b FAILED" in text


def test_format_sas() -> None:
    sa = {"name": "home", "uniqueid": 1, "state": "ESTABLISHED", "initiator": True, "initiator-spi": "aa",
          "responder-spi": "bb", "local-id": "alice", "local-host": "192.0.2.1", "local-port": 4500,
          "nat-local": False, "remote-id": "bob", "remote-host": "192.0.2.2", "remote-port": 4500,
          "nat-remote": True, "proposal": "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519", "established": 3,
          "rekey-time": 100, "child-sas": [{"name": "net", "uniqueid": 1, "reqid": 1, "state": "INSTALLED",
                                            "mode": "TUNNEL", "encap": True, "protocol": "ESP",
                                            "proposal": "AES_GCM_16_128", "install-time": 3, "rekey-time": 50,
                                            "life-time": 60, "spi-in": "c1", "spi-out": "c2",
                                            "local-ts": ["10.1.0.0/24"], "remote-ts": ["10.2.0.0/24"]}]}
    text = format_sas([sa])
    assert "home: #1, ESTABLISHED, IKEv2, aa_i* bb_r" in text
    assert "TUNNEL-in-UDP" in text and "in  c1, out c2" in text and "[NAT]" in text


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("20m", 1200), ("4h", 14400), ("1d", 86400), (5, 5)])
def test_duration(text: object, seconds: float) -> None:
    assert duration(text) == seconds


def test_example_configs_load() -> None:
    cfg = load(ROOT / "deploy/examples/iked.toml")
    (home,) = cfg.connections
    assert home.children[0].local_ts == ["10.1.0.0/24"] and home.dpd_delay == 30.0


def test_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[connections.x]\nmediation = true\nmediated_by = "y"\n')
    with pytest.raises(LocalError, match="cannot be a mediated connection"):
        load(bad)
    bad.write_text("[daemon]\nlisten = [\n")
    with pytest.raises(LocalError, match="cannot read config"):
        load(bad)
    bad.write_text('[connections.x]\nremote_adrs = ["192.0.2.1"]\n')  # a typo is an error, never ignored
    with pytest.raises(LocalError, match="unknown key 'remote_adrs' in \\[connections.x\\]"):
        load(bad)
    bad.write_text('[connections.x.children.net]\nstart_action = "trap"\n')
    with pytest.raises(LocalError, match="trap policies are not supported"):
        load(bad)
    bad.write_text('[daemon]\nbogus = 1\n')
    with pytest.raises(LocalError, match="unknown \\[daemon\\] setting 'bogus'"):
        load(bad)
