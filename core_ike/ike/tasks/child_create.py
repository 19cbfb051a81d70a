"""CHILD_SA creation in IKE_AUTH and CREATE_CHILD_SA, including CHILD_SA rekeying
(RFC 7296 1.3.1, 1.3.3, 2.9 narrowing, 2.17 keying, 2.19 CP)."""

from __future__ import annotations

import ipaddress
import logging
import struct
from itertools import repeat

from ...codec.message import Message
from ...codec.payloads import (
    CfgAttribute,
    CpPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
)
from ...codec.wire import encode_payloads
from ...constants import (
    CfgAttr,
    CfgType,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    name_of,
)
from ...crypto.dh import KeyExchange, new_key_exchange
from ...crypto.keys import child_keymat, derive_child_keys
from ...crypto.proposals import describe, parse_proposals, restrict_proposals, select_proposal, transform_name
from ...crypto.sk import key_lengths
from ...errors import LocalError, ProtocolError
from ...esp.algorithms import EspTransforms
from ..context import ChildConfig, IkeSaView, Status, Task
from ..context import events as ev
from ..context import ts as tsmod
from ..state import ChildSa, ChildState, IkeState
from . import collisions
from .informational import ChildDelete

log = logging.getLogger("core_ike.ike")

# enum members bound once: reading one off its class runs Python 3.11's EnumType.__getattr__ hook, and
# these are read for every CHILD_SA
_IKE_AUTH, _CREATE_CHILD_SA = ExchangeType.IKE_AUTH, ExchangeType.CREATE_CHILD_SA
_TSI, _TSR = PayloadType.TSi, PayloadType.TSr
_INSTALLED = ChildState.INSTALLED
_INFO = logging.INFO


def _strip_dh(props: list[Proposal]) -> list[Proposal]:
    """RFC 7296 1.2: no KE in IKE_AUTH, so the first CHILD_SA's proposals carry no DH."""
    return [Proposal(p.num, p.protocol, p.spi, [t for t in p.transforms if t.type != TransformType.DH])
            for p in props]


def installable(sa: IkeSaView) -> EspTransforms | None:
    """The ESP transforms the data plane can install, declared by an engine extension (the daemon's
    data-plane glue); None: nothing declared (no data plane), every configured proposal is used."""
    return sa.ctx.esp_transforms()


_PROPOSALS: dict[tuple[str, str, EspTransforms | None, bool], tuple[Proposal, ...] | ProtocolError] = {}
_PROPOSALS_MAX = 256  # (proposal string, CHILD_SA name, data plane, in IKE_AUTH): a few per configuration


def _esp_proposals(sa: IkeSaView, cfg: ChildConfig, spi: int, in_auth: bool) -> list[Proposal]:
    """Our ESP proposals: the configured ones, without what the data plane cannot install (we neither
    offer nor accept an SA that would carry nothing); ProtocolError(NO_PROPOSAL_CHOSEN) naming the
    algorithms when nothing is left. Worked out once per proposal string and data plane; each call
    gets its own Proposal objects with `spi` (their transforms are immutable)."""
    spi_b = struct.pack("!I", spi)
    return [Proposal(p.num, p.protocol, spi_b, list(p.transforms)) for p in _ours(cfg, installable(sa), in_auth)]


def _ours(cfg: ChildConfig, dp: EspTransforms | None, in_auth: bool) -> tuple[Proposal, ...]:
    """_esp_proposals' proposals without SPI, shared (not to be changed)."""
    key = (cfg.esp_proposals, cfg.name, dp, in_auth)
    hit = _PROPOSALS.get(key)
    if hit is None:
        hit = _our_esp_proposals(cfg, dp, in_auth)
        if len(_PROPOSALS) >= _PROPOSALS_MAX:
            _PROPOSALS.clear()
        _PROPOSALS[key] = hit
    if isinstance(hit, ProtocolError):
        raise ProtocolError(str(hit), hit.notify, hit.data)
    return hit


