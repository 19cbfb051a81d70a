"""EAP in IKE_AUTH (RFC 7296 2.16) with a real strongSwan charon and its eap-identity, eap-md5 and
eap-mschapv2 plugins, in both directions.

alice 192.0.2.1 runs our iked, bob 192.0.2.2 runs charon. The gateway authenticates itself with a PSK
AUTH and asks the road warrior for EAP-Identity, then runs the method; each side then sends the final
AUTH computed with the MSK (EAP-MSCHAPv2) or SK_p (EAP-MD5). Per method and direction there is a
connection whose EAP password both sides agree on, and one where the road warrior has a wrong one:
that one fails with AUTHENTICATION_FAILED and a reason naming the wrong password on the gateway.
The `*-cert` connections use an RSA certificate (from a test CA both trust) for the gateway's AUTH instead
of the PSK.

EAP-MSCHAPv2 retries (RFC 2759 6): our gateway answers a wrong password with a Failure Request offering a
new challenge (`eap_retries`, default 2); charon's eap-mschapv2 client (5.9.8) never retries: it reads the
Failure Request, fails the method and sends INFORMATIONAL N(AUTH_FAILED). `theirs-noretry` is a gateway
connection with `eap_retries = 0` (EAP-Failure at once). The retry itself, answered with a new Response,
is tested without charon (tests/unit/eap/test_eap_methods.py, tests/unit/ike/test_ike_eap.py): no client
here can type a second password.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scenarios.lab import Lab
from scenarios.lab.charon import PLUGINS, Charon, CharonError
from scenarios.lab.creds import ca_and_host, host_cert
from scenarios.lab.events import wait_daemons
from scenarios.lab.iked import Iked, IkedError
from tests.guards import needs
from tests.interop.charon_pair import swanctl_conn

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B, A_IN, B_IN = "192.0.2.1", "192.0.2.2", "10.10.1.1", "10.10.2.1"
PSK = "eap-gateway-psk-0123456789"
METHODS = ("md5", "mschapv2")
GOOD, BAD = "correct horse battery", "wrong password"


def _cases() -> list[tuple[str, str, bool]]:
    """(connection name, method, good password); ours-* : iked is the EAP peer, charon the gateway."""
    return [(f"{who}-{m}-{'ok' if ok else 'bad'}", m, ok) for who in ("ours", "theirs") for m in METHODS
            for ok in (True, False)]


def _user(conn: str) -> str:
    """The EAP identity of a connection's road warrior (not its IKE identity: EAP-Identity is used)."""
    return conn.replace("-", "_")


def _charon_conf() -> str:
    conns, secrets = [_CHARON_CERT_CONNS], []
    for name, m, ok in _cases():
        rw = f"{name}@lab"
        if name.startswith("ours"):  # charon is the gateway: PSK AUTH, then EAP-Identity and the method
            local = "      auth = psk\n      id = bob@lab"
            remote = f"      auth = eap-{m}\n      id = {rw}\n      eap_id = %any"
            gw_id = "bob@lab"
        else:  # charon is the road warrior: no AUTH, EAP with its own EAP identity
            local = f"      auth = eap-{m}\n      id = {rw}\n      eap_id = {_user(name)}"
            remote = "      auth = psk\n      id = alice@lab"
            gw_id = "alice@lab"
        conns.append(swanctl_conn(name, local, remote, addrs=(B, A), ts=(B_IN, A_IN),
                                  proposals="aes128gcm16-prfsha256-x25519", esp="aes128gcm16"))
        # charon's copy of the EAP password: the gateway's is always the right one, the road warrior's
        # the wrong one in the -bad cases
        pw = GOOD if ok or name.startswith("ours") else BAD
        secrets.append(f'  eap-{name} {{\n    id = {_user(name)}\n    secret = "{pw}"\n  }}')
        secrets.append(f'  ike-{name} {{\n    id-1 = {gw_id}\n    id-2 = {rw}\n    secret = "{PSK}"\n  }}')
    secrets.append(_CHARON_CERT_SECRETS)
    # charon the road warrior with a wrong password, our gateway offering no retry
    conns.append(swanctl_conn("theirs-noretry", "      auth = eap-mschapv2\n      id = theirs-noretry@lab\n"
                              "      eap_id = theirs_noretry", "      auth = psk\n      id = alice@lab",
                              addrs=(B, A), ts=(B_IN, A_IN), proposals="aes128gcm16-prfsha256-x25519",
                              esp="aes128gcm16"))
    secrets.append(f'  eap-noretry {{\n    id = theirs_noretry\n    secret = "{BAD}"\n  }}')
    secrets.append(f'  ike-noretry {{\n    id-1 = alice@lab\n    id-2 = theirs-noretry@lab\n    secret = "{PSK}"\n  }}')
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + "\n".join(secrets) + "\n}\n"


