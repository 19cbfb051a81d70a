"""strongSwan proposal strings, responder selection and log names (RFC 7296 2.7, 3.3).

A proposal string is a '-' separated list of keywords ("aes128gcm16-prfsha256-x25519"); several
keywords of one type become several transforms of that type in one proposal; ',' separates
proposals. As in strongSwan, IKE proposals without a PRF keyword take the PRFs matching their
integrity algorithms, and ESP proposals default to "noesn".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..codec.payloads import Proposal, Transform
from ..constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from ..errors import LocalError

__all__ = [
    "Algorithms",
    "describe",
    "parse_esp_proposals",
    "parse_ike_proposals",
    "parse_proposals",
    "restrict_proposals",
    "select_proposal",
    "to_keywords",
    "transform_name",
]

_E, _P, _I, _D, _N = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH,
                      TransformType.ESN)

_KEYWORDS: dict[str, Transform] = {}


def _add(name: str, ttype: TransformType, tid: int, bits: int | None = None) -> None:
    _KEYWORDS[name] = Transform(ttype, tid, bits)


def _build_keywords() -> None:
    for bits in (128, 192, 256):
        _add(f"aes{bits}", _E, EncrId.AES_CBC, bits)
        # AEAD: ICV length in octets (gcm16) or bits (gcm128), as strongSwan accepts both
        for enc, octets in ((EncrId.AES_GCM_8, 8), (EncrId.AES_GCM_12, 12), (EncrId.AES_GCM_16, 16)):
            _add(f"aes{bits}gcm{octets}", _E, enc, bits)
            _add(f"aes{bits}gcm{octets * 8}", _E, enc, bits)
        for enc, octets in ((EncrId.AES_CCM_8, 8), (EncrId.AES_CCM_12, 12), (EncrId.AES_CCM_16, 16)):
            _add(f"aes{bits}ccm{octets}", _E, enc, bits)
            _add(f"aes{bits}ccm{octets * 8}", _E, enc, bits)
    _add("aes", _E, EncrId.AES_CBC, 128)
    _add("chacha20poly1305", _E, EncrId.CHACHA20_POLY1305)
    for name, integ, prf in (("sha1", IntegId.HMAC_SHA1_96, PrfId.HMAC_SHA1),
                             ("sha256", IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256),
                             ("sha384", IntegId.HMAC_SHA2_384_192, PrfId.HMAC_SHA2_384),
                             ("sha512", IntegId.HMAC_SHA2_512_256, PrfId.HMAC_SHA2_512)):
        _add(name, _I, integ)
        _add(f"prf{name}", _P, prf)
    _add("sha", _I, IntegId.HMAC_SHA1_96)
    _add("sha2_256", _I, IntegId.HMAC_SHA2_256_128)
    _add("sha2_384", _I, IntegId.HMAC_SHA2_384_192)
    _add("sha2_512", _I, IntegId.HMAC_SHA2_512_256)
    _add("prfaescmac", _P, PrfId.AES128_CMAC)
    for name, group in (("modp1024", DhId.MODP_1024), ("modp2048", DhId.MODP_2048),
                        ("modp3072", DhId.MODP_3072), ("modp4096", DhId.MODP_4096),
                        ("ecp256", DhId.ECP_256), ("ecp384", DhId.ECP_384), ("ecp521", DhId.ECP_521),
                        ("x25519", DhId.CURVE25519), ("curve25519", DhId.CURVE25519),
                        ("x448", DhId.CURVE448), ("curve448", DhId.CURVE448)):
        _add(name, _D, group)
    _add("esn", _N, EsnId.ESN)
    _add("noesn", _N, EsnId.NO_ESN)


_build_keywords()

_AEAD_IDS = frozenset([EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16, EncrId.AES_CCM_8,
                       EncrId.AES_CCM_12, EncrId.AES_CCM_16, EncrId.CHACHA20_POLY1305])
# strongSwan: an IKE proposal without PRF keyword uses the PRF of each integrity algorithm
_PRF_OF_INTEG: dict[int, int] = {IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1, IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
                 IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
                 IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512}


def _sorted(transforms: list[Transform]) -> list[Transform]:
    return sorted(transforms, key=lambda t: int(t.type))  # stable: keeps the order within a type


def _parse_one(text: str, protocol: ProtocolId, num: int) -> Proposal:
    transforms: list[Transform] = []
    for word in text.strip().lower().split("-"):
        t = _KEYWORDS.get(word)
        if t is None:
            raise LocalError(f"unknown algorithm '{word}' in proposal '{text}'")
        if t in transforms:
            continue
        if protocol == ProtocolId.ESP and t.type == _P:
            raise LocalError(f"'{word}': ESP proposals take no PRF")
        if protocol == ProtocolId.IKE and t.type == _N:
            raise LocalError(f"'{word}': IKE proposals take no ESN")
        transforms.append(t)
    return _complete(Proposal(num, protocol, b"", transforms), text)


def _complete(p: Proposal, text: str) -> Proposal:
    encrs = p.of_type(_E)
    if not encrs:
        raise LocalError(f"proposal '{text}' has no encryption algorithm")
    aead = {t.id in _AEAD_IDS for t in encrs}
    if len(aead) > 1:
        raise LocalError(f"proposal '{text}' mixes AEAD and classic encryption (RFC 7296 3.3)")
    integs = p.of_type(_I)
    if aead == {True} and integs:
        raise LocalError(f"proposal '{text}': AEAD encryption takes no integrity algorithm")
    if aead == {False} and not integs:
        raise LocalError(f"proposal '{text}' has no integrity algorithm")
    if p.protocol == ProtocolId.IKE:
        if not p.of_type(_P):
            if not integs:
                raise LocalError(f"IKE proposal '{text}' has no PRF")
            p.transforms += [Transform(_P, _PRF_OF_INTEG[t.id]) for t in integs]
        if not p.of_type(_D):
            raise LocalError(f"IKE proposal '{text}' has no key exchange method")
    elif not p.of_type(_N):
        p.transforms.append(Transform(_N, EsnId.NO_ESN))
    p.transforms = _sorted(list(dict.fromkeys(p.transforms)))
    return p


_PARSED: dict[tuple[str, int], tuple[Proposal, ...]] = {}  # parsed once per string (called per SA)


def parse_proposals(text: str, protocol: ProtocolId) -> list[Proposal]:
    """Proposals numbered from 1 (RFC 7296 3.3.1) for a ',' separated list of proposal strings.

    Results are cached per (text, protocol); callers get fresh Proposal objects (they may set the SPI)
    sharing the immutable transforms.
    """
    hit = _PARSED.get((text, protocol))
    if hit is None:
        parts = [s for s in (x.strip() for x in text.split(",")) if s]
        if not parts:
            raise LocalError("empty proposal list")
        if protocol not in (ProtocolId.IKE, ProtocolId.ESP):
            raise LocalError(f"no proposals for protocol {protocol}")
        hit = tuple(_parse_one(s, protocol, i) for i, s in enumerate(parts, 1))
        if len(_PARSED) < 1024:
            _PARSED[(text, protocol)] = hit
    return [Proposal(p.num, p.protocol, p.spi, list(p.transforms)) for p in hit]


def parse_ike_proposals(text: str) -> list[Proposal]:
    return parse_proposals(text, ProtocolId.IKE)


def parse_esp_proposals(text: str) -> list[Proposal]:
    return parse_proposals(text, ProtocolId.ESP)


# --- responder selection: RFC 7296 2.7 ----------------------------------------------------------

_OPTIONAL_NONE = (TransformType.INTEG, TransformType.DH)  # "NONE" (0) may be offered for these


def _choose(ttype: TransformType, ours: list[Transform], theirs: list[Transform],
            ke_group: int | None) -> Transform | bool | None:
    """The chosen transform, None for "type absent / NONE accepted", False for no match."""
    if theirs and ours:
        # all of one type here: compare (id, key length) tuples, not Transform dataclasses (hot path)
        keys = [(t.id, t.key_length) for t in ours]
        if ttype == TransformType.DH and ke_group is not None:
            # prefer the group whose KE payload we already have (avoids INVALID_KE_PAYLOAD, RFC 7296 1.2)
            for t in theirs:
                if t.id == ke_group and (t.id, t.key_length) in keys:
                    return t
        for t in theirs:  # the peer's order expresses its preference (RFC 7296 2.7)
            if (t.id, t.key_length) in keys:
                return t
        return False
    if theirs:  # they offer a type we do not configure: only acceptable as NONE
        none = [t for t in theirs if t.id == 0 and ttype in _OPTIONAL_NONE]
        return none[0] if none else False
    if ours:  # we configure a type they do not offer
        if ttype == TransformType.ESN and Transform(ttype, EsnId.NO_ESN) in ours:
            return None
        if ttype in _OPTIONAL_NONE and any(t.id == 0 for t in ours):
            return None
        return False
    return None


_TTYPES = tuple(TransformType)
_NO_TRANSFORMS: list[Transform] = []


def _by_type(p: Proposal) -> dict[int, list[Transform]]:
    out: dict[int, list[Transform]] = {}
    for t in p.transforms:
        lst = out.get(t.type)
        if lst is None:
            out[t.type] = [t]
        else:
            lst.append(t)
    return out


def _match(ours: Proposal, theirs: Proposal, ke_group: int | None) -> Proposal | None:
    chosen: list[Transform] = []
    o, t = _by_type(ours), _by_type(theirs)
    for ttype in _TTYPES:
        c = _choose(ttype, o.get(ttype, _NO_TRANSFORMS), t.get(ttype, _NO_TRANSFORMS), ke_group)
        if c is False:
            return None
        if isinstance(c, Transform):
            chosen.append(c)
    return Proposal(theirs.num, theirs.protocol, theirs.spi, chosen)


def select_proposal(configured: list[Proposal], offered: list[Proposal],
                    ke_group: int | None = None) -> Proposal | None:
    """RFC 7296 2.7: the first of the peer's proposals acceptable to one of ours, reduced to one
    transform per type, keeping the peer's proposal number and SPI; None = NO_PROPOSAL_CHOSEN.

    `ke_group` (IKE_SA_INIT / CREATE_CHILD_SA responder): prefer that DH group when acceptable, in
    any acceptable proposal pair (charon's default offer lists AES-CBC proposals with every group first
    and its KE is x25519: without this we would answer INVALID_KE_PAYLOAD for MODP_2048).
    """
    matches = [got for theirs in offered for ours in configured if ours.protocol == theirs.protocol
               and (got := _match(ours, theirs, ke_group)) is not None]
    if ke_group is not None:
        for got in matches:
            if any(t.id == ke_group for t in got.of_type(TransformType.DH)):
                return got
    return matches[0] if matches else None


def restrict_proposals(proposals: list[Proposal], accept: Callable[[Transform], bool]
                       ) -> tuple[list[Proposal], list[Transform]]:
    """`proposals` without the transforms `accept` refuses, and the refused ones (first seen first).

    A proposal left without encryption algorithm, or with classic encryption but no integrity
    algorithm, goes entirely; the rest are numbered from 1 again (RFC 7296 3.3.1)."""
    kept: list[Proposal] = []
    refused: list[Transform] = []
    for p in proposals:
        ts = [t for t in p.transforms if accept(t)]
        refused += [t for t in p.transforms if t not in ts and t not in refused]
        encrs = [t for t in ts if t.type == _E]
        if not encrs or (not all(t.id in _AEAD_IDS for t in encrs) and not any(t.type == _I for t in ts)):
            continue
        kept.append(Proposal(len(kept) + 1, p.protocol, p.spi, ts))
    return kept, refused


# --- names ---------------------------------------------------------------------------------------

_ENCR_NAMES = {EncrId.AES_CBC: "AES_CBC", EncrId.AES_CTR: "AES_CTR", EncrId.AES_GCM_8: "AES_GCM_8",
               EncrId.AES_GCM_12: "AES_GCM_12", EncrId.AES_GCM_16: "AES_GCM_16",
               EncrId.AES_CCM_8: "AES_CCM_8", EncrId.AES_CCM_12: "AES_CCM_12",
               EncrId.AES_CCM_16: "AES_CCM_16", EncrId.CHACHA20_POLY1305: "CHACHA20_POLY1305",
               EncrId.DES3: "3DES_CBC", EncrId.NULL: "NULL"}
_INTEG_NAMES = {IntegId.NONE: "NONE", IntegId.HMAC_MD5_96: "HMAC_MD5_96", IntegId.HMAC_SHA1_96: "HMAC_SHA1_96",
                IntegId.AES_XCBC_96: "AES_XCBC_96", IntegId.HMAC_SHA2_256_128: "HMAC_SHA2_256_128",
                IntegId.HMAC_SHA2_384_192: "HMAC_SHA2_384_192",
                IntegId.HMAC_SHA2_512_256: "HMAC_SHA2_512_256"}
_PRF_NAMES = {PrfId.HMAC_MD5: "PRF_HMAC_MD5", PrfId.HMAC_SHA1: "PRF_HMAC_SHA1",
              PrfId.AES128_XCBC: "PRF_AES128_XCBC", PrfId.HMAC_SHA2_256: "PRF_HMAC_SHA2_256",
              PrfId.HMAC_SHA2_384: "PRF_HMAC_SHA2_384", PrfId.HMAC_SHA2_512: "PRF_HMAC_SHA2_512",
              PrfId.AES128_CMAC: "PRF_AES128_CMAC"}
_DH_NAMES = {DhId.NONE: "NONE", DhId.MODP_1024: "MODP_1024", DhId.MODP_2048: "MODP_2048",
             DhId.MODP_3072: "MODP_3072", DhId.MODP_4096: "MODP_4096", DhId.ECP_256: "ECP_256",
             DhId.ECP_384: "ECP_384", DhId.ECP_521: "ECP_521", DhId.CURVE25519: "CURVE_25519",
             DhId.CURVE448: "CURVE_448"}
_ESN_NAMES = {EsnId.NO_ESN: "NO_EXT_SEQ", EsnId.ESN: "EXT_SEQ"}
_NAMES: dict[int, tuple[dict[int, str], str]] = {
    _E: ({int(k): v for k, v in _ENCR_NAMES.items()}, "ENCR"),
    _I: ({int(k): v for k, v in _INTEG_NAMES.items()}, "INTEG"),
    _P: ({int(k): v for k, v in _PRF_NAMES.items()}, "PRF"),
    _D: ({int(k): v for k, v in _DH_NAMES.items()}, "KE"),
    _N: ({int(k): v for k, v in _ESN_NAMES.items()}, "ESN"),
}
_LOG_ORDER = (_E, _I, _P, _D, _N)  # strongSwan prints ENCR/INTEG/PRF/KE/ESN


def transform_name(t: Transform) -> str:
    """strongSwan's name of one transform, e.g. "AES_GCM_16_128", "CHACHA20_POLY1305"."""
    table, prefix = _NAMES.get(int(t.type), ({}, f"TRANSFORM{int(t.type)}"))
    base = table.get(t.id, f"{prefix}_{t.id}")
    return f"{base}_{t.key_length}" if t.key_length else base


