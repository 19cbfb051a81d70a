"""The responder's answer to the common IKE_AUTH request, written without the general machinery.

After a common IKE_SA_INIT (core_ike/ike/fastinit.py) most IKE_AUTH requests a responder gets have one
shape (RFC 7296 1.2): IDi, perhaps IDr, AUTH with a pre-shared key or a signature (RFC 7296 2.15,
RFC 7427), the peer's certificates and CERTREQs (3.6, 3.7), and status notifies that a responder without
MOBIKE or EAP answers by ignoring them (INITIAL_CONTACT with uniqueness left to the policy,
MOBIKE_SUPPORTED, NO_ADDITIONAL_ADDRESSES, EAP_ONLY_AUTHENTICATION, RFC 5998 3; USE_TRANSPORT_MODE,
ESP_TFC_PADDING_NOT_SUPPORTED and the like, which the general path ignores as well), and either no SA (a
childless IKE_SA, RFC 6023) or one CHILD_SA: SA, TSi and TSr (RFC 7296 1.2), without CP. For such a
request `answer` decrypts the SK payload, reads the fields from the plaintext octets, checks the AUTH (and
the certificate, as the general path does) and writes the response's octets `[ IDr CERT... AUTH ]`
directly; a CHILD_SA is negotiated by the general path's own task (ChildCreate: narrowing, proposal
selection, keys, its events) on the SA and TS payloads alone, and its payloads are encoded by the codec.
The same octets, the same IKE_SA and CHILD_SA state, events and info lines as the general path
(Engine._dispatch, the TaskManager, the IkeAuth and ChildCreate tasks, the encoder) gives, without a
decoded message, rule check or task per request for the IKE_SA's part. This
matters because a responder usually handles each request right after waking up, when every line of
code it runs must come back into the CPU caches first.

A request that came in fragments (RFC 7383 2.5: one with the initiator's certificate, SA and TS payloads
is often longer than the initiator's fragment size) is handed over by the TaskManager once its fragments
are reassembled (`answer_reassembled`, the plaintext undecoded) and answered by the same code; a
retransmitted fragment set then gets the same response (RFC 7383 2.6.1: core_ike/ike/fragments.py).

Anything else goes the general way, which decides it in full, before anything is changed here: another
payload or an error notify, a CP payload, an SA without both TS payloads (or TS payloads without an SA),
more than one of SA, TSi or TSr, EAP, a peer whose AUTH or certificate does not
verify (AUTHENTICATION_FAILED), a mix of PSK and signatures, no matching configuration (the
configuration source may be asked), a retransmission, a response that would or could be fragmented
(RFC 7383; for the longest CHILD_SA payloads the request allows), a raw public
key that a credentials resolver would look up, an engine extension with tasks or a say in the choice of the
configuration (it may act on IKE_AUTH notifies, e.g. draft-brunner-ikev2-mediation §3.1), and every case
while debug lines are logged.

While info lines are logged, `answer` logs the ones the general path logs for the request, with the
same text and level, in the same order, on the same logger.
"""
from __future__ import annotations

import hmac
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ..buffer import Buffer
from ..codec.message import Message
from ..codec.payloads import NotifyPayload, Payload, SaPayload, SkfPayload, TrafficSelector, TsPayload
from ..codec.sawire import pull_sa_body
from ..codec.summary import PAYLOAD_ABBREV, bracket, notify_payload_name
from ..codec.wire import encode_payloads, pull_body
from ..constants import AuthMethod, CertEncoding, PayloadType, TsType
from ..crypto.auth import create_signature_auth, key_kind, psk_mac, verify_signature_auth
from ..errors import AuthenticationFailed, DecodeError, LocalError, ProtocolError
from .config import IkeConfig, addr_matches
from .extension import Extension
from .identity import Identity
from .state import IkeState
from .tasks.child_create import ChildCreate
from .tasks.ike_auth import _der, _method_text, established

if TYPE_CHECKING:
    from .engine import Engine
    from .sa import IkeSa

log = logging.getLogger("core_ike.ike")

Addr = tuple[str, int]

