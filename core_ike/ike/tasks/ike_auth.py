"""IKE_AUTH: identities, certificates and AUTH (RFC 7296 1.2, 2.15, 3.5-3.8; RFC 7427)."""

from __future__ import annotations

import hmac
import ipaddress
import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ...codec.message import Message
from ...codec.payloads import AuthPayload, CertPayload, CertReqPayload, IdPayload, NotifyPayload
from ...constants import AuthMethod, CertEncoding, ExchangeType, IdType, NotifyType, PayloadType, name_of
from ...crypto.auth import create_signature_auth, psk_auth, signed_octets, verify_signature_auth
from ...errors import AuthenticationFailed, ProtocolError
from ..context import Identity, IkeSaView, PublicKey, Status, Task
from ..context import events as ev
from ..state import IkeState
from . import eap_auth as eap

log = logging.getLogger("core_ike.ike")
# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook
_ESTABLISHED = IkeState.ESTABLISHED
_DER_ASN1_DN = IdType.DER_ASN1_DN


def _default_id(addr: str) -> Identity:
    ip = ipaddress.ip_address(addr)
    return Identity(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)


def _my_identity(sa: IkeSaView) -> Identity:
    i = sa.config.local.id
    if i.is_any:
        certs = sa.config.local.certs
        if certs:
            der = certs[0].subject.public_bytes()
            return Identity(IdType.DER_ASN1_DN, der)
        return _default_id(sa.local[0])
    return i


def _octets(sa: IkeSaView, initiator_side: bool, id_body: bytes) -> bytes:
    """RFC 7296 2.15: RealMessage | NonceData of the other side | prf(SK_p, RestOfIDPayload)."""
    if initiator_side:
        return signed_octets(sa.init_request, sa.nr, sa.prf, sa.sk_pi, id_body)
    return signed_octets(sa.init_response, sa.ni, sa.prf, sa.sk_pr, id_body)


def build_auth(sa: IkeSaView, msg: Message, initiator_side: bool, id_pl: IdPayload) -> None:
    cfg = sa.config.local
    octets = _octets(sa, initiator_side, id_pl.body)
    creds = sa.ctx.creds
    # our own credentials missing: the peer learns AUTHENTICATION_FAILED, we log the precise reason
    if cfg.auth == "psk":
        psk = creds.psk(sa.my_id or Identity(0, b""), sa.peer_id or sa.config.remote.id)
        if psk is None:
            raise AuthenticationFailed(f"no shared key found for '{sa.my_id}' - '{sa.peer_id}'")
        msg.payloads.append(AuthPayload(AuthMethod.PSK, psk_auth(sa.prf, psk, octets)))
        log.info("authentication of '%s' (myself) with pre-shared key", str(sa.my_id))
        return
    key = creds.private_key_for(sa.my_id or Identity(0, b""))
    if key is None:
        raise AuthenticationFailed(f"no private key found for '{sa.my_id}'")
    hashes = set(sa.peer_hash_algs)
    method_pref = cfg.signature
    method = int(AuthMethod.RSA_SIG) if method_pref == "rsa" or not hashes else int(AuthMethod.DIGITAL_SIGNATURE)
    m, data = create_signature_auth(key, method, octets, hashes, rsa_pss=(method_pref == "rsa-pss"))
    msg.payloads.append(AuthPayload(m, data))
    log.info("authentication of '%s' (myself) with %s successful", str(sa.my_id), _method_text(m))


_METHOD_TEXT = {1: "RSA signature", 2: "pre-shared key", 14: "RFC 7427 signature scheme"}


def _method_text(method: int) -> str:
    return _METHOD_TEXT.get(method) or name_of(AuthMethod, method)


def _peer_key(sa: IkeSaView, msg: Message) -> PublicKey:
    creds = sa.ctx.creds
    assert sa.peer_id is not None
    cert_pl = [c for c in msg.get_all(PayloadType.CERT)
               if isinstance(c, CertPayload) and c.encoding == CertEncoding.X509_SIGNATURE]
    if cert_pl:
        pc = creds.peer_cert(cert_pl[0].data, sa.ctx.wall_time())  # raises AuthenticationFailed with the reason
        if not pc.holds(sa.peer_id):
            raise AuthenticationFailed(f"peer certificate does not contain identity '{sa.peer_id}'")
        return pc.key
    k2 = creds.public_key_for(sa.peer_id)
    if k2 is None:
        raise AuthenticationFailed(f"no trusted public key found for '{sa.peer_id}'")
    return k2


