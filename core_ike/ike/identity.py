"""IKE identities (RFC 7296 3.5) parsed and printed the way strongSwan users write them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cryptography import x509

from ..constants import IdType
from ..errors import LocalError

# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook, and
# identities are printed and compared for every IKE_SA
_KEY_ID, _FQDN, _RFC822_ADDR, _DER_ASN1_DN = IdType.KEY_ID, IdType.FQDN, IdType.RFC822_ADDR, IdType.DER_ASN1_DN
_IPV4_ADDR, _IPV6_ADDR = IdType.IPV4_ADDR, IdType.IPV6_ADDR


@dataclass(frozen=True, slots=True, init=False)
class Identity:
    """An identity: its ID Type and Identification Data (RFC 7296 3.5). Frozen; equality, hash, repr,
    `dataclasses.replace` and pickling are the dataclass's (tests/unit/ike/test_ike_identity_init.py)."""

    id_type: int
    data: bytes
    # the text form, made on first use: an SA prints its identities in several events and indexes
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, id_type: int, data: bytes) -> None:
        # each slot through its own setter: the frozen dataclass's generated __init__ calls
        # object.__setattr__ per field (a method wrapper bound and the MRO walked each time); the peer's
        # identities are made from its ID payloads for every IKE_SA (callgrind: 6.3k -> 4.2k instructions)
        _set_id_type(self, id_type)
        _set_data(self, data)
        _set_text(self, None)

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan syntax: `keyid:#hex` / `@#hex` (KEY_ID), `@fqdn`, `user@host` (RFC822),
        an IP address, `%any` (matches everything), or a plain name (FQDN)."""
        text = text.strip()
        if not text:
            raise LocalError("empty identity")
        if text == "%any":
            return ANY
        binary = cls._parse_hex(text)
        if binary is not None:
            return binary
        if text.startswith("keyid:"):
            return cls(IdType.KEY_ID, text[6:].encode())
        if text.startswith("@"):
            return cls(IdType.FQDN, text[1:].encode())
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            ip = None
        if ip is not None:
            return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)
        if "@" in text:
            return cls(IdType.RFC822_ADDR, text.encode())
        if "=" in text:
            raise LocalError(f"DN identities need a certificate subject, not text: {text!r}")
        return cls(IdType.FQDN, text.encode())

    @classmethod
    def _parse_hex(cls, text: str) -> Identity | None:
        """`asn1dn:#hex` (DER DN), `keyid:#hex` / `@#hex` (KEY_ID, colons allowed); None for other text."""
        if text.startswith("asn1dn:#"):
            try:
                return cls(IdType.DER_ASN1_DN, bytes.fromhex(text[8:]))
            except ValueError as e:
                raise LocalError(f"bad DN identity {text!r}") from e
        for prefix in ("keyid:#", "@#"):
            if text.startswith(prefix):
                try:
                    return cls(IdType.KEY_ID, bytes.fromhex(text[len(prefix):].replace(":", "")))
                except ValueError as e:
                    raise LocalError(f"bad KEY_ID identity {text!r}") from e
        return None

    @classmethod
    def key_id(cls, keyid: bytes) -> Identity:
        return cls(IdType.KEY_ID, keyid)

    def canonical(self) -> str:
        """Text that `parse` turns back into this identity (registry keys, DB rows, configs)."""
        t = self.id_type
        if t == _KEY_ID:
            return "keyid:#" + self.data.hex()
        if t == _FQDN and (b"@" in self.data or not self.data):
            return "@" + self.data.decode("utf-8", "replace")
        text = self._text
        return text if text is not None else str(self)

    @property
    def is_any(self) -> bool:
        return self.id_type == 0

    def matches(self, other: Identity) -> bool:
        """True when `other` satisfies this (configured) identity; %any matches every identity."""
        t = self.id_type
        return t == 0 or (t == other.id_type and self.data == other.data)

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._format()
            _set_text(self, text)  # frozen: set once, never changed
        return text

    def _format(self) -> str:
        t = self.id_type
        if t == 0:  # is_any
            return "%any"
        if t in (_IPV4_ADDR, _IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if t in (_FQDN, _RFC822_ADDR):
            return self.data.decode("utf-8", "replace")
        if t == _KEY_ID:
            return ":".join(f"{b:02x}" for b in self.data)
        if t == _DER_ASN1_DN:
            return _dn_text(self.data)
        return f"({t}){self.data.hex()}"


# Identity's slot setters (member descriptors' __set__)
_set_id_type, _set_data, _set_text = (Identity.__dict__[f].__set__ for f in Identity.__slots__)

ANY = Identity(0, b"")


def _dn_text(der: bytes) -> str:
    """Display a DER DN; the printable form comes from the certificate when there is one."""
    return "asn1dn:#" + der.hex()


# RFC 5280 4.2.1.6: the GeneralName an identity type is found as (RFC 4945 3.1.1-3.1.3: [1] rfc822Name,
# [2] dNSName, [7] iPAddress), and the length of an address
_GN_RFC822, _GN_DNS, _GN_IP = 1, 2, 7
_SAN_TAG: dict[int, int] = {_FQDN: _GN_DNS, _RFC822_ADDR: _GN_RFC822, _IPV4_ADDR: _GN_IP, _IPV6_ADDR: _GN_IP}
_ADDR_LEN: dict[int, int] = {_IPV4_ADDR: 4, _IPV6_ADDR: 16}


def _mailbox_equal(a: bytes, b: bytes) -> bool:
    """RFC 5280 7.5: an rfc822Name's local-part compares case-sensitively, its host-part case-insensitively."""
    if a == b:
        return True
    if b"@" not in a or b"@" not in b:
        return False
    la, _, ha = a.rpartition(b"@")
    lb, _, hb = b.rpartition(b"@")
    return la == lb and ha.lower() == hb.lower()


