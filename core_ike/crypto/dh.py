"""Diffie-Hellman / key exchange methods for the KE payload (RFC 7296 3.4, RFC 5903, RFC 8031).

Sans-IO: `new_key_exchange(group)` returns an object with the IKE wire encoding of our public value
and `compute(peer_public)` for the shared secret g^ir. All arithmetic is done by `cryptography`
(OpenSSL); peer values are validated as RFC 6989 asks, failures raise
`ProtocolError(..., INVALID_SYNTAX)`.

Encodings (RFC 7296 3.4 / RFC 5903 7 / RFC 8031 2):
- MODP: g^x mod p, big-endian, left-padded to the modulus length; g^ir likewise.
- ECP: x || y, each the fixed field length, no point-format octet; g^ir = x only.
- Curve25519/Curve448: the u-coordinate (32/56 octets); g^ir = X25519/X448 output, never all zero.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..constants import DhId, NotifyType
from ..errors import LocalError, ProtocolError
from ..rng import Rng, randbits

try:  # FFDH is deprecated in `cryptography` (still ~7x faster than pow()); keep a fallback
    from cryptography.hazmat.primitives.asymmetric import dh as _ffdh
except ImportError:  # pragma: no cover - future cryptography releases
    _ffdh = None  # type: ignore[assignment]

__all__ = [
    "SUPPORTED_GROUPS",
    "KeyExchange",
    "KeyPool",
    "check_public",
    "key_exchange_from_private",
    "new_key_exchange",
    "public_length",
]


class KeyExchange(Protocol):
    group: int
    public: bytes

    def compute(self, peer_public: bytes) -> bytes: ...


def _invalid(group: int, why: str) -> ProtocolError:
    return ProtocolError(f"invalid KE data for group {group}: {why}", NotifyType.INVALID_SYNTAX)


# --- MODP groups: RFC 2409 6.2 (group 2) and RFC 3526 3-5 (groups 14-16), generator 2 ----------

_MODP_1024 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF", 16)
_MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)
_MODP_4096 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6"
    "287C59474E6BC05D99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16,
)

_MODP_PRIMES: dict[int, int] = {
    DhId.MODP_1024: _MODP_1024,
    DhId.MODP_2048: _MODP_2048,
    DhId.MODP_3072: _MODP_3072,
    DhId.MODP_4096: _MODP_4096,
}

# Private exponent bits for the pow() fallback: at least twice the group's strength (RFC 3526 8).
_MODP_EXP_BITS: dict[int, int] = {DhId.MODP_1024: 256, DhId.MODP_2048: 256, DhId.MODP_3072: 320, DhId.MODP_4096: 384}


@dataclass(frozen=True)
class _ModpGroup:
    group: int
    p: int
    length: int  # octets
    numbers: _ffdh.DHParameterNumbers | None
    params: _ffdh.DHParameters | None  # cached: building them is the slow part


_MODP_CACHE: dict[int, _ModpGroup] = {}


def _modp_group(group: int) -> _ModpGroup:
    g = _MODP_CACHE.get(group)
    if g is None:
        p = _MODP_PRIMES[group]
        numbers = params = None
        if _ffdh is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                numbers = _ffdh.DHParameterNumbers(p, 2)
                params = numbers.parameters()
        g = _ModpGroup(group, p, (p.bit_length() + 7) // 8, numbers, params)
        _MODP_CACHE[group] = g
    return g


class _ModpExchange:
    """MODP Diffie-Hellman (RFC 7296 3.4: values left-padded to the modulus length)."""

    __slots__ = ("_g", "_key", "_x", "group", "public")

    def __init__(self, group: int, private: int | None = None, rng: Rng | None = None) -> None:
        self.group = group
        self._g = _modp_group(group)
        self._key: _ffdh.DHPrivateKey | None = None
        self._x = 0
        if self._g.params is not None and private is None:
            key = self._g.params.generate_private_key()
            self._key = key
            y = int(key.public_key().public_numbers().y)
        else:
            if private is None:
                if rng is None:
                    raise LocalError("a MODP key exchange needs a private value or a random source")
                private = randbits(rng, _MODP_EXP_BITS[group]) | (1 << (_MODP_EXP_BITS[group] - 1))
            self._x = private
            y = pow(2, private, self._g.p)
        self.public = y.to_bytes(self._g.length, "big")

    def compute(self, peer_public: bytes) -> bytes:
        g = self._g
        if len(peer_public) != g.length:
            raise _invalid(self.group, f"length {len(peer_public)}, expected {g.length}")
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < g.p - 1:  # RFC 6989 2.1
            raise _invalid(self.group, "public value out of range")
        if self._key is not None and g.numbers is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peer = _ffdh.DHPublicNumbers(y, g.numbers).public_key()
            try:
                z = self._key.exchange(peer)
            except ValueError as e:
                raise _invalid(self.group, str(e)) from None
            return bytes(z).rjust(g.length, b"\x00")
        return pow(y, self._x, g.p).to_bytes(g.length, "big")


# --- ECP groups: RFC 5903 (public = x || y, shared = x) -----------------------------------------

_ECP_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    DhId.ECP_256: (ec.SECP256R1, 32),
    DhId.ECP_384: (ec.SECP384R1, 48),
    DhId.ECP_521: (ec.SECP521R1, 66),
}
_ECDH = ec.ECDH()


class _EcpExchange:
    __slots__ = ("_curve", "_flen", "_key", "group", "public")

    def __init__(self, group: int, private: int | None = None) -> None:
        curve_cls, self._flen = _ECP_CURVES[group]
        self.group = group
        self._curve = curve_cls()
        if private is None:
            self._key = ec.generate_private_key(self._curve)
        else:
            self._key = ec.derive_private_key(private, self._curve)
        point = self._key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.public = point[1:]  # RFC 5903 7: drop the 0x04 point-format octet

    def compute(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 2 * self._flen:
            raise _invalid(self.group, f"length {len(peer_public)}, expected {2 * self._flen}")
        peer = _ECP_CHECKED.pop((self.group, peer_public), None) or _ecp_point(self.group, peer_public)
        try:
            z = self._key.exchange(_ECDH, peer)
        except ValueError as e:
            raise _invalid(self.group, str(e)) from None
        return z.rjust(self._flen, b"\x00")  # RFC 5903 7: x-coordinate only, fixed length


# ECP public values `check_public` loaded, for the `compute` that follows it once the IKE_SA_INIT response
# left (docs/protocol.md): a responder loads and checks each peer's point once (callgrind, ECP-256:
# check_public 74k instructions, compute 774k with its own load). Bounded: values checked for an IKE_SA
# that never computes (one dropped before its keys) go in one clear.
_ECP_CHECKED: dict[tuple[int, bytes], ec.EllipticCurvePublicKey] = {}
_ECP_CHECKED_MAX = 256


def _ecp_point(group: int, peer_public: bytes) -> ec.EllipticCurvePublicKey:
    """The peer's point (RFC 5903 7: x || y) as a key; ProtocolError(INVALID_SYNTAX) when it is not on the
    curve (RFC 6989 2.3: OpenSSL checks it on load)."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_ECP_CURVES[group][0](), b"\x04" + peer_public)
    except ValueError as e:
        raise _invalid(group, str(e)) from None


