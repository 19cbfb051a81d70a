"""IKE identities (RFC 7296 3.5) parsed and printed the way strongSwan users write them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..constants import IdType
from ..errors import LocalError

# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook, and
# identities are printed and compared for every IKE_SA
_KEY_ID, _FQDN, _RFC822_ADDR, _DER_ASN1_DN = IdType.KEY_ID, IdType.FQDN, IdType.RFC822_ADDR, IdType.DER_ASN1_DN
_IPV4_ADDR, _IPV6_ADDR = IdType.IPV4_ADDR, IdType.IPV6_ADDR


@dataclass(frozen=True, slots=True)
class Identity:
    id_type: int
    data: bytes
    # the text form, made on first use: an SA prints its identities in several events and indexes
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

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
            object.__setattr__(self, "_text", text)  # frozen: set once, never changed
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


ANY = Identity(0, b"")


def _dn_text(der: bytes) -> str:
    """Display a DER DN; the printable form comes from the certificate when there is one."""
    return "asn1dn:#" + der.hex()
