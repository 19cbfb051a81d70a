"""EAP peer and authenticator state machines (RFC 3748 2, 4, 5) for the methods Identity (5.1),
Notification (5.2), Nak (5.3.1), MD5-Challenge (5.4) and MS-CHAPv2 (draft-kamath-pppext-eap-mschapv2).

Sans-IO: a machine consumes one EapPacket and returns the next one to send; randomness is an input
(core_ike/rng.py). A failure raises `EapFailed` with the reason a user can act on.

EAP-MSCHAPv2 retries (RFC 2759 6, [MS-CHAP] 3.3.5.2): the server answers a wrong NT-Response with a
Failure Request "E=691 R=1 C=<new challenge> V=3 M=..." while retries are left, so a client that
prompts its user can answer the new challenge in the same IKE_SA; then it ends with EAP-Failure, as
strongSwan's server does (its fixed limit is 2). An unknown EAP identity is answered the same way, so
the answers do not tell which user names exist. Our peer does not retry: its password is configured,
asking again would give the same answer; it acknowledges with a Failure Response (draft-kamath 2.6).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from collections.abc import Callable

from ..errors import DecodeError
from ..rng import Rng
from . import mschapv2 as ms
from .packet import METHOD_NAMES, EapCode, EapPacket, EapType

__all__ = ["METHODS", "MSCHAPV2_RETRIES", "EapFailed", "EapPeer", "EapServer", "method_name"]

log = logging.getLogger("core_ike.ike")

# configuration names of the methods (`auth = "eap-md5"`), as strongSwan spells them
METHODS = {"eap-md5": EapType.MD5, "eap-mschapv2": EapType.MSCHAPV2}

_MSCHAP_CHALLENGE, _MSCHAP_RESPONSE, _MSCHAP_SUCCESS, _MSCHAP_FAILURE = 1, 2, 3, 4
MSCHAPV2_RETRIES = 2  # new challenges after a failed verification, strongSwan's server's number
MAX_RETRIES = 16  # the most a configuration may ask for: each retry is another password guess


class EapFailed(Exception):
    """The EAP authentication failed; the message says why (wrong password, no common method, ...)."""


def method_name(t: int) -> str:
    return METHOD_NAMES.get(EapType(t), f"EAP type {t}") if t in EapType._value2member_map_ else f"EAP type {t}"


def _mschap(opcode: int, ms_id: int, body: bytes) -> bytes:
    """draft-kamath 2: OpCode, MS-CHAPv2-ID, MS-Length (the EAP Length minus 5), data."""
    return struct.pack("!BBH", opcode, ms_id, 4 + len(body)) + body


def _parse_mschap(data: bytes) -> tuple[int, int, bytes]:
    if len(data) < 1:
        raise DecodeError("empty EAP-MSCHAPv2 packet")
    if len(data) < 4:  # a Success/Failure Response is the OpCode alone
        return data[0], 0, b""
    return data[0], data[1], data[4:]


def _md5_value(data: bytes) -> bytes:
    """RFC 1994 4.1 / RFC 3748 5.4: Value-Size, Value, Name."""
    if not data or data[0] == 0 or len(data) < 1 + data[0]:
        raise DecodeError("malformed EAP-MD5 Value-Size")
    return data[1:1 + data[0]]


class EapPeer:
    """The EAP peer (our IKE initiator authenticating with EAP, RFC 7296 2.16)."""

    def __init__(self, method: int, identity: bytes, password: bytes, rng: Rng) -> None:
        self.method = method
        self.identity = identity
        self.password = password
        self.rng = rng
        self.msk: bytes | None = None
        self.succeeded = False
        self._done = False  # our side of the method finished (MD5 answered, MS-CHAPv2 server verified)
        self._answered = False  # we answered a round of the method (our credentials went out)
        self._refused: int | None = None  # the method the server offered and we refused with a Nak
        self._expect_auth: bytes | None = None
        self._failure_text = ""

    def process(self, pkt: EapPacket) -> EapPacket | None:
        """The response to a Request; None after Success (RFC 3748 4.2). Raises EapFailed."""
        if pkt.code == EapCode.SUCCESS:
            # RFC 3748 4.2: a Success before the method completed must not be accepted
            if not self._done:
                raise EapFailed(f"EAP-Success before {method_name(self.method)} completed")
            self.succeeded = True
            return None
        if pkt.code == EapCode.FAILURE:
            raise EapFailed(self._failure_reason())
        if pkt.code != EapCode.REQUEST:
            raise EapFailed(f"unexpected EAP {pkt.summary} from the server")
        t = pkt.type
        if t == EapType.IDENTITY:
            return EapPacket(EapCode.RESPONSE, pkt.identifier, EapType.IDENTITY, self.identity)
        if t == EapType.NOTIFICATION:  # RFC 3748 5.2: acknowledged with an empty Response
            return EapPacket(EapCode.RESPONSE, pkt.identifier, EapType.NOTIFICATION)
        if t != self.method:
            # RFC 3748 5.3.1: Nak, naming the method we are configured for
            self._refused = t
            return EapPacket(EapCode.RESPONSE, pkt.identifier, EapType.NAK, bytes([self.method]))
        self._answered = True
        if t == EapType.MD5:
            challenge = _md5_value(pkt.data)
            value = hashlib.md5(bytes([pkt.identifier]) + self.password + challenge).digest()  # RFC 3748 5.4: MD5
            self._done = True
            return EapPacket(EapCode.RESPONSE, pkt.identifier, EapType.MD5,
                             bytes([16]) + value + self.identity)
        return self._mschap(pkt)

    def _failure_reason(self) -> str:
        """RFC 3748 4.2: EAP-Failure carries no data; what we sent before it tells the user what to fix."""
        name, user = method_name(self.method), self.identity.decode("utf-8", "replace")
        if self._answered:
            why = f": {self._failure_text}" if self._failure_text else " (wrong password or unknown EAP identity)"
            return f"the EAP server sent EAP-Failure, {name} rejected our credentials for '{user}'{why}"
        if self._refused is not None:
            return (f"the EAP server sent EAP-Failure after we refused {method_name(self._refused)} with an "
                    f"EAP-Nak: we are configured for {name} only")
        return (f"the EAP server sent EAP-Failure before {name} started: it does not accept the EAP identity "
                f"'{user}' (unknown user or no secret for it there)")

    def _mschap(self, pkt: EapPacket) -> EapPacket:
        opcode, ms_id, body = _parse_mschap(pkt.data)
        pw = self.password.decode("utf-8", "replace")
        if opcode == _MSCHAP_CHALLENGE:
            if len(body) < 17 or body[0] != 16:
                raise DecodeError("malformed EAP-MSCHAPv2 Challenge")
            auth_challenge = body[1:17]
            peer_challenge = self.rng.bytes(16)
            user = _username(self.identity)
            nt = ms.generate_nt_response(auth_challenge, peer_challenge, user, pw)
            self._expect_auth = ms.authenticator_response(pw, nt, peer_challenge, auth_challenge, user)
            self.msk = ms.msk(pw, nt)
            value = peer_challenge + b"\x00" * 8 + nt + b"\x00"  # draft-kamath 2.2: Response, Flags 0
            return EapPacket(EapCode.RESPONSE, pkt.identifier, EapType.MSCHAPV2,
                             _mschap(_MSCHAP_RESPONSE, ms_id, bytes([49]) + value + self.identity))
        if opcode == _MSCHAP_SUCCESS:
            # RFC 2759 5: the authenticator proves it knows the password too (mutual authentication)
            if self._expect_auth is None or not ms.check_authenticator_response(self._expect_auth, body):
                raise EapFailed("EAP-MSCHAPv2 server authenticator response invalid: the server does not "
                                "know our password")
            self._done = True
            return EapPacket(EapCode.RESPONSE, pkt.identifier, EapType.MSCHAPV2, bytes([_MSCHAP_SUCCESS]))
        if opcode == _MSCHAP_FAILURE:
            self._failure_text = _failure_text(body)
            self.msk = None
            self._done = False
            return EapPacket(EapCode.RESPONSE, pkt.identifier, EapType.MSCHAPV2, bytes([_MSCHAP_FAILURE]))
        raise EapFailed(f"unsupported EAP-MSCHAPv2 OpCode {opcode}")


def _username(identity: bytes) -> bytes:
    """RFC 2759 8.2: the user name without a "DOMAIN\\" prefix."""
    return identity.rsplit(b"\\", 1)[-1]


def _failure_text(body: bytes) -> str:
    """RFC 2759 6: "E=691 R=1 C=... V=3 M=<message>"."""
    text = body.decode("utf-8", "replace")
    err = next((p[2:] for p in text.split() if p.startswith("E=")), "")
    msg = text.split("M=", 1)[1] if "M=" in text else ""
    reason = {"691": "authentication failure (wrong password)", "646": "restricted logon hours",
              "647": "account disabled", "648": "password expired", "649": "no dial-in permission"}.get(err, "")
    out = ", ".join(p for p in (f"E={err} {reason}".strip() if err else "", msg.strip()) if p)
    if "R=1" in text.split("M=", 1)[0].split():
        out += "; not retried: our password is configured"
    return out


class EapServer:
    """The EAP authenticator (our IKE responder, RFC 7296 2.16): EAP-Identity, then the method.

    `secret_for(identity)` gives the password of an EAP identity (None: unknown user); `retries`: the
    new EAP-MSCHAPv2 challenges offered after a failed verification (RFC 2759 6), 0 for none."""

    def __init__(self, method: int, secret_for: Callable[[bytes], bytes | None], rng: Rng,
                 identity: bytes | None = None, server_name: bytes = b"ikeme",
                 retries: int = MSCHAPV2_RETRIES) -> None:
        if not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"EAP-MSCHAPv2 retries must be 0-{MAX_RETRIES}, not {retries}")
        self.method = method
        self.secret_for = secret_for
        self.rng = rng
        self.peer_identity = identity  # None: asked with EAP-Identity (RFC 3748 5.1)
        self.server_name = server_name
        self.retries = retries
        self.retried = 0  # Failure Requests with R=1 sent so far
        self.msk: bytes | None = None
        self.succeeded = False
        self._id = rng.bytes(1)[0]
        self._last: EapPacket | None = None
        self._challenge = b""
        self._ms_id = 0
        self._success_sent = False
        self.last_failure = ""  # why the last verification failed, for the report when the peer gives up

    def start(self) -> EapPacket:
        if self.peer_identity is None:
            return self._request(EapType.IDENTITY, b"")
        return self._method_request()

    def _request(self, t: int, data: bytes) -> EapPacket:
        self._id = (self._id + 1) & 0xFF
        self._last = EapPacket(EapCode.REQUEST, self._id, t, data)
        return self._last

    def _method_request(self) -> EapPacket:
        self._challenge = self.rng.bytes(16)
        if self.method == EapType.MD5:
            return self._request(EapType.MD5, bytes([16]) + self._challenge + self.server_name)
        self._ms_id = self.rng.bytes(1)[0]
        return self._request(EapType.MSCHAPV2, _mschap(_MSCHAP_CHALLENGE, self._ms_id,
                                                       bytes([16]) + self._challenge + self.server_name))

    def _secret(self) -> bytes:
        assert self.peer_identity is not None
        s = self.secret_for(self.peer_identity)
        if s is None:
            raise EapFailed(f"no EAP secret found for '{self.peer_identity.decode('utf-8', 'replace')}'")
        return s

    def process(self, pkt: EapPacket) -> EapPacket:
        """The next Request, or Success; raises EapFailed (the caller sends EAP-Failure)."""
        last = self._last
        if pkt.code != EapCode.RESPONSE or last is None or pkt.identifier != last.identifier:
            raise EapFailed(f"unexpected EAP {pkt.summary} (identifier {pkt.identifier}) from the peer")
        if pkt.type == EapType.NAK:
            wanted = ", ".join(method_name(t) for t in pkt.data) or "none"
            raise EapFailed(f"the peer refused {method_name(self.method)} (EAP-Nak, it proposes {wanted})")
        if pkt.type != last.type:
            raise EapFailed(f"EAP Response of type {pkt.type} to a Request of type {last.type}")
        if pkt.type == EapType.IDENTITY:
            if not pkt.data:
                raise EapFailed("the peer sent an empty EAP-Identity")
            self.peer_identity = pkt.data
            return self._method_request()
        if pkt.type == EapType.MD5:
            return self._md5(pkt)
        return self._mschap(pkt)

    def _user(self) -> str:
        return (self.peer_identity or b"").decode("utf-8", "replace")

    def _md5(self, pkt: EapPacket) -> EapPacket:
        value = _md5_value(pkt.data)
        expected = hashlib.md5(bytes([pkt.identifier]) + self._secret() + self._challenge).digest()  # RFC 3748 5.4
        if not hmac.compare_digest(expected, value):
            raise EapFailed(f"EAP-MD5 verification of '{self._user()}' failed: wrong password")
        return self._success()

    def _success(self) -> EapPacket:
        """RFC 3748 4.2: the Identifier of Success and Failure matches the Response they answer."""
        self.succeeded = True
        return EapPacket(EapCode.SUCCESS, self._id)

    def failure(self) -> EapPacket:
        """The EAP-Failure that ends a failed conversation (RFC 3748 4.2), sent by the caller after an
        `EapFailed`; its Identifier is that of our last Request, which the Response answered."""
        self.succeeded = False
        self.msk = None
        return EapPacket(EapCode.FAILURE, self._id)

    def _mschap(self, pkt: EapPacket) -> EapPacket:
        opcode, _ms_id, body = _parse_mschap(pkt.data)
        if opcode == _MSCHAP_SUCCESS and self._success_sent:
            return self._success()  # draft-kamath 2.4: the peer acknowledged our Success Request
        if opcode == _MSCHAP_FAILURE:
            if self.last_failure:  # draft-kamath 2.6: the peer answered our Failure Request instead of retrying
                raise EapFailed(f"{self.last_failure}; the peer did not retry ({self.retried} of {self.retries} "
                                "retries offered)")
            raise EapFailed(f"EAP-MSCHAPv2 authentication of '{self._user()}' failed")
        if opcode != _MSCHAP_RESPONSE or self._success_sent:
            raise EapFailed(f"unexpected EAP-MSCHAPv2 OpCode {opcode}")
        if len(body) < 50 or body[0] != 49:
            raise DecodeError("malformed EAP-MSCHAPv2 Response")
        peer_challenge, nt, name = body[1:17], body[25:49], body[50:]
        user = _username(name or (self.peer_identity or b""))
        secret = self.secret_for(self.peer_identity or b"")
        if secret is None:  # answered like a wrong password: the peer learns nothing of our users
            return self._retry_or_fail(f"no EAP secret found for '{self._user()}'")
        pw = secret.decode("utf-8", "replace")
        if not hmac.compare_digest(ms.generate_nt_response(self._challenge, peer_challenge, user, pw), nt):
            return self._retry_or_fail(f"EAP-MSCHAPv2 verification of '{self._user()}' failed: wrong password")
        self.msk = ms.msk(pw, nt)
        self._success_sent = True
        auth = ms.authenticator_response(pw, nt, peer_challenge, self._challenge, user)
        return self._request(EapType.MSCHAPV2, _mschap(_MSCHAP_SUCCESS, self._ms_id, auth + b" M=welcome"))

    def _retry_or_fail(self, why: str) -> EapPacket:
        """RFC 2759 6: a Failure Request with a new challenge while retries are left ([MS-CHAP]
        3.3.5.2); the peer answers it with a new Response, or gives up with a Failure Response. Without
        retries left: EapFailed (the caller sends EAP-Failure, as strongSwan's server does: clients that
        get a Failure Request with R=0 do not all answer it)."""
        self.last_failure = why
        if self.retried >= self.retries:
            raise EapFailed(f"{why}, no retry left ({self.retries} offered)" if self.retries
                            else f"{why} (no retries configured)")
        self.retried += 1
        self._challenge = self.rng.bytes(16)
        left = self.retries - self.retried
        log.info("%s, retry %d of %d: new challenge sent", why, self.retried, self.retries)
        text = (f"E=691 R=1 C={self._challenge.hex().upper()} V=3 "
                f"M=authentication failed, {left} {'retry' if left == 1 else 'retries'} left").encode()
        # the Failure carries the MS-CHAPv2-ID of the exchange it ends; the retry's answer has the next
        ms_id, self._ms_id = self._ms_id, (self._ms_id + 1) & 0xFF
        return self._request(EapType.MSCHAPV2, _mschap(_MSCHAP_FAILURE, ms_id, text))