# --- Curve25519 / Curve448: RFC 8031 -------------------------------------------------------------

def _x25519_direct() -> tuple[Any, Any, Any] | None:
    """(generate, from_private_bytes, from_public_bytes) of `cryptography`'s X25519 keys as its public
    classmethods end up calling them, when this OpenSSL has X25519; else None (the classmethods then say
    why). Those classmethods import the backend module and check support again on every call: a
    responder makes a key pair and reads a peer's key per IKE_SA_INIT, right after waking up, when that
    import machinery (module dicts, the import lock, module specs) must come back into the CPU caches
    first. The same objects, the same checks of the key octets."""
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        if not backend.x25519_supported():
            return None
        mod = rust_openssl.x25519
        return mod.generate_key, mod.from_private_bytes, mod.from_public_bytes
    except (ImportError, AttributeError):  # another `cryptography`: the classmethods
        return None


_X25519 = _x25519_direct() or (x25519.X25519PrivateKey.generate, x25519.X25519PrivateKey.from_private_bytes,
                               x25519.X25519PublicKey.from_public_bytes)
# group -> (generate, from private octets, public key from octets, octets)
_MONTGOMERY: dict[int, tuple[Any, Any, Any, int]] = {
    DhId.CURVE25519: (*_X25519, 32),
    DhId.CURVE448: (x448.X448PrivateKey.generate, x448.X448PrivateKey.from_private_bytes,
                    x448.X448PublicKey.from_public_bytes, 56),
}