_SELECTOR = struct.Struct("!BBHHH")  # RFC 7296 3.13.1: TS Type, IP Protocol ID, Selector Length, ports
_TS_TYPES = {7: (TsType.IPV4_ADDR_RANGE, 4), 8: (TsType.IPV6_ADDR_RANGE, 16)}  # TS type -> (type, address octets)

SK, IDI, IDR, CERT, CERTREQ, AUTH, NOTIFY = 46, 35, 36, 37, 38, 39, 41  # RFC 7296 3.2 payload types
SKF = 53  # RFC 7383 2.5
SA, TSI, TSR = 33, 44, 45
IKE_AUTH = 35
INITIATOR, RESPONSE = 0x08, 0x20  # RFC 7296 3.1 header flags
VERSION = 0x20  # RFC 7296 3.1: major 2, minor 0
PSK = int(AuthMethod.PSK)
# the header after the SPIs up to the Length (RFC 7296 3.1) of the request and of our response
_AUTH_REQUEST_HEAD = bytes((SK, VERSION, IKE_AUTH, INITIATOR, 0, 0, 0, 1))
_AUTH_RESPONSE_HEAD = bytes((SK, VERSION, IKE_AUTH, RESPONSE, 0, 0, 0, 1))
_AUTH_FRAGMENTS_HEAD = bytes((SKF, VERSION, IKE_AUTH, INITIATOR, 0, 0, 0, 1))  # fragment 1's (RFC 7383 2.5)
RSA_SIG, DIGITAL_SIGNATURE = int(AuthMethod.RSA_SIG), int(AuthMethod.DIGITAL_SIGNATURE)
# enum members bound once: reading one off its class runs Python 3.11's EnumType.__getattr__ hook
CREATED, DESTROYED = IkeState.CREATED, IkeState.DESTROYED
_TS_PTYPES = {TSI: PayloadType.TSi, TSR: PayloadType.TSr}
X509 = int(CertEncoding.X509_SIGNATURE)
MAX_CERTS = 16  # the general path's rule for IKE_AUTH requests (core_ike/codec/rules.py)
STATUS_MIN = 16384  # RFC 7296 3.10.1: Notify Message Types from here on are status types
_ID_ADDR_LEN = {1: 4, 5: 16}  # RFC 7296 3.5: ID_IPV4_ADDR, ID_IPV6_ADDR

# the "parsed" line's summaries by request shape (payload types, a notify as 0x10000 + its type); a peer
# can vary the shape, so only the first few are kept
_SUMMARIES: dict[tuple[int, ...], str] = {}
_MAX_SUMMARIES = 64
_RESPONSE_SUMMARIES = [bracket([PAYLOAD_ABBREV[IDR]] + [PAYLOAD_ABBREV[CERT]] * n + [PAYLOAD_ABBREV[AUTH]])
                       for n in range(MAX_CERTS + 1)]  # by the number of our certificates


class Request:
    """The fields of a common IKE_AUTH request (`parse_inner`)."""

    __slots__ = ("auth", "cert", "certs", "child", "idi", "idr", "method", "shape")

    def __init__(self) -> None:
        self.idi = b""  # IDi's body: IDType | RESERVED | data, as received (RFC 7296 2.15)
        self.idr: bytes | None = None
        self.method = 0  # the AUTH payload's Auth Method and Authentication Data
        self.auth = b""
        self.cert: bytes | None = None  # the first X.509 certificate's DER (the one that is checked)
        self.certs = 0
        self.shape: list[int] = []
        self.child: dict[int, bytes] = {}  # SA, TSi, TSr: type -> body, as received


def parse_inner(plain: bytes, first: int) -> Request | None:
    """The fields when the decrypted inner payloads `plain` (starting with type `first`) are of the
    common shape: one IDi, at most one IDr, one AUTH, certificates (at most MAX_CERTS), CERTREQs, status
    notifies without SPI and either none or one each of SA, TSi and TSr, in any order, every generic
    header without flags and the chain filling the plaintext exactly; None for anything else."""
    n = len(plain)
    req = Request()
    ptype, pos = first, 0
    while ptype:
        if n - pos < 4:
            return None
        nxt, crit, plen = plain[pos], plain[pos + 1], (plain[pos + 2] << 8) | plain[pos + 3]
        end = pos + plen
        if crit or plen < 8 or end > n or not _take(req, ptype, plain, pos + 4, end):
            return None
        ptype, pos = nxt, end
    if req.child and len(req.child) != 3:
        return None  # RFC 7296 1.2: a CHILD_SA takes SA, TSi and TSr; the general path answers the rest
    return req if req.idi and req.auth and pos == n else None