def verify_auth(sa: IkeSaView, msg: Message, peer_is_initiator: bool, id_pl: IdPayload) -> None:
    auth = msg.get(PayloadType.AUTH)
    if not isinstance(auth, AuthPayload):
        raise AuthenticationFailed("AUTH payload missing")
    octets = _octets(sa, peer_is_initiator, id_pl.body)
    expected = sa.config.remote.auth
    assert sa.peer_id is not None and sa.my_id is not None
    if auth.method == AuthMethod.PSK:
        if expected != "psk":
            raise AuthenticationFailed("peer used a pre-shared key, but public key authentication is required")
        psk = sa.ctx.creds.psk(sa.my_id, sa.peer_id)
        if psk is None or not hmac.compare_digest(psk_auth(sa.prf, psk, octets), auth.data):
            raise AuthenticationFailed(f"verification of '{sa.peer_id}' with pre-shared key failed")
        log.info("authentication of '%s' with pre-shared key successful", str(sa.peer_id))
        return
    if expected != "pubkey":
        raise AuthenticationFailed(f"peer used {_method_text(auth.method)}, but a pre-shared key is required")
    key = _peer_key(sa, msg)
    if not verify_signature_auth(key, auth.method, auth.data, octets):
        raise AuthenticationFailed(f"signature validation of '{sa.peer_id}' failed")
    log.info("authentication of '%s' with %s successful", str(sa.peer_id), _method_text(auth.method))


def _id_payload(ptype: PayloadType, ident: Identity) -> IdPayload:
    return IdPayload(ptype, ident.id_type, ident.data)


# our own certificates' DER (a few per configuration) by the id() of the certificate object, kept with
# the object (so that no id is reused while its entry is here): a lookup by value hashes the parsed fields
_DER: dict[int, tuple[x509.Certificate, bytes]] = {}
DER_CACHE_MAX = 256


def _der(cert: x509.Certificate) -> bytes:
    hit = _DER.get(id(cert))
    if hit is None:
        if len(_DER) >= DER_CACHE_MAX:
            _DER.clear()
        hit = _DER[id(cert)] = (cert, cert.public_bytes(serialization.Encoding.DER))
    return hit[1]


def _add_certs(sa: IkeSaView, msg: Message) -> None:
    for c in sa.config.local.certs:
        msg.payloads.append(CertPayload(CertEncoding.X509_SIGNATURE, _der(c)))


def _add_certreq(sa: IkeSaView, msg: Message) -> None:
    """RFC 7296 3.7: SHA-1 hashes of the SPKIs of the CAs we trust."""
    hashes = sa.ctx.creds.certreq_hashes() if sa.config.remote.auth == "pubkey" and sa.config.send_certreq else b""
    if hashes:
        msg.payloads.append(CertReqPayload(CertEncoding.X509_SIGNATURE, hashes))


def established(sa: IkeSaView, now: float) -> None:
    sa.set_state(_ESTABLISHED)
    sa.established_at = now
    # RFC 7296 2.15: the IKE_SA_INIT messages were only needed for AUTH; a retransmitted IKE_AUTH
    # request is answered from the response cache
    sa.init_request = sa.init_response = b""
    if log.isEnabledFor(logging.INFO):
        log.info("IKE_SA %s established between %s[%s]...%s[%s]", sa.label, sa.local[0],
                 str(sa.my_id), sa.remote[0], str(sa.peer_id))
    ctx = sa.ctx
    ctx.ike_established(sa, now)
    ctx.emit(ev.IkeSaEstablished(
        sa.name, sa.unique_id, sa.local, sa.remote, str(sa.my_id), str(sa.peer_id), sa.spi_i, sa.spi_r,
        sa.is_original_initiator, sa.rekeyed_from))


