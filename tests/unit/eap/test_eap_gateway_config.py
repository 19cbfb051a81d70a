"""EAP in the classic and SQL configurations: ipsec.conf `leftauth/rightauth=eap-md5|eap-mschapv2`,
`eap_identity`, ipsec.secrets `: EAP`, and strongSwan's `peer_configs.eap_type` / `shared_secrets`
type 2 rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core_ike.errors import LocalError
from core_ike.ike.identity import Identity
from gateway.ipsecconf import parse_conf, parse_secrets
from gateway.ipsecconvert import convert_conf, convert_secrets
from gateway.sqlconf.loader import load
from tests.unit.gateway.sqldata import load_sql

GATEWAY = """
conn rw-eap
    left=192.0.2.1
    leftid=@moon.lab
    leftauth=psk
    right=%any
    rightid=carol@lab
    rightauth=eap-mschapv2
    eap_identity=%identity
    auto=add

conn rw-md5
    left=192.0.2.1
    leftid=@moon.lab
    leftauth=psk
    right=%any
    rightid=dave@lab
    rightauth=eap-md5
    auto=add
"""

CLIENT = """
conn home
    left=192.0.2.2
    leftid=carol@lab
    leftauth=eap-md5
    eap_identity=carol
    right=192.0.2.1
    rightid=@moon.lab
    rightauth=psk
    auto=add
"""


def test_ipsec_conf_eap_server_and_client() -> None:
    eap, md5 = convert_conf(parse_conf(GATEWAY), Path("."))
    assert (eap.local.auth, eap.remote.auth) == ("psk", "eap-mschapv2")
    assert eap.remote.eap_id is None  # %identity: asked with EAP-Identity
    assert eap.remote.eap_retries == 2  # ipsec.conf has no key for it: charon's fixed number
    assert md5.remote.auth == "eap-md5" and md5.remote.eap_id == "dave@lab"  # stroke: the IKE identity
    (home,) = convert_conf(parse_conf(CLIENT), Path("."))
    assert (home.local.auth, home.remote.auth) == ("eap-md5", "psk")
    assert home.local.eap_id == "carol"


def test_ipsec_conf_unsupported_eap_method_is_a_clear_error() -> None:
    with pytest.raises(LocalError, match="'eap-tls' is not supported"):
        convert_conf(parse_conf("conn a\n    rightauth=eap-tls\n    auto=add\n"), Path("."))


def test_ipsec_secrets_eap_entries() -> None:
    creds = convert_secrets(parse_secrets('carol : EAP "carol-pw"\ndave@lab : EAP 0x6461766570770a\n'
                                          ': PSK "gw-psk"\n'), Path("."))
    assert creds.eap_secret(b"carol") == b"carol-pw"
    assert creds.eap_secret(b"dave@lab") == b"davepw\n"
    assert creds.eap_secret(b"mallory") is None  # no wildcard EAP entry
    assert creds.psk(Identity.parse("@moon.lab"), Identity.parse("carol@lab")) == b"gw-psk"


def test_sql_eap_type_and_eap_secret_rows() -> None:
    db = create_engine("sqlite://")
    load_sql(db, """
        INSERT INTO identities (type, data) VALUES (2, X'6d6f6f6e2e6c6162');
        INSERT INTO identities (type, data) VALUES (3, X'6361726f6c406c6162');
        INSERT INTO ike_configs (local, remote) VALUES ('192.0.2.1', '0.0.0.0');
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, eap_type)
            VALUES ('rw-eap', 1, 1, 2, 2, 26);
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, eap_type)
            VALUES ('rw-tls', 1, 1, 2, 2, 13);
        INSERT INTO shared_secrets (type, data) VALUES (2, X'6361726f6c2d7077');
        INSERT INTO shared_secret_identity (shared_secret, identity) VALUES (1, 2);
    """)
    with Session(db) as s:
        snap = load(s)
    (rw,) = snap.connections
    assert rw.name == "rw-eap" and (rw.local.auth, rw.remote.auth) == ("psk", "eap-mschapv2")
    assert any("'rw-tls'" in p and "eap_type 13" in p for p in snap.problems)
    assert snap.eap_secrets == 1 and snap.creds.eap_secret(b"carol@lab") == b"carol-pw"


def test_merged_credentials_keep_eap_secrets() -> None:
    from gateway.sqlconf.source import merge_creds

    a = convert_secrets(parse_secrets('carol : EAP "from-file"\n'), Path("."))
    b = convert_secrets(parse_secrets('dave : EAP "from-db"\n'), Path("."))
    m = merge_creds(a, b)
    assert m.eap_secret(b"carol") == b"from-file" and m.eap_secret(b"dave") == b"from-db"


_TOML = """
[connections.rw]
local_addrs = ["192.0.2.1"]
local = { auth = "psk", id = "moon.lab" }
remote = { auth = "eap-mschapv2", id = "%any"RETRIES }
[connections.rw.children.net]
local_ts = ["10.1.0.0/16"]
"""


@pytest.mark.parametrize("value,expected", [(None, 2), ("0", 0), ("5", 5), ("16", 16)])
def test_toml_eap_retries(tmp_path: Path, value: str | None, expected: int) -> None:
    from core_ike.daemon.config import load as load_toml

    f = tmp_path / "iked.toml"
    f.write_text(_TOML.replace("RETRIES", f", eap_retries = {value}" if value else ""))
    (rw,) = load_toml(f).connections
    assert rw.remote.eap_retries == expected


@pytest.mark.parametrize("value", ["17", "-1", '"2"', "true"])
def test_toml_eap_retries_bad_values(tmp_path: Path, value: str) -> None:
    from core_ike.daemon.config import load as load_toml

    f = tmp_path / "iked.toml"
    f.write_text(_TOML.replace("RETRIES", f", eap_retries = {value}"))
    with pytest.raises(LocalError, match="eap_retries"):
        load_toml(f)