def _take(req: Request, ptype: int, plain: bytes, start: int, end: int) -> bool:
    """One payload's body (at least 4 octets) into `req`; False when it is not of the common shape."""
    if ptype == NOTIFY:
        ntype = (plain[start + 2] << 8) | plain[start + 3]
        if plain[start] or plain[start + 1] or ntype < STATUS_MIN:
            return False
        req.shape.append(0x10000 + ntype)
        return True
    if ptype in (SA, TSI, TSR):  # a CHILD_SA (RFC 7296 1.2): each at most once (the IKE_AUTH rule)
        ok = ptype not in req.child
        if ok:
            req.child[ptype] = plain[start:end]
    elif ptype in (IDI, IDR):
        ok = _take_id(req, ptype, plain, start, end)
    elif ptype == AUTH and not req.auth:
        req.method, req.auth = plain[start], plain[start + 4:end]
        ok = bool(req.auth)
    elif ptype == CERT and req.certs < MAX_CERTS:
        req.certs += 1
        if req.cert is None and plain[start] == X509:
            req.cert = plain[start + 1:end]
        ok = True
    else:
        ok = ptype == CERTREQ  # RFC 7296 3.7: we send our certificates whatever the peer asks for
    if ok:
        req.shape.append(ptype)
    return ok


def _take_id(req: Request, ptype: int, plain: bytes, start: int, end: int) -> bool:
    """IDi or IDr (RFC 7296 3.5): the first of its kind, an address of its type's length."""
    want = _ID_ADDR_LEN.get(plain[start])
    if (want is not None and end - start - 4 != want) or (req.idi if ptype == IDI else req.idr is not None):
        return False
    if ptype == IDI:
        req.idi = plain[start:end]
    else:
        req.idr = plain[start:end]
    return True


def _chain(items: list[tuple[int, bytes]], after: int = 0) -> bytes:
    """Payloads (type, body) with their generic headers (RFC 7296 3.2), the last one's Next Payload
    `after`."""
    parts: list[bytes] = []
    last = len(items) - 1
    for i, (_, body) in enumerate(items):
        parts += ((((items[i + 1][0] if i < last else after) << 24) | (4 + len(body))).to_bytes(4, "big"), body)
    return b"".join(parts)


def _child_payloads(req: Request) -> list[Payload] | None:
    """The request's SA, TSi and TSr as the codec decodes them, in the order the general path's task
    reads them; None when one does not decode (the general path says why)."""
    child = req.child
    tsi, tsr = child[TSI], child[TSR]
    try:
        # as the codec's chain decoder: an SA body of a shape seen before is parsed once
        return [pull_sa_body(child[SA]),
                _pull_ts(tsi, TSI) or pull_body(Buffer(tsi), TSI, False, len(tsi)),
                _pull_ts(tsr, TSR) or pull_body(Buffer(tsr), TSR, False, len(tsr))]
    except (DecodeError, ProtocolError):
        return None


# TS payload bodies seen (RFC 7296 3.13) -> their selectors (immutable): a responder's own side comes in
# the same octets from every peer of a configuration; bounded, a peer can vary the octets
_TS_SEEN: dict[bytes, tuple[TrafficSelector, ...]] = {}
_TS_SEEN_MAX = 1024


