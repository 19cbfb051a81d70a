"""Message legality as data (design principle 4; model: strongSwan's per-exchange payload rules).

For each (exchange, response?) a `MessageRule` lists the allowed payload types with min/max counts,
and whether the message must be protected by SK. `check_rules(msg)` runs once, after decryption and
before any task sees the message, and raises `ProtocolError(..., INVALID_SYNTAX)` naming the rule.

Sources: RFC 7296 1.2-1.5 and 2.x (exchange contents), RFC 7383 (fragments), RFC 9242
(IKE_INTERMEDIATE), ME draft 4.2 / 5 and strongSwan's ME rules (ME_CONNECT, connectivity checks).
Unknown non-critical payloads (UnknownPayload) are ignored, as RFC 7296 2.5 requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import ExchangeType, NotifyType, PayloadType
from ..errors import LocalError, ProtocolError
from .message import Message
from .payloads import NotifyPayload, UnknownPayload
from .summary import PAYLOAD_ABBREV, exchange_name, notify_name

N = 0xFFFF  # "any number"

P = PayloadType


@dataclass(frozen=True)
class PayloadRule:
    ptype: int
    min: int = 0
    max: int = N


@dataclass(frozen=True)
class MessageRule:
    name: str
    exchange: int
    response: bool
    encrypted: bool  # RFC 7296 3.14: all payloads inside SK
    payloads: tuple[PayloadRule, ...]

    def allowed(self) -> frozenset[int]:
        return frozenset(r.ptype for r in self.payloads)


def _r(ptype: int, lo: int = 0, hi: int = N) -> PayloadRule:
    return PayloadRule(ptype, lo, hi)


# RFC 7296 1.2: HDR, SAi1, KEi, Ni [N+] [V+]  (N(COOKIE) first on retry, 2.6)
_INIT_REQ = (_r(P.SA, 1, 1), _r(P.KE, 1, 1), _r(P.NONCE, 1, 1), _r(P.NOTIFY), _r(P.VENDOR_ID))
# RFC 7296 1.2/2.6/1.2: full response, or only N(COOKIE) / N(INVALID_KE_PAYLOAD) / N(NO_PROPOSAL_CHOSEN)
_INIT_RESP = (
    _r(P.SA, 0, 1), _r(P.KE, 0, 1), _r(P.NONCE, 0, 1), _r(P.CERTREQ), _r(P.NOTIFY), _r(P.VENDOR_ID),
)
# RFC 7296 1.2, 2.16 (EAP rounds), 2.19 (CP), RFC 4739 (multiple auth); ME draft 3.1: no SA/TS
_AUTH_REQ = (
    _r(P.IDi, 0, 1), _r(P.CERT, 0, 16), _r(P.CERTREQ), _r(P.IDr, 0, 1), _r(P.AUTH, 0, 1),
    _r(P.EAP, 0, 1), _r(P.CP, 0, 1), _r(P.SA, 0, 1), _r(P.TSi, 0, 1), _r(P.TSr, 0, 1),
    _r(P.NOTIFY), _r(P.VENDOR_ID),
)
_AUTH_RESP = (
    _r(P.IDr, 0, 1), _r(P.CERT, 0, 16), _r(P.AUTH, 0, 1), _r(P.EAP, 0, 1), _r(P.CP, 0, 1),
    _r(P.SA, 0, 1), _r(P.TSi, 0, 1), _r(P.TSr, 0, 1), _r(P.NOTIFY), _r(P.VENDOR_ID),
)
# RFC 7296 1.3: HDR, SK {[N], SA, Ni, [KEi], [TSi, TSr]}
_CHILD_REQ = (
    _r(P.SA, 1, 1), _r(P.NONCE, 1, 1), _r(P.KE, 0, 1), _r(P.TSi, 0, 1), _r(P.TSr, 0, 1),
    _r(P.CP, 0, 1), _r(P.NOTIFY), _r(P.VENDOR_ID),
)
# RFC 7296 1.3: a response may be just an error notify
_CHILD_RESP = (
    _r(P.SA, 0, 1), _r(P.NONCE, 0, 1), _r(P.KE, 0, 1), _r(P.TSi, 0, 1), _r(P.TSr, 0, 1),
    _r(P.CP, 0, 1), _r(P.NOTIFY), _r(P.VENDOR_ID),
)
# RFC 7296 1.4: HDR, SK {[N,] [D,] [CP,] ...}
_INFO = (_r(P.NOTIFY), _r(P.DELETE), _r(P.CP, 0, 1), _r(P.VENDOR_ID))
# RFC 9242 3: IKE_INTERMEDIATE carries notifies and (RFC 9370) additional KE
_INTERMEDIATE = (_r(P.KE, 0, 1), _r(P.NONCE, 0, 1), _r(P.NOTIFY), _r(P.VENDOR_ID))
# ME draft 4.2 (strongSwan order N..., ID_PEER, V...): request needs exactly one ID_PEER
_ME_CONNECT_REQ = (_r(P.NOTIFY), _r(P.ID_PEER, 1, 1), _r(P.VENDOR_ID))
_ME_CONNECT_RESP = (_r(P.NOTIFY), _r(P.VENDOR_ID))


def _rule(name: str, x: ExchangeType, resp: bool, enc: bool, pl: tuple[PayloadRule, ...]) -> MessageRule:
    return MessageRule(name, x, resp, enc, pl)


RULES: dict[tuple[int, bool], MessageRule] = {
    (r.exchange, r.response): r
    for r in (
        _rule("IKE_SA_INIT request", ExchangeType.IKE_SA_INIT, False, False, _INIT_REQ),
        _rule("IKE_SA_INIT response", ExchangeType.IKE_SA_INIT, True, False, _INIT_RESP),
        _rule("IKE_AUTH request", ExchangeType.IKE_AUTH, False, True, _AUTH_REQ),
        _rule("IKE_AUTH response", ExchangeType.IKE_AUTH, True, True, _AUTH_RESP),
        _rule("CREATE_CHILD_SA request", ExchangeType.CREATE_CHILD_SA, False, True, _CHILD_REQ),
        _rule("CREATE_CHILD_SA response", ExchangeType.CREATE_CHILD_SA, True, True, _CHILD_RESP),
        _rule("INFORMATIONAL request", ExchangeType.INFORMATIONAL, False, True, _INFO),
        _rule("INFORMATIONAL response", ExchangeType.INFORMATIONAL, True, True, _INFO),
        _rule("IKE_INTERMEDIATE request", ExchangeType.IKE_INTERMEDIATE, False, True, _INTERMEDIATE),
        _rule("IKE_INTERMEDIATE response", ExchangeType.IKE_INTERMEDIATE, True, True, _INTERMEDIATE),
        _rule("ME_CONNECT request", ExchangeType.ME_CONNECT, False, True, _ME_CONNECT_REQ),
        _rule("ME_CONNECT response", ExchangeType.ME_CONNECT, True, True, _ME_CONNECT_RESP),
    )
}

# [ME] §5, docs/protocol.md §7.1: connectivity check = INFORMATIONAL, SPIs 0/0, no SK, these notifies
ME_CHECK_NOTIFIES = frozenset(
    (NotifyType.ME_CONNECTID, NotifyType.ME_ENDPOINT, NotifyType.ME_CONNECTAUTH)
)
CONNECTIVITY_CHECK = MessageRule(
    "ME connectivity check", ExchangeType.INFORMATIONAL, False, False, (_r(P.NOTIFY, 1),)
)
# RFC 7296 1.5: unprotected INFORMATIONAL outside an IKE SA may only carry these notifies
UNPROTECTED_NOTIFIES = frozenset((NotifyType.INVALID_IKE_SPI, NotifyType.INVALID_SPI))
ZERO_SPI = bytes(8)


def is_connectivity_check(msg: Message) -> bool:
    """SPIs 0/0, INFORMATIONAL, no SK and only ME check notifies (route before IKE_SA lookup)."""
    return (
        msg.exchange == ExchangeType.INFORMATIONAL
        and not msg.encrypted
        and msg.spi_i == ZERO_SPI
        and msg.spi_r == ZERO_SPI
        and bool(msg.payloads)
        and all(isinstance(p, NotifyPayload) and p.type in ME_CHECK_NOTIFIES for p in msg.payloads)
    )


def rule_for(msg: Message) -> MessageRule | None:
    return RULES.get((int(msg.exchange), msg.is_response))


def _fail(rule: str, why: str) -> ProtocolError:
    return ProtocolError(f"{rule}: {why}", NotifyType.INVALID_SYNTAX)


def _name(ptype: int) -> str:
    return PAYLOAD_ABBREV.get(ptype, str(ptype))


def _check_unprotected(msg: Message, rule: MessageRule) -> None:
    """RFC 7296 1.5 / 3.14: a non-INIT message without SK may only carry a few notifies."""
    checks = msg.spi_i == ZERO_SPI and msg.spi_r == ZERO_SPI
    allowed = UNPROTECTED_NOTIFIES | (ME_CHECK_NOTIFIES if checks else frozenset())
    if msg.exchange != ExchangeType.INFORMATIONAL:
        raise _fail(rule.name, "must be encrypted (no SK payload)")
    for p in msg.payloads:
        if isinstance(p, UnknownPayload):
            continue
        if not isinstance(p, NotifyPayload) or p.type not in allowed:
            what = f"N({notify_name(p.type)})" if isinstance(p, NotifyPayload) else _name(p.ptype)
            raise _fail(rule.name, f"{what} not allowed unencrypted")
    _check_counts(msg, CONNECTIVITY_CHECK if checks else rule)


_COMPILED: dict[int, tuple[MessageRule, frozenset[int], tuple[tuple[int, int, int], ...]]] = {}


def _compiled(rule: MessageRule) -> tuple[frozenset[int], tuple[tuple[int, int, int], ...]]:
    """(allowed types, (type, min, max) bounds that can fail) of a rule, computed once."""
    hit = _COMPILED.get(id(rule))
    if hit is None or hit[0] is not rule:
        bounds = tuple((int(r.ptype), r.min, r.max) for r in rule.payloads if r.min > 0 or r.max < N)
        hit = _COMPILED[id(rule)] = (rule, rule.allowed(), bounds)
    return hit[1], hit[2]


# the payload type sequences a rule already accepted (bounded): the same exchanges repeat per IKE_SA
_ACCEPTED: set[tuple[int, int, tuple[int, ...]]] = set()


def _check_counts(msg: Message, rule: MessageRule) -> None:
    inside = msg.unprotected if rule.encrypted else 0
    seen = (id(rule), inside, tuple([-1 if type(p) is UnknownPayload else p.ptype for p in msg.payloads]))
    if seen in _ACCEPTED:
        return
    _check_counts_slow(msg, rule)
    if len(_ACCEPTED) >= 1024:
        _ACCEPTED.clear()
    _ACCEPTED.add(seen)


def _check_counts_slow(msg: Message, rule: MessageRule) -> None:
    allowed, bounds = _compiled(rule)
    counts: dict[int, int] = {}
    inside = msg.unprotected if rule.encrypted else 0
    for i, p in enumerate(msg.payloads):
        if type(p) is UnknownPayload:
            continue  # RFC 7296 2.5: non-critical unknown payloads are ignored
        ptype = p.ptype
        counts[ptype] = counts.get(ptype, 0) + 1
        if i < inside:
            raise _fail(rule.name, f"{_name(ptype)} must be inside SK")
        if ptype not in allowed:
            raise _fail(rule.name, f"payload {_name(ptype)} not allowed")
    for ptype, lo, hi in bounds:
        n = counts.get(ptype, 0)
        if n < lo:
            raise _fail(rule.name, f"{_name(ptype)} occurs {n} times, at least {lo} required")
        if n > hi:
            raise _fail(rule.name, f"{_name(ptype)} occurs {n} times, at most {hi} allowed")


def check_rules(msg: Message) -> None:
    """Raise ProtocolError(INVALID_SYNTAX) if `msg` breaks its exchange's payload rules.

    Call on decoded (and, when protected, decrypted) messages. Unknown exchange types are rejected.
    """
    rule = rule_for(msg)
    if rule is None:
        raise _fail(f"{exchange_name(msg.exchange)} {'response' if msg.is_response else 'request'}",
                    f"no rules for exchange type {int(msg.exchange)}")
    if msg.encrypted and not msg.decrypted:
        raise LocalError(f"{rule.name}: check_rules before decrypt_message")
    if rule.encrypted and not msg.encrypted:
        _check_unprotected(msg, rule)
        return
    if not rule.encrypted and msg.encrypted:
        raise _fail(rule.name, "must not be encrypted")  # RFC 7296 1.2: IKE_SA_INIT is plaintext
    _check_counts(msg, rule)
