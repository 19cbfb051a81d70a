"""IKE_SA_INIT (RFC 7296 1.2, 2.6 COOKIE, 2.7 INVALID_KE, 2.23 NAT-D; RFC 7383; RFC 7427)."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

from ...codec.message import Message
from ...codec.payloads import CertReqPayload, KePayload, NoncePayload, NotifyPayload, Proposal, SaPayload
from ...codec.wire import encode_payloads
from ...constants import (
    CertEncoding,
    DhId,
    ExchangeType,
    HashAlgorithm,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    name_of,
)
from ...crypto.dh import KeyExchange, check_public, new_key_exchange
from ...crypto.keys import IkeSuite, derive_ike_keys, ike_protectors
from ...crypto.prf import prf_for
from ...crypto.proposals import describe, parse_proposals, select_proposal
from ...errors import LocalError, ProtocolError
from ...rng import Rng
from ..context import IkeSaView, Status, Task

log = logging.getLogger("core_ike.ike")

NONCE_LEN = 32  # RFC 7296 2.10: at least half the PRF key size; 32 covers every PRF we offer
MAX_COOKIE_ROUNDS = 3
MAX_KE_ROUNDS = 2
OUR_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY)
_OUR_HASHES_DATA = b"".join(struct.pack("!H", h) for h in OUR_HASHES)  # RFC 7427 4: 16-bit identifiers


@lru_cache(maxsize=4096)
def _addr_octets(addr: tuple[str, int]) -> bytes:
    return ipaddress.ip_address(addr[0]).packed + addr[1].to_bytes(2, "big")


_sha1: Callable[[bytes], Any]
try:  # CPython's own SHA-1: a NAT-D hash is often the first hash after a wake-up, and this one's few
    # tables cost less to bring back into the caches than OpenSSL's digest dispatch (RFC 7296 2.23 fixes SHA-1)
    from _sha1 import sha1 as _sha1  # type: ignore[import-not-found,no-redef]
except ImportError:  # a Python built without it
    _sha1 = hashlib.sha1


def natd_hash(spi_i: bytes, spi_r: bytes, addr: tuple[str, int]) -> bytes:
    """RFC 7296 2.23: SHA1(SPIi | SPIr | IP | Port)."""
    digest: bytes = _sha1(spi_i + spi_r + _addr_octets(addr)).digest()
    return digest


def algorithms(p: Proposal) -> tuple[int, int | None, int | None, int, int]:
    """(encr, key bits, integ, prf, dh) of a chosen IKE proposal."""
    e = p.first(TransformType.ENCR)
    i = p.first(TransformType.INTEG)
    f = p.first(TransformType.PRF)
    d = p.first(TransformType.DH)
    if e is None or f is None or d is None:
        raise ProtocolError("chosen proposal lacks ENCR, PRF or DH", NotifyType.NO_PROPOSAL_CHOSEN)
    integ = i.id if i is not None and i.id != 0 else None
    return e.id, e.key_length, integ, f.id, d.id


def first_group(proposals: list[Proposal]) -> int:
    for p in proposals:
        d = p.first(TransformType.DH)
        if d is not None:
            return d.id
    return int(DhId.CURVE25519)


def _add_common(sa: IkeSaView, msg: Message, src: tuple[str, int], dst: tuple[str, int]) -> None:
    spi_r = msg.spi_r
    # forced encapsulation: a source hash that matches nothing makes the peer see a NAT and
    # encapsulate ESP as well (what strongSwan's encap = yes does)
    natd_src = sa.ctx.rng.bytes(20) if sa.config.encap else natd_hash(sa.spi_i, spi_r, src)
    msg.payloads.append(NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, natd_src))
    msg.payloads.append(NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP,
                                      natd_hash(sa.spi_i, spi_r, dst)))
    if sa.config.fragmentation:
        msg.payloads.append(NotifyPayload(NotifyType.FRAGMENTATION_SUPPORTED))
    msg.payloads.append(NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, _OUR_HASHES_DATA))


def _process_common(sa: IkeSaView, msg: Message, local: tuple[str, int], remote: tuple[str, int]) -> None:
    """NAT-D (RFC 7296 2.23), fragmentation (RFC 7383 2.3) and hash algorithms (RFC 7427 4)."""
    src: list[bytes] = []
    dst: list[bytes] = []
    frag = False
    h: NotifyPayload | None = None
    for n in msg.payloads:  # one pass over the notifies (the message has one each, NAT-D maybe several)
        if type(n) is NotifyPayload:
            t = n.type
            if t == NotifyType.NAT_DETECTION_SOURCE_IP:
                src.append(n.data)
            elif t == NotifyType.NAT_DETECTION_DESTINATION_IP:
                dst.append(n.data)
            elif t == NotifyType.FRAGMENTATION_SUPPORTED:
                frag = True
            elif t == NotifyType.SIGNATURE_HASH_ALGORITHMS and h is None:
                h = n
    if src and dst:
        spi_r = msg.spi_r
        sa.nat_here = natd_hash(sa.spi_i, spi_r, local) not in dst
        sa.nat_there = natd_hash(sa.spi_i, spi_r, remote) not in src
        if sa.nat_here:
            log.info("local host is behind NAT, sending keep alives")
        if sa.nat_there:
            log.info("remote host is behind NAT")
    sa.frag_supported = frag
    if h is not None:
        d = h.data
        algs = _HASH_SETS.get(d)
        if algs is None:
            algs = frozenset(int.from_bytes(d[k:k + 2], "big") for k in range(0, len(d) - 1, 2))
            if len(_HASH_SETS) < 256:
                _HASH_SETS[d] = algs
        sa.peer_hash_algs = algs  # shared between SAs: most peers send the same list


_HASH_SETS: dict[bytes, frozenset[int]] = {}  # N(SIGNATURE_HASH_ALGORITHMS) data -> parsed set


class Negotiated(NamedTuple):
    """What one combination of our proposals, the peer's and its KE group negotiates (RFC 7296 2.7):
    the chosen proposal (a template: each SA gets its own copy), its DH group, key suite, log text and
    the body of the SA payload that answers with it (RFC 7296 3.3)."""

    chosen: Proposal | None  # None: NO_PROPOSAL_CHOSEN
    group: int
    suite: IkeSuite | None
    text: str
    body: bytes = b""


# Peers of one kind send the same SA payload in every IKE_SA_INIT and we answer from the same
# configuration: the outcome is kept by the proposals' contents (so a reloaded configuration with other
# proposals gives another key), bounded (a flood of varied offers only empties it).
_NEGOTIATED: dict[tuple[object, ...], Negotiated] = {}
NEGOTIATED_MAX = 256


def _proposals_key(proposals: list[Proposal]) -> tuple[object, ...]:
    return tuple([(p.num, int(p.protocol), p.spi, tuple(p.transforms)) for p in proposals])


def negotiate(ours: list[Proposal], offered: list[Proposal], ke_group: int,
              key: tuple[object, ...] | None = None) -> Negotiated:
    """RFC 7296 2.7 selection (`select_proposal`) of an IKE_SA_INIT request, cached by contents (or by
    `key`, which must determine both proposal lists: see `_negotiate_r`)."""
    if key is None:
        key = (_proposals_key(ours), _proposals_key(offered), ke_group)
    hit = _NEGOTIATED.get(key)
    if hit is None:
        chosen = select_proposal(ours, offered, ke_group)
        if chosen is None:
            hit = Negotiated(None, 0, None, "")
        else:
            encr, bits, integ, prf_id, group = algorithms(chosen)  # ProtocolError: not kept
            try:
                body = encode_payloads([SaPayload([chosen])])[4:]  # after the generic header (RFC 7296 3.2)
            except (struct.error, LocalError):  # not encodable: the response's encoder says why
                body = b""
            hit = Negotiated(chosen, group, IkeSuite(prf_id, encr, bits, integ), describe(chosen), body)
        if len(_NEGOTIATED) >= NEGOTIATED_MAX:
            _NEGOTIATED.clear()
        _NEGOTIATED[key] = hit
    return hit


def _negotiate_r(sa: IkeSaView, offer: SaPayload, ke_group: int) -> Negotiated:
    """`negotiate` for a request, keyed by our configured proposal strings and the offer's octets as
    received (the same strings parse to the same proposals, the same octets to the same offer): a hit
    builds neither proposal list."""
    texts = sa.ctx.ike_proposal_texts(sa)
    key = ("r", texts, offer.raw if offer.raw is not None else _proposals_key(offer.proposals), ke_group)
    hit = _NEGOTIATED.get(key)
    return hit if hit is not None else negotiate(sa.ctx.ike_proposals_for(sa), offer.proposals, ke_group, key)


def _choose(sa: IkeSaView, chosen: Proposal, neg: Negotiated | None) -> IkeSuite:
    """The chosen proposal, its text and PRF on `sa`; its key suite."""
    if neg is None or neg.suite is None:
        encr, bits, integ, prf_id, _dh = algorithms(chosen)
        suite, text = IkeSuite(prf_id, encr, bits, integ), describe(chosen)
    else:
        suite, text = neg.suite, neg.text
    sa.prf = prf_for(suite.prf_id)
    sa.prf_id = suite.prf_id
    sa.proposal = chosen
    sa.proposal_text = text
    return suite


def _derive(sa: IkeSaView, suite: IkeSuite, shared: bytes, rng: Rng | None = None) -> None:
    """SKEYSEED and SK_d, SK_a[ir], SK_e[ir], SK_p[ir] (RFC 7296 2.14) on `sa`, with its SK protectors."""
    keys = derive_ike_keys(suite, sa.ni, sa.nr, shared, sa.spi_i, sa.spi_r)
    sa.sk_d, sa.sk_pi, sa.sk_pr = keys.sk_d, keys.sk_pi, keys.sk_pr
    sa.out_prot, sa.in_prot = ike_protectors(keys, suite, sa.is_original_initiator, rng or sa.ctx.rng)


def _install_keys(sa: IkeSaView, chosen: Proposal, shared: bytes, neg: Negotiated | None = None) -> None:
    _derive(sa, _choose(sa, chosen, neg), shared)


class PendingKeys(NamedTuple):
    """A responder's IKE_SA keys not derived yet (`defer_keys`): our key pair, the peer's KE data
    (checked with check_public), the key suite and the random octets its SK protectors take when made."""

    ke: KeyExchange
    peer_public: bytes
    suite: IkeSuite
    drawn: list[bytes]


class _Drawn:
    """An Rng that gives octets drawn before (`defer_keys`), then the engine's source: an AEAD SK
    protector's IV counter start (RFC 5282 3.1), one 8-octet draw per direction, is drawn where the keys
    are deferred, so that the engine's random draws (SPIs, nonces) come in the same order however late
    the derivation runs (a run stays reproducible from its inputs)."""

    __slots__ = ("_drawn", "_rng")

    def __init__(self, drawn: list[bytes], rng: Rng) -> None:
        self._drawn, self._rng = drawn, rng

    def bytes(self, n: int) -> bytes:
        if self._drawn and len(self._drawn[0]) == n:
            return self._drawn.pop(0)
        return self._rng.bytes(n)


def defer_keys(sa: IkeSaView, chosen: Proposal, ke: KeyExchange, peer_public: bytes, neg: Negotiated) -> None:
    """The responder's IKE_SA_INIT choice on `sa`, its key derivation left for `derive_pending` once the
    response left (docs/architecture.md, "Key derivation after the IKE_SA_INIT response"): nothing in the
    response depends on the keys (RFC 7296 1.2), and the initiator's IKE_AUTH request, the first message
    that needs them, cannot arrive before the response did. The peer's KE data must have passed
    check_public, so the computation fails only where the library rejects what the check let through.
    Our nonce Nr (RFC 7296 2.10) is drawn here and, with an AEAD suite (no INTEG, RFC 7296 3.3.2), the
    two protectors' IV counter starts (RFC 5282 3.1, 8 octets per direction) in the same draw (one
    system call of the OS source instead of three): the engine's random draws come in the same order
    however late the derivation runs (a run stays reproducible from its inputs)."""
    suite = _choose(sa, chosen, neg)
    if suite.integ_id is None:
        drawn = sa.ctx.rng.bytes(NONCE_LEN + 16)
        sa.nr, counters = drawn[:NONCE_LEN], [drawn[NONCE_LEN:NONCE_LEN + 8], drawn[NONCE_LEN + 8:]]
    else:
        sa.nr, counters = sa.ctx.rng.bytes(NONCE_LEN), []
    sa.pending_keys = PendingKeys(ke, peer_public, suite, counters)


def derive_pending(sa: IkeSaView) -> None:
    """The keys `defer_keys` left: g^ir (RFC 7296 2.14) and the SK keys. ProtocolError(INVALID_SYNTAX)
    when the key exchange rejects the peer's value; the SA stays without keys then."""
    job = sa.pending_keys
    if job is None:
        return
    sa.pending_keys = None
    _derive(sa, job.suite, job.ke.compute(job.peer_public), _Drawn(job.drawn, sa.ctx.rng) if job.drawn else None)


