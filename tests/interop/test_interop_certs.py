"""X.509 certificates and IKE fragmentation (RFC 7383) with a real strongSwan charon.

A test CA issues RSA-2048 certificates to alice (our iked) and bob (charon); both sides trust only
the CA. Both use a small fragment size, so the certificate-carrying IKE_AUTH messages travel as
encrypted fragments (SKF) in both directions; charon's log must show it reassembled ours.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scenarios.lab import Lab
from scenarios.lab.charon import Charon, CharonError
from scenarios.lab.creds import Validity, validity
from scenarios.lab.iked import Iked, IkedError
from tests.guards import needs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B, A_IN, B_IN = "192.0.2.1", "192.0.2.2", "10.10.1.1", "10.10.2.1"


def _pem(obj: object) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    assert isinstance(obj, rsa.RSAPrivateKey)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert(cn: str, san: str, key: rsa.RSAPrivateKey, ca_key: rsa.RSAPrivateKey, ca_name: x509.Name,
          ca: bool = False, valid: Validity | None = None) -> x509.Certificate:
    start, end = valid or validity()
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(san)]), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def _cert_pair(lab: Lab, name: str, fragment_size: int | None = None,
               bob_valid: Validity | None = None) -> tuple[Charon, Iked]:
    """charon on bob and our iked on alice, each with a certificate from one CA, connection "certs" with
    CHILD_SA "net"; ``fragment_size``: IKE fragmentation on both sides with that size; ``bob_valid``:
    the validity period of charon's certificate (default: from a day ago for 30 days)."""
    ca_key, a_key, b_key = (rsa.generate_private_key(65537, 2048) for _ in range(3))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Interop Test CA")])
    ca = _cert("Interop Test CA", "", ca_key, ca_key, ca_name, ca=True)
    a_cert = _cert("alice", "alice@lab", a_key, ca_key, ca_name)
    b_cert = _cert("bob", "bob@lab", b_key, ca_key, ca_name, valid=bob_valid)
    frag_charon = "\n    fragmentation = yes" if fragment_size else ""
    frag_iked = f"\nfragment_size = {fragment_size}" if fragment_size else ""
    charon = Charon(lab, "bob", name=f"charon-{name}",
                    settings=f"fragment_size = {fragment_size}" if fragment_size else "", conf=f"""connections {{
  certs {{
    local_addrs = {B}
    remote_addrs = {A}{frag_charon}
    local {{
      auth = pubkey
      certs = bob.pem
      id = bob@lab
    }}
    remote {{
      auth = pubkey
      id = alice@lab
    }}
    children {{
      net {{
        local_ts = {B_IN}/32
        remote_ts = {A_IN}/32
      }}
    }}
  }}
}}
""")
    charon.add_file("x509ca", "ca.pem", _pem(ca))
    charon.add_file("x509", "bob.pem", _pem(b_cert))
    charon.add_file("private", "bob.pem", _pem(b_key))
    iked = Iked(lab, "alice", f"""[daemon]
listen = ["{A}"]
control = "@CTL@"
dataplane = "userspace"

[[secrets.private]]
file = "alice.key"
[[secrets.ca]]
file = "ca.pem"

[connections.certs]
remote_addrs = ["{B}"]{frag_iked}
local = {{ auth = "pubkey", id = "alice@lab", certs = ["alice.pem"] }}
remote = {{ auth = "pubkey", id = "bob@lab" }}
[connections.certs.children.net]
local_ts = ["{A_IN}/32"]
remote_ts = ["{B_IN}/32"]
""", name=f"iked-{name}", files={"alice.key": _pem(a_key), "alice.pem": _pem(a_cert), "ca.pem": _pem(ca)})
    return charon, iked


def test_certificates_with_fragmentation_both_directions(two_hosts_per_test: Lab) -> None:
    lab = two_hosts_per_test
    charon, iked = _cert_pair(lab, "certs", fragment_size=600)
    charon.start()
    iked.start()
    try:
        with lab.capture("bob", "eth0", "udp") as cap:
            iked.up("certs", "net")
        theirs = charon.wait_child("net", timeout=5)
        (ours,) = iked.list_sas()
        assert ours["remote-id"] == "bob@lab" and theirs["ike"]["remote-id"] == "alice@lab"
        assert ours["child-sas"][0]["spi-in"] == theirs["spi-out"]
        # the certificate-sized IKE_AUTH went in fragments, each datagram within the fragment size
        ike = [p for p in cap.packets if p.kind == "ike" and p.dport in (500, 4500) and p.sport in (500, 4500)]
        auth = [p for p in ike if p.dport == 4500 or p.sport == 4500]
        assert len([p for p in auth if p.src == A]) >= 3 and len([p for p in auth if p.src == B]) >= 3
        charon.wait_log(r"received fragment #\d+ of \d+, (reassembled|waiting)", timeout=2)
        assert "generating IKE_AUTH response 1 [ EF(" in charon.log_text() or \
            "splitting IKE message" in charon.log_text()
        assert lab.ping("alice", B_IN, source=A_IN, count=2, interval=0.05)[1] == 2
    finally:
        iked.stop()
        charon.stop()