def _pull_ts(body: bytes, ptype: int) -> TsPayload | None:
    """A TS payload's body (RFC 7296 3.13) whose selectors are all IPv4 or IPv6 address ranges of their
    type's length: the payload the codec's pull_ts gives; None for anything else (the codec decides)."""
    seen = _TS_SEEN.get(body)
    if seen is not None:
        return TsPayload(_TS_PTYPES[ptype], list(seen))
    n = len(body)
    if n < 4:
        return None
    pos, selectors = 4, []
    for _ in range(body[0]):
        if n - pos < 8:
            return None
        ts_type, proto, length, start, end = _SELECTOR.unpack_from(body, pos)
        kind = _TS_TYPES.get(ts_type)
        if kind is None or length != 8 + 2 * kind[1] or pos + length > n:
            return None
        a = pos + 8 + kind[1]
        selectors.append(TrafficSelector(kind[0], proto, start, end, body[pos + 8:a], body[a:pos + length]))
        pos += length
    if pos != n:
        return None
    if len(_TS_SEEN) >= _TS_SEEN_MAX:
        _TS_SEEN.clear()
    _TS_SEEN[body] = tuple(selectors)
    return TsPayload(_TS_PTYPES[ptype], selectors)


def _push(p: Payload) -> bytes:
    """One payload's body as the codec encodes it (push_ts written out for the TS payloads we send)."""
    if isinstance(p, SaPayload) and p.raw is not None:
        return p.raw  # ChildCreate wrote it (the codec sends it as it is)
    if isinstance(p, TsPayload):
        pack = _SELECTOR.pack
        parts = [bytes((len(p.selectors), 0, 0, 0))]
        for t in p.selectors:  # a loop, not a generator: one frame less per payload
            parts += (pack(int(t.ts_type), t.ip_proto, 8 + 2 * len(t.start_addr), t.start_port, t.end_port),
                      t.start_addr, t.end_addr)
        return b"".join(parts)
    return encode_payloads([p])[4:]


_SA_BOUNDS: dict[bytes, int] = {}  # an SA payload's shape (SaPayload.shape) -> its largest proposal's octets


def _child_bound(cfg: IkeConfig, child: list[Payload]) -> int:
    """The most octets the CHILD_SA's payloads of the response can take (RFC 7383: the decision to
    fragment comes before anything is changed): the SA one of the peer's proposals with its SPI and at
    most its transforms (RFC 7296 3.3), each TS payload the intersections of the offered selectors, each
    of its type and length, with the configured ones (RFC 7296 2.9, 3.13.1); an error notify instead
    (RFC 7296 1.2) is shorter."""
    sa_pl, tsi, tsr = child
    assert isinstance(sa_pl, SaPayload) and isinstance(tsi, TsPayload) and isinstance(tsr, TsPayload)
    # loops rather than generators: no frame per sum
    remote = local = offered_i = offered_r = 0
    shape = sa_pl.shape  # the proposals' SPI sizes and transforms, what the bound depends on
    proposal = _SA_BOUNDS.get(shape) if shape is not None else None
    if proposal is None:
        proposal = 0
        for p in sa_pl.proposals:
            n = 8 + len(p.spi)
            for t in p.transforms:
                n += 12 if t.key_length else 8
            proposal = max(proposal, n)
        if shape is not None:
            if len(_SA_BOUNDS) >= _MAX_SUMMARIES:
                _SA_BOUNDS.clear()
            _SA_BOUNDS[shape] = proposal
    for c in cfg.children:
        remote, local = max(remote, len(c.remote_ts)), max(local, len(c.local_ts))
    for sel in tsi.selectors:
        offered_i += 8 + 2 * len(sel.start_addr)
    for sel in tsr.selectors:
        offered_r += 8 + 2 * len(sel.start_addr)
    return 4 + proposal + 8 + remote * offered_i + 8 + local * offered_r


def _summary(shape: list[int]) -> str:
    """The summary Message.summary gives for a request of this shape: `[ IDi N(INIT_CONTACT) IDr AUTH ]`."""
    key = tuple(shape)
    text = _SUMMARIES.get(key)
    if text is None:
        text = bracket([notify_payload_name(t - 0x10000) if t >= 0x10000 else PAYLOAD_ABBREV[t] for t in key])
        if len(_SUMMARIES) < _MAX_SUMMARIES:
            _SUMMARIES[key] = text
    return text


