"""EAP in IKE_AUTH (RFC 7296 2.16): the rounds between the first IKE_AUTH exchange and the final AUTH.

The initiator leaves AUTH out of its first IKE_AUTH request; the responder authenticates itself with
its certificate or PSK AUTH and starts EAP (EAP-Identity, then the method, RFC 3748). When EAP
succeeded, each side sends AUTH computed like a PSK AUTH (RFC 7296 2.15) with the MSK as the shared
secret, or with SK_pi / SK_pr when the method produces no key (EAP-MD5), over the signed octets of its
own first IKE_AUTH message. The per-SA state lives in an `EapState` extension (context.ExtensionState).
"""

from __future__ import annotations

import hmac
import logging

from ...codec.message import Message
from ...codec.payloads import AuthPayload, EapPayload, IdPayload, NotifyPayload, Payload
from ...constants import AuthMethod, ExchangeType, NotifyType, PayloadType, name_of
from ...crypto.auth import psk_auth, signed_octets
from ...eap.methods import METHODS, EapFailed, EapPeer, EapServer, method_name
from ...eap.packet import EapCode, EapPacket
from ...errors import AuthenticationFailed, DecodeError, ProtocolError
from ..context import IkeSaView, Task
from ..context import events as ev

log = logging.getLogger("core_ike.ike")

# payloads of the first IKE_AUTH request that apply to the final one (RFC 7296 2.16: SA, TSi, TSr, CP
# and the notifies travel in the first message, the CHILD_SA is answered with the final AUTH)
_CARRIED = frozenset({PayloadType.SA, PayloadType.TSi, PayloadType.TSr, PayloadType.CP, PayloadType.NOTIFY,
                      PayloadType.VENDOR_ID})


def is_eap(kind: str) -> bool:
    return kind.startswith("eap-")


class EapAuthenticationFailed(AuthenticationFailed):
    """The EAP server (our responder) refused the peer: the IKE_AUTH response carries EAP-Failure
    (RFC 3748 4.2, RFC 7296 2.16) instead of an AUTHENTICATION_FAILED notify, and the IKE_SA is given up
    once it is sent. strongSwan's charon reads the notify first and would never see the EAP result."""

    def __init__(self, message: str, failure: EapPacket) -> None:
        super().__init__(message)
        self.failure = failure


def error_payload(e: ProtocolError) -> Payload | None:
    """What a failed request's response carries in place of the error notify: EAP-Failure (RFC 7296 2.16)."""
    return EapPayload(e.failure.encode()) if isinstance(e, EapAuthenticationFailed) else None


class EapState:
    """One IKE_SA's EAP exchange (context.ExtensionState); a rekeyed IKE_SA carries none of it."""

    def __init__(self) -> None:
        self.peer: EapPeer | None = None
        self.server: EapServer | None = None
        self.id_body = b""  # body of our own first ID payload (the octets our final AUTH covers)
        self.peer_id_body = b""  # ... and of the peer's
        self.next_eap: EapPacket | None = None  # what our next message carries
        self.success = False  # EAP succeeded: the final AUTH exchange follows
        self.first_request: Message | None = None  # responder: the first IKE_AUTH request

    def for_successor(self) -> None:
        return None

    @property
    def method(self) -> str:
        m = self.peer.method if self.peer is not None else self.server.method if self.server is not None else 0
        return method_name(m)


def _eap_packet(msg: Message) -> EapPacket | None:
    pl = msg.get(PayloadType.EAP)
    if not isinstance(pl, EapPayload):
        return None
    try:
        return EapPacket.decode(pl.data)
    except DecodeError as e:
        raise AuthenticationFailed(f"malformed EAP message: {e}") from e


def _auth_key(sa: IkeSaView, st: EapState, initiator_side: bool) -> bytes:
    """RFC 7296 2.16: the MSK, or SK_pi / SK_pr when the method generates no key."""
    msk = (st.peer.msk if st.peer is not None else st.server.msk if st.server is not None else None)
    if msk:
        return msk
    return sa.sk_pi if initiator_side else sa.sk_pr


def _final_auth(sa: IkeSaView, st: EapState, initiator_side: bool, id_body: bytes) -> bytes:
    if initiator_side:
        octets = signed_octets(sa.init_request, sa.nr, sa.prf, sa.sk_pi, id_body)
    else:
        octets = signed_octets(sa.init_response, sa.ni, sa.prf, sa.sk_pr, id_body)
    return psk_auth(sa.prf, _auth_key(sa, st, initiator_side), octets)


