"""The responder's answer to the common IKE_AUTH request, written without the general machinery.

After a common IKE_SA_INIT (core_ike/ike/fastinit.py) most IKE_AUTH requests a responder gets have one
shape (RFC 7296 1.2): IDi, perhaps IDr, AUTH with a pre-shared key (RFC 7296 2.15) and status notifies
that a responder without MOBIKE, EAP or CHILD_SAs in IKE_AUTH answers by ignoring them (INITIAL_CONTACT
with uniqueness left to the policy, MOBIKE_SUPPORTED, NO_ADDITIONAL_ADDRESSES, EAP_ONLY_AUTHENTICATION,
RFC 5998 3; and the like), and no SA: a childless IKE_SA (RFC 6023). For such a request `answer`
decrypts the SK payload, reads the fields from the plaintext octets, checks the AUTH and writes the
response's octets `[ IDr AUTH ]` directly: the same octets, the same IKE_SA state, events and info
lines as the general path (Engine._dispatch, the TaskManager, the IkeAuth task, the encoder) gives,
without a Message, payload objects, rule check, task or encoder per request. This matters because a
responder usually handles each request right after waking up, when every line of code it runs must
come back into the CPU caches first.

Anything else goes the general way, which decides it in full, before anything is changed here: another
payload or an error notify, a CHILD_SA in the request, EAP, certificates, a peer whose AUTH does not
verify (AUTHENTICATION_FAILED), no matching configuration (the configuration source may be asked),
a retransmission, a response that would be fragmented (RFC 7383), an engine with extensions (they act
on IKE_AUTH notifies, e.g. draft-brunner-ikev2-mediation §3.1), and every case while debug lines are
logged.

While info lines are logged, `answer` logs the ones the general path logs for the request, with the
same text and level, in the same order, on the same logger.
"""

from __future__ import annotations

import hmac
import logging
import struct
from typing import TYPE_CHECKING

from ..codec.summary import PAYLOAD_ABBREV, bracket, notify_payload_name
from ..constants import AuthMethod
from ..crypto.auth import psk_auth
from ..errors import DecodeError, LocalError
from .config import IkeConfig, addr_matches
from .identity import Identity
from .state import IkeState
from .tasks.ike_auth import established

if TYPE_CHECKING:
    from .engine import Engine
    from .sa import IkeSa

log = logging.getLogger("core_ike.ike")

Addr = tuple[str, int]

_HEADER = struct.Struct("!8s8sBBBBII")  # RFC 7296 3.1
_GENERIC = struct.Struct("!BBH")  # RFC 7296 3.2

SK, IDI, IDR, AUTH, NOTIFY = 46, 35, 36, 39, 41  # RFC 7296 3.2 payload types
IKE_AUTH = 35
INITIATOR, RESPONSE = 0x08, 0x20  # RFC 7296 3.1 header flags
VERSION = 0x20  # RFC 7296 3.1: major 2, minor 0
PSK = int(AuthMethod.PSK)
STATUS_MIN = 16384  # RFC 7296 3.10.1: Notify Message Types from here on are status types
_ID_ADDR_LEN = {1: 4, 5: 16}  # RFC 7296 3.5: ID_IPV4_ADDR, ID_IPV6_ADDR

# the "parsed" line's summaries by request shape (payload types, a notify as 0x10000 + its type); a peer
# can vary the shape, so only the first few are kept
_SUMMARIES: dict[tuple[int, ...], str] = {}
_MAX_SUMMARIES = 64
_RESPONSE_SUMMARY = bracket([PAYLOAD_ABBREV[IDR], PAYLOAD_ABBREV[AUTH]])


class Request:
    """The fields of a common IKE_AUTH request (`parse_inner`)."""

    __slots__ = ("auth", "idi", "idr", "shape")

    def __init__(self) -> None:
        self.idi = b""  # IDi's body: IDType | RESERVED | data, as received (RFC 7296 2.15)
        self.idr: bytes | None = None
        self.auth = b""  # the AUTH payload's Authentication Data (method PSK)
        self.shape: list[int] = []