class _MontgomeryExchange:
    """X25519 and X448 (RFC 8031; RFC 7748 6.1/6.2)."""

    __slots__ = ("_key", "_len", "_peer_key", "group", "public")

    def __init__(self, group: int, private: bytes | None = None) -> None:
        self.group = group
        generate, from_private, self._peer_key, self._len = _MONTGOMERY[group]
        self._key = generate() if private is None else from_private(private)
        self.public: bytes = self._key.public_key().public_bytes_raw()

    def compute(self, peer_public: bytes) -> bytes:
        if len(peer_public) != self._len:
            raise _invalid(self.group, f"length {len(peer_public)}, expected {self._len}")
        try:  # RFC 8031 2.3 / RFC 7748 6: an all-zero result must be rejected (OpenSSL does)
            z: bytes = self._key.exchange(self._peer_key(peer_public))
        except ValueError as e:
            raise _invalid(self.group, str(e)) from None
        if not any(z):
            raise _invalid(self.group, "all-zero shared secret")
        return z


SUPPORTED_GROUPS: frozenset[int] = frozenset(
    [*_MODP_PRIMES, *_ECP_CURVES, DhId.CURVE25519, DhId.CURVE448]
)

_PUBLIC_LENGTHS: dict[int, int] = {
    DhId.MODP_1024: 128, DhId.MODP_2048: 256, DhId.MODP_3072: 384, DhId.MODP_4096: 512,
    DhId.ECP_256: 64, DhId.ECP_384: 96, DhId.ECP_521: 132, DhId.CURVE25519: 32, DhId.CURVE448: 56,
}


def public_length(group: int) -> int:
    """Octets of the KE data for `group` (RFC 7296 3.4); LocalError if unsupported."""
    try:
        return _PUBLIC_LENGTHS[group]
    except KeyError:
        raise LocalError(f"unsupported DH group {group}") from None


_P25519 = 2**255 - 19
_P448 = 2**448 - 2**224 - 1
# RFC 7748 5, 6: the u-coordinates (mod p) of the points of small order on Curve25519 and its twist
# (orders 1, 2, 4, 8; 0 and 1 on both) and on Curve448 and its twist (orders 1, 2, 4). A clamped scalar
# is a multiple of the cofactor and smaller than the large prime orders, so X25519/X448 with our key
# gives the all-zero value RFC 8031 2.3 rejects exactly for these.
_SMALL_ORDER: dict[int, tuple[int, bool, frozenset[int]]] = {  # group -> (p, mask bit 255, u values)
    DhId.CURVE25519: (_P25519, True, frozenset((
        0, 1, _P25519 - 1,
        int.from_bytes(bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "little"),
        int.from_bytes(bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), "little"),
    ))),
    DhId.CURVE448: (_P448, False, frozenset((0, 1, _P448 - 1))),
}


def check_public(group: int, peer_public: bytes) -> None:
    """Reject a peer's KE data for `group` that `compute` would reject, without computing the shared
    secret: its length (RFC 7296 3.4), the range of a MODP value (RFC 6989 2.1), an ECP point off the
    curve (RFC 6989 2.3, OpenSSL's check on load), a Curve25519/448 point of small order (RFC 8031 2.3:
    the only ones whose shared secret is all zero). A responder checks this before its IKE_SA_INIT
    response and computes the secret after it left (docs/protocol.md). ProtocolError(INVALID_SYNTAX)
    as `compute` raises it; LocalError for a group we do not support."""
    n = public_length(group)
    if len(peer_public) != n:
        raise _invalid(group, f"length {len(peer_public)}, expected {n}")
    small = _SMALL_ORDER.get(group)
    if small is not None:
        p, mask, bad = small
        u = int.from_bytes(peer_public, "little")
        if mask:
            u &= (1 << 255) - 1  # RFC 7748 5: the most significant bit is ignored
        if u % p in bad:
            raise _invalid(group, "all-zero shared secret")
    elif group in _MODP_PRIMES:
        if not 1 < int.from_bytes(peer_public, "big") < _MODP_PRIMES[group] - 1:  # RFC 6989 2.1
            raise _invalid(group, "public value out of range")
    elif group in _ECP_CURVES:  # RFC 6989 2.3: on the curve; kept for the `compute` that follows
        point = _ecp_point(group, peer_public)
        if len(_ECP_CHECKED) >= _ECP_CHECKED_MAX:
            _ECP_CHECKED.clear()
        _ECP_CHECKED[(group, peer_public)] = point


