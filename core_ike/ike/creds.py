"""Credential store: PSKs by identity pair, own private keys, trusted public keys and CA certificates.

Public keys are looked up by identity: an ID_KEY_ID identity is matched against the SHA-1 key id of
each key (exactly as the portal derives it), other identities by configuration. A `resolver` hook lets
the mediation server look keys up in med_db without the core importing SQL.

Certificates are checked against wall-clock time the adapter gives the engine (`Engine.set_wall_clock`):
the core reads no clock (docs/architecture.md, "Time, randomness and the import contracts").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..constants import IdType
from ..crypto.auth import (
    PrivateKey,
    PublicKey,
    key_kind,
    load_private_key,
    load_public_key,
    spki_sha1,
    verify_certificate_signature,
)
from ..crypto.auth import keyid_sha1 as keyid_of
from ..crypto.sigalg import CertificateParts, certificate_parts, certificate_subject
from ..errors import AuthenticationFailed
from .identity import Identity, cert_holds

__all__ = [
    "Credentials",
    "PeerCert",
    "PrivateKey",
    "PublicKey",
    "SharedKey",
    "keyid_of",
    "load_private_key",
    "load_public_key",
]


@dataclass(frozen=True, slots=True)
class _Issuer:
    """What checking a certificate against one trusted CA reads, taken from the CA once: its subject as
    encoded (RFC 5280 6.1.3 (a)(4) compares it with the issuer), its key object (which keeps the key's
    precomputed values from one check to the next), its validity period in UNIX seconds."""

    ca: x509.Certificate
    subject: bytes | None  # None: not readable from the DER, so the general check decides
    key: PublicKey | None  # None: a key type the fast check does not take, so the general check decides
    not_before: float
    not_after: float


def _issuer(ca: x509.Certificate) -> _Issuer:
    subject = certificate_subject(ca.public_bytes(serialization.Encoding.DER))
    try:
        key: object = ca.public_key()
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - an unsupported key: the general check decides
        key = None
    return _Issuer(ca, subject, cast(PublicKey, key) if key_kind(key) is not None else None,
                   ca.not_valid_before_utc.timestamp(), ca.not_valid_after_utc.timestamp())


# peers' certificates kept checked per Credentials, by their DER octets (PeerCert); the oldest goes first
PEER_CERT_CACHE_MAX = 512
# kept by the last octets of the DER, inside the signature value (RFC 5280 4.1.1.3): they tell certificates
# apart as well as the whole would, which a lookup would hash (Python's bytes hash: about 2 instructions
# per octet, twice those of the rest of the lookup); a hit is then compared in full
_TAIL = 32
_KEY_ID = IdType.KEY_ID  # bound once: Python 3.11 reads a member off its Enum class by a hook (about 1 us)


class PeerCert:
    """A peer's end-entity certificate as `Credentials.peer_cert` checked it, kept by its DER octets: a peer
    that reconnects sends the same certificate (RFC 7296 3.6), and what was found about it does not change
    while the trusted CAs do not: the CAs that issued it (RFC 5280 6.1.3 (a)(1), (a)(4)), its validity
    period (RFC 5280 4.1.2.5; compared with the time at each use), its key, the identities it holds.
    Only certificates one of our CAs issued are kept, so other octets cannot push them out."""

    __slots__ = ("_holds", "_key", "cert", "der", "issuers", "not_after", "not_before", "subject")

    def __init__(self, der: bytes, cert: x509.Certificate, issuers: list[_Issuer], subject: bytes | None) -> None:
        self.der = der
        self.cert = cert
        self.issuers = issuers  # never empty
        self.subject = subject  # the subject Name's octets in `der` (CertificateParts.subject), None: not read
        self.not_before = cert.not_valid_before_utc.timestamp()
        self.not_after = cert.not_valid_after_utc.timestamp()
        self._key: PublicKey | None = None
        self._holds: tuple[Identity, bool] | None = None  # the last identity asked about (a peer has one)

    @property
    def key(self) -> PublicKey:
        """The certificate's public key, loaded on first use (a key object keeps its precomputed values)."""
        key = self._key
        if key is None:
            key = self._key = cast(PublicKey, self.cert.public_key())
        return key

    def holds(self, ident: Identity) -> bool:
        """`identity.cert_holds` of this certificate, remembered for the last identity asked about."""
        last = self._holds
        if last is not None and (last[0] is ident or last[0] == ident):
            return last[1]
        hit = cert_holds(self.cert, ident, self.subject)
        self._holds = (ident, hit)
        return hit