def _verify_final(sa: IkeSaView, st: EapState, msg: Message, peer_is_initiator: bool) -> None:
    auth = msg.get(PayloadType.AUTH)
    if not isinstance(auth, AuthPayload):
        raise AuthenticationFailed(f"AUTH payload missing after {st.method} succeeded")
    if auth.method != AuthMethod.PSK or not hmac.compare_digest(
            _final_auth(sa, st, peer_is_initiator, st.peer_id_body), auth.data):
        raise AuthenticationFailed(f"verification of the {st.method} AUTH of '{sa.peer_id}' failed "
                                   "(the MSK differs)")
    log.info("authentication of '%s' with %s successful", sa.peer_id, st.method)


# ------------------------------------------------------------------------------------------ EAP peer
def start_peer(sa: IkeSaView, idi: IdPayload) -> None:
    """Initiator, first IKE_AUTH request: no AUTH, EAP follows (RFC 7296 2.16)."""
    cfg = sa.config.local
    st = sa.extension(EapState)
    user = (cfg.eap_id or str(sa.my_id)).encode()
    password = sa.ctx.creds.eap_secret(user)
    if password is None:
        raise AuthenticationFailed(f"no EAP secret found for '{user.decode('utf-8', 'replace')}'")
    st.peer = EapPeer(METHODS[cfg.auth], user, password, sa.ctx.rng)
    st.id_body = idi.body


def peer_state(sa: IkeSaView) -> EapState | None:
    st = sa.find_extension(EapState)
    return st if st is not None and st.peer is not None else None


def peer_first_response(sa: IkeSaView, st: EapState, msg: Message, idr: IdPayload) -> None:
    """The responder authenticated itself (its AUTH is verified) and starts EAP."""
    st.peer_id_body = idr.body
    peer_process(sa, st, msg)


def peer_build(sa: IkeSaView, st: EapState, msg: Message) -> None:
    """A later IKE_AUTH request: the EAP Response, or the final AUTH after EAP-Success."""
    if st.next_eap is not None:
        msg.payloads.append(EapPayload(st.next_eap.encode()))
        return
    msg.payloads.append(AuthPayload(AuthMethod.PSK, _final_auth(sa, st, True, st.id_body)))
    log.info("authentication of '%s' (myself) with %s successful", sa.my_id, st.method)


def peer_process(sa: IkeSaView, st: EapState, msg: Message) -> bool:
    """A response of a later round: True when it is the final one (the responder's AUTH is verified)."""
    assert st.peer is not None
    if st.success:
        _verify_final(sa, st, msg, False)
        return True
    pkt = _eap_packet(msg)
    if pkt is None:
        raise AuthenticationFailed(f"the server sent no EAP message during {st.method}")
    if pkt.code == EapCode.FAILURE:  # RFC 3748 4.2; the line strongSwan's charon logs for it
        log.info("received EAP_FAILURE, EAP authentication failed")
    else:
        log.info("received EAP %s", pkt.summary)
    try:
        st.next_eap = st.peer.process(pkt)
    except EapFailed as e:
        raise AuthenticationFailed(str(e)) from e
    except DecodeError as e:
        raise AuthenticationFailed(f"malformed {st.method} message: {e}") from e
    if st.next_eap is None:
        st.success = True
        log.info("EAP method %s succeeded, %s", st.method,
                 "MSK established" if st.peer.msk else "no MSK established")
    return False


# ---------------------------------------------------------------------------------------- EAP server
def server_state(sa: IkeSaView) -> EapState | None:
    st = sa.find_extension(EapState)
    return st if st is not None and st.server is not None else None


def start_server(sa: IkeSaView, msg: Message, idi: IdPayload) -> None:
    """Responder, first IKE_AUTH request without AUTH: the peer asks for EAP (RFC 7296 2.16)."""
    remote = sa.config.remote
    if not is_eap(remote.auth):
        raise AuthenticationFailed(f"peer '{sa.peer_id}' requested EAP, but {remote.auth} authentication is "
                                   "required")
    st = sa.extension(EapState)
    creds = sa.ctx.creds
    ident = remote.eap_id.encode() if remote.eap_id else None
    st.server = EapServer(METHODS[remote.auth], creds.eap_secret, sa.ctx.rng, ident, retries=remote.eap_retries)
    st.peer_id_body = idi.body
    st.first_request = msg
    st.next_eap = st.server.start()
    log.info("peer '%s' requested EAP, starting %s", sa.peer_id,
             "EAP-Identity" if ident is None else st.method)


def server_build_first(st: EapState, msg: Message, idr: IdPayload) -> None:
    st.id_body = idr.body
    assert st.next_eap is not None
    msg.payloads.append(EapPayload(st.next_eap.encode()))