def _iked_toml() -> str:
    out = [f"""[daemon]
listen = ["{A}"]
control = "@CTL@"
dataplane = "userspace"

[[secrets.private]]
file = "alice.key"
[[secrets.ca]]
file = "ca.pem"
""", _IKED_CERT_CONNS]
    for name, m, ok in _cases():
        rw = f"{name}@lab"
        if name.startswith("ours"):  # we are the road warrior, EAP peer
            local = f'{{ auth = "eap-{m}", id = "{rw}", eap_id = "{_user(name)}" }}'
            remote = '{ auth = "psk", id = "bob@lab" }'
            gw_id = "bob@lab"
            pw = GOOD if ok else BAD
        else:  # we are the gateway: PSK AUTH, then EAP-Identity and the method
            local = '{ auth = "psk", id = "alice@lab" }'
            remote = f'{{ auth = "eap-{m}", id = "{rw}" }}'
            gw_id = "alice@lab"
            pw = GOOD
        out.append(f"""[[secrets.ike]]
id = ["{gw_id}", "{rw}"]
secret = "{PSK}"
[[secrets.eap]]
id = "{_user(name)}"
secret = "{pw}"
""" + _iked_conn(name, local, remote))
    out.append(f"""[[secrets.ike]]
id = ["alice@lab", "theirs-noretry@lab"]
secret = "{PSK}"
[[secrets.eap]]
id = "theirs_noretry"
secret = "{GOOD}"
""" + _iked_conn("theirs-noretry", '{ auth = "psk", id = "alice@lab" }',
                 '{ auth = "eap-mschapv2", id = "theirs-noretry@lab", eap_retries = 0 }'))
    return "\n".join(out)


def _iked_conn(name: str, local: str, remote: str, no_rekey: bool = True) -> str:
    """iked's connection `name` to charon with CHILD_SA `net` (the mirror of swanctl_conn): `local` and
    `remote` the two auth tables; `no_rekey`: rekey_time = 0 for both SAs."""
    rekey = "rekey_time = 0\n" if no_rekey else ""
    return f"""
[connections.{name}]
local_addrs = ["{A}"]
remote_addrs = ["{B}"]
proposals = "aes128gcm16-prfsha256-x25519"
{rekey}local = {local}
remote = {remote}
[connections.{name}.children.net]
local_ts = ["{A_IN}/32"]
remote_ts = ["{B_IN}/32"]
esp_proposals = "aes128gcm16"
{rekey}"""


# the gateway authenticates with its certificate; EAP-MSCHAPv2 (with an MSK) from the road warrior
_CHARON_CERT_CONNS = "\n".join(
    swanctl_conn(name, local, remote, addrs=(B, A), ts=(B_IN, A_IN), proposals="aes128gcm16-prfsha256-x25519",
                 esp="aes128gcm16", no_rekey=False)
    for name, local, remote in (
        ("ours-cert", "auth = pubkey\ncerts = moon.pem\nid = moon.lab",
         "auth = eap-mschapv2\nid = ours-cert@lab\neap_id = %any"),
        ("theirs-cert", "auth = eap-mschapv2\nid = theirs-cert@lab\neap_id = theirs_cert",
         "auth = pubkey\nid = alice.lab"),
    ))
_IKED_CERT_CONNS = f"""[[secrets.eap]]
id = ["ours_cert", "theirs_cert"]
secret = "{GOOD}"
""" + _iked_conn("ours-cert", '{ auth = "eap-mschapv2", id = "ours-cert@lab", eap_id = "ours_cert" }',
                 '{ auth = "pubkey", id = "moon.lab" }', no_rekey=False) \
    + _iked_conn("theirs-cert", '{ auth = "pubkey", id = "alice.lab", certs = ["alice.pem"] }',
                 '{ auth = "eap-mschapv2", id = "theirs-cert@lab" }', no_rekey=False)
_CHARON_CERT_SECRETS = f'''  eap-cert {{
    id-1 = ours_cert
    id-2 = theirs_cert
    secret = "{GOOD}"
  }}'''