def _config(engine: Engine, local: Addr, remote: Addr, peer: Identity, wanted: Identity | None,
            psk: bool) -> IkeConfig | None:
    """Engine.select_peer_config without extensions for an AUTH with a pre-shared key (`psk`) or a
    signature (RFC 7296 2.15), where the request arrives: the best configuration, None when none
    matches (the general path then asks the configuration source, if there is one)."""
    best: tuple[int, IkeConfig] | None = None
    for c in engine.configs:
        if not (addr_matches(c.local_addrs, local[0]) and addr_matches(c.remote_addrs, remote[0])):
            continue
        rid = c.remote.id
        if not rid.matches(peer) or (c.remote.auth != "psk" if psk else c.remote.auth != "pubkey"):
            continue
        if wanted is not None and c.local.id.id_type and c.local.id != wanted:
            continue  # ID type 0 is %any (Identity.is_any), read as the field: no property call per config
        score = 2 if rid.id_type else 1
        if best is None or score > best[0]:
            best = (score, c)
    return best[1] if best else None


def _target(engine: Engine, data: bytes) -> IkeSa | None:
    """The half-open IKE_SA a common IKE_AUTH request `data` is for: header as RFC 7296 3.1 has it for
    the first IKE_AUTH request (Message ID 1, from the original initiator, SK first), an SA we answered
    IKE_SA_INIT for and whose next request is this one (`_answerable` tells), no fragments of it held."""
    n = len(data)
    if n < 32:
        return None
    # read by index rather than with `struct` (its code and format tables are one more thing to bring
    # into the caches)
    if (data[16:24] != _AUTH_REQUEST_HEAD or int.from_bytes(data[24:28], "big") != n):
        return None  # Next Payload SK, version, IKE_AUTH, flags, Message ID 1; the Length
    sa = engine.sas.get(data[8:16])
    if sa is None or sa.spi_i != data[:8] or sa.tm.fragments is not None:
        return None
    return sa


def _answerable(sa: IkeSa) -> bool | None:
    """Whether info lines are logged; None when the general path must answer `sa`'s next request: `sa`
    is not one we answered IKE_SA_INIT for, with its keys, whose next request is the first IKE_AUTH
    (Message ID 1, RFC 7296 1.2) and with nothing of ours in flight, or debug lines are logged (only
    when info lines are: levels are ordered), or an engine extension is not `_neutral`."""
    tm = sa.tm
    if (sa.is_original_initiator or sa.state is not CREATED or sa.in_prot is None or sa.out_prot is None
            or tm.peer_mid != 1 or tm.outstanding is not None or sa.established_at is not None):
        return None
    info = log.isEnabledFor(logging.INFO)
    if (info and log.isEnabledFor(logging.DEBUG)) or not all(map(_neutral, sa.engine.extensions)):
        return None
    return info


_NEUTRAL: dict[type, bool] = {}


def _neutral(x: object) -> bool:
    """Does the engine extension `x` leave IKE_AUTH requests alone: neither tasks of its own (it may act
    on notifies) nor a say in the choice of the configuration? (The data plane's glue, for one: it
    acts on the events.)"""
    t = type(x)
    hit = _NEUTRAL.get(t)
    if hit is None:
        hit = _NEUTRAL[t] = getattr(t, "tasks", None) is Extension.tasks and \
            getattr(t, "config_score", None) is Extension.config_score
    return hit


class _Answer:
    """What `_answer_of` decided for a request, before anything is changed."""

    __slots__ = ("cfg", "child", "items", "me", "mine", "peer", "remote", "req", "sa", "wanted")

    def __init__(self, sa: IkeSa, req: Request, peer: Identity, wanted: Identity | None, cfg: IkeConfig,
                 remote: Addr, me: Identity) -> None:
        self.sa, self.req, self.peer, self.wanted, self.cfg, self.remote, self.me = sa, req, peer, wanted, cfg, remote, me
        self.mine = PSK  # our AUTH method
        self.items: list[tuple[int, bytes]] = []  # the response's IDr, CERT..., AUTH: (type, body)
        self.child: list[Payload] | None = None  # the request's SA, TSi, TSr (a CHILD_SA, RFC 7296 1.2)


def answer(engine: Engine, data: bytes, local: Addr, remote: Addr, now: float) -> bool:
    """Answer `data` if it is a common IKE_AUTH request (see the module's docstring); False, with nothing
    changed, when the general path must (always while debug lines are logged). While info lines are
    logged, it logs those the general path logs for the request."""
    sa = _target(engine, data)
    info = _answerable(sa) if sa is not None else None
    if sa is None or info is None:
        return False
    a = _answer_of(engine, sa, _request_of(sa, data), local, remote)
    if a is None:
        return False
    _commit(engine, a, len(data), local, remote, now, info)
    return True