def parse_inner(plain: bytes, first: int) -> Request | None:
    """The fields when the decrypted inner payloads `plain` (starting with type `first`) are of the
    common shape: one IDi, at most one IDr, one AUTH of method 2 and status notifies without SPI, in any
    order, every generic header without flags and the chain filling the plaintext exactly; None for
    anything else."""
    n = len(plain)
    req = Request()
    shape = req.shape
    unpack = _GENERIC.unpack_from
    ptype, pos = first, 0
    while ptype:
        if n - pos < 4:
            return None
        nxt, crit, plen = unpack(plain, pos)
        end = pos + plen
        if crit or plen < 8 or end > n:
            return None
        start = pos + 4
        if ptype == NOTIFY:
            ntype = (plain[start + 2] << 8) | plain[start + 3]
            if plain[start] or plain[start + 1] or ntype < STATUS_MIN:
                return None
            shape.append(0x10000 + ntype)
        elif ptype in (IDI, IDR):
            want = _ID_ADDR_LEN.get(plain[start])
            if (want is not None and plen - 8 != want) or (req.idi if ptype == IDI else req.idr is not None):
                return None
            if ptype == IDI:
                req.idi = plain[start:end]
            else:
                req.idr = plain[start:end]
            shape.append(ptype)
        elif ptype == AUTH and not req.auth and plain[start] == PSK:
            req.auth = plain[start + 4:end]
            if not req.auth:
                return None
            shape.append(ptype)
        else:
            return None
        ptype, pos = nxt, end
    return req if req.idi and req.auth and pos == n else None


def _summary(shape: list[int]) -> str:
    """The summary Message.summary gives for a request of this shape: `[ IDi N(INIT_CONTACT) IDr AUTH ]`."""
    key = tuple(shape)
    text = _SUMMARIES.get(key)
    if text is None:
        text = bracket([notify_payload_name(t - 0x10000) if t >= 0x10000 else PAYLOAD_ABBREV[t] for t in key])
        if len(_SUMMARIES) < _MAX_SUMMARIES:
            _SUMMARIES[key] = text
    return text


def _config(engine: Engine, local: Addr, remote: Addr, peer: Identity, wanted: Identity | None) -> IkeConfig | None:
    """Engine.select_peer_config for a PSK AUTH without extensions (RFC 7296 2.15), where the request
    arrives: the best configuration, None when none matches (the general path then asks the
    configuration source, if there is one)."""
    best: tuple[int, IkeConfig] | None = None
    for c in engine.configs:
        if not (addr_matches(c.local_addrs, local[0]) and addr_matches(c.remote_addrs, remote[0])):
            continue
        rid = c.remote.id
        if not rid.matches(peer) or c.remote.auth != "psk":
            continue
        if wanted is not None and not c.local.id.is_any and c.local.id != wanted:
            continue
        score = 2 if not rid.is_any else 1
        if best is None or score > best[0]:
            best = (score, c)
    return best[1] if best else None


def _target(engine: Engine, data: bytes) -> IkeSa | None:
    """The half-open IKE_SA a common IKE_AUTH request `data` is for: header as RFC 7296 3.1 has it for
    the first IKE_AUTH request (Message ID 1, from the original initiator, SK first), an SA we answered
    IKE_SA_INIT for and whose next request is this one."""
    n = len(data)
    if n < 32:
        return None
    spi_i, spi_r, first, version, exchange, flags, mid, length = _HEADER.unpack_from(data)
    if version != VERSION or exchange != IKE_AUTH or flags != INITIATOR or mid != 1 or length != n or first != SK:
        return None
    sa = engine.sas.get(spi_r)
    if (sa is None or sa.is_original_initiator or sa.spi_i != spi_i or sa.state is not IkeState.CREATED
            or sa.in_prot is None or sa.out_prot is None):
        return None
    tm = sa.tm
    if tm.peer_mid != 1 or tm.outstanding is not None or tm.fragments is not None or sa.established_at is not None:
        return None
    return sa


class _Answer:
    """What `_answer_of` decided for a request, before anything is changed."""

    __slots__ = ("cfg", "inner", "peer", "remote", "req", "sa", "total", "wanted")

    def __init__(self, sa: IkeSa, req: Request, peer: Identity, wanted: Identity | None, cfg: IkeConfig,
                 remote: Addr, inner: bytes, total: int) -> None:
        self.sa, self.req, self.peer, self.wanted, self.cfg = sa, req, peer, wanted, cfg
        self.remote, self.inner, self.total = remote, inner, total


def answer(engine: Engine, data: bytes, local: Addr, remote: Addr, now: float) -> bool:
    """Answer `data` if it is a common IKE_AUTH request (see the module's docstring); False, with nothing
    changed, when the general path must (always while debug lines are logged). While info lines are
    logged, it logs those the general path logs for the request."""
    if engine.extensions or log.isEnabledFor(logging.DEBUG):
        return False
    sa = _target(engine, data)
    if sa is None or not any(c.remote.auth == "psk" == c.local.auth for c in engine.configs):
        return False  # no configuration a PSK request could select: not decrypted twice
    a = _answer_of(engine, sa, data, local, remote)
    if a is None:
        return False
    _commit(engine, a, data, local, remote, now)
    return True


