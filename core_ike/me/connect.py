"""ME_CONNECT notify sets: build and parse the relay and callback messages ([ME] §4, docs/protocol.md §2.5, §4).

| Message                | Payloads (strongSwan order)                                             |
|------------------------|-------------------------------------------------------------------------|
| A -> MS request        | N(ME_CONNECTID) N(ME_CONNECTKEY) N(ME_CALLBACK) N(ME_ENDPOINT)+ ID_PEER(B) |
| MS -> B request        | N(ME_CONNECTID) N(ME_CONNECTKEY=keyA) N(ME_ENDPOINT)+ ID_PEER(A)         |
| B -> MS request        | N(ME_CONNECTID) N(ME_CONNECTKEY=keyB) N(ME_RESPONSE) N(ME_ENDPOINT)+ ID_PEER(A) |
| MS -> A request        | N(ME_CONNECTID) N(ME_CONNECTKEY=keyB) N(ME_RESPONSE) N(ME_ENDPOINT)+ ID_PEER(B) |
| MS -> waiter callback  | N(ME_CALLBACK) ID_PEER(peer that came online)                            |
| response               | (empty) | N(ME_CONNECT_FAILED) | N(INVALID_SYNTAX)                       |

docs/protocol.md §2.5: accept any order, send strongSwan's order (the draft puts ID_PEER first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from ..codec.payloads import IdPayload, NotifyPayload, Payload
from ..constants import NotifyType, PayloadType
from ..errors import ProtocolError
from ..ike.identity import Identity
from ..rng import Rng
from .endpoints import Endpoint, decode_endpoint, encode_endpoint
from .natinfo import IKEME_NAT_BEHAVIOUR

# docs/protocol.md §2.2, §4.2 (strongSwan validation on every ME_CONNECT)
CONNECT_ID_MIN, CONNECT_ID_MAX = 4, 16
CONNECT_KEY_MIN, CONNECT_KEY_MAX = 16, 32
DEFAULT_CONNECT_ID_LEN = 4  # strongSwan sends 4
DEFAULT_CONNECT_KEY_LEN = 16  # strongSwan sends 16


def new_connect_id(rng: Rng, length: int = DEFAULT_CONNECT_ID_LEN) -> bytes:
    """docs/protocol.md §4.1 step 1: only the ME_CONNECT initiator draws the connect ID (strong RNG)."""
    if not CONNECT_ID_MIN <= length <= CONNECT_ID_MAX:
        raise ValueError(f"connect ID length {length} outside {CONNECT_ID_MIN}..{CONNECT_ID_MAX}")
    return rng.bytes(length)


def new_connect_key(rng: Rng, length: int = DEFAULT_CONNECT_KEY_LEN) -> bytes:
    """docs/protocol.md §4.1 step 1: each side draws its own ME_CONNECTKEY."""
    if not CONNECT_KEY_MIN <= length <= CONNECT_KEY_MAX:
        raise ValueError(f"connect key length {length} outside {CONNECT_KEY_MIN}..{CONNECT_KEY_MAX}")
    return rng.bytes(length)


class ConnectKind(Enum):
    REQUEST = "request"  # A -> MS or MS -> B
    RESPONSE = "response"  # B -> MS or MS -> A (carries ME_RESPONSE)
    CALLBACK = "callback"  # MS -> waiter


@dataclass(frozen=True)
class MeConnect:
    """A parsed ME_CONNECT request. `endpoint_data` keeps the octets as received, so the MS can
    relay them unchanged (docs/protocol.md §4.1 step 4)."""

    kind: ConnectKind
    peer: IdPayload
    connect_id: bytes = b""
    key: bytes = b""
    endpoints: tuple[Endpoint, ...] = ()
    endpoint_data: tuple[bytes, ...] = ()
    callback: bool = False
    # N(IKEME_NAT_BEHAVIOUR) of our own clients (natinfo.py): the sender's NAT behaviour, relayed by our
    # server to our own clients only (core_ike/me/birthday.py decides from it)
    nat: bytes | None = None


def _syntax(msg: str) -> ProtocolError:
    return ProtocolError(msg, NotifyType.INVALID_SYNTAX)


def _id_peer(peer: IdPayload) -> IdPayload:
    if peer.ptype == PayloadType.ID_PEER:
        return peer
    return IdPayload(PayloadType.ID_PEER, peer.id_type, peer.data)


def id_peer(ident: Identity) -> IdPayload:
    """The ID_PEER payload naming `ident` ([ME] §4.2)."""
    return IdPayload(PayloadType.ID_PEER, ident.id_type, ident.data)


def identity_of(p: IdPayload) -> Identity:
    """The identity an ID_PEER (or IDi/IDr) payload names."""
    return Identity(int(p.id_type), p.data)


def build_connect(connect_id: bytes, key: bytes, endpoints: Sequence[Endpoint | bytes], peer: IdPayload,
                  *, callback: bool = False, response: bool = False) -> list[Payload]:
    """One of the four relay requests, in strongSwan's order (N..., ID_PEER).

    A -> MS: callback=True (strongSwan always asks); B -> MS and MS -> A: response=True. Endpoints
    given as bytes are copied unchanged (the MS relays what it received).
    """
    _check_lengths(connect_id, key)
    out: list[Payload] = [NotifyPayload(NotifyType.ME_CONNECTID, connect_id),
                          NotifyPayload(NotifyType.ME_CONNECTKEY, key)]
    if callback:
        out.append(NotifyPayload(NotifyType.ME_CALLBACK))
    if response:
        out.append(NotifyPayload(NotifyType.ME_RESPONSE))
    for ep in endpoints:
        out.append(NotifyPayload(NotifyType.ME_ENDPOINT, ep if isinstance(ep, bytes) else encode_endpoint(ep)))
    out.append(_id_peer(peer))
    return out


def build_relay(req: MeConnect, requester: IdPayload, *, private: bool = False) -> list[Payload]:
    """MS -> target: ID_PEER rewritten to the requester; ID, key, endpoints copied; no ME_CALLBACK.
    `private`: the target is our own client, it gets the requester's N(IKEME_NAT_BEHAVIOUR) too."""
    out = build_connect(req.connect_id, req.key, req.endpoint_data, requester,
                        response=req.kind is ConnectKind.RESPONSE)
    if private and req.nat is not None:
        out.insert(len(out) - 1, NotifyPayload(IKEME_NAT_BEHAVIOUR, req.nat))
    return out