class IkeInit(Task):
    exchange = ExchangeType.IKE_SA_INIT
    name = "IKE_INIT"
    prompt = True  # the initial exchanges: an `up` waits (RetransmitConfig early schedule)

    def __init__(self, ke: KeyExchange | None = None) -> None:
        self.proposals: list[Proposal] = []
        self.ke = ke  # initiator: a key pair made ahead (used if its group is the first proposed)
        self.sa_body: bytes | None = None  # responder: our SA payload's body, from the negotiation's cache
        self.cookie: bytes | None = None
        self.cookie_rounds = 0
        self.ke_rounds = 0

    # ---------------------------------------------------------------- initiator
    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        if not self.proposals:
            self.proposals = parse_proposals(sa.config.proposals, ProtocolId.IKE)
            sa.ni = sa.ctx.rng.bytes(NONCE_LEN)
        first = self.cookie is None and self.ke_rounds == 0  # later rounds keep or replace it (RFC 7296 2.6, 1.2)
        if self.ke is None or (first and self.ke.group != first_group(self.proposals)):
            self.ke = new_key_exchange(first_group(self.proposals), sa.ctx.rng)
        if self.cookie is not None:
            msg.payloads.append(NotifyPayload(NotifyType.COOKIE, self.cookie))  # RFC 7296 2.6: first
        msg.payloads += [SaPayload(self.proposals), KePayload(self.ke.group, self.ke.public), NoncePayload(sa.ni)]
        _add_common(sa, msg, sa.local, sa.remote)

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            self.cookie_rounds += 1
            if self.cookie_rounds > MAX_COOKIE_ROUNDS:
                raise ProtocolError("too many COOKIE rounds", None)
            log.info("received COOKIE notify, retrying with cookie")
            self.cookie = cookie.data
            return Status.RESTART
        bad_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if bad_ke is not None:
            return self._retry_group(sa, bad_ke.data)
        for n in msg.get_all(PayloadType.NOTIFY):
            assert isinstance(n, NotifyPayload)
            if n.is_error:
                raise ProtocolError(f"received {name_of(NotifyType, int(n.type))} notify error", int(n.type))
        sa_pl = msg.get(PayloadType.SA)
        ke = msg.get(PayloadType.KE)
        nonce = msg.get(PayloadType.NONCE)
        if not isinstance(sa_pl, SaPayload) or not isinstance(ke, KePayload) or not isinstance(nonce, NoncePayload):
            raise ProtocolError("IKE_SA_INIT response lacks SA, KE or Nonce", None)
        if len(sa_pl.proposals) != 1 or select_proposal(self.proposals, sa_pl.proposals) is None:
            raise ProtocolError("peer chose a proposal we did not offer", NotifyType.NO_PROPOSAL_CHOSEN)
        chosen = sa_pl.proposals[0]
        assert self.ke is not None
        if ke.group != self.ke.group or algorithms(chosen)[4] != self.ke.group:
            raise ProtocolError("KE group in response differs from ours", NotifyType.INVALID_SYNTAX)
        sa.nr = nonce.data
        sa.spi_r = msg.spi_r
        sa.init_response = msg.raw
        _process_common(sa, msg, sa.local, sa.remote)
        _install_keys(sa, chosen, self.ke.compute(ke.data))
        sa.ctx.spi_learned(sa)
        log.info("selected proposal: %s", sa.proposal_text)
        if sa.nat_here or sa.nat_there or sa.config.encap or sa.mediation:
            sa.float_ports()
        return Status.DONE

    def _retry_group(self, sa: IkeSaView, data: bytes) -> Status:
        self.ke_rounds += 1
        if len(data) != 2 or self.ke_rounds > MAX_KE_ROUNDS:
            raise ProtocolError("invalid INVALID_KE_PAYLOAD", None)
        group = int.from_bytes(data, "big")
        offered = {t.id for p in self.proposals for t in p.of_type(TransformType.DH)}
        if group not in offered:
            raise ProtocolError(f"peer wants DH group {name_of(DhId, group)} which we did not offer",
                                NotifyType.INVALID_KE_PAYLOAD)
        log.info("peer didn't accept DH group %s, it requested %s",
                 name_of(DhId, self.ke.group if self.ke else 0), name_of(DhId, group))
        self.ke = new_key_exchange(group, sa.ctx.rng)
        return Status.RESTART

    # ---------------------------------------------------------------- responder
    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        sa_pl = msg.get(PayloadType.SA)
        ke = msg.get(PayloadType.KE)
        nonce = msg.get(PayloadType.NONCE)
        if not isinstance(sa_pl, SaPayload) or not isinstance(ke, KePayload) or not isinstance(nonce, NoncePayload):
            raise ProtocolError("IKE_SA_INIT request lacks SA, KE or Nonce", NotifyType.INVALID_SYNTAX)
        neg = _negotiate_r(sa, sa_pl, ke.group)
        if neg.chosen is None:
            ours = sa.ctx.ike_proposals_for(sa)
            log.info("received proposals: %s", ", ".join(describe(p) for p in sa_pl.proposals))
            log.info("configured proposals: %s", ", ".join(describe(p) for p in ours))
            raise ProtocolError("no acceptable proposal found", NotifyType.NO_PROPOSAL_CHOSEN)
        c = neg.chosen
        chosen = Proposal(c.num, c.protocol, c.spi, list(c.transforms))  # this SA's own copy
        group = neg.group
        if ke.group != group:
            # RFC 7296 1.2: tell the initiator which group we want
            raise ProtocolError(f"DH group {name_of(DhId, ke.group)} unacceptable, requesting "
                                f"{name_of(DhId, group)}", NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", group))
        if not 16 <= len(nonce.data) <= 256:
            raise ProtocolError("nonce length out of range", NotifyType.INVALID_SYNTAX)
        check_public(group, ke.data)  # RFC 7296 2.7: an invalid KE is answered, before any state
        self.ke = sa.ctx.key_exchange(group)
        sa.ni = nonce.data
        sa.init_request = msg.raw
        _process_common(sa, msg, sa.local, sa.remote)
        defer_keys(sa, chosen, self.ke, ke.data, neg)  # and our nonce
        self.sa_body = neg.body or None
        log.info("selected proposal: %s", sa.proposal_text)

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        assert self.ke is not None and sa.proposal is not None
        msg.payloads += [SaPayload([sa.proposal], self.sa_body), KePayload(self.ke.group, self.ke.public),
                         NoncePayload(sa.nr)]
        # RFC 7296 §1.2, §3.7: ask for the initiator's certificate here, as its IKE_AUTH request carries
        # it (a peer may send it only when asked); which configuration applies is known only then
        hashes = sa.ctx.creds.certreq_hashes() if sa.ctx.wants_peer_certs(sa) else b""
        if hashes:
            msg.payloads.append(CertReqPayload(CertEncoding.X509_SIGNATURE, hashes))
        _add_common(sa, msg, sa.local, sa.remote)
