"""ipsec.conf / ipsec.secrets: parsing (sections, %default, also=, includes, quoting) and conversion
into the daemon's connections and credentials, with the seed's moon / carol example."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from core_ike.constants import IdType
from core_ike.errors import LocalError
from core_ike.ike.identity import Identity
from gateway.ipsecconf import load_files, parse_conf, parse_secrets, resolved, secret_value
from gateway.ipsecconvert import convert_conf, dn_identity
from scenarios.lab.creds import ca_and_host

SEED = Path(__file__).parent / "data" / "seed"


def seed_dir(tmp_path: Path, host: str) -> Path:
    """The seed's files for `host` with a CA, moon's certificate and key under ipsec.d/ as starter keeps them."""
    d = tmp_path / host
    shutil.copytree(SEED / host, d)
    pki = ca_and_host("moon.strongswan.org")
    for sub in ("certs", "cacerts", "private"):
        (d / "ipsec.d" / sub).mkdir(parents=True)
    pem = serialization.Encoding.PEM
    (d / "ipsec.d/cacerts/caCert.pem").write_bytes(pki["ca"].public_bytes(pem))  # type: ignore[attr-defined]
    (d / "ipsec.d/certs/moonCert.pem").write_bytes(pki["cert"].public_bytes(pem))  # type: ignore[attr-defined]
    (d / "ipsec.d/private/moonKey.pem").write_bytes(pki["key"].private_bytes(  # type: ignore[attr-defined]
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    for f in d.glob("ipsec.conf"):
        f.write_text(f.read_text().replace("PH_IP_MOON", "192.168.0.1"))
    return d


def test_seed_moon(tmp_path: Path) -> None:
    d = seed_dir(tmp_path, "moon")
    conns, creds = load_files(d / "ipsec.conf")
    [rw] = conns
    assert rw.name == "rw"
    assert (rw.local_addrs, rw.remote_addrs) == (["%any"], ["%any"])
    assert (rw.local.auth, rw.remote.auth) == ("pubkey", "psk")
    assert rw.local.id == Identity.parse("@moon.strongswan.org") and rw.remote.id.is_any
    assert len(rw.local.certs) == 1 and len(creds.cas) == 1
    assert rw.pools == ["10.3.0.0/16"] and rw.vips == []
    assert rw.proposals == "aes128gcm16-prfsha256-x25519,aes256-sha256-modp2048"
    [ch] = rw.children
    assert (ch.local_ts, ch.remote_ts, ch.esp_proposals) == (["10.1.0.0/16"], ["dynamic"], "aes128gcm16,aes256-sha256")
    assert ch.start_action == "none"  # auto=add
    assert (rw.rekey_time, ch.rekey_time, ch.life_time) == (57 * 60.0, 17 * 60.0, 20 * 60.0)  # %default, margintime
    assert rw.keyingtries == 1 and rw.unique == "replace"
    moon = rw.local.id
    assert creds.psk(moon, Identity.parse("carol@strongswan.org")) == b"FpZAZqEN6Ti9sqt4ZP5EWcqX"
    assert creds.psk(moon, Identity.parse("dave@strongswan.org")) == b"jVzONCF02ncsgiS1mIXeqhGN"
    assert creds.psk(moon, Identity.parse("eve@strongswan.org")) is None
    assert creds.private_keys and creds.private_keys[0].public_key().public_numbers() == \
        rw.local.certs[0].public_key().public_numbers()


def test_seed_carol(tmp_path: Path) -> None:
    d = seed_dir(tmp_path, "carol")
    [home], creds = load_files(d / "ipsec.conf")
    assert (home.local_addrs, home.remote_addrs) == (["%any"], ["192.168.0.1"])
    assert (home.local.auth, home.remote.auth) == ("psk", "pubkey")
    assert home.local.id == Identity.parse("carol@strongswan.org")
    assert home.local.id.id_type == IdType.RFC822_ADDR
    assert home.vips == ["0.0.0.0"]  # leftsourceip=%config
    assert home.children[0].remote_ts == ["10.1.0.0/16"] and home.children[0].start_action == "start"
    assert creds.psk(home.local.id, home.remote.id) == b"FpZAZqEN6Ti9sqt4ZP5EWcqX"


def test_default_also_and_own_keys_win() -> None:
    conf = parse_conf("""
conn %default
    keyexchange=ikev2
    authby=secret
    esp=aes128gcm16

conn base
    left=192.0.2.1
    leftsubnet=10.1.0.0/24
    esp=aes256gcm16

conn net
    also=base
    right=192.0.2.2
    rightsubnet=10.2.0.0/24,10.3.0.0/24
    rightprotoport=tcp/443
    auto=start