@dataclass
class SharedKey:
    secret: bytes
    ids: list[Identity]  # empty = any


@dataclass
class Credentials:
    shared: list[SharedKey] = field(default_factory=list)
    private_keys: list[PrivateKey] = field(default_factory=list)
    public_keys: dict[Identity, PublicKey] = field(default_factory=dict)
    raw_keys: list[PublicKey] = field(default_factory=list)  # trusted keys found by key id
    cas: list[x509.Certificate] = field(default_factory=list)
    resolver: Callable[[Identity], PublicKey | None] | None = None
    eap: list[SharedKey] = field(default_factory=list)  # EAP passwords (RFC 7296 2.16), by EAP identity
    # the CERTREQ field of the CAs it was computed for (recomputed when `cas` changes)
    _certreq: tuple[tuple[x509.Certificate, ...], bytes] | None = field(default=None, repr=False, compare=False)
    # what checking a certificate reads from each CA in `cas` (recomputed when `cas` changes)
    _issuers: tuple[_Issuer, ...] = field(default=(), repr=False, compare=False)
    _issuer_cas: list[x509.Certificate] = field(default_factory=list, repr=False, compare=False)
    # peers' certificates our CAs issued, checked (PeerCert), by their DER's last octets; emptied when `cas` changes
    _peer_certs: dict[bytes, PeerCert] = field(default_factory=dict, repr=False, compare=False)

    def add_eap_secret(self, secret: bytes | str, *ids: str | Identity) -> None:
        s = secret.encode() if isinstance(secret, str) else secret
        self.eap.append(SharedKey(s, [i if isinstance(i, Identity) else Identity.parse(i) for i in ids]))

    def eap_secret(self, user: bytes) -> bytes | None:
        """The password of EAP identity `user` (its text as received in EAP-Identity, RFC 3748 5.1):
        an entry naming it wins over a wildcard one."""
        text = user.decode("utf-8", "replace")
        best: bytes | None = None
        for sk in self.eap:
            if not sk.ids or any(i.is_any for i in sk.ids):
                best = best if best is not None else sk.secret
            elif any(str(i) == text or i.canonical() == text for i in sk.ids):
                return sk.secret
        return best

    def add_psk(self, secret: bytes | str, *ids: str | Identity) -> None:
        s = secret.encode() if isinstance(secret, str) else secret
        self.shared.append(SharedKey(s, [i if isinstance(i, Identity) else Identity.parse(i) for i in ids]))

    def add_public_key(self, key: PublicKey, identity: Identity | None = None) -> Identity:
        """Trust `key`; it answers for `identity` and always for its own ID_KEY_ID."""
        self.raw_keys.append(key)
        if identity is not None:
            self.public_keys[identity] = key
        return Identity.key_id(keyid_of(key))

    def psk(self, me: Identity, peer: Identity) -> bytes | None:
        """Best match as swanctl does: both ids listed > one listed > none (RFC 7296 2.15)."""
        best: tuple[int, bytes] | None = None
        for sk in self.shared:
            if not sk.ids:
                score = 1
            else:
                hit_me = any(i.matches(me) for i in sk.ids)
                hit_peer = any(i.matches(peer) for i in sk.ids)
                if not hit_peer and not (hit_me and len(sk.ids) == 1):
                    continue
                score = 3 if (hit_me and hit_peer) else 2
            if best is None or score > best[0]:
                best = (score, sk.secret)
        return best[1] if best else None

    def private_key_for(self, me: Identity) -> PrivateKey | None:
        if me.id_type == _KEY_ID:
            for k in self.private_keys:
                if keyid_of(k.public_key()) == me.data:
                    return k
        return self.private_keys[0] if self.private_keys else None

    def public_key_for(self, peer: Identity) -> PublicKey | None:
        if peer in self.public_keys:
            return self.public_keys[peer]
        if peer.id_type == _KEY_ID:
            for k in self.raw_keys:
                if keyid_of(k) == peer.data:
                    return k
        if self.resolver is not None:
            return self.resolver(peer)
        return None

    def certreq_hashes(self) -> bytes:
        """A CERTREQ's Certification Authority field (RFC 7296 §3.7): the SHA-1 hashes of our trusted
        CAs' SubjectPublicKeyInfo, concatenated; empty without CAs."""
        cas = tuple(self.cas)
        hit = self._certreq
        if hit is None or hit[0] != cas:
            hit = self._certreq = (cas, b"".join(spki_sha1(ca.public_key()) for ca in cas))  # type: ignore[arg-type]
        return hit[1]

    def verify_cert(self, cert: x509.Certificate, wall: float | None, der: bytes = b"") -> None:
        """Accept an end-entity certificate directly issued by one of our CAs, both valid at `wall`
        (UNIX seconds, the adapter's wall clock), or raise AuthenticationFailed saying why. `der`, when
        given, is the DER `cert` was parsed from (its signature is then checked over those octets, and
        what the check found is kept by those octets, as `peer_cert` keeps it).

        RFC 5280 6.1.3 (a)(1)-(2): the signature verifies with the CA's key and `wall` lies in the
        certificate's validity period, notBefore and notAfter included (§4.1.2.5). The CA's own period
        is checked too, as charon does. No clock skew is allowed, as in charon (its X.509 validity check
        compares the current time with both dates as they are): a CA that issues certificates for
        immediate use backdates notBefore for the clocks that lag behind its own."""
        if wall is None:
            # a certificate's validity cannot be checked without the time: refuse rather than trust it
            raise AuthenticationFailed(_no_wall(cert))
        if der:
            _valid_at(self._kept(der) or self._new(der, cert), wall)
            return
        issuers = self._issuers_of(cert, None)
        if not issuers:
            raise AuthenticationFailed(f"no trusted issuer found for '{_subject(cert)}'")
        problem = _outside_validity(cert, wall)
        if problem:
            raise AuthenticationFailed(f"certificate {problem} ('{_subject(cert)}')")
        if not _any_valid(issuers, wall):
            raise _ca_outside(cert, issuers, wall)

    def peer_cert(self, der: bytes, wall: float | None) -> PeerCert:
        """The peer's certificate in `der` (RFC 7296 3.6, X.509 Certificate - Signature) parsed and checked
        as `verify_cert` checks it, or AuthenticationFailed saying why (also for octets that are not a
        certificate). A certificate seen before is neither parsed nor its signature verified again; the
        validity periods are compared with `wall` at every call."""
        hit = self._kept(der)
        if hit is None:
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError as e:
                raise AuthenticationFailed(f"cannot parse peer certificate: {e}") from e
            if wall is None:
                raise AuthenticationFailed(_no_wall(cert))
            hit = self._new(der, cert)
        elif wall is None:
            raise AuthenticationFailed(_no_wall(hit.cert))
        return _valid_at(hit, wall)

    def _new(self, der: bytes, cert: x509.Certificate) -> PeerCert:
        """The PeerCert of `cert`, parsed from `der` and not kept: its issuers found (`_issuers_of`) and
        kept, or AuthenticationFailed when none of our CAs issued it."""
        parts = certificate_parts(der)
        issuers = self._issuers_of(cert, parts)  # empties the kept ones when `cas` changed
        if not issuers:
            raise AuthenticationFailed(f"no trusted issuer found for '{_subject(cert)}'")
        hit = PeerCert(der, cert, issuers, None if parts is None else parts.subject)
        kept = self._peer_certs
        if len(kept) >= PEER_CERT_CACHE_MAX:
            del kept[next(iter(kept))]
        kept[der[-_TAIL:]] = hit
        return hit

    def _kept(self, der: bytes) -> PeerCert | None:
        """The PeerCert of exactly the octets `der`, found by their last _TAIL octets, or None."""
        if self._issuer_cas != self.cas:
            return None  # found with other CAs: `_issuers_of` empties them
        hit = self._peer_certs.get(der[-_TAIL:])
        return hit if hit is not None and hit.der == der else None

    def _issuers_of(self, cert: x509.Certificate, parts: CertificateParts | None) -> list[_Issuer]:
        """The CAs in `cas` that issued `cert` (RFC 5280 6.1.3 (a)(1), (a)(4): its issuer is the CA's
        subject and its signature verifies with the CA's key). With `parts` (certificate_parts of the DER
        `cert` was parsed from), the common algorithms are checked here, with the CA's key object kept
        from one certificate to the next and over the octets as signed; what `cryptography`'s Certificate.verify_directly_issued_by accepts, nothing more: the
        two signature algorithm fields equal (RFC 5280 4.1.1.2), the issuer equal to the subject, the
        signature verified with the same key methods. Any other case goes to that method."""
        cas = self.cas
        if self._issuer_cas != cas:  # equal lists: the same certificates, whichever objects
            self._issuers = tuple(map(_issuer, cas))
            self._issuer_cas = list(cas)
            self._peer_certs.clear()  # what was found with other CAs
        known = self._issuers
        if parts is not None and (parts.inner_algorithm != parts.algorithm or parts.unused_bits):
            parts = None  # the general check refuses it with its own reason
        found: list[_Issuer] = []
        for i in known:
            if parts is not None and i.key is not None and i.subject is not None:
                if parts.issuer != i.subject:
                    continue  # the Names differ as encoded, so they differ as parsed (both DER)
                try:
                    ok = verify_certificate_signature(i.key, parts.algorithm, parts.tbs, parts.signature)
                except (ValueError, TypeError, Exception):  # noqa: BLE001 - as the general check below
                    ok = None
                if ok is not None:
                    if ok:
                        found.append(i)
                    continue
            try:
                # RFC 5280 6.1.3: the issuer name must be the CA's subject; checked in here (ValueError)
                # before the signature, without building the two Names in Python
                cert.verify_directly_issued_by(i.ca)
            except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends
                continue
            found.append(i)
        return found