class IkeAuth(Task):
    exchange = ExchangeType.IKE_AUTH
    name = "IKE_AUTH"
    prompt = True  # the initial exchanges: an `up` waits (RetransmitConfig early schedule)

    def __init__(self) -> None:
        self.error: ProtocolError | None = None

    # ---------------------------------------------------------------- initiator
    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        st = eap.peer_state(sa)
        if st is not None:  # RFC 7296 2.16: a later round of EAP
            eap.peer_build(sa, st, msg)
            return
        sa.my_id = _my_identity(sa)
        sa.peer_id = sa.config.remote.id
        idi = _id_payload(PayloadType.IDi, sa.my_id)
        msg.payloads.append(idi)
        _add_certs(sa, msg)
        _add_certreq(sa, msg)
        if not sa.config.remote.id.is_any:
            msg.payloads.append(_id_payload(PayloadType.IDr, sa.config.remote.id))
        if eap.is_eap(sa.config.local.auth):
            eap.start_peer(sa, idi)  # RFC 7296 2.16: no AUTH, we authenticate with EAP
        else:
            build_auth(sa, msg, True, idi)
        if sa.ctx.is_first_contact(sa):
            msg.payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        st = eap.peer_state(sa)
        for n in msg.get_all(PayloadType.NOTIFY):
            assert isinstance(n, NotifyPayload)
            if int(n.type) == NotifyType.AUTHENTICATION_FAILED:
                raise AuthenticationFailed("peer reported AUTHENTICATION_FAILED: it did not accept our credentials")
            if n.is_error and int(n.type) not in _CHILD_ERRORS:
                raise ProtocolError(f"received {name_of(NotifyType, int(n.type))} notify error", int(n.type))
        if st is not None and st.peer_id_body:  # a later EAP round (RFC 7296 2.16)
            if not eap.peer_process(sa, st, msg):
                return Status.NEED_MORE
            established(sa, now)
            return Status.DONE
        idr = msg.get(PayloadType.IDr)
        if not isinstance(idr, IdPayload):
            raise ProtocolError("IDr payload missing", NotifyType.INVALID_SYNTAX)
        got = Identity(int(idr.id_type), idr.data)
        if not sa.config.remote.id.matches(got):
            raise AuthenticationFailed(f"peer identity '{got}' does not match '{sa.config.remote.id}'")
        sa.peer_id = got
        verify_auth(sa, msg, False, idr)
        if st is not None:
            eap.peer_first_response(sa, st, msg, idr)
            return Status.NEED_MORE
        established(sa, now)
        return Status.DONE

    # ---------------------------------------------------------------- responder
    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        st = eap.server_state(sa)
        if st is not None:  # a later EAP round (RFC 7296 2.16)
            eap.server_process(sa, st, msg)
            return
        idi = msg.get(PayloadType.IDi)
        if not isinstance(idi, IdPayload):
            raise ProtocolError("IDi payload missing", NotifyType.INVALID_SYNTAX)
        sa.peer_id = Identity(int(idi.id_type), idi.data)
        idr = msg.get(PayloadType.IDr)
        wanted = Identity(int(idr.id_type), idr.data) if isinstance(idr, IdPayload) else None
        cfg = sa.ctx.select_peer_config(sa, sa.peer_id, wanted, msg)
        if cfg is None:
            raise AuthenticationFailed(f"no matching peer config found for '{sa.peer_id}'")
        sa.config = cfg
        sa.name = cfg.name
        sa.mediation = cfg.mediation
        log.info("looking for peer configs matching %s[%s]...%s[%s]: selected '%s'",
                 sa.local[0], str(wanted or "%any"), sa.remote[0], str(sa.peer_id), cfg.name)
        sa.my_id = wanted if wanted is not None and cfg.local.id.is_any else _my_identity(sa)
        if msg.get(PayloadType.AUTH) is None and eap.is_eap(cfg.remote.auth):
            eap.start_server(sa, msg, idi)
            return
        verify_auth(sa, msg, True, idi)

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        assert sa.my_id is not None
        st = eap.server_state(sa)
        if st is not None and st.id_body:  # a later EAP round: EAP, or the final AUTH with the MSK
            if eap.server_build(sa, st, msg):
                established(sa, now)
            return
        idr = _id_payload(PayloadType.IDr, sa.my_id)
        msg.payloads.insert(0, idr)
        _add_certs(sa, msg)
        build_auth(sa, msg, False, idr)
        if st is not None:  # RFC 7296 2.16: our AUTH, then EAP
            eap.server_build_first(st, msg, idr)
            return
        established(sa, now)


_CHILD_ERRORS = {
    int(NotifyType.NO_PROPOSAL_CHOSEN), int(NotifyType.TS_UNACCEPTABLE), int(NotifyType.SINGLE_PAIR_REQUIRED),
    int(NotifyType.INTERNAL_ADDRESS_FAILURE), int(NotifyType.FAILED_CP_REQUIRED),
    int(NotifyType.NO_ADDITIONAL_SAS), int(NotifyType.INVALID_SELECTORS),
}
