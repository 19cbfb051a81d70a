"""The responder's answer to the common IKE_SA_INIT request, written without the general machinery.

Most IKE_SA_INIT requests a responder gets have one shape (RFC 7296 1.2): SA, KE and Nonce, then status
notifies it answers the same way for every initiator of a kind (NAT-D, RFC 7296 2.23; fragmentation,
RFC 7383 2.3; hash algorithms, RFC 7427 4; redirect support, RFC 5685 3, which a responder without
redirection ignores). For such a request whose SA offer was negotiated before (the negotiation cache of
tasks/ike_init.py, keyed by the offer's octets) and whose group is the one chosen, `answer` reads the
fields from the raw octets, makes the IKE_SA and writes the response's octets directly, the same octets
and the same IKE_SA state as the general path (Engine._init_request with the IkeInit task) gives:
no Message, payload objects, rule check, task or encoder per request. This matters because a responder
usually handles each request right after waking up, when every line of code it runs must come back into
the CPU caches first.

Anything else goes the general way, which decides it in full: another payload or notify (an extension
acts on some, e.g. ME_CONNECTID, draft-brunner-ikev2-mediation §4.5), an unknown offer or another group
(NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD), a retransmission, COOKIEs demanded (RFC 7296 2.6), the
half-open limit, a key share check_public rejects, and every case while debug lines are logged (the
general path writes them: state changes and the like, more than this path knows of).

While info lines are logged, `answer` logs the ones the general path logs for the request, with the same
text and level, in the same order, on the same logger: "received packet", "... is initiating an IKE_SA",
"parsed IKE_SA_INIT request 0 [ ... ]", the NAT lines, "selected proposal", "generating IKE_SA_INIT
response 0 [ ... ]" and "sending packet". The two summaries are written with core_ike/codec/summary.py
from the payloads `parse` read and `_response` wrote, so they are the ones Message.summary gives.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from ..codec.summary import PAYLOAD_ABBREV, bracket, notify_payload_name
from ..constants import CertEncoding, NotifyType
from ..crypto.dh import check_public, is_pooled
from ..errors import ProtocolError
from .config import IkeConfig, addr_matches
from .state import IkeState
from .tasks.ike_init import (
    _HASH_SETS,
    _NEGOTIATED,
    _OUR_HASHES_DATA,
    Negotiated,
    defer_keys,
    natd_hash,
)

if TYPE_CHECKING:
    from .engine import Engine
    from .sa import IkeSa

log = logging.getLogger("core_ike.ike")

Addr = tuple[str, int]

_GENERIC = struct.Struct("!BBH")  # RFC 7296 3.2
_NOTIFY = struct.Struct("!BBH")  # RFC 7296 3.10: Protocol ID, SPI Size, Notify Message Type

SA, KE, NONCE, NOTIFY, CERTREQ = 33, 34, 40, 41, 38  # RFC 7296 3.2 payload types
IKE_SA_INIT = 34
INITIATOR, RESPONSE = 0x08, 0x20  # RFC 7296 3.1 header flags
VERSION = 0x20  # RFC 7296 3.1: major 2, minor 0
NONCE_MIN, NONCE_MAX = 16, 256  # RFC 7296 3.9 (and the general decoder's bounds)
# enum members bound once: reading one off its class runs Python 3.11's EnumType.__getattr__ hook
DESTROYED = IkeState.DESTROYED
_CERTREQ_X509 = bytes((CertEncoding.X509_SIGNATURE,))  # RFC 7296 3.7: Cert Encoding

NATD_SRC = int(NotifyType.NAT_DETECTION_SOURCE_IP)
NATD_DST = int(NotifyType.NAT_DETECTION_DESTINATION_IP)
FRAG = int(NotifyType.FRAGMENTATION_SUPPORTED)
HASH_ALGS = int(NotifyType.SIGNATURE_HASH_ALGORITHMS)
# the notifies the general path answers the same for every request (no extension acts on them)
PLAIN_NOTIFIES = frozenset((NATD_SRC, NATD_DST, FRAG, HASH_ALGS, int(NotifyType.REDIRECT_SUPPORTED)))

_ZERO4, _ZERO8 = bytes(4), bytes(8)
_NOTIFY_HASHES = _NOTIFY.pack(0, 0, HASH_ALGS) + _OUR_HASHES_DATA
_NOTIFY_FRAG = _NOTIFY.pack(0, 0, FRAG)
# the response's fixed parts: the header after the SPIs up to the Length (RFC 7296 3.1), the
# N(FRAGMENTATION_SUPPORTED) payload before the last one, the last: N(SIGNATURE_HASH_ALGORITHMS)
_RESPONSE_HEAD = bytes((SA, VERSION, IKE_SA_INIT, RESPONSE, 0, 0, 0, 0))
_FRAG_PAYLOAD = _GENERIC.pack(NOTIFY, 0, 4 + len(_NOTIFY_FRAG)) + _NOTIFY_FRAG
_HASHES_PAYLOAD = _GENERIC.pack(0, 0, 4 + len(_NOTIFY_HASHES)) + _NOTIFY_HASHES
_NOTIFY_NATD_SRC = _NOTIFY.pack(0, 0, NATD_SRC)
_NOTIFY_NATD_DST = _NOTIFY.pack(0, 0, NATD_DST)

# the "parsed" line's summaries by Request.shape; a peer can vary the shape (order and repetition of
# the notifies), so only the first few are kept
_SUMMARIES: dict[tuple[int, ...], str] = {}
_MAX_SUMMARIES = 64
# the "generating" line's summaries by (CERTREQ written, N(FRAGMENTATION_SUPPORTED) written), in the
# order `_response` writes the payloads
_RESPONSE_SUMMARIES = {
    (certreq, frag): bracket([PAYLOAD_ABBREV[SA], PAYLOAD_ABBREV[KE], PAYLOAD_ABBREV[NONCE]]
                             + [PAYLOAD_ABBREV[CERTREQ]] * certreq
                             + [notify_payload_name(NATD_SRC), notify_payload_name(NATD_DST)]
                             + [notify_payload_name(FRAG)] * frag + [notify_payload_name(HASH_ALGS)])
    for certreq in (False, True) for frag in (False, True)
}


class Request:
    """The fields of a common IKE_SA_INIT request (`parse`)."""

    __slots__ = ("frag", "group", "hashes", "ke", "natd_dst", "natd_src", "nonce", "offer", "shape", "spi_i")

    def __init__(self) -> None:
        self.spi_i = b""
        self.offer = b""  # the SA payload's body (the negotiation cache's key)
        self.group = 0
        self.ke = b""
        self.nonce = b""
        self.natd_src: list[bytes] = []
        self.natd_dst: list[bytes] = []
        self.frag = False
        self.hashes: bytes | None = None  # the first N(SIGNATURE_HASH_ALGORITHMS)'s data
        # each payload in order: its type, a notify's Notify Message Type (all of PLAIN_NOTIFIES are
        # status types, 16384 and up, RFC 7296 3.10.1, so they cannot be taken for a payload type)
        self.shape: list[int] = []


def parse(data: bytes) -> Request | None:
    """The request's fields when `data` is an IKE_SA_INIT request of the common shape: a header as
    RFC 7296 3.1 has it for a new IKE_SA, one SA, one KE, one Nonce (16-256 octets) and notifies of
    PLAIN_NOTIFIES without SPI, in any order, every generic header without flags and the chain filling
    the datagram exactly; None for anything else (the general decoder then says what it is)."""
    n = len(data)
    if n < 28:
        return None
    # the fields read by index rather than with `struct`: the octets are in the caches already, the
    # struct module's code and format tables are not
    spi_i = data[:8]
    if (data[17] != VERSION or data[18] != IKE_SA_INIT or data[19] != INITIATOR or data[20:24] != _ZERO4
            or int.from_bytes(data[24:28], "big") != n or data[8:16] != _ZERO8 or spi_i == _ZERO8):
        return None
    req = Request()
    req.spi_i = spi_i
    shape = req.shape
    first = data[16]
    ptype, pos = first, 28
    seen = 0
    while ptype:
        if n - pos < 4:
            return None
        nxt, crit, plen = data[pos], data[pos + 1], (data[pos + 2] << 8) | data[pos + 3]
        end = pos + plen
        if crit or plen < 4 or end > n:
            return None
        start = pos + 4
        item = ptype
        if ptype == NOTIFY:
            item = _notify(req, data, start, end)
            if not item:
                return None
        elif ptype == SA and not seen & 1:
            seen |= 1
            req.offer = data[start:end]
        elif ptype == KE and not seen & 2 and plen >= 8:
            seen |= 2
            req.group = (data[start] << 8) | data[start + 1]
            req.ke = data[start + 4:end]
        elif ptype == NONCE and not seen & 4 and NONCE_MIN <= plen - 4 <= NONCE_MAX:
            seen |= 4
            req.nonce = data[start:end]
        else:
            return None
        shape.append(item)
        ptype, pos = nxt, end
    return req if seen == 7 and pos == n else None


def _notify(req: Request, data: bytes, start: int, end: int) -> int:
    """One notify body into `req`, and its Notify Message Type; 0 when it is not one of PLAIN_NOTIFIES
    without SPI."""
    if end - start < 4 or data[start] or data[start + 1]:
        return 0
    ntype = (data[start + 2] << 8) | data[start + 3]
    if ntype == NATD_SRC:
        req.natd_src.append(data[start + 4:end])
    elif ntype == NATD_DST:
        req.natd_dst.append(data[start + 4:end])
    elif ntype == FRAG:
        req.frag = True
    elif ntype == HASH_ALGS:
        if req.hashes is None:
            req.hashes = data[start + 4:end]
    elif ntype not in PLAIN_NOTIFIES:
        return 0
    return ntype


def request_summary(shape: list[int]) -> str:
    """The summary Message.summary gives for a request of this Request.shape: `[ SA KE No N(NATD_S_IP) ]`."""
    key = tuple(shape)
    text = _SUMMARIES.get(key)
    if text is None:
        text = bracket([notify_payload_name(t) if t in PLAIN_NOTIFIES else PAYLOAD_ABBREV[t] for t in key])
        if len(_SUMMARIES) < _MAX_SUMMARIES:
            _SUMMARIES[key] = text
    return text


def _negotiated(engine: Engine, req: Request, local: Addr, remote: Addr) -> tuple[
        list[IkeConfig], Negotiated, bool] | None:
    """The configurations for these addresses, the kept negotiation of this offer and group, and
    whether one of them asks for CERTREQ, when the general path would answer the request with a new
    IKE_SA of that negotiation; else None."""
    # COOKIEs (RFC 7296 2.6) need no test here: while they are demanded, Prefilter.check (before this, in
    # Engine.receive) lets a request through only with a valid COOKIE notify, which `parse` declines (not
    # of PLAIN_NOTIFIES), or as a retransmission, which init_index finds
    if ((req.spi_i, remote) in engine.init_index or not engine.accepting
            or engine.half_open >= engine.cfg.max_half_open):
        return None  # a retransmission or another IKE_SA with this SPIi, or limits: the general path
    cfgs: list[IkeConfig] = []
    texts: list[str] = []  # Engine.ike_proposal_texts of these configurations: each string once, in order
    certreq = False
    here, there = local[0], remote[0]
    for c in engine.configs:
        if addr_matches(c.local_addrs, here) and addr_matches(c.remote_addrs, there):
            cfgs.append(c)
            if c.proposals not in texts:
                texts.append(c.proposals)
            if c.remote.auth == "pubkey" and c.send_certreq:
                certreq = True
    if not cfgs:
        return None
    # the key of tasks/ike_init.py's _negotiate_r: our proposal strings, the offer's octets, the KE group
    neg = _NEGOTIATED.get(("r", tuple(texts), req.offer, req.group))
    if neg is None or neg.chosen is None or neg.suite is None or not neg.body or neg.group != req.group \
            or not is_pooled(req.group):
        return None
    return cfgs, neg, certreq


def answer(engine: Engine, data: bytes, local: Addr, remote: Addr, now: float) -> bool:
    """Answer `data` if it is a common IKE_SA_INIT request for a new IKE_SA (see the module's docstring);
    False, with nothing changed but maybe one key pair taken from the pool, when the general path must
    (always while debug lines are logged). While info lines are logged, it logs those the general path
    logs for the request."""
    info = log.isEnabledFor(logging.INFO)  # debug lines are logged only when info lines are (levels are ordered)
    if info and log.isEnabledFor(logging.DEBUG):
        return False
    req = parse(data)
    if req is None:
        return False
    found = _negotiated(engine, req, local, remote)
    if found is None:
        return False
    cfgs, neg, certreq = found
    try:
        check_public(req.group, req.ke)
    except ProtocolError:
        return False  # the general path answers the error
    ke = engine.key_exchange(req.group)
    if info:  # Engine.receive's line for a request it decoded
        log.info("received packet: from %s[%d] to %s[%d] (%d bytes)", remote[0], remote[1], local[0],
                 local[1], len(data))
    sa = engine.new_responder(cfgs[0], local, remote, now, (req.spi_i, remote))
    if info:  # TaskManager.receive's line
        log.info("parsed %s %s %d %s", "IKE_SA_INIT", "request", 0, request_summary(req.shape))
    sa.last_in = now
    assert neg.chosen is not None
    c = neg.chosen
    chosen = type(c)(c.num, c.protocol, c.spi, list(c.transforms))  # this SA's own copy
    sa.ni = req.nonce
    sa.init_request = data
    _process_common(sa, req, local, remote)
    defer_keys(sa, chosen, ke, req.ke, neg)  # our nonce; the keys derived once the response left (Engine.prepare)
    engine.keys_pending(sa)
    if info:  # IkeInit.process_r's line
        log.info("selected proposal: %s", sa.proposal_text)
    sa.tm.answered_init(_response(engine, sa, req, neg, ke.public, certreq, info), now)
    if sa.state is not DESTROYED:
        engine.reschedule(sa)
    return True


def _process_common(sa: IkeSa, req: Request, local: Addr, remote: Addr) -> None:
    """As tasks/ike_init.py _process_common: NAT-D (RFC 7296 2.23), fragmentation (RFC 7383 2.3) and
    hash algorithms (RFC 7427 4)."""
    if req.natd_src and req.natd_dst:  # the request's hashes are over SPIr = 0
        zero = b"\x00" * 8
        sa.nat_here = natd_hash(req.spi_i, zero, local) not in req.natd_dst
        sa.nat_there = natd_hash(req.spi_i, zero, remote) not in req.natd_src
        if sa.nat_here:
            log.info("local host is behind NAT, sending keep alives")
        if sa.nat_there:
            log.info("remote host is behind NAT")
    sa.frag_supported = req.frag
    d = req.hashes
    if d is not None:
        algs = _HASH_SETS.get(d)
        if algs is None:
            algs = frozenset(int.from_bytes(d[k:k + 2], "big") for k in range(0, len(d) - 1, 2))
            if len(_HASH_SETS) < 256:
                _HASH_SETS[d] = algs
        sa.peer_hash_algs = algs


def _response(engine: Engine, sa: IkeSa, req: Request, neg: Negotiated, public: bytes, certreq: bool,
              info: bool) -> bytes:
    """The response, as IkeInit.build_r and the encoder write it (RFC 7296 1.2, 3.1, 3.2):
    SA KE No [CERTREQ] N(NATD_S_IP) N(NATD_D_IP) [N(FRAG_SUP)] N(HASH_ALG)."""
    cfg = sa.config
    spi_i, spi_r, nr = req.spi_i, sa.spi_r, sa.nr
    hashes = engine.creds.certreq_hashes() if certreq else b""
    after_nonce = CERTREQ if hashes else NOTIFY
    natd_src = engine.rng.bytes(20) if cfg.encap else natd_hash(spi_i, spi_r, sa.local)
    natd_dst = natd_hash(spi_i, spi_r, sa.remote)
    # each generic header (RFC 7296 3.2: Next Payload, flags 0, Payload Length) as one 32-bit integer,
    # written without `struct` (its code and format tables are one more thing to bring into the caches)
    parts = [b"", ((KE << 24) | (4 + len(neg.body))).to_bytes(4, "big"), neg.body,
             ((NONCE << 24) | (8 + len(public))).to_bytes(4, "big"), (req.group << 16).to_bytes(4, "big"), public,
             ((after_nonce << 24) | (4 + len(nr))).to_bytes(4, "big"), nr]
    if hashes:
        parts += [((NOTIFY << 24) | (5 + len(hashes))).to_bytes(4, "big"), _CERTREQ_X509, hashes]
    parts += [((NOTIFY << 24) | (8 + len(natd_src))).to_bytes(4, "big"), _NOTIFY_NATD_SRC, natd_src,
              ((NOTIFY << 24) | (8 + len(natd_dst))).to_bytes(4, "big"), _NOTIFY_NATD_DST, natd_dst]
    if cfg.fragmentation:
        parts += [_FRAG_PAYLOAD]
    parts += [_HASHES_PAYLOAD]
    if info:  # TaskManager._send_response's line
        log.info("generating %s response %d %s", "IKE_SA_INIT", 0,
                 _RESPONSE_SUMMARIES[bool(hashes), cfg.fragmentation])
    parts[0] = spi_i + spi_r + _RESPONSE_HEAD + (28 + sum(map(len, parts))).to_bytes(4, "big")
    return b"".join(parts)