def san_holds(cert: x509.Certificate, ident: Identity) -> bool:
    """Whether the subjectAltName of `cert` holds `ident` (RFC 4945 3.1, RFC 7296 3.5): an ID_FQDN as a
    dNSName, an ID_RFC822_ADDR as an rfc822Name, an ID_IPV4_ADDR / ID_IPV6_ADDR as an iPAddress of its
    octets; a certificate whose extensions cannot be read holds no identity.

    DNS names compare ASCII case-insensitively (RFC 4343 3, RFC 5280 7.2), exactly otherwise: no wildcard
    is expanded, a trailing dot or an IDN's U-label makes another name (the certificate holds A-labels,
    RFC 5280 7.2)."""
    t = ident.id_type
    want = _SAN_TAG.get(t)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return False
    data = ident.data
    if want == _GN_DNS:
        key = data.lower()
        return any(v.encode("utf-8", "surrogateescape").lower() == key for v in san.get_values_for_type(x509.DNSName))
    if want == _GN_RFC822:
        return any(_mailbox_equal(v.encode("utf-8", "surrogateescape"), data)
                   for v in san.get_values_for_type(x509.RFC822Name))
    if want == _GN_IP:
        if len(data) != _ADDR_LEN[t]:
            return False
        return any(not isinstance(a, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and a.packed == data
                   for a in san.get_values_for_type(x509.IPAddress))
    return False


def cert_holds(cert: x509.Certificate, ident: Identity, subject: bytes | None = None) -> bool:
    """Whether `cert` contains the identity (RFC 7296 3.5): an ID_DER_ASN1_DN is the subject exactly (RFC 4945
    3.1.5), the others are in the subjectAltName (`san_holds`). `subject`, when known: the subject Name's
    octets as in the certificate (crypto/sigalg.py CertificateParts.subject)."""
    if ident.id_type == _DER_ASN1_DN:
        # RFC 7296 3.5: the DN's DER. A peer sends its certificate's subject octets, compared here as the
        # CA signed them (re-encoding the parsed subject costs more than the signature check); the
        # re-encoding is the fallback for a certificate whose subject is not in canonical DER
        return subject == ident.data or cert.subject.public_bytes() == ident.data
    return san_holds(cert, ident)