def _no_wall(cert: x509.Certificate) -> str:
    return f"no wall-clock time to check the validity of certificate '{_subject(cert)}'"


def _any_valid(issuers: Sequence[_Issuer], wall: float) -> bool:
    # several trusted CAs may share the name and key (a renewed CA): one valid at `wall` suffices
    for i in issuers:  # noqa: SIM110 - a loop, not any(generator): a generator closed early raises GeneratorExit in it
        if i.not_before <= wall <= i.not_after:
            return True
    return False


def _ca_outside(cert: x509.Certificate, issuers: Sequence[_Issuer], wall: float) -> AuthenticationFailed:
    return AuthenticationFailed(f"CA certificate {_outside_validity(issuers[0].ca, wall)} "
                                f"('{_subject(issuers[0].ca)}'), issuer of '{_subject(cert)}'")


def _valid_at(pc: PeerCert, wall: float) -> PeerCert:
    """`pc` when `wall` lies in its validity period and in one of its issuers' (RFC 5280 4.1.2.5), else
    AuthenticationFailed saying which period it is outside."""
    if pc.not_before <= wall <= pc.not_after and _any_valid(pc.issuers, wall):
        return pc
    raise _outside(pc, wall)


def _outside(pc: PeerCert, wall: float) -> AuthenticationFailed:
    """Why `pc` is refused at `wall`, a time outside its validity period or its issuers' (RFC 5280 4.1.2.5),
    in verify_cert's words."""
    problem = _outside_validity(pc.cert, wall)
    if problem:
        return AuthenticationFailed(f"certificate {problem} ('{_subject(pc.cert)}')")
    return _ca_outside(pc.cert, pc.issuers, wall)


def _subject(cert: x509.Certificate) -> str:
    """The subject as text, for the error messages only (formatting it costs more than the checks)."""
    return cert.subject.rfc4514_string()


def _outside_validity(cert: x509.Certificate, wall: float) -> str:
    """Why `cert` is not valid at `wall` (UNIX seconds; RFC 5280 4.1.2.5, both dates included), or ""."""
    if wall > cert.not_valid_after_utc.timestamp():
        return f"expired on {_date(cert.not_valid_after_utc)}"
    if wall < cert.not_valid_before_utc.timestamp():
        return f"not valid before {_date(cert.not_valid_before_utc)}"
    return ""


def _date(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")