def answer_reassembled(sa: IkeSa, first: Message, plain: bytes, now: float) -> bool:
    """`answer` for a request that came in fragments (RFC 7383 2.6), reassembled for `sa`: `first` is
    fragment 1 (its header), `plain` the inner payloads' octets; the addresses are those
    Engine._dispatch updated for its last fragment. False, with nothing changed, when the general path
    must answer; a retransmission of the fragments gets this response again (RFC 7383 2.6.1,
    FragmentReceiver)."""
    raw, skf = first.raw, first.sk
    # SKF first (no payload outside it, RFC 7296 3.14), version, IKE_AUTH, flags, Message ID 1 (RFC 7296 3.1)
    if raw[16:24] != _AUTH_FRAGMENTS_HEAD or raw[:8] != sa.spi_i or not isinstance(skf, SkfPayload):
        return False
    info = _answerable(sa)
    if info is None:
        return False
    engine, local, remote = sa.engine, sa.local, sa.remote
    a = _answer_of(engine, sa, parse_inner(plain, skf.first_inner), local, remote)
    if a is None:
        return False
    _commit(engine, a, None, local, remote, now, info)  # Engine.receive logged each fragment's datagram
    return True


def _request_of(sa: IkeSa, data: bytes) -> Request | None:
    """The request's inner payloads decrypted and read, if of the common shape."""
    nxt, crit, plen = data[28], data[29], (data[30] << 8) | data[31]
    in_prot = sa.in_prot
    if crit or plen != len(data) - 28 or in_prot is None:
        return None  # SK must be the last payload (RFC 7296 3.14): the general path says so
    try:
        plain = in_prot.open(data[:32], data[32:])
    except DecodeError:
        return None  # RFC 7296 2.21.2: the general path drops it and logs why
    return parse_inner(plain, nxt)


def _answer_of(engine: Engine, sa: IkeSa, req: Request | None, local: Addr, remote: Addr) -> _Answer | None:
    """The request `req` (None: not of the common shape) checked, the response's plaintext written; None
    when the general path must answer. Changes nothing."""
    out = sa.out_prot
    if req is None or out is None:
        return None
    idi, idr, psk = req.idi, req.idr, req.method == PSK
    peer = Identity(idi[0], idi[4:])
    wanted = Identity(idr[0], idr[4:]) if idr is not None else None
    # RFC 7296 2.23: a response goes back where the request came from (Engine._update_addresses)
    new_remote = remote if sa.remote != remote and (sa.nat_there or sa.remote[0] == remote[0]) else sa.remote
    cfg = _config(engine, local, new_remote, peer, wanted, psk)
    if cfg is None or cfg.local.auth != ("psk" if psk else "pubkey") or (psk and cfg.local.certs):
        return None
    me = cfg.local.id
    if not me.id_type:  # %any; IkeAuth.process_r: the identity the peer asked for, else the general path's default
        if wanted is None:
            return None
        me = wanted
    a = _Answer(sa, req, peer, wanted, cfg, new_remote, me)
    extra = 0  # the most octets the CHILD_SA's payloads add to the response
    if req.child:
        a.child = _child_payloads(req)
        if a.child is None:
            return None
        extra = _child_bound(cfg, a.child)
    # RFC 7296 2.15: the peer's AUTH over its IKE_SA_INIT request, our nonce and its IDi; ours over our
    # IKE_SA_INIT response, its nonce and our IDr
    prf = sa.prf
    theirs = sa.init_request + sa.nr + prf(sa.sk_pi, idi)
    id_body = bytes((me.id_type, 0, 0, 0)) + me.data
    octets = sa.init_response + sa.ni + prf(sa.sk_pr, id_body)
    if psk:
        secret = engine.creds.psk(me, peer)
        mac = psk_mac(prf, secret) if secret is not None else None
        # AUTHENTICATION_FAILED otherwise, answered and logged by the general path
        items = [(IDR, id_body), (AUTH, bytes((PSK, 0, 0, 0)) + mac(octets))] \
            if mac is not None and hmac.compare_digest(mac(theirs), req.auth) else None
    else:
        items = _signature(engine, a, theirs, id_body, octets, out.sealed_length, extra)
    if items is None:
        return None
    a.items = items
    for _, b in items:
        extra += 4 + len(b)
    most = 32 + out.sealed_length(extra)
    if sa.frag_supported and cfg.fragmentation and most > cfg.fragment_size:
        return None  # RFC 7383 2.5: the general path fragments it
    return a