def _answer_of(engine: Engine, sa: IkeSa, data: bytes, local: Addr, remote: Addr) -> _Answer | None:
    """The request decrypted and checked, the response's plaintext written; None when the general path
    must answer. Changes nothing."""
    nxt, crit, plen = _GENERIC.unpack_from(data, 28)
    in_prot, out = sa.in_prot, sa.out_prot
    if crit or plen != len(data) - 28 or in_prot is None or out is None:
        return None  # SK must be the last payload (RFC 7296 3.14): the general path says so
    try:
        plain = in_prot.open(data[:32], data[32:])
    except DecodeError:
        return None  # RFC 7296 2.21.2: the general path drops it and logs why
    req = parse_inner(plain, nxt)
    if req is None:
        return None
    idi, idr = req.idi, req.idr
    peer = Identity(idi[0], idi[4:])
    wanted = Identity(idr[0], idr[4:]) if idr is not None else None
    # RFC 7296 2.23: a response goes back where the request came from (Engine._update_addresses)
    new_remote = remote if sa.remote != remote and (sa.nat_there or sa.remote[0] == remote[0]) else sa.remote
    cfg = _config(engine, local, new_remote, peer, wanted)
    if cfg is None or cfg.local.auth != "psk" or cfg.local.certs or cfg.local.id.is_any:
        return None
    me = cfg.local.id
    psk = engine.creds.psk(me, peer)
    prf = sa.prf
    if psk is None or not hmac.compare_digest(
            psk_auth(prf, psk, sa.init_request + sa.nr + prf(sa.sk_pi, idi)), req.auth):
        return None  # AUTHENTICATION_FAILED, answered and logged by the general path
    # RFC 7296 2.15: our AUTH over our IKE_SA_INIT response, the peer's nonce and our IDr
    id_body = bytes((me.id_type, 0, 0, 0)) + me.data
    auth = psk_auth(prf, psk, sa.init_response + sa.ni + prf(sa.sk_pr, id_body))
    pack = _GENERIC.pack
    inner = b"".join((pack(AUTH, 0, 4 + len(id_body)), id_body, pack(0, 0, 8 + len(auth)),
                      bytes((PSK, 0, 0, 0)), auth))
    total = 32 + out.sealed_length(len(inner))
    if sa.frag_supported and cfg.fragmentation and total > cfg.fragment_size:
        return None  # RFC 7383 2.5: the general path fragments it
    return _Answer(sa, req, peer, wanted, cfg, new_remote, inner, total)


def _commit(engine: Engine, a: _Answer, data: bytes, local: Addr, remote: Addr, now: float) -> None:
    """The general path's steps for the request, in its order: the IKE_SA's addresses and liveness, its
    configuration and identities, established, the response sealed, kept and sent."""
    sa, cfg = a.sa, a.cfg
    info = log.isEnabledFor(logging.INFO)
    if info:  # Engine.receive's line for a request it decoded
        log.info("received packet: from %s[%d] to %s[%d] (%d bytes)", remote[0], remote[1], local[0],
                 local[1], len(data))
    sa.local, sa.remote = local, a.remote
    sa.last_in = now
    sa.dpd_pending = False
    if info:  # TaskManager.receive's line
        log.info("parsed %s %s %d %s", "IKE_AUTH", "request", 1, _summary(a.req.shape))
    sa.peer_id = a.peer
    sa.config = cfg
    sa.name = cfg.name
    sa.mediation = cfg.mediation
    if info:  # IkeAuth.process_r's line
        log.info("looking for peer configs matching %s[%s]...%s[%s]: selected '%s'",
                 sa.local[0], a.wanted or "%any", sa.remote[0], a.peer, cfg.name)
    sa.my_id = cfg.local.id  # IkeAuth.process_r: the configured identity (never %any here)
    if info:  # verify_auth's and build_auth's lines
        log.info("authentication of '%s' with pre-shared key successful", a.peer)
        log.info("authentication of '%s' (myself) with pre-shared key", sa.my_id)
    established(sa, now)
    if info:  # TaskManager._send_response's line
        log.info("generating %s response %d %s", "IKE_AUTH", 1, _RESPONSE_SUMMARY)
    assert sa.out_prot is not None
    sealed = a.total - 32
    prefix = _HEADER.pack(sa.spi_i, sa.spi_r, SK, VERSION, IKE_AUTH, RESPONSE, 1, a.total) + \
        _GENERIC.pack(IDR, 0, 4 + sealed)
    body = sa.out_prot.seal(prefix, a.inner)
    if len(body) != sealed:
        raise LocalError(f"protector sealed {len(body)} octets, announced {sealed}")
    sa.tm.answered(1, prefix + body, now)
    sa.tm.initiate_next(now)  # queued work of ours may start now (TaskManager._process_request)
    if sa.state is not IkeState.DESTROYED:
        engine.reschedule(sa)
