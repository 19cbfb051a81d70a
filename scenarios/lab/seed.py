"""strongSwan's remote-access example (moon and the road warrior carol), as kept in
tests/unit/gateway/data/seed, written out for a lab host with absolute paths: the `ipsec` starter looks
for relative certificate and key names under /etc/ipsec.d, our loader next to ipsec.conf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

SEED = Path(__file__).resolve().parents[2] / "tests" / "unit" / "gateway" / "data" / "seed"


def seed_files(d: Path, which: str, creds: dict[str, Any], moon: str) -> tuple[Path, Path]:
    """`which`'s (moon or carol) ipsec.conf and ipsec.secrets in `d`, with moon's address `moon`, and the
    CA certificate, moon's certificate and its key (`creds`: scenarios.lab.creds.ca_and_host) beside them.
    Returns the two files' paths."""
    d.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (d / "caCert.pem").write_bytes(creds["ca"].public_bytes(pem))
    (d / "moonCert.pem").write_bytes(creds["cert"].public_bytes(pem))
    key = d / "moonKey.pem"
    key.write_bytes(creds["key"].private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    key.chmod(0o600)
    conf = (SEED / which / "ipsec.conf").read_text().replace("PH_IP_MOON", moon)
    for f in ("caCert.pem", "moonCert.pem"):
        conf = conf.replace(f"={f}", f"={d / f}")
    secrets = (SEED / which / "ipsec.secrets").read_text().replace("RSA moonKey.pem", f"RSA {key}")
    return write_pair(d, conf, secrets)


def write_pair(d: Path, conf: str, secrets: str) -> tuple[Path, Path]:
    """ipsec.conf and ipsec.secrets (mode 0600, as the starter wants it) in `d`."""
    (d / "ipsec.conf").write_text(conf)
    (d / "ipsec.secrets").write_text(secrets)
    (d / "ipsec.secrets").chmod(0o600)
    return d / "ipsec.conf", d / "ipsec.secrets"