def build_callback(peer_online: IdPayload) -> list[Payload]:
    """docs/protocol.md §5: MS -> waiting requester, `N(ME_CALLBACK) ID_PEER(peer that came online)`."""
    return [NotifyPayload(NotifyType.ME_CALLBACK), _id_peer(peer_online)]


def build_connect_failed() -> list[Payload]:
    return [NotifyPayload(NotifyType.ME_CONNECT_FAILED)]


def _check_lengths(connect_id: bytes, key: bytes) -> None:
    if not CONNECT_ID_MIN <= len(connect_id) <= CONNECT_ID_MAX:
        raise _syntax(f"ME_CONNECTID of {len(connect_id)} octets ({CONNECT_ID_MIN}..{CONNECT_ID_MAX} expected)")
    if not CONNECT_KEY_MIN <= len(key) <= CONNECT_KEY_MAX:
        raise _syntax(f"ME_CONNECTKEY of {len(key)} octets ({CONNECT_KEY_MIN}..{CONNECT_KEY_MAX} expected)")


# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook
_CONNECTID, _CONNECTKEY, _ENDPOINT = NotifyType.ME_CONNECTID, NotifyType.ME_CONNECTKEY, NotifyType.ME_ENDPOINT
_CALLBACK, _RESPONSE, _ID_PEER = NotifyType.ME_CALLBACK, NotifyType.ME_RESPONSE, PayloadType.ID_PEER
_KIND_CALLBACK, _KIND_REQUEST, _KIND_RESPONSE = ConnectKind.CALLBACK, ConnectKind.REQUEST, ConnectKind.RESPONSE


def _scan(payloads: Sequence[Payload]) -> tuple[IdPayload | None, bytes | None, bytes | None, list[bytes], bool,
                                                bool, bytes | None]:
    """One pass over an ME_CONNECT's payloads: (ID_PEER, connect ID, key, endpoint data, callback, response,
    NAT behaviour); of a repeated notify the first counts. ID_PEER twice is INVALID_SYNTAX."""
    peer: IdPayload | None = None
    cid = key = nat = None
    callback = response = False
    eps: list[bytes] = []
    for p in payloads:
        if isinstance(p, NotifyPayload):
            t = p.type
            if t == _ENDPOINT:
                eps.append(p.data)
            elif t == _CONNECTID:
                cid = p.data if cid is None else cid
            elif t == _CONNECTKEY:
                key = p.data if key is None else key
            elif t == _CALLBACK:
                callback = True
            elif t == _RESPONSE:
                response = True
            elif t == IKEME_NAT_BEHAVIOUR and nat is None:
                nat = p.data
        elif isinstance(p, IdPayload) and p.ptype == _ID_PEER:
            if peer is not None:
                raise _syntax("more than one ID_PEER")  # strongSwan rules: exactly 1
            peer = p
    return peer, cid, key, eps, callback, response, nat


def parse_connect(payloads: Sequence[Payload]) -> MeConnect:
    """Parse an ME_CONNECT request (any payload order, docs/protocol.md §2.5).

    Missing ID_PEER, ME_CONNECTID, ME_CONNECTKEY or ME_ENDPOINT, or any value outside the limits of
    docs/protocol.md §4.2 -> ProtocolError(INVALID_SYNTAX) (strongSwan; the draft says ME_CONNECT_FAILED for
    "no endpoints"). A message with ME_CALLBACK and no ME_CONNECTID is a callback. The payloads are read in
    one pass (`_scan`): every ME_CONNECT on a mediated setup's path (four at the server, one at each peer) is
    parsed.
    """
    peer, cid, key, eps, callback, response, nat = _scan(payloads)
    if peer is None:
        raise _syntax("ME_CONNECT without ID_PEER")
    if cid is None and callback:
        return MeConnect(_KIND_CALLBACK, peer, callback=True)
    if cid is None or key is None:
        raise _syntax("ME_CONNECT without ME_CONNECTID or ME_CONNECTKEY")
    _check_lengths(cid, key)
    if not eps:
        raise _syntax("ME_CONNECT without ME_ENDPOINT")
    endpoints = tuple([decode_endpoint(d) for d in eps])  # raises INVALID_SYNTAX (docs/protocol.md §4.2)
    return MeConnect(_KIND_RESPONSE if response else _KIND_REQUEST, peer, cid, key, endpoints, tuple(eps), callback,
                     nat)


@dataclass(frozen=True)
class ConnectResult:
    """Outcome of an ME_CONNECT response: ok (empty SK{}) or the error notify received."""

    ok: bool
    error: NotifyType | int | None = None


def parse_connect_response(payloads: Sequence[Payload]) -> ConnectResult:
    """docs/protocol.md §2.5: empty = accepted; N(ME_CONNECT_FAILED) or another error notify = refused."""
    for p in payloads:
        if isinstance(p, NotifyPayload) and p.is_error:
            return ConnectResult(False, p.type)
    return ConnectResult(True)