""")
    keys = resolved(conf, "net")
    assert keys["esp"] == "aes256gcm16" and keys["left"] == "192.0.2.1" and keys["authby"] == "secret"
    conns = convert_conf(conf, Path("."))
    assert [c.name for c in conns] == ["net"]  # base has no auto=: ignored, as starter does
    net = conns[0]
    assert net.local.auth == net.remote.auth == "psk"
    assert net.local.id == Identity.parse("192.0.2.1") and net.remote.id == Identity.parse("192.0.2.2")
    assert net.children[0].remote_ts == ["10.2.0.0/24[tcp/443]", "10.3.0.0/24[tcp/443]"]


def test_right_is_local_when_only_right_is_ours() -> None:
    conf = parse_conf("conn x\n    left=192.0.2.2\n    right=192.0.2.1\n    leftid=@peer\n    authby=psk\n    auto=add\n")
    [x] = convert_conf(conf, Path("."), local_addresses=["192.0.2.1"])
    assert x.local_addrs == ["192.0.2.1"] and x.remote.id == Identity.parse("@peer")


def test_mediation_keys() -> None:
    conf = parse_conf("""
conn medsrv
    left=%defaultroute
    leftid=alice@lab
    right=192.0.2.10
    rightid=@medsrv.lab
    authby=psk
    mediation=yes
    auto=add
conn peer
    left=%defaultroute
    leftid=alice@lab
    right=%any
    rightid=bob@lab
    authby=psk
    mediated_by=medsrv
    me_peerid=bob-alias@lab
    auto=add
""")
    med, peer = convert_conf(conf, Path("."))
    assert med.mediation and peer.mediated_by == "medsrv"
    assert peer.mediation_peer == Identity.parse("bob-alias@lab")


@pytest.mark.parametrize("text,msg", [
    ("conn a\n    left=1.2.3.4\n    auto=add\nconn a\n    auto=add\n", "defined twice"),
    ("conn a\n    bogus=1\n    auto=add\n", "unknown key bogus"),
    ("    left=1.2.3.4\n", "outside a section"),
    ("conn a\n    also=b\n    auto=add\n", "no such conn"),
    ("conn a\n    also=b\n    auto=add\nconn b\n    also=a\n", "also= loop"),
    ("conn a\n    right=gw.example.org\n    auto=add\n", "host names are not resolved"),
    ("conn a\n    keyexchange=ikev1\n    auto=add\n", "only IKEv2"),
    ("conn a\n    ike=aes128-nosuch\n    auto=add\n", "nosuch"),
    ("conn a\n    leftauth=eap-tls\n    auto=add\n", "not supported"),
    ('conn a\n    leftid="unterminated\n    auto=add\n', "unterminated"),
    ("bogus section\n", "expected 'config setup'"),
])
def test_mistakes_are_one_line_errors(text: str, msg: str) -> None:
    with pytest.raises(LocalError, match=msg):
        convert_conf(parse_conf(text), Path("."))


def test_secrets_syntax() -> None:
    secrets = parse_secrets("""
# comment
: PSK "any-secret"
192.0.2.1 @gw.lab : PSK 0x736563726574
fec0::1 : PSK 0sc2VjcmV0
"C=CH, O=Example, CN=moon" : RSA moon.pem "pass phrase"
carol : EAP "eap-secret"
dave@lab : \\
    PSK "wrapped"
""")
    assert [(s.kind, s.ids) for s in secrets] == [
        ("PSK", []), ("PSK", ["192.0.2.1", "@gw.lab"]), ("PSK", ["fec0::1"]),
        ("RSA", ["C=CH, O=Example, CN=moon"]), ("EAP", ["carol"]), ("PSK", ["dave@lab"])]
    assert secret_value(secrets[5].value, "x") == b"wrapped"  # the seed's backslash continuation
    assert secret_value(secrets[1].value, "x") == b"secret" == secret_value(secrets[2].value, "x")
    assert secrets[3].value == "moon.pem" and secrets[3].passphrase == "pass phrase"
    with pytest.raises(LocalError, match="unknown secret type"):
        parse_secrets("x : FOO bar\n")


def test_dn_identities_are_in_strongswan_order() -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "moon")])
    assert dn_identity("C=CH, CN=moon") == Identity(IdType.DER_ASN1_DN, name.public_bytes())


def test_include(tmp_path: Path) -> None:
    (tmp_path / "conns").mkdir()
    (tmp_path / "conns" / "a.conf").write_text("conn a\n    right=192.0.2.9\n    authby=psk\n    auto=add\n")
    (tmp_path / "ipsec.conf").write_text("config setup\n\ninclude conns/*.conf\n")
    (tmp_path / "ipsec.secrets").write_text(": PSK \"x\"\n")
    conns, creds = load_files(tmp_path / "ipsec.conf")
    assert [c.name for c in conns] == ["a"] and len(creds.shared) == 1
