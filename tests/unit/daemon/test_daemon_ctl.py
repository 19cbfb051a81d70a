"""ikectl output and the daemon's TOML config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from core_ike.daemon.config import load
from core_ike.daemon.confvalues import duration
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


@pytest.mark.parametrize("path", ["relayed through 203.0.113.10[4500], 2 probe rounds for a direct pair (every 30 s)",
                                  "direct to 198.51.100.7[4500] (moved off the relay)"])
def test_format_status_client_path(path: str) -> None:
    """The path of a mediated tunnel (core_ike/me/upgrade.py) is in the JSON reply and in the text."""
    from dataclasses import asdict

    from core_ike.me.client import ClientStatus, ConnectionStatus

    conn = ConnectionStatus("bob", "bob@med", "established", 0.0, "ab", (), "#1 a - b SUCCEEDED", 7, "", path)
    st = asdict(ClientStatus((), (conn,), ()))
    assert st["connections"][0]["path"] == path
    line = format_status({"ok": True, "status": st}).splitlines()[0]
    assert line == f"  bob -> bob@med: established, pair #1 a - b SUCCEEDED, IKE_SA #7, {path}"


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
    with pytest.raises(LocalError, match=r"unknown key 'remote_adrs' in \[connections\.x\]"):
        load(bad)
    bad.write_text('[connections.x.children.net]\nstart_action = "trap"\n')  # no peer to initiate to
    with pytest.raises(LocalError, match=r'\[connections.x\] start_action = "trap" needs remote_addrs'):
        load(bad)
    bad.write_text('[daemon]\nbogus = 1\n')
    with pytest.raises(LocalError, match="unknown \\[daemon\\] setting 'bogus'"):
        load(bad)


def test_ikectl_keyid_prints_both_notations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ikectl keyid FILE` for a public key, a private key and an OpenSSH line: the same ID_KEY_ID,
    SHA-1 over the subjectPublicKey (for RSA the PKCS#1 RSAPublicKey), as strongSwan computes it."""
    import hashlib

    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import rsa

    from core_ike.daemon.ctl import main

    key = rsa.generate_private_key(65537, 2048)
    pub = key.public_key()
    want = hashlib.sha1(pub.public_bytes(ser.Encoding.DER, ser.PublicFormat.PKCS1)).hexdigest()
    files = {
        "pub.pem": pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo),
        "key.pem": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
        "id_rsa.pub": pub.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b" me@host\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert main(["keyid", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"keyid:#{want}"
        assert out[1] == ":".join(want[i:i + 2] for i in range(0, 40, 2))
        assert out[2] == f'swanctl.conf: id = "keyid:#{want}"'
    (tmp_path / "junk").write_text("not a key\n")
    assert main(["keyid", str(tmp_path / "junk")]) == 1
    assert "ikectl:" in capsys.readouterr().err
    assert main(["keyid", str(tmp_path / "missing")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_ikectl_finds_the_one_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core_ike.daemon.ctl import DEFAULT_SOCKET, default_socket

    a, b = str(tmp_path / "iked.ctl"), str(tmp_path / "mediation-client.ctl")
    monkeypatch.delenv("IKECTL_SOCKET", raising=False)
    assert default_socket((a, b)) == DEFAULT_SOCKET  # none present: the daemons' default
    Path(b).touch()
    assert default_socket((a, b)) == b
    Path(a).touch()
    assert default_socket((a, b)) == [a, b]  # several: the user chooses
    monkeypatch.setenv("IKECTL_SOCKET", "/x/y.ctl")
    assert default_socket((a, b)) == "/x/y.ctl"