def server_process(sa: IkeSaView, st: EapState, msg: Message) -> None:
    """A later IKE_AUTH request: an EAP Response, or (after EAP-Success) the final AUTH."""
    assert st.server is not None
    if st.success:
        _verify_final(sa, st, msg, True)
        st.next_eap = None
        return
    try:
        pkt = _eap_packet(msg)
        if pkt is None:
            raise AuthenticationFailed(f"the peer sent no EAP message during {st.method}")
        st.next_eap = st.server.process(pkt)
    except (EapFailed, DecodeError, AuthenticationFailed) as e:
        # RFC 3748 4.2: the authenticator ends a failed conversation with EAP-Failure
        log.info("EAP method %s failed for peer '%s', sending EAP-Failure", st.method, sa.peer_id)
        raise EapAuthenticationFailed(str(e), st.server.failure()) from e
    if st.next_eap.code == EapCode.SUCCESS:
        st.success = True
        ident = (st.server.peer_identity or b"").decode("utf-8", "replace")
        log.info("EAP method %s of '%s' succeeded, %s", st.method, ident,
                 "MSK established" if st.server.msk else "no MSK established")


def server_build(sa: IkeSaView, st: EapState, msg: Message) -> bool:
    """Our response to a later round; True when it is the final one (our MSK AUTH)."""
    if st.next_eap is not None:
        msg.payloads.append(EapPayload(st.next_eap.encode()))
        return False
    msg.payloads.append(AuthPayload(AuthMethod.PSK, _final_auth(sa, st, False, st.id_body)))
    log.info("authentication of '%s' (myself) with %s successful", sa.my_id, st.method)
    return True


def eap_round(sa: IkeSaView, msg: Message) -> bool:
    """Responder: an IKE_AUTH request that only carries EAP (RFC 7296 2.16), or a first request without
    AUTH, which asks for EAP; its SA and TS payloads are answered with the final AUTH."""
    return msg.get(PayloadType.AUTH) is None


def with_first_request(sa: IkeSaView, msg: Message) -> Message:
    """Responder, the final IKE_AUTH request of EAP: it carries AUTH; the SA, TS, CP and notifies of the
    first request apply to it (RFC 7296 2.16)."""
    st = server_state(sa)
    if st is None or st.first_request is None or msg.get(PayloadType.AUTH) is None:
        return msg
    first = st.first_request
    st.first_request = None
    carried = [p for p in first.payloads if p.ptype in _CARRIED]
    return Message(spi_i=msg.spi_i, spi_r=msg.spi_r, exchange=msg.exchange, flags=msg.flags,
                   message_id=msg.message_id, payloads=[*msg.payloads, *carried], encrypted=msg.encrypted)



# RFC 7296 2.21.2: the notifies that end an IKE_SA in the INFORMATIONAL right after an IKE_AUTH response
_ENDING = (NotifyType.AUTHENTICATION_FAILED, NotifyType.INVALID_SYNTAX, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD)


class PeerLeftEap(Task):
    """The EAP peer ended the exchange with an INFORMATIONAL request carrying AUTHENTICATION_FAILED (or
    another notify of RFC 7296 2.21.2) instead of its next EAP Response: charon's EAP-MSCHAPv2 client
    does so when it reads a Failure Request (it does not retry, RFC 2759 6). Our IKE_SA is not
    authenticated yet; the request is answered empty and the IKE_SA is given up, without a DELETE."""

    exchange = ExchangeType.INFORMATIONAL
    name = "EAP_ABANDONED"

    def __init__(self, reason: str, notify: int) -> None:
        self.reason = reason
        self.notify = notify

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        log.info("%s: %s", sa.label, self.reason)

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        return None

    def responded(self, sa: IkeSaView, now: float) -> None:
        sa.ctx.emit(ev.IkeSaFailed(sa.name, sa.unique_id, self.reason, self.notify, sa.is_original_initiator,
                                   self.notify == NotifyType.AUTHENTICATION_FAILED))
        sa.destroy(self.reason, now, failed=True)


def peer_left_eap(sa: IkeSaView, msg: Message) -> PeerLeftEap | None:
    """The task answering an INFORMATIONAL request that ends our EAP server's exchange (RFC 7296 2.21.2),
    or None when `msg` is not one."""
    st = server_state(sa)
    if st is None or st.server is None or msg.exchange != ExchangeType.INFORMATIONAL:
        return None
    n = next((p.type for p in msg.payloads if isinstance(p, NotifyPayload) and p.type in _ENDING), None)
    if n is None:
        return None
    server = st.server
    reason = f"the peer ended {st.method} with {name_of(NotifyType, n)}"
    if server.retried:
        reason += (f" after our retry offer ({server.retried} of {server.retries}; {server.last_failure}): it does "
                   "not retry")
    return PeerLeftEap(reason, int(n))
