"""IKE and CHILD SA key derivation (RFC 7296 2.13, 2.14, 2.17, 2.18).

"i" keys protect what the original initiator sends, "r" keys the other direction, regardless of
who sends a given request (RFC 7296 2.14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..errors import LocalError
from ..rng import Rng
from .prf import Prf, prf_for, prf_plus
from .sk import AeadProtector, CbcHmacProtector, key_lengths, make_protector

__all__ = [
    "ChildKeys",
    "IkeKeys",
    "IkeSuite",
    "child_keymat",
    "derive_child_keys",
    "derive_ike_keys",
    "derive_ike_rekey_keys",
    "ike_protectors",
    "skeyseed",
]

_set = object.__setattr__


class IkeSuite(NamedTuple):
    """The negotiated transforms an IKE SA's keys depend on (RFC 7296 2.14): PRF, encryption (with its
    key length) and integrity (None with an AEAD). A tuple: the per-suite caches below hash it in C
    (a frozen dataclass's hash is a Python call per lookup)."""

    prf_id: int
    encr_id: int
    key_bits: int | None
    integ_id: int | None


@dataclass(frozen=True, repr=False, init=False)
class IkeKeys:
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __init__(self, sk_d: bytes, sk_ai: bytes, sk_ar: bytes, sk_ei: bytes, sk_er: bytes, sk_pi: bytes,
                 sk_pr: bytes) -> None:
        # one object.__setattr__ of __dict__, not the frozen dataclass's one per field (each binds a method
        # wrapper and walks the MRO; see core_ike/ike/events.py); still frozen, same eq and hash
        _set(self, "__dict__", {"sk_d": sk_d, "sk_ai": sk_ai, "sk_ar": sk_ar, "sk_ei": sk_ei, "sk_er": sk_er,
                                "sk_pi": sk_pi, "sk_pr": sk_pr})

    def __repr__(self) -> str:  # never log key material by accident
        return "IkeKeys(<secret>)"


@dataclass(frozen=True, repr=False)
class ChildKeys:
    """KEYMAT split for one CHILD_SA pair (RFC 7296 2.17); "i" = initiator -> responder SA."""

    encr_i: bytes
    integ_i: bytes
    encr_r: bytes
    integ_r: bytes

    def __repr__(self) -> str:
        return "ChildKeys(<secret>)"


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """RFC 7296 2.14: SKEYSEED = prf(Ni | Nr, g^ir); the nonces are the key.

    AES-based PRFs with a fixed 128-bit key use only the first 64 bits of Ni and of Nr.
    """
    key = ni[:8] + nr[:8] if prf.fixed_key else ni + nr
    return prf(key, shared)


_SPLITS: dict[tuple[IkeSuite, int], tuple[int, tuple[tuple[int, int], ...]]] = {}


def _split_of(suite: IkeSuite, p_len: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(total, (start, end) of each key) of the prf+ stream for `suite`, computed once per suite."""
    hit = _SPLITS.get((suite, p_len))
    if hit is None:
        e_len, a_len = key_lengths(suite.encr_id, suite.key_bits, suite.integ_id)
        bounds: list[tuple[int, int]] = []
        pos = 0
        for n in (p_len, a_len, a_len, e_len, e_len, p_len, p_len):
            bounds.append((pos, pos + n))
            pos += n
        hit = (pos, tuple(bounds))
        if len(_SPLITS) < 256:
            _SPLITS[(suite, p_len)] = hit
    return hit


def _split_ike(prf: Prf, seed_key: bytes, seed: bytes, suite: IkeSuite) -> IkeKeys:
    # RFC 7296 2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, ...)
    total, ((a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4), (a5, b5), (a6, b6)) = _split_of(suite, prf.key_size)
    k = prf_plus(prf, seed_key, seed, total)
    return IkeKeys(k[a0:b0], k[a1:b1], k[a2:b2], k[a3:b3], k[a4:b4], k[a5:b5], k[a6:b6])


def _check_spis(spi_i: bytes, spi_r: bytes) -> None:
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise LocalError("IKE SPIs must be 8 octets each")


def derive_ike_keys(suite: IkeSuite, ni: bytes, nr: bytes, shared: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """Keys of a new IKE SA after IKE_SA_INIT (RFC 7296 2.14)."""
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise LocalError("IKE SPIs must be 8 octets each")
    prf = prf_for(suite.prf_id)
    return _split_ike(prf, skeyseed(prf, ni, nr, shared), ni + nr + spi_i + spi_r, suite)


def derive_ike_rekey_keys(
    old_prf_id: int, old_sk_d: bytes, suite: IkeSuite, shared: bytes, ni: bytes, nr: bytes, spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """Keys of the new IKE SA in a CREATE_CHILD_SA rekey (RFC 7296 2.18).

    SKEYSEED = prf_old(SK_d_old, g^ir(new) | Ni | Nr); prf+ uses the new SA's PRF. Ni/Nr are the
    CREATE_CHILD_SA nonces, spi_i/spi_r the new SA's SPIs (initiator of the rekey = "i").
    """
    _check_spis(spi_i, spi_r)
    seed_key = prf_for(old_prf_id)(old_sk_d, shared + ni + nr)
    return _split_ike(prf_for(suite.prf_id), seed_key, ni + nr + spi_i + spi_r, suite)


def derive_child_keys(
    prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, encr_id: int, key_bits: int | None,
    integ_id: int | None, shared: bytes | None = None,
) -> ChildKeys:
    """CHILD_SA keying material (RFC 7296 2.17).

    KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir(new) | Ni | Nr) with PFS. Initiator->responder
    keys come first, encryption key before integrity key; AEAD keys include the salt
    (RFC 4106 8.1, RFC 4309 7.1, RFC 7634 2).
    """
    e_len, a_len = key_lengths(encr_id, key_bits, integ_id)
    return ChildKeys(*child_keymat(prf_id, sk_d, (shared or b"") + ni + nr, e_len, a_len))


def child_keymat(prf_id: int, sk_d: bytes, seed: bytes, e_len: int, a_len: int) -> tuple[bytes, bytes, bytes, bytes]:
    """derive_child_keys' KEYMAT = prf+(SK_d, seed) split into (encr_i, integ_i, encr_r, integ_r), for
    key lengths known already (key_lengths: a CHILD_SA responder keeps them with its choice)."""
    km = prf_plus(prf_for(prf_id), sk_d, seed, 2 * (e_len + a_len))
    first = e_len + a_len
    return km[:e_len], km[e_len:first], km[first:first + e_len], km[first + e_len:]


def ike_protectors(
    keys: IkeKeys, suite: IkeSuite, initiator: bool, rng: Rng,
) -> tuple[CbcHmacProtector | AeadProtector, CbcHmacProtector | AeadProtector]:
    """(outbound, inbound) SK protectors for the original initiator or responder (RFC 7296 2.14)."""
    e = suite.encr_id
    aead_len = _AEAD_SUITES.get(suite)
    if aead_len is not None and len(keys.sk_ei) == len(keys.sk_er) == aead_len:
        # the checks of make_protector done once per suite: an AEAD with these key lengths
        p_i: CbcHmacProtector | AeadProtector = AeadProtector(e, keys.sk_ei, rng)
        p_r: CbcHmacProtector | AeadProtector = AeadProtector(e, keys.sk_er, rng)
    else:
        bits, a = suite.key_bits, suite.integ_id
        p_i = make_protector(e, bits, a, keys.sk_ei, keys.sk_ai, rng=rng)
        p_r = make_protector(e, bits, a, keys.sk_er, keys.sk_ar, rng=rng)
        if isinstance(p_i, AeadProtector) and len(_AEAD_SUITES) < 64:
            _AEAD_SUITES[suite] = len(keys.sk_ei)
    return (p_i, p_r) if initiator else (p_r, p_i)


# AEAD suites make_protector accepted before -> their SK_e length (salt included)
_AEAD_SUITES: dict[IkeSuite, int] = {}

