"""Loading strongSwan-style data.sql files (tests/unit/gateway/data/) into a database of any backend."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, text

from gateway.sqlconf.models import Base

DATA = Path(__file__).parent / "data"


def statements(sql: str) -> list[str]:
    """The INSERT statements of a data.sql (comments dropped; no ';' inside values in these files)."""
    sql = re.sub(r"/\*.*?\*/", "", sql, flags=re.S)
    sql = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in sql.split(";") if s.strip()]


def load_sql(db: Engine, name_or_sql: str, subst: dict[str, str] | None = None, create: bool = True) -> None:
    sql = (DATA / name_or_sql).read_text() if name_or_sql.endswith(".sql") else name_or_sql
    for k, v in (subst or {}).items():
        sql = sql.replace(k, v)
    if create:
        Base.metadata.create_all(db)
    with db.begin() as c:
        for st in statements(sql):
            if db.dialect.name == "postgresql":  # X'..' is a bit string there; bytea wants decode()
                st = re.sub(r"X'([0-9a-fA-F]*)'", r"decode('\1', 'hex')", st)
            c.execute(text(st.replace(":", "\\:")))


def cert_subst(pki: dict[str, object]) -> dict[str, str]:
    ca, cert, key = pki["ca"], pki["cert"], pki["key"]
    assert isinstance(ca, x509.Certificate) and isinstance(cert, x509.Certificate)
    assert isinstance(key, rsa.RSAPrivateKey)
    spk = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return {
        "CA_CERT_HEX": ca.public_bytes(serialization.Encoding.DER).hex(),
        "MOON_CERT_HEX": cert.public_bytes(serialization.Encoding.DER).hex(),
        "MOON_KEY_HEX": key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()).hex(),
        "CA_DN_HEX": ca.subject.public_bytes().hex(),
        "MOON_SPK_HEX": spk.hex(),
    }