def _signature(engine: Engine, a: _Answer, theirs: bytes, id_body: bytes, octets: bytes,
               sealed_length: Callable[[int], int], extra: int) -> list[tuple[int, bytes]] | None:
    """The peer's signature checked (its certificate first, RFC 7296 3.6, 2.15) and our response's inner
    payloads IDr, CERT..., AUTH with ours (RFC 7427), `extra` octets of CHILD_SA payloads to follow;
    None when the general path must answer: a certificate or signature that does not verify (it answers
    AUTHENTICATION_FAILED), no key of ours, or a response that needs fragments."""
    creds, req = engine.creds, a.req
    if req.cert is not None:
        try:
            pc = creds.peer_cert(req.cert, engine.wall_time())
        except AuthenticationFailed:
            return None
        if not pc.holds(a.peer):
            return None
        key: Any = pc.key
    else:
        # a resolver may look the key up and ask for a retransmission (CredentialsPending): the general path
        key = creds.public_key_for(a.peer) if creds.resolver is None else None
        if key is None:
            return None
    if not verify_signature_auth(key, req.method, req.auth, theirs):
        return None
    mine = creds.private_key_for(a.me)
    if mine is None:
        return None
    certs = _cert_payloads(a.cfg.local.certs)
    # RFC 7383 2.5: a response that needs fragments is the general path's. With the shortest AUTH (an RSA
    # signature alone, without RFC 7427's AlgorithmIdentifier) it is decided before signing; `_answer_of`
    # measures the signed response exactly (one within those few octets of the limit is signed twice)
    least = (cast(rsa.RSAPrivateKey, mine).key_size + 7) // 8 if key_kind(mine) is rsa.RSAPrivateKey else 0
    plain = len(id_body) + 8 + least + extra
    for _, b in certs:  # a loop: sum() over a generator would make and resume a generator frame
        plain += 4 + len(b)
    if a.sa.frag_supported and a.cfg.fragmentation and 32 + sealed_length(plain) > a.cfg.fragment_size:
        return None
    hashes = set(a.sa.peer_hash_algs)
    pref = a.cfg.local.signature
    method = RSA_SIG if pref == "rsa" or not hashes else DIGITAL_SIGNATURE
    try:
        m, data = create_signature_auth(mine, method, octets, hashes, rsa_pss=pref == "rsa-pss")
    except (ProtocolError, LocalError):
        return None
    a.mine = m
    return [(IDR, id_body), *certs, (AUTH, bytes((m, 0, 0, 0)) + data)]


# our certificates' CERT payload bodies by the id()s of the certificate objects, kept with the objects
# (so that no id is reused while its entry is here); a handful of configurations
_CERT_PAYLOADS: dict[tuple[int, ...], tuple[list[x509.Certificate], list[tuple[int, bytes]]]] = {}


def _cert_payloads(certs: list[x509.Certificate]) -> list[tuple[int, bytes]]:
    """(CERT, body) of each of our certificates (RFC 7296 3.6: X.509 signature, the DER), kept per
    set of certificate objects: looking a certificate up by value hashes its parsed fields each time."""
    key = tuple(map(id, certs))
    hit = _CERT_PAYLOADS.get(key)
    if hit is None:
        if len(_CERT_PAYLOADS) >= 64:
            _CERT_PAYLOADS.clear()
        hit = _CERT_PAYLOADS[key] = (list(certs), [(CERT, bytes((X509,)) + _der(c)) for c in certs])
    return hit[1]