def describe(proposal: Proposal, with_protocol: bool = False) -> str:
    """strongSwan-style text, e.g. "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"."""
    names = [transform_name(t) for ttype in _LOG_ORDER for t in proposal.of_type(ttype)]
    text = "/".join(names)
    if with_protocol:
        text = f"{ProtocolId(proposal.protocol).name}:{text}"
    return text


_KEYWORD_OF = {t: name for name, t in reversed(list(_KEYWORDS.items()))}  # first (canonical) name wins


def to_keywords(proposal: Proposal) -> str:
    """A strongSwan proposal string for `proposal` (inverse of parse_proposals for one proposal)."""
    words = []
    for t in [t for ttype in _LOG_ORDER for t in proposal.of_type(ttype)]:
        word = _KEYWORD_OF.get(t)
        if word is None:
            raise LocalError(f"no keyword for transform {transform_name(t)}")
        words.append(word)
    return "-".join(words)


@dataclass(frozen=True)
class Algorithms:
    """The negotiated algorithms of one chosen proposal (one transform per type)."""

    encr_id: int
    key_bits: int | None
    integ_id: int | None
    prf_id: int | None
    dh_group: int | None
    esn: bool = False

    @property
    def is_aead(self) -> bool:
        return self.encr_id in _AEAD_IDS

    @classmethod
    def from_proposal(cls, p: Proposal) -> Algorithms:
        def one(t: TransformType) -> Transform | None:
            found = p.of_type(t)
            if len(found) > 1:
                raise LocalError(f"proposal {p.num} has {len(found)} {t.name} transforms, expected one")
            return found[0] if found else None

        encr = one(_E)
        if encr is None:
            raise LocalError(f"proposal {p.num} has no encryption algorithm")
        integ, prf, dh, esn = one(_I), one(_P), one(_D), one(_N)
        return cls(
            encr_id=encr.id, key_bits=encr.key_length,
            integ_id=integ.id if integ is not None and integ.id != IntegId.NONE else None,
            prf_id=prf.id if prf is not None else None,
            dh_group=dh.id if dh is not None and dh.id != DhId.NONE else None,
            esn=esn is not None and esn.id == EsnId.ESN,
        )