def _our_esp_proposals(cfg: ChildConfig, dp: EspTransforms | None,
                       in_auth: bool) -> tuple[Proposal, ...] | ProtocolError:
    props = parse_proposals(cfg.esp_proposals, ProtocolId.ESP)
    if dp is not None:
        props, refused = restrict_proposals(props, dp.accepts)
        if not props:
            names = ", ".join(transform_name(t) for t in refused)
            return ProtocolError(f"esp_proposals '{cfg.esp_proposals}' of CHILD_SA '{cfg.name}': the {dp.dataplane} "
                                 f"data plane cannot install {names}", NotifyType.NO_PROPOSAL_CHOSEN)
    if in_auth:
        props = _strip_dh(props)
    return tuple(props)


class _Choice:
    """What proposal selection (RFC 7296 2.7) gives for one of our ESP offers and one shape of the peer's
    (its proposals without their SPIs, SaPayload.shape): the same for every CHILD_SA of that pair, so
    worked out once, with what the CHILD_SA takes from it. (As initiator, `_algorithms`: the algorithms
    alone, per chosen set of transforms.)"""

    __slots__ = ("encr", "esn", "head", "index", "integ", "key_bits", "lengths", "num", "protocol", "tail",
                 "text", "transforms")

    def __init__(self, index: int, got: Proposal) -> None:
        self.index = index  # the chosen proposal among the peer's: its SPI is the outbound one
        self.num, self.protocol, self.transforms = got.num, got.protocol, tuple(got.transforms)
        e, i, esn = got.first(TransformType.ENCR), got.first(TransformType.INTEG), got.first(TransformType.ESN)
        assert e is not None  # both sides' proposals have one (parse_proposals, _choose)
        self.encr, self.key_bits = e.id, e.key_length
        self.integ = i.id if i is not None and i.id != 0 else 0
        self.esn = bool(esn and esn.id == 1)
        self.text = describe(got)
        self.head = self.tail = b""
        try:  # KEYMAT's key lengths (RFC 7296 2.17); None: derive_child_keys says what is wrong
            self.lengths: tuple[int, int] | None = key_lengths(self.encr, self.key_bits, self.integ or None)
        except LocalError:
            self.lengths = None

    def sa_payload(self, spi: bytes, transforms: list[Transform]) -> SaPayload:
        """Our SA payload with the chosen proposal and our 4-octet SPI, its body already written."""
        assert self.head
        return SaPayload([Proposal(self.num, self.protocol, spi, transforms)], self.head + spi + self.tail)


def _choice_of(ours: tuple[Proposal, ...], offered: list[Proposal]) -> _Choice | None:
    """select_proposal(ours, offered) with the index of the peer's proposal it took."""
    for i, theirs in enumerate(offered):
        got = select_proposal(list(ours), [theirs])  # the peer's first acceptable one (RFC 7296 2.7)
        if got is not None:
            c = _Choice(i, got)
            # our SA payload's body for it: the codec's encoding, our SPI put in after the proposal's
            # 8-octet header (RFC 7296 3.3.1)
            body = encode_payloads([SaPayload([Proposal(got.num, got.protocol, bytes(4), got.transforms)])])[4:]
            c.head, c.tail = body[:8], body[12:]
            return c
    return None


# (proposal string, CHILD_SA name, in IKE_AUTH, id of the data plane's EspTransforms, the offer's shape) ->
# (those EspTransforms, the outcome): a few per configuration and kind of peer
_CHOICES: dict[tuple[str, str, bool, int, bytes], tuple[EspTransforms | None, _Choice | ProtocolError | None]] = {}


def _choose(sa: IkeSaView, cfg: ChildConfig, offered: SaPayload, in_auth: bool) -> _Choice:
    """The peer's proposal we accept and how; ProtocolError(NO_PROPOSAL_CHOSEN) when none (or when the
    data plane can install none of ours, _esp_proposals)."""
    dp = sa.ctx.esp_transforms()  # installable(sa)
    shape = offered.shape
    key = (cfg.esp_proposals, cfg.name, in_auth, id(dp), shape) if shape is not None else None
    hit = _CHOICES.get(key) if key is not None else None
    if hit is not None and hit[0] is dp:
        got = hit[1]
    else:
        try:
            got = _choice_of(_ours(cfg, dp, in_auth), offered.proposals)
        except ProtocolError as e:
            got = e
        if key is not None:
            if len(_CHOICES) >= _PROPOSALS_MAX:
                _CHOICES.clear()
            _CHOICES[key] = (dp, got)
    if isinstance(got, ProtocolError):
        raise ProtocolError(str(got), got.notify, got.data)
    if got is None:
        raise ProtocolError(f"no acceptable ESP proposal{_left_out(sa, cfg)}", NotifyType.NO_PROPOSAL_CHOSEN)
    return got