def _pem(obj: x509.Certificate | rsa.RSAPrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _pki() -> dict[str, bytes]:
    """A test CA and the two gateways' certificates (subjectAltName DNS moon.lab / alice.lab)."""
    moon = ca_and_host("moon.lab", ca_cn="EAP Interop CA")
    alice, alice_key = host_cert(moon["ca"], moon["ca_key"], "alice.lab", serial=3)
    return {"ca.pem": _pem(moon["ca"]), "moon.pem": _pem(moon["cert"]), "moon.key": _pem(moon["key"]),
            "alice.pem": _pem(alice), "alice.key": _pem(alice_key)}


class Eap:
    def __init__(self, lab: Lab, iked: Iked, charon: Charon) -> None:
        self.lab, self.iked, self.charon = lab, iked, charon

    def clear(self) -> None:
        self.iked.down_all()
        self.charon.terminate_all()
        wait_daemons(lambda: not self.iked.list_sas() and not self.charon.list_sas(), 10, [self.iked, self.charon],
                     what="SAs gone")


@pytest.fixture(scope="module")
def eap(two_hosts_per_module: Lab) -> Iterator[Eap]:
    lab = two_hosts_per_module
    charon = Charon(lab, "bob", name="charon-eap", conf=_charon_conf(), settings="retransmit_tries = 2",
                    plugins=PLUGINS + " md5 eap-identity eap-md5 eap-mschapv2")
    pki = _pki()
    charon.add_file("x509ca", "ca.pem", pki["ca.pem"])
    charon.add_file("x509", "moon.pem", pki["moon.pem"])
    charon.add_file("private", "moon.pem", pki["moon.key"])
    iked = Iked(lab, "alice", _iked_toml(), name="iked-eap",
                files={"ca.pem": pki["ca.pem"], "alice.pem": pki["alice.pem"], "alice.key": pki["alice.key"]})
    charon.start()
    iked.start()
    try:
        yield Eap(lab, iked, charon)
    finally:
        iked.stop()
        charon.stop()


def _tunnel_works(e: Eap, conn: str) -> None:
    theirs = e.charon.wait_child("net", timeout=10)
    sas = e.iked.wait_sas(lambda s: len(s) == 1 and len(s[0]["child-sas"]) == 1
                          and s[0]["child-sas"][0]["state"] == "INSTALLED")
    ours = sas[0]
    assert ours["name"] == conn
    assert ours["child-sas"][0]["spi-in"] == theirs["spi-out"]
    assert ours["child-sas"][0]["spi-out"] == theirs["spi-in"]
    assert e.lab.ping("alice", B_IN, source=A_IN, count=2, interval=0.05)[1] == 2


@pytest.mark.parametrize("method", METHODS)
def test_ours_as_eap_peer_with_charon_gateway(eap: Eap, method: str) -> None:
    conn = f"ours-{method}-ok"
    eap.clear()
    mark = eap.charon.log_mark()
    eap.iked.up(conn, "net")
    _tunnel_works(eap, conn)
    log = eap.charon.log_text(mark)
    assert "EAP_IDENTITY" in log  # charon asked for our EAP identity
    assert f"EAP method EAP_{method.upper()} succeeded" in log
    assert ("MSK established" if method == "mschapv2" else "no MSK established") in log
    assert f"authentication of '{conn}@lab' with EAP successful" in log


@pytest.mark.parametrize("method", METHODS)
def test_charon_as_eap_peer_with_our_gateway(eap: Eap, method: str) -> None:
    conn = f"theirs-{method}-ok"
    eap.clear()
    mark = eap.charon.log_mark()
    eap.charon.initiate(child="net", ike=conn, timeout=20)
    _tunnel_works(eap, conn)
    log = eap.charon.log_text(mark)
    assert f"EAP method EAP_{method.upper()} succeeded" in log
    assert "authentication of 'alice@lab' with EAP successful" in log  # our final MSK/SK_p AUTH
    ours = eap.iked.log_text()
    assert f"EAP method EAP-{'MD5' if method == 'md5' else 'MSCHAPv2'} of '{_user(conn)}' succeeded" in ours


@pytest.mark.parametrize("method", METHODS)
def test_wrong_password_ours_as_peer(eap: Eap, method: str) -> None:
    conn = f"ours-{method}-bad"
    eap.clear()
    mark = eap.charon.log_mark()
    with pytest.raises(IkedError) as exc:
        eap.iked.up(conn, "net")
    assert f"the EAP server sent EAP-Failure, EAP-{'MD5' if method == 'md5' else 'MSCHAPv2'} rejected our " \
        f"credentials for '{_user(conn)}'" in str(exc.value)
    if method == "mschapv2":  # RFC 2759 6: the server's failure packet says why, and offers a retry
        assert "E=691 authentication failure (wrong password)" in str(exc.value)
        assert str(exc.value).endswith("; not retried: our password is configured")
        eap.charon.wait_log(r"EAP-MS-CHAPv2 verification failed, retry \(1\)", timeout=5, since=mark)
    else:  # RFC 3748 4.2: EAP-Failure itself carries no reason
        assert "(wrong password or unknown EAP identity)" in str(exc.value)
    assert "received EAP_FAILURE, EAP authentication failed" in eap.iked.log_text()
    eap.charon.wait_log(f"EAP method EAP_{method.upper()} failed", timeout=5, since=mark)
    wait_daemons(lambda: not eap.iked.list_sas() and not eap.charon.list_sas(), 10, [eap.iked, eap.charon],
                 what="no SAs left")


@pytest.mark.parametrize("conn", ["theirs-md5-bad", "theirs-noretry"])
def test_wrong_password_charon_as_peer(eap: Eap, conn: str) -> None:
    """EAP-MD5, and EAP-MSCHAPv2 on a connection without retries: EAP-Failure at once."""
    method = "md5" if "md5" in conn else "mschapv2"
    eap.clear()
    mark = eap.charon.log_mark()
    with pytest.raises(CharonError):
        eap.charon.initiate(child="net", ike=conn, timeout=20)
    # RFC 3748 4.2, RFC 7296 2.16: our last IKE_AUTH response carries EAP-Failure, which charon reads
    eap.charon.wait_log("received EAP_FAILURE, EAP authentication failed", timeout=5, since=mark)
    log = eap.charon.log_text(mark)
    assert "[ EAP/FAIL ]" in log and "AUTHENTICATION_FAILED" not in log
    name = "MD5" if method == "md5" else "MSCHAPv2"
    ours = eap.iked.log_text()
    assert f"EAP-{name} verification of '{_user(conn)}' failed: wrong password" in ours
    assert f"EAP method EAP-{name} failed for peer '{conn}@lab', sending EAP-Failure" in ours
    wait_daemons(lambda: not eap.iked.list_sas() and not eap.charon.list_sas(), 10, [eap.iked, eap.charon],
                 what="no SAs left")


def test_certificate_gateways_with_eap_mschapv2(eap: Eap) -> None:
    """The gateway authenticates with its RSA certificate, the road warrior with EAP-MSCHAPv2, both ways."""
    eap.clear()
    mark = eap.charon.log_mark()
    eap.iked.up("ours-cert", "net")
    _tunnel_works(eap, "ours-cert")
    log = eap.charon.log_text(mark)
    assert "authentication of 'moon.lab' (myself) with RSA_EMSA_PKCS1_SHA2_256 successful" in log
    assert "EAP method EAP_MSCHAPV2 succeeded, MSK established" in log
    assert "authentication of 'ours-cert@lab' with EAP successful" in log
    eap.clear()
    mark = eap.charon.log_mark()
    eap.charon.initiate(child="net", ike="theirs-cert", timeout=20)
    _tunnel_works(eap, "theirs-cert")
    log = eap.charon.log_text(mark)
    assert "authentication of 'alice.lab' with RSA_EMSA_PKCS1_SHA2_256 successful" in log  # our certificate ...
    assert "authentication of 'alice.lab' with EAP successful" in log  # ... then our MSK AUTH


def test_wrong_password_charon_as_peer_declines_the_retry(eap: Eap) -> None:
    """Our gateway offers a new challenge (RFC 2759 6); charon's client does not retry: it fails the
    method and tells us with INFORMATIONAL N(AUTH_FAILED). Both IKE_SAs end."""
    conn = "theirs-mschapv2-bad"
    eap.clear()
    mark = eap.charon.log_mark()
    ours_mark = len(eap.iked.log_text())
    with pytest.raises(CharonError):
        eap.charon.initiate(child="net", ike=conn, timeout=20)
    eap.charon.wait_log("EAP_MSCHAPV2 method failed", timeout=5, since=mark)
    log = eap.charon.log_text(mark)
    # charon read our Failure Request (it logs the first word of M=, splitting at spaces)
    assert "EAP-MS-CHAPv2 failed with error ERROR_AUTHENTICATION_FAILURE" in log
    assert "generating INFORMATIONAL request 4 [ N(AUTH_FAILED) ]" in log
    assert "EAP/FAIL" not in log and "EAP/RES/MSCHAPV2" not in log.split("ERROR_AUTHENTICATION_FAILURE")[1]
    wait_daemons(lambda: not eap.iked.list_sas() and not eap.charon.list_sas(), 10, [eap.iked, eap.charon],
                 what="no SAs left")
    ours = eap.iked.log_text()[ours_mark:]
    assert f"EAP-MSCHAPv2 verification of '{_user(conn)}' failed: wrong password, retry 1 of 2: new challenge " \
        "sent" in ours
    assert "generating IKE_AUTH response 3 [ EAP/REQ/MSCHAPV2 ]" in ours  # the Failure Request (R=1)
    # RFC 7296 2.21.2: charon's INFORMATIONAL ends our not yet authenticated IKE_SA, answered
    assert "parsed INFORMATIONAL request 4 [ N(AUTH_FAILED) ]" in ours
    assert "generating INFORMATIONAL response 4 [ ]" in ours
    assert ("the peer ended EAP-MSCHAPv2 with AUTHENTICATION_FAILED after our retry offer (1 of 2; EAP-MSCHAPv2 "
            f"verification of '{_user(conn)}' failed: wrong password): it does not retry") in ours
