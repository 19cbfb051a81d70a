"""Credentials for lab peers: RSA key pairs as PEM for swanctl, and ID_KEY_ID identities.

The key id of a raw RSA public key is the SHA-1 of its DER-encoded PKCS#1 RSAPublicKey (the way
strongSwan and the reference portal derive it); swanctl identities use it as ``keyid:#<hex>``.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from scenarios.lab.charon import Charon


@dataclass(frozen=True)
class RsaKeyPair:
    private_pem: bytes       # PKCS#1 "RSA PRIVATE KEY" (swanctl private/ or rsa/)
    public_pem: bytes        # SubjectPublicKeyInfo "PUBLIC KEY" (swanctl pubkey/)
    public_der_pkcs1: bytes  # DER RSAPublicKey

    @property
    def keyid(self) -> str:
        """Hex SHA-1 of the DER RSAPublicKey."""
        return keyid_of(self.public_der_pkcs1)

    @property
    def identity(self) -> str:
        """Identity string ``keyid:#<hex>``; quote it in swanctl.conf (``#`` starts a comment there)."""
        return f"keyid:#{self.keyid}"

    @property
    def swanctl_id(self) -> str:
        """The identity quoted for swanctl.conf: ``"keyid:#<hex>"``."""
        return f'"{self.identity}"'


def keyid_of(public_der_pkcs1: bytes) -> str:
    return hashlib.sha1(public_der_pkcs1).hexdigest()


def rsa_keypair(bits: int = 2048) -> RsaKeyPair:
    """A fresh RSA key pair (public exponent 65537)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pub = key.public_key()
    return RsaKeyPair(
        private_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()),
        public_pem=pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public_der_pkcs1=pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
    )


def keyid_from_pem(public_pem: bytes) -> str:
    """Key id of an RSA public key given as PEM (SubjectPublicKeyInfo or PKCS#1)."""
    pub = serialization.load_pem_public_key(public_pem)
    if not isinstance(pub, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return keyid_of(pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1))


def install_keypair(charon: Charon, name: str, key: RsaKeyPair, own: bool = True) -> str:
    """Write ``key`` into a :class:`~scenarios.lab.charon.Charon`'s swanctl tree.

    The public key always goes to ``pubkey/<name>.pem`` (reference it with ``pubkeys = <name>.pem``);
    with ``own`` the private key goes to ``private/<name>.pem``. Returns the pubkey file name.
    """
    charon.add_file("pubkey", f"{name}.pem", key.public_pem)
    if own:
        charon.add_file("private", f"{name}.pem", key.private_pem)
    return f"{name}.pem"


def ca_and_host(host: str = "moon.example.org", *, org: str = "Example", ca_cn: str = "Example Root CA",
                host_basic_constraints: bool = True, valid: Validity | None = None) -> dict[str, Any]:
    """A CA and a host certificate for ``host`` (CN and SAN dNSName), both RSA 2048, valid from a day ago
    for 30 days: ``{"ca", "ca_key", "cert", "key"}``; ``host_basic_constraints``: the host certificate
    says CA:FALSE (critical); ``valid``: the host certificate's validity instead (:func:`validity`).
    More hosts of the same CA: :func:`host_cert`."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name(org, ca_cn)
    ca = (_builder(ca_name, ca_name, ca_key, 1)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert, key = host_cert(ca, ca_key, host, org=org, basic_constraints=host_basic_constraints, valid=valid)
    return {"ca": ca, "ca_key": ca_key, "cert": cert, "key": key}


def host_cert(ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, host: str, *, org: str = "Example",
              basic_constraints: bool = True, serial: int = 2,
              valid: Validity | None = None) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A certificate of ``ca`` for ``host`` (CN and SAN dNSName) and its new RSA 2048 key; ``valid``:
    its (notBefore, notAfter), by default ``validity()``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = _builder(_name(org, host), ca.subject, key, serial, valid)
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    cert = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _name(org: str, cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


Validity = tuple[datetime.datetime, datetime.datetime]  # (notBefore, notAfter), RFC 5280 4.1.2.5


def validity(start_days: float = -1, end_days: float = 30) -> Validity:
    """From ``start_days`` to ``end_days`` days from now (negative: ago); ``validity(-30, -1)`` is an
    expired certificate's, ``validity(1, 30)`` a not yet valid one's."""
    now = datetime.datetime.now(datetime.UTC)
    return now + datetime.timedelta(days=start_days), now + datetime.timedelta(days=end_days)


def _builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, serial: int,
             valid: Validity | None = None) -> x509.CertificateBuilder:
    """Valid for ``valid``, by default from a day ago for 30 days."""
    start, end = valid or validity()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(serial).not_valid_before(start).not_valid_after(end))