def _left_out(sa: IkeSaView, cfg: ChildConfig) -> str:
    """For the NO_PROPOSAL_CHOSEN log line: configured algorithms the data plane cannot install."""
    dp = installable(sa)
    if dp is None:
        return ""
    _, refused = restrict_proposals(parse_proposals(cfg.esp_proposals, ProtocolId.ESP), dp.accepts)
    names = ", ".join(transform_name(t) for t in refused)
    return f" (not used: {names}, which the {dp.dataplane} data plane cannot install)" if names else ""


_ALGORITHMS: dict[tuple[Transform, ...], _Choice] = {}


def _algorithms(chosen: Proposal) -> _Choice:
    """The algorithms of a proposal the peer chose (as initiator), once per set of transforms (the same
    few for every CHILD_SA of a configuration)."""
    key = tuple(chosen.transforms)
    hit = _ALGORITHMS.get(key)
    if hit is None:
        hit = _Choice(0, chosen)
        if len(_ALGORITHMS) >= _PROPOSALS_MAX:
            _ALGORITHMS.clear()
        _ALGORITHMS[key] = hit
    return hit


def _pfs_group(props: list[Proposal]) -> int | None:
    for p in props:
        d = p.first(TransformType.DH)
        if d is not None and d.id != 0:
            return d.id
    return None


def _dynamic_local(sa: IkeSaView) -> str:
    return str(sa.vip) if sa.vip is not None else sa.local[0]


def local_selectors(sa: IkeSaView, cfg: ChildConfig) -> list[TrafficSelector]:
    return list(map(tsmod.parse, cfg.local_ts, repeat(_dynamic_local(sa))))


def _peer_behind_nat(sa: IkeSaView) -> bool:
    """A `dynamic` remote TS cannot be the peer's address we see: NAT hides its own (inner) address."""
    return sa.nat_there and sa.peer_vip is None


def remote_selectors(sa: IkeSaView, cfg: ChildConfig) -> list[TrafficSelector]:
    """The remote TS we propose. Behind a NAT the peer's `dynamic` is its inner address, which only it
    knows: we offer the whole address family and accept only a single host back (docs/configuration.md,
    "Traffic selectors"; RFC 7296 2.9 lets the responder narrow)."""
    return _remote_selectors(sa, cfg, _peer_behind_nat(sa))


def _remote_selectors(sa: IkeSaView, cfg: ChildConfig, behind_nat: bool) -> list[TrafficSelector]:
    if behind_nat:
        any_net = "::/0" if ":" in sa.remote[0] else "0.0.0.0/0"
        out = []
        for t in cfg.remote_ts:  # a loop, not a comprehension: one frame less
            out.append(tsmod.parse(t, any_net if tsmod.is_dynamic(t) else None))
        return out
    return list(map(tsmod.parse, cfg.remote_ts, repeat(str(sa.peer_vip or sa.remote[0]))))


def narrow_remote(sa: IkeSaView, cfg: ChildConfig, offered: list[TrafficSelector]) -> list[TrafficSelector]:
    """Narrow the peer's selectors for its side (RFC 7296 2.9). A `dynamic` entry of a peer behind a
    NAT takes the single host address the peer offers as its own (its inner address)."""
    if not _peer_behind_nat(sa):
        return tsmod.narrow(offered, _remote_selectors(sa, cfg, False))
    return _narrow_remote_nat(sa, cfg, offered)


def _narrow_remote_nat(sa: IkeSaView, cfg: ChildConfig, offered: list[TrafficSelector]) -> list[TrafficSelector]:
    """narrow_remote for a peer behind a NAT: each configured selector (_remote_selectors' with
    `behind_nat`) narrowed on its own, a `dynamic` one to single hosts only."""
    any_net = "::/0" if ":" in sa.remote[0] else "0.0.0.0/0"
    parse, narrow, is_host = tsmod.parse, tsmod.narrow, tsmod.is_host
    out: list[TrafficSelector] = []
    for text in cfg.remote_ts:
        dynamic = text.startswith("dynamic") and tsmod.is_dynamic(text)
        for t in narrow(offered, [parse(text, any_net if dynamic else None)]):
            if t not in out and (not dynamic or is_host(t)):
                out.append(t)
    return out