def new_key_exchange(group: int, rng: Rng) -> KeyExchange:
    """A fresh ephemeral key pair for `group` (a DhId value). `rng` draws the exponent of the MODP groups
    computed here; the groups `cryptography` implements draw their private keys from OpenSSL's CSPRNG."""
    if group in _MODP_PRIMES:
        return _ModpExchange(group, rng=rng)
    if group in _ECP_CURVES:
        return _EcpExchange(group)
    if group in _MONTGOMERY:
        return _MontgomeryExchange(group)
    raise LocalError(f"unsupported DH group {group}")


def is_pooled(group: int) -> bool:
    """Does KeyPool.take hand out key pairs of `group` made ahead (the curve groups)? MODP exponents come
    from the caller's random source and are made when taken."""
    return group in _MONTGOMERY or group in _ECP_CURVES


class KeyPool:
    """Fresh key pairs of the curve groups made a few at a time, each handed out once.

    A responder makes one key pair per IKE_SA_INIT (RFC 7296 1.2: its own KEr), typically right after
    waking up for that datagram, when the curve's code and tables are out of the CPU caches: making
    `batch` of them together costs little more than one made cold, and each IKE_SA still gets its own
    pair, used for that exchange only (no reuse across IKE_SAs, RFC 7296 2.12 not needed). The private
    keys come from OpenSSL's CSPRNG as in `new_key_exchange`; MODP groups, whose exponent comes from
    `rng`, are made one at a time. A process that forks must not share a pool with its child.
    """

    __slots__ = ("_empty", "_keys", "batch")

    def __init__(self, batch: int = 8) -> None:
        self.batch = batch
        self._keys: dict[int, list[KeyExchange]] = {}
        # the groups whose pairs `take` used up, for `refill`: it finds them without a walk over every group
        # held (run after every wake-up, a walk's dict iteration is code otherwise cold)
        self._empty: list[int] = []

    def take(self, group: int, rng: Rng) -> KeyExchange:
        keys = self._keys.get(group)  # only curve groups are held: one made ahead is one lookup away
        if not keys:
            if not is_pooled(group):
                return new_key_exchange(group, rng)
            keys = self._keys[group] = [new_key_exchange(group, rng) for _ in range(self.batch)]
        key = keys.pop(0)  # in the order made
        if not keys:
            self._empty.append(group)
        return key

    def refill(self, rng: Rng) -> int:
        """Make the next `batch` key pairs of each group taken before whose pairs are used up, so that
        the next `take` finds one made: for an adapter to call when nothing waits for it (after the
        datagrams of a wake-up left). At most `batch` pairs per curve group are held. Returns how many
        were made."""
        made = 0
        empty = self._empty
        while empty:
            group = empty.pop()
            keys = self._keys[group]
            if not keys:  # not made again by a `take` since it ran empty
                keys += [new_key_exchange(group, rng) for _ in range(self.batch)]
                made += self.batch
        return made

    def __len__(self) -> int:
        return sum(len(v) for v in self._keys.values())


def key_exchange_from_private(group: int, private: bytes) -> KeyExchange:
    """Deterministic key pair from a known private value (test vectors only).

    MODP/ECP: big-endian integer; Curve25519/448: the raw scalar (RFC 7748).
    """
    if group in _MODP_PRIMES:
        return _ModpExchange(group, int.from_bytes(private, "big"))
    if group in _ECP_CURVES:
        return _EcpExchange(group, int.from_bytes(private, "big"))
    if group in _MONTGOMERY:
        return _MontgomeryExchange(group, private)
    raise LocalError(f"unsupported DH group {group}")
