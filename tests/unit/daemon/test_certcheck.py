"""Our own certificate's validity period is checked when the configuration is loaded
(core_ike/daemon/certcheck.py, docs/operations.md "Certificates"): outside it the daemon does not start
and a reload is refused, naming the file and the dates; within 30 days of its end a warning says so.
A CA we trust outside its period is a warning only (a renewed CA may stand beside it)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from core_ike.daemon.certcheck import check_certificates
from core_ike.daemon.config import load
from core_ike.daemon.runtime import Daemon
from core_ike.errors import LocalError
from scenarios.lab.creds import Validity, host_cert, validity
from tests.unit.daemon.ikedproc import iked

ROOT = Path(__file__).resolve().parents[3]

CONF = """[daemon]
listen = ["127.0.0.1"]
port = {port}
natt_port = {natt}
control = "{dir}/ctl.sock"
dataplane = "none"

[[secrets.private]]
file = "moon.key"

[[secrets.ca]]
file = "ca.pem"

[connections.home]
remote_addrs = ["192.0.2.2"]
local = {{ auth = "pubkey", id = "moon.example.org", certs = ["moon.pem"] }}
remote = {{ auth = "pubkey", id = "sun.example.org" }}
"""

LONG = validity(-400, 400)  # far from either end


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _root(cn: str, valid: Validity) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA valid for `valid` (scenarios.lab.creds makes its CAs valid for 30 days)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    """One CA and its key (certificates are issued per test, with the validity each one needs)."""
    ca, key = _root("Example Root CA", LONG)
    return {"ca": ca, "ca_key": key}


def _write(d: Path, pki: dict[str, object], own: Validity, ca: x509.Certificate | None = None) -> Path:
    cert, key = host_cert(pki["ca"], pki["ca_key"], "moon.example.org", valid=own)  # type: ignore[arg-type]
    (d / "moon.pem").write_bytes(_pem(cert))
    (d / "moon.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    (d / "ca.pem").write_bytes(_pem(ca or pki["ca"]))  # type: ignore[arg-type]
    conf = d / "iked.toml"
    conf.write_text(CONF.format(port=_free_port(), natt=_free_port(), dir=d))
    return conf


def _date(t: dt.datetime) -> str:
    return t.replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_valid_certificate_loads_without_warning(tmp_path: Path, pki: dict[str, object]) -> None:
    cfg = load(_write(tmp_path, pki, LONG))
    assert cfg.connections[0].local.certs and cfg.warnings == []


def test_expired_own_certificate_refused_with_file_and_dates(tmp_path: Path, pki: dict[str, object]) -> None:
    own = validity(-60, -2)
    conf = _write(tmp_path, pki, own)
    with pytest.raises(LocalError) as e:
        load(conf)
    assert str(e.value) == (f"[connections.home.local] certs: {tmp_path}/moon.pem: our certificate "
                            "CN=moon.example.org,O=Example,C=CH "
                            f"expired on {_date(own[1])} (valid from {_date(own[0])} until {_date(own[1])})")


def test_not_yet_valid_own_certificate_refused(tmp_path: Path, pki: dict[str, object]) -> None:
    own = validity(3, 400)
    with pytest.raises(LocalError, match=rf"{tmp_path}/moon.pem: our certificate .* is not valid yet "
                                         rf"\(valid from {_date(own[0])} until {_date(own[1])}\)"):
        load(_write(tmp_path, pki, own))


def test_certificate_expiring_within_30_days_is_a_warning(tmp_path: Path, pki: dict[str, object]) -> None:
    own = validity(-300, 10.5)
    cfg = load(_write(tmp_path, pki, own))
    assert cfg.warnings == [f"[connections.home.local] certs: {tmp_path}/moon.pem: our certificate "
                            f"CN=moon.example.org,O=Example,C=CH expires in 10 days, on {_date(own[1])}"]
    # 31 days before its end: nothing to say
    assert load(tmp_path / "iked.toml", now=own[1] - dt.timedelta(days=31)).warnings == []
    # its last day, and one second after it
    assert "expires today" in load(tmp_path / "iked.toml", now=own[1] - dt.timedelta(hours=2)).warnings[0]
    with pytest.raises(LocalError, match="expired on"):
        load(tmp_path / "iked.toml", now=own[1] + dt.timedelta(seconds=1))


def test_expired_ca_is_only_a_warning(tmp_path: Path, pki: dict[str, object]) -> None:
    expired_ca, _ = _root("Old Root CA", validity(-400, -1))
    cfg = load(_write(tmp_path, pki, LONG, ca=expired_ca))
    assert len(cfg.warnings) == 1 and cfg.warnings[0].startswith(f"[[secrets.ca]] file: {tmp_path}/ca.pem: "
                                                                  "CA certificate CN=Old Root CA,O=Example "
                                                                  "expired on ")


def test_check_certificates_names_the_chain_certificate(tmp_path: Path, pki: dict[str, object]) -> None:
    conf = _write(tmp_path, pki, LONG)
    chain, _ = host_cert(pki["ca"], pki["ca_key"], "Intermediate", valid=validity(-400, -1))  # type: ignore[arg-type]
    (tmp_path / "sub.pem").write_bytes(_pem(chain))
    conf.write_text(conf.read_text().replace('certs = ["moon.pem"]', 'certs = ["moon.pem", "sub.pem"]'))
    with pytest.raises(LocalError, match=rf"{tmp_path}/sub.pem: a certificate of our chain CN=Intermediate"):
        load(conf)
    cfg = load(_write(tmp_path, pki, LONG))
    # the function alone, at a time given: the same certificates half a year later are expired
    with pytest.raises(LocalError, match="our certificate"):
        check_certificates(cfg.raw, cfg.connections, cfg.creds.cas, tmp_path,
                           dt.datetime.now(dt.UTC) + dt.timedelta(days=500))


def test_reload_with_an_expired_certificate_keeps_the_configuration(tmp_path: Path,
                                                                     pki: dict[str, object]) -> None:
    conf = _write(tmp_path, pki, LONG)
    d = Daemon(load(conf))
    d.config_path = str(conf)
    before = d.engine.configs[0].local.certs[0]
    _write(tmp_path, pki, validity(-60, -2))
    r = d.reload()
    assert r["ok"] is False
    assert f"reload failed, configuration unchanged: [connections.home.local] certs: {tmp_path}/moon.pem: " \
           "our certificate" in r["error"]
    assert d.engine.configs[0].local.certs[0] is before


def _run_iked(conf: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "core_ike.daemon.main", "-c", str(conf)], capture_output=True,
                          text=True, timeout=60, env=env, cwd=conf.parent)


def test_iked_refuses_to_start_with_an_expired_certificate(tmp_path: Path, pki: dict[str, object]) -> None:
    own = validity(-60, -2)
    r = _run_iked(_write(tmp_path, pki, own))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"iked: [connections.home.local] certs: {tmp_path}/moon.pem: our certificate "
                                     f"CN=moon.example.org,O=Example,C=CH expired on {_date(own[1])} "
                                     f"(valid from {_date(own[0])} until {_date(own[1])})"]


def test_iked_logs_the_warning_when_it_starts(tmp_path: Path, pki: dict[str, object]) -> None:
    with iked(_write(tmp_path, pki, validity(-300, 5.5))) as run:
        pass
    assert run.proc.returncode == 0, run.log.read_text()
    assert f"[core_ike.daemon] [connections.home.local] certs: {tmp_path}/moon.pem: our certificate " \
           "CN=moon.example.org,O=Example,C=CH expires in 5 days" in run.log.read_text()