def test_charon_initiator_sends_its_certificate_when_asked(two_hosts_per_test: Lab) -> None:
    """Our responder's IKE_SA_INIT response carries a CERTREQ naming the CA (RFC 7296 §1.2, §3.7), so
    charon as initiator with its default `send_cert = ifasked` sends its certificate in IKE_AUTH and
    ours, trusting only the CA, authenticates it."""
    lab = two_hosts_per_test
    charon, iked = _cert_pair(lab, "ifasked")
    charon.start()
    iked.start()
    try:
        charon.initiate(child="net", ike="certs", timeout=20)
        log = charon.log_text()
        assert 'received cert request for "CN=Interop Test CA"' in log, log[-3000:]
        assert 'sending end entity cert "CN=bob"' in log, log[-3000:]
        (ours,) = iked.list_sas()
        assert ours["remote-id"] == "bob@lab" and ours["state"] == "ESTABLISHED"
        # charon's IKE_AUTH with its certificate and the CHILD_SA is over its default fragment size (RFC 7383):
        # ours reassembled it and answered it (core_ike/ike/fastauth.py answer_reassembled, or the general path)
        assert "reassembled fragmented IKE message" in iked.log_text(), iked.log_tail(40)
        assert lab.ping("bob", A_IN, source=B_IN, count=2, interval=0.05)[1] == 2
    finally:
        iked.stop()
        charon.stop()


def _date(t: dt.datetime) -> str:
    """A certificate date as iked logs it (to the second, as the certificate holds it, RFC 5280 4.1.2.5)."""
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def test_our_responder_refuses_charons_expired_certificate(two_hosts_per_test: Lab) -> None:
    """RFC 5280 6.1.3 (a)(2): charon initiates with a certificate that expired yesterday (issued by the
    CA ours trusts, otherwise as the CERTREQ test above); our responder refuses it, answers
    AUTHENTICATION_FAILED (RFC 7296 2.21.2) and logs the date it expired on."""
    lab = two_hosts_per_test
    valid = validity(-30, -1)
    charon, iked = _cert_pair(lab, "expired-r", bob_valid=valid)
    charon.start()
    iked.start()
    try:
        with pytest.raises(CharonError):
            charon.initiate(child="net", ike="certs", timeout=20)
        assert 'sending end entity cert "CN=bob"' in charon.log_text(), charon.log_tail()
        charon.wait_log("received AUTHENTICATION_FAILED notify error", timeout=5)
        expected = f"certificate expired on {_date(valid[1])} ('CN=bob')"
        assert expected in iked.log_text(), iked.log_tail()
        assert iked.list_sas() == []
    finally:
        iked.stop()
        charon.stop()


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_our_initiator_refuses_charons_certificate_outside_its_validity(two_hosts_per_test: Lab,
                                                                        when: str) -> None:
    """Our initiator checks the responder's certificate as strictly (RFC 5280 6.1.3 (a)(2)): charon
    answers with a certificate that expired yesterday / becomes valid tomorrow, and `up` fails with
    that reason; nothing is established on our side."""
    lab = two_hosts_per_test
    valid = validity(-30, -1) if when == "expired" else validity(1, 30)
    charon, iked = _cert_pair(lab, "expired-i" if when == "expired" else "early-i", bob_valid=valid)
    charon.start()
    iked.start()
    try:
        with pytest.raises(IkedError) as err:
            iked.up("certs", "net")
        if when == "expired":
            expected = f"certificate expired on {_date(valid[1])} ('CN=bob')"
        else:
            expected = f"certificate not valid before {_date(valid[0])} ('CN=bob')"
        assert expected in iked.log_text(), iked.log_tail()
        assert expected in str(err.value)
        assert iked.list_sas() == []
    finally:
        iked.stop()
        charon.stop()