def _commit(engine: Engine, a: _Answer, size: int | None, local: Addr, remote: Addr, now: float,
            info: bool) -> None:
    """The general path's steps for the request of `size` octets (None: in fragments, RFC 7383), in its
    order: the IKE_SA's addresses and liveness, its
    configuration and identities, the peer authenticated, the CHILD_SA selected (ChildCreate.select_r),
    our AUTH, established, the CHILD_SA's payloads and installation (ChildCreate.build_r), the response
    sealed, kept and sent."""
    sa, cfg, req = a.sa, a.cfg, a.req
    if info and size is not None:  # Engine.receive's line for a request it decoded
        log.info("received packet: from %s[%d] to %s[%d] (%d bytes)", remote[0], remote[1], local[0],
                 local[1], size)
    sa.local, sa.remote = local, a.remote
    sa.last_in = now
    sa.dpd_pending = False
    if info:  # TaskManager.receive's line
        log.info("parsed %s %s %d %s", "IKE_AUTH", "request", 1, _summary(req.shape))
    sa.peer_id = a.peer
    sa.config = cfg
    sa.name = cfg.name
    sa.mediation = cfg.mediation
    if info:  # IkeAuth.process_r's line
        log.info("looking for peer configs matching %s[%s]...%s[%s]: selected '%s'",
                 sa.local[0], str(a.wanted or "%any"), sa.remote[0], str(a.peer), cfg.name)
    sa.my_id = a.me
    psk = req.method == PSK
    if info:  # verify_auth's line
        if psk:
            log.info("authentication of '%s' with pre-shared key successful", str(a.peer))
        else:
            log.info("authentication of '%s' with %s successful", str(a.peer), _method_text(req.method))
    task = None
    if a.child is not None:  # TaskManager.responder_tasks: the CHILD_SA's task after IkeAuth's
        task = ChildCreate(None, in_auth=True)
        sa_pl, tsi, tsr = a.child
        task.select_r(sa, sa_pl, tsi, tsr, None, now)  # process_r for a request without CP
    if info:  # build_auth's line
        if psk:
            log.info("authentication of '%s' (myself) with pre-shared key", str(sa.my_id))
        else:
            log.info("authentication of '%s' (myself) with %s successful", str(sa.my_id), _method_text(a.mine))
    established(sa, now)
    _respond(engine, a, task, info, now)


def _respond(engine: Engine, a: _Answer, task: ChildCreate | None, info: bool, now: float) -> None:
    """The CHILD_SA's payloads and installation (ChildCreate.build_r), then the response sealed, kept
    and sent (TaskManager._send_response)."""
    sa = a.sa
    child = task.response_payloads(sa, now) if task is not None else []  # build_r's payloads
    items = a.items
    if child:  # a childless IKE_SA (RFC 6023) makes no list comprehension's frame
        items = items + [(int(p.ptype), _push(p)) for p in child]
    inner = _chain(items)
    if info:  # TaskManager._send_response's line
        log.info("generating %s response %d %s", "IKE_AUTH", 1, _response_summary(len(a.items) - 2, child))
    out = sa.out_prot
    assert out is not None
    sealed = out.sealed_length(len(inner))
    prefix = sa.spi_i + sa.spi_r + _AUTH_RESPONSE_HEAD + ((32 + sealed) << 32 | (IDR << 24) | (4 + sealed)).to_bytes(8, "big")
    body = out.seal(prefix, inner)
    if len(body) != sealed:
        raise LocalError(f"protector sealed {len(body)} octets, announced {sealed}")
    sa.tm.answered(1, prefix + body, now)
    sa.tm.initiate_next(now)  # queued work of ours may start now (TaskManager._process_request)
    if sa.state is not DESTROYED:
        engine.reschedule(sa)


def _response_summary(certs: int, child: list[Payload]) -> str:
    """The summary Message.summary gives for our response: `[ IDr CERT... AUTH SA TSi TSr ]`."""
    if not child:
        return _RESPONSE_SUMMARIES[certs]
    return bracket([PAYLOAD_ABBREV[IDR]] + [PAYLOAD_ABBREV[CERT]] * certs + [PAYLOAD_ABBREV[AUTH]]
                   + [notify_payload_name(int(p.type)) if isinstance(p, NotifyPayload) else PAYLOAD_ABBREV[int(p.ptype)]
                      for p in child])