def with_packet(packet: tuple[TrafficSelector, TrafficSelector], tsi: list[TrafficSelector],
                tsr: list[TrafficSelector]) -> tuple[list[TrafficSelector], list[TrafficSelector]]:
    """RFC 7296 2.9: a CHILD_SA started by a packet offers that packet's own selectors first, so that a
    responder which narrows picks the range holding it. Only when both lie within what we offer (with
    virtual IPs requested our addresses are not known yet, and a packet outside the config is not ours
    to ask for)."""
    src, dst = packet
    if not _holds(tsi, src) or not _holds(tsr, dst):
        return tsi, tsr
    return [src, *tsi], [dst, *tsr]


def _holds(selectors: list[TrafficSelector], one: TrafficSelector) -> bool:
    return any(map(tsmod.within, repeat(one), selectors))  # without a generator's frame per call


def schedule(sa: IkeSaView, child: ChildSa, now: float, rekey_initiator: bool) -> None:
    cfg = child.config
    if cfg.rekey_time > 0:
        # the side that created the SA rekeys first; the other one only as a fallback (avoids collisions)
        child.rekey_at = now + (cfg.rekey_time if rekey_initiator else cfg.rekey_time * 1.05)
    life = cfg.life_time if cfg.life_time is not None else (cfg.rekey_time * 1.1 if cfg.rekey_time else 0)
    child.expire_at = now + life if life else None


def _reported(sa: IkeSaView, task: ChildCreate) -> bool:
    """The end of `sa` (docs/architecture.md "Tasks when the IKE_SA ends") already said what became of
    `task`'s CHILD_SA: a rekey's, by the ChildSaDeleted of the CHILD_SA it would have replaced; one asked
    of an IKE_SA that was never established, by the IKE_SA's failure (IkeSaFailed, `sa.failure`).
    Otherwise the caller waiting for it (an `up`, a trap) hears of it only through ChildSaFailed."""
    if sa.state is not IkeState.DESTROYED:
        return False  # the exchange failed: reported as before
    return task.rekey is not None or (sa.established_at is None and sa.failure is not None)


class ChildCreate(Task):
    name = "CHILD_CREATE"
    # immutable starting values as class attributes: an instance sets only what it changes (one is made
    # for every CHILD_SA)
    spi_in = 0
    ke: KeyExchange | None = None
    nonce = b""
    error: ProtocolError | None = None
    chosen: Proposal | None = None
    choice: _Choice | None = None  # as responder: how `chosen` was chosen
    child: ChildSa | None = None
    peer_nonce = b""
    shared: bytes | None = None
    cp_reply: CpPayload | None = None
    collision: ChildCreate | None = None  # the peer's rekey of the same CHILD_SA (RFC 7296 2.8.1)

    def __init__(self, cfg: ChildConfig | None, in_auth: bool, rekey: ChildSa | None = None,
                 packet: tuple[TrafficSelector, TrafficSelector] | None = None) -> None:
        self.cfg = cfg if cfg is not None else (rekey.config if rekey else None)
        self.packet = packet  # (source, destination) of the packet that triggered it (an acquire)
        self.in_auth = in_auth
        self.exchange = _IKE_AUTH if in_auth else _CREATE_CHILD_SA
        self.rekey = rekey
        self.proposals: list[Proposal] = []
        self.tsi: list[TrafficSelector] = []
        self.tsr: list[TrafficSelector] = []
        self._sent_tsi: list[TrafficSelector] = []  # what we proposed, for the failure reason
        self._sent_tsr: list[TrafficSelector] = []

    # ---------------------------------------------------------------- initiator
    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        assert self.cfg is not None
        self.spi_in = sa.ctx.alloc_spi()
        self.proposals = _esp_proposals(sa, self.cfg, self.spi_in, self.in_auth)
        if self.rekey is not None:
            msg.payloads.append(NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP,
                                              struct.pack("!I", self.rekey.spi_in)))
        if self.in_auth and sa.config.vips:
            attrs = [CfgAttribute(CfgAttr.INTERNAL_IP4_ADDRESS if ipaddress.ip_address(v).version == 4
                                  else CfgAttr.INTERNAL_IP6_ADDRESS) for v in sa.config.vips]
            msg.payloads.append(CpPayload(CfgType.CFG_REQUEST, attrs))
        msg.payloads.append(SaPayload(self.proposals))
        if not self.in_auth:
            self.nonce = sa.ctx.rng.bytes(32)
            msg.payloads.append(NoncePayload(self.nonce))
            group = _pfs_group(self.proposals)
            if group is not None:
                self.ke = new_key_exchange(group, sa.ctx.rng)
                msg.payloads.append(KePayload(group, self.ke.public))
        local = local_selectors(sa, self.cfg) if not sa.config.vips or not self.in_auth else \
            [tsmod.full(ipaddress.ip_address(v).version) for v in sa.config.vips]
        self._sent_tsi, self._sent_tsr = local, remote_selectors(sa, self.cfg)
        if self.packet is not None and self.rekey is None and not (self.in_auth and sa.config.vips):
            self._sent_tsi, self._sent_tsr = with_packet(self.packet, self._sent_tsi, self._sent_tsr)
        msg.payloads.append(TsPayload(PayloadType.TSi, self._sent_tsi))
        msg.payloads.append(TsPayload(PayloadType.TSr, self._sent_tsr))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        assert self.cfg is not None
        for n in msg.get_all(PayloadType.NOTIFY):
            assert isinstance(n, NotifyPayload)
            if n.is_error:
                reason = f"{name_of(NotifyType, int(n.type))} from the peer"
                if int(n.type) == NotifyType.TS_UNACCEPTABLE:
                    reason += (f" (we proposed {tsmod.list_text(self._sent_tsi)} === "
                               f"{tsmod.list_text(self._sent_tsr)})")
                if self.rekey is not None and int(n.type) in (NotifyType.TEMPORARY_FAILURE,
                                                              NotifyType.CHILD_SA_NOT_FOUND):
                    # RFC 7296 2.25: a collision with the peer's rekey or delete, not a failure
                    log.info("CHILD_SA %s{%d} not rekeyed: %s", self.rekey.name, self.rekey.unique_id, reason)
                    collisions.child_rekey_refused(sa, self.rekey, int(n.type), now)
                    return Status.DONE
                if int(n.type) == NotifyType.INVALID_KE_PAYLOAD and len(n.data) == 2 and not self.in_auth:
                    self.ke = None
                    self.proposals = [p for p in self.proposals
                                      if any(t.id == int.from_bytes(n.data, "big")
                                             for t in p.of_type(TransformType.DH))] or self.proposals
                if self.rekey is not None:
                    collisions.child_rekey_refused(sa, self.rekey, int(n.type), now)
                self._fail(sa, reason, now)
                return Status.DONE
        if self.in_auth and not sa.established:
            return Status.DONE  # IKE_AUTH itself failed; reported by IkeAuth
        try:
            self._process_response(sa, msg)
        except ProtocolError as e:
            self._fail(sa, str(e), now)
            # RFC 7296 1.3: a CHILD_SA we cannot accept must be deleted again
            if not self.in_auth and self.chosen is not None and self.chosen.spi:
                sa.queue.append(ChildDelete(spi_in=self.spi_in))
            return Status.DONE
        self._install(sa, now, initiator=True)
        return Status.DONE

    def _process_response(self, sa: IkeSaView, msg: Message) -> None:
        assert self.cfg is not None
        sa_pl = msg.get(PayloadType.SA)
        tsi, tsr = msg.get(PayloadType.TSi), msg.get(PayloadType.TSr)
        if not isinstance(sa_pl, SaPayload) or not isinstance(tsi, TsPayload) or not isinstance(tsr, TsPayload):
            raise ProtocolError("CHILD_SA response lacks SA or TS payloads", NotifyType.INVALID_SYNTAX)
        if len(sa_pl.proposals) != 1 or select_proposal(self.proposals, sa_pl.proposals) is None:
            raise ProtocolError("peer chose an ESP proposal we did not offer", NotifyType.NO_PROPOSAL_CHOSEN)
        self.chosen = sa_pl.proposals[0]
        if len(self.chosen.spi) != 4:
            raise ProtocolError("ESP SPI must be 4 octets", NotifyType.INVALID_SYNTAX)
        cp = msg.get(PayloadType.CP)
        if isinstance(cp, CpPayload) and cp.cfg_type == CfgType.CFG_REPLY:
            for a in cp.attributes:
                if a.type in (CfgAttr.INTERNAL_IP4_ADDRESS, CfgAttr.INTERNAL_IP6_ADDRESS) and a.value:
                    vip = ipaddress.ip_address(a.value[:4] if a.type == CfgAttr.INTERNAL_IP4_ADDRESS else a.value[:16])
                    sa.vip = vip
                    log.info("installing new virtual IP %s", vip)
                    sa.ctx.emit(ev.VirtualIpAssigned(sa.name, sa.unique_id, str(vip)))
        self.tsi, self.tsr = tsi.selectors, tsr.selectors
        if _peer_behind_nat(sa) and narrow_remote(sa, self.cfg, self.tsr) != self.tsr:
            # we offered "any" for the peer's dynamic address: it must answer with its own host address
            raise ProtocolError(f"peer's traffic selectors {tsmod.list_text(self.tsr)} are not its own address",
                                NotifyType.TS_UNACCEPTABLE)
        if not self.in_auth:
            nonce = msg.get(PayloadType.NONCE)
            if not isinstance(nonce, NoncePayload):
                raise ProtocolError("CREATE_CHILD_SA response lacks a nonce", NotifyType.INVALID_SYNTAX)
            self.peer_nonce = nonce.data
            if self.ke is not None:
                ke = msg.get(PayloadType.KE)
                if not isinstance(ke, KePayload) or ke.group != self.ke.group:
                    raise ProtocolError("PFS KE payload missing or of another group", NotifyType.INVALID_SYNTAX)
                self.shared = self.ke.compute(ke.data)

    def _fail(self, sa: IkeSaView, reason: str, now: float) -> None:
        assert self.cfg is not None
        log.warning("failed to establish CHILD_SA %s: %s", self.cfg.name, reason)
        sa.ctx.emit(ev.ChildSaFailed(sa.name, self.cfg.name, reason))

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        if self.cfg is None or _reported(sa, self):
            return
        if sa.established:
            self._fail(sa, reason, now)
        else:
            sa.ctx.emit(ev.ChildSaFailed(sa.name, self.cfg.name, reason))

    # ---------------------------------------------------------------- responder
    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        self.select_r(sa, msg.get(PayloadType.SA), msg.get(PayloadType.TSi), msg.get(PayloadType.TSr), msg, now)

    def select_r(self, sa: IkeSaView, sa_pl: Payload | None, tsi: Payload | None, tsr: Payload | None,
                 msg: Message | None, now: float) -> None:
        """process_r with the request's SA, TSi and TSr given; `msg` for its other payloads (CP, and
        CREATE_CHILD_SA's Nonce and KE), None for an IKE_AUTH request that has none of them."""
        try:
            if not isinstance(sa_pl, SaPayload) or not isinstance(tsi, TsPayload) or not isinstance(tsr, TsPayload):
                raise ProtocolError("CHILD_SA request lacks SA or TS payloads", NotifyType.INVALID_SYNTAX)
            if msg is not None:  # None: an IKE_AUTH request without CP
                self._handle_cp(sa, msg)
            cfg, tsi_n, tsr_n = self._pick_config(sa, tsi.selectors, tsr.selectors)
            self.cfg = cfg
            self.spi_in = sa.ctx.alloc_spi()
            choice = _choose(sa, cfg, sa_pl, self.in_auth)
            chosen = Proposal(choice.num, choice.protocol, sa_pl.proposals[choice.index].spi, list(choice.transforms))
            if len(chosen.spi) != 4:
                raise ProtocolError("ESP SPI must be 4 octets", NotifyType.INVALID_SYNTAX)
            if not self.in_auth:  # RFC 7296 1.3: CREATE_CHILD_SA's nonces and optional KE
                self._pfs_r(sa, msg, chosen)
            self.chosen, self.choice = chosen, choice
            self.tsi, self.tsr = tsi_n, tsr_n
        except ProtocolError as e:
            if not self.in_auth:
                raise
            log.warning("CHILD_SA in IKE_AUTH not established: %s", e)
            self.error = e

    def _pick_config(self, sa: IkeSaView, tsi: list[TrafficSelector],
                     tsr: list[TrafficSelector]) -> tuple[ChildConfig, list[TrafficSelector], list[TrafficSelector]]:
        candidates = [self.rekey.config] if self.rekey is not None else sa.config.children
        found = None
        # narrow_remote and local_selectors with what they look up taken once for all configurations
        parse, narrow = tsmod.parse, tsmod.narrow
        behind_nat = sa.nat_there and sa.peer_vip is None  # _peer_behind_nat
        here = str(sa.vip) if sa.vip is not None else sa.local[0]  # _dynamic_local
        there = str(sa.peer_vip or sa.remote[0])
        for cfg in candidates:
            tsi_n = _narrow_remote_nat(sa, cfg, tsi) if behind_nat else \
                narrow(tsi, list(map(parse, cfg.remote_ts, repeat(there))))
            tsr_n = narrow(tsr, list(map(parse, cfg.local_ts, repeat(here))))
            if tsi_n and tsr_n:
                # RFC 7296 2.9: narrowed to a subset holding the initiator's first selectors (the packet
                # that triggered it) when a config allows that
                # (a narrowed list that starts with the offered selector itself holds it: narrow kept it whole)
                if ((tsi_n[0] is tsi[0] or _holds(tsi_n, tsi[0]))
                        and (tsr_n[0] is tsr[0] or _holds(tsr_n, tsr[0]))):
                    return cfg, tsi_n, tsr_n
                found = found or (cfg, tsi_n, tsr_n)
        if found is not None:
            return found
        log.info("traffic selectors %s === %s unacceptable", tsmod.list_text(tsr), tsmod.list_text(tsi))
        if not candidates:
            raise ProtocolError("no CHILD_SA config found", NotifyType.TS_UNACCEPTABLE)
        raise ProtocolError("traffic selectors unacceptable", NotifyType.TS_UNACCEPTABLE)

    def _pfs_r(self, sa: IkeSaView, msg: Message | None, chosen: Proposal) -> None:
        assert msg is not None  # select_r: CREATE_CHILD_SA's request is given
        nonce = msg.get(PayloadType.NONCE)
        if not isinstance(nonce, NoncePayload):
            raise ProtocolError("CREATE_CHILD_SA request lacks a nonce", NotifyType.INVALID_SYNTAX)
        self.peer_nonce = nonce.data
        self.nonce = sa.ctx.rng.bytes(32)
        d = chosen.first(TransformType.DH)
        ke = msg.get(PayloadType.KE)
        if d is not None and d.id != 0:
            if not isinstance(ke, KePayload) or ke.group != d.id:
                raise ProtocolError("PFS group mismatch", NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", d.id))
            self.ke = new_key_exchange(d.id, sa.ctx.rng)
            self.shared = self.ke.compute(ke.data)

    def _handle_cp(self, sa: IkeSaView, msg: Message) -> None:
        cp = msg.get(PayloadType.CP)
        if not (self.in_auth and isinstance(cp, CpPayload) and cp.cfg_type == CfgType.CFG_REQUEST):
            return
        vip = sa.ctx.assign_vip(sa)
        if vip is None:
            log.info("no virtual IP available for '%s'", sa.peer_id)
            return
        sa.peer_vip = vip
        attr = CfgAttr.INTERNAL_IP4_ADDRESS if vip.version == 4 else CfgAttr.INTERNAL_IP6_ADDRESS
        value = vip.packed if vip.version == 4 else vip.packed + b"\x80"
        self.cp_reply = CpPayload(CfgType.CFG_REPLY, [CfgAttribute(attr, value)])

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        msg.payloads += self.response_payloads(sa, now)

    def response_payloads(self, sa: IkeSaView, now: float) -> list[Payload]:
        """build_r's payloads; the CHILD_SA installed (its event emitted) when there is one."""
        if self.error is not None:
            return [NotifyPayload(self.error.notify, self.error.data)] if self.error.notify is not None else []
        if self.chosen is None:
            return []
        out: list[Payload] = [self.cp_reply] if self.cp_reply is not None else []
        spi = self.spi_in.to_bytes(4, "big")
        if self.choice is not None:
            out.append(self.choice.sa_payload(spi, self.chosen.transforms))
        else:
            out.append(SaPayload([Proposal(self.chosen.num, self.chosen.protocol, spi, self.chosen.transforms)]))
        if not self.in_auth:
            out.append(NoncePayload(self.nonce))
            if self.ke is not None:
                out.append(KePayload(self.ke.group, self.ke.public))
        out += (TsPayload(_TSI, self.tsi), TsPayload(_TSR, self.tsr))
        self._install(sa, now, initiator=False)
        return out

    # ---------------------------------------------------------------- both
    def _install(self, sa: IkeSaView, now: float, initiator: bool) -> None:
        assert self.cfg is not None and self.chosen is not None
        c = self.choice if self.choice is not None else _algorithms(self.chosen)
        integ = c.integ
        if self.in_auth:
            ni, nr = sa.ni, sa.nr
        else:
            ni, nr = (self.nonce, self.peer_nonce) if initiator else (self.peer_nonce, self.nonce)
        if c.lengths is not None:
            e_i, a_i, e_r, a_r = child_keymat(sa.prf_id, sa.sk_d, (self.shared or b"") + ni + nr, *c.lengths)
        else:
            km = derive_child_keys(sa.prf_id, sa.sk_d, ni, nr, c.encr, c.key_bits, integ or None, self.shared)
            e_i, a_i, e_r, a_r = km.encr_i, km.integ_i, km.encr_r, km.integ_r
        spi_out = int.from_bytes(self.chosen.spi, "big")
        if initiator:
            k_out, a_out, k_in, a_in = e_i, a_i, e_r, a_r
        else:
            k_out, a_out, k_in, a_in = e_r, a_r, e_i, a_i
        # our TS: initiator's TSi is its local side
        local_ts, remote_ts = (self.tsi, self.tsr) if initiator else (self.tsr, self.tsi)
        keys = ev.ChildKeys(c.encr, c.key_bits or 0, integ, c.esn, self.spi_in, spi_out, k_in, a_in, k_out, a_out)
        ctx = sa.ctx
        uid = ctx.next_child_id()
        reqid = self.rekey.reqid if self.rekey is not None else ctx.next_reqid()
        child = ChildSa(self.cfg.name, uid, reqid, self.cfg, self.spi_in, spi_out, self.chosen, c.text, keys,
                        local_ts, remote_ts, _INSTALLED, now,
                        rekeyed_from=self.rekey.unique_id if self.rekey else None)
        schedule(sa, child, now, initiator)
        sa.children[uid] = child
        self.child = child
        encap = sa.nat_here or sa.nat_there or sa.config.encap or sa.uses_marker
        to_text = tsmod.to_text
        local_text, remote_text = tuple(map(to_text, local_ts)), tuple(map(to_text, remote_ts))
        if log.isEnabledFor(_INFO):  # the event's texts, as tsmod.list_text writes them
            log.info("CHILD_SA %s{%d} established with SPIs %08x_i %08x_o and TS %s === %s", child.name, uid,
                     self.spi_in, spi_out, " ".join(local_text), " ".join(remote_text))
        # RFC 7296 2.8: a rekey responder's outbound SA waits for the end of the CHILD_SA it replaces
        deferred = self.rekey is not None and collisions.outbound_deferred(sa, self, initiator)
        ctx.emit(ev.ChildSaEstablished(
            sa.name, sa.unique_id, child.name, uid, reqid, sa.local, sa.remote, encap, local_text, remote_text,
            keys, child.proposal_text, child.rekeyed_from, self.cfg.replay_window, deferred))
        if self.rekey is not None:
            if initiator:
                sa.queue.extend(collisions.child_rekey_done(sa, self, self.rekey))
            else:
                collisions.child_rekey_answered(sa, self, self.rekey)
            self.rekey.set_state(ChildState.REKEYED)
            self.rekey.rekey_at = None
