"""Key exchange: published vectors (RFC 5903, RFC 5114, RFC 7748) and RFC 6989 peer validation."""

from __future__ import annotations

import random

import pytest

from core_ike.constants import DhId, NotifyType
from core_ike.crypto import dh
from core_ike.errors import LocalError, ProtocolError
from core_ike.rng import SeededRng

RNG = SeededRng("crypto")


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# (source, group, private_i, private_r, public_i, public_r, shared)
ECP_VECTORS = [
    (
        "RFC 5903 8.1",
        DhId.ECP_256,
        "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
        "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
        "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180"
        "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
        "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63"
        "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
        "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
    ),
    (
        "RFC 5114 A.6 (strongSwan test_vectors/ecp.c ecp256)",
        DhId.ECP_256,
        "814264145f2f56f2e96a8e337a1284993faf432a5abce59e867b7291d507a3af",
        "2ce1788ec197e096db95a200cc0ab26a19ce6bccad562b8eee1b593761cf7f41",
        "2af502f3be8952f2c9b5a8d4160d09e97165be50bc42ae4a5e8d3b4ba83aeb15"
        "eb0faf4ca986c4d38681a0f9872d79d56795bd4bff6e6de3c0f5015ece5efd85",
        "b120de4aa36492795346e8de6c2c8646ae06aaea279fa775b3ab0715f6ce51b0"
        "9f1b7eece20d7b5ed8ec685fa3f071d83727027092a8411385c34dde5708b2b6",
        "dd0f5396219d1ea393310412d19a08f1f5811e9dc8ec8eea7f80d21c820c2788",
    ),
    (
        "RFC 5114 A.7 (strongSwan test_vectors/ecp.c ecp384)",
        DhId.ECP_384,
        "d27335ea71664af244dd14e9fd1260715dfd8a7965571c48d709ee7a7962a156d706a90cbcb5df2986f05feadb9376f1",
        "52d1791fdb4b70f89c0f00d456c2f7023b6125262c36a7df1f80231121cce3d39be52e00c194a4132c4a6c768bcd94d2",
        "793148f1787634d5da4c6d9074417d05e057ab62f82054d10ee6b0403d6279547e6a8ea9d1fd77427d016fe27a8b8c66"
        "c6c41294331d23e6f480f4fb4cd40504c947392e94f4c3f06b8f398bb29e42368f7a685923de3b67baced214a1a1d128",
        "5cd42ab9c41b5347f74b8d4efb708b3d5b36db65915359b44abc17647b6b9999789d72a84865ae2f223f12b5a1abc120"
        "e171458feaa939aaa3a8bfac46b404bd8f6d5b348c0fa4d80ceca16356ca933240bde8723415a8ece035b0edf36755de",
        "5ea1fc4af7256d2055981b110575e0a8cae53160137d904c59d926eb1b8456e427aa8a4540884c37de159a58028abc0e",
    ),
    (
        "RFC 5114 A.8 (strongSwan test_vectors/ecp.c ecp521; shared secret starts with 0x00)",
        DhId.ECP_521,
        "0113f82da825735e3d97276683b2b74277bad27335ea71664af2430cc4f33459b9669ee78b3ffb9b8683015d344dcbfef6"
        "fb9af4c6c470be254516cd3c1a1fb47362",
        "00cee3480d8645a17d249f2776d28bae616952d1791fdb4b70f7c3378732aa1b22928448bcd1dc2496d435b01048066ebe"
        "4f72903c361b1a9dc1193dc2c9d0891b96",
        "01ebb34dd75721abf8adc9dbed17889cbb9765d90a7c60f2cef007bb0f2b26e14881fd4442e689d61cb2dd046ee30e3ffd"
        "20f9a45bbdf6413d583a2dbf59924fd35c00f6b632d194c0388e22d8437e558c552ae195adfd153f92d74908351b2f8c4e"
        "da94edb0916d1b53c020b5eecaed1a5fc38a233e4830587bb2ee3489b3b42a5a86a4",
        "010ebfafc6e85e08d24bfffcc1a4511db0e634beeb1b6dec8c5939ae44766201af6200430ba97c8ac6a0e9f08b33ce7e9f"
        "eeb5ba4ee5e0d81510c24295b8a08d023500a4a6ec300df9e257b0372b5e7abfef093436719a77887ebb0b18cf8099b9f4"
        "212b6e30a1419c18e029d36863cc9d448f4dba4d2a0e60711be572915fbd4fef2695",
        "00cdea89621cfa46b132f9e4cfe2261cde2d4368eb5656634c7cc98c7a00cde54ed1866a0dd3e6126c9d2f845daff82ceb"
        "1da08f5d87521bb0ebeca77911169c20cc",
    ),
    (
        "RFC 7748 6.1 (X25519)",
        DhId.CURVE25519,
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
    ),
    (
        "RFC 7748 6.2 (X448)",
        DhId.CURVE448,
        "9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28dd9c9baf574a9419744897391006382a6f127ab1d9ac2d8c0a598726b",
        "1c306a7ac2a0e2e0990b294470cba339e6453772b075811d8fad0d1d6927c120bb5ee8972b0d3e21374c9c921b09d1b0366f10b65173992d",
        "9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c22c5d9bbc836647241d953d40c5b12da88120d53177f80e532c41fa0",
        "3eb7a829b0cd20f5bcfc0b599b6feccf6da4627107bdb0d4f345b43027d8b972fc3e34fb4232a13ca706dcb57aec3dae07bdc1c67bf33609",
        "07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282bb60c0b56fd2464c335543936521c24403085d59a449a5037514a879d",
    ),
]


@pytest.mark.parametrize(
    "source,group,priv_i,priv_r,pub_i,pub_r,shared", ECP_VECTORS, ids=[v[0] for v in ECP_VECTORS]
)
def test_published_vectors(
    source: str, group: int, priv_i: str, priv_r: str, pub_i: str, pub_r: str, shared: str
) -> None:
    ke_i = dh.key_exchange_from_private(group, h(priv_i))
    ke_r = dh.key_exchange_from_private(group, h(priv_r))
    assert ke_i.public == h(pub_i)
    assert ke_r.public == h(pub_r)
    assert len(ke_i.public) == dh.public_length(group)
    assert ke_i.compute(ke_r.public) == h(shared)
    assert ke_r.compute(ke_i.public) == h(shared)


def test_rfc5903_ke_payload_length() -> None:
    # RFC 5903 8.1: KE payload length 0x48 = 4 (generic header) + 4 (group, reserved) + 64
    ke = dh.new_key_exchange(DhId.ECP_256, RNG)
    assert 4 + 4 + len(ke.public) == 0x48


ALL_GROUPS = [DhId.MODP_1024, DhId.MODP_2048, DhId.MODP_3072, DhId.MODP_4096, DhId.ECP_256,
              DhId.ECP_384, DhId.ECP_521, DhId.CURVE25519, DhId.CURVE448]


@pytest.mark.parametrize("group", ALL_GROUPS, ids=lambda g: DhId(g).name)
def test_round_trip(group: int) -> None:
    a, b = dh.new_key_exchange(group, RNG), dh.new_key_exchange(group, RNG)
    assert a.group == group
    assert len(a.public) == len(b.public) == dh.public_length(group)
    s = a.compute(b.public)
    assert s == b.compute(a.public)
    ecp_len: dict[int, int] = {DhId.ECP_256: 32, DhId.ECP_384: 48, DhId.ECP_521: 66}
    flen = ecp_len.get(group, len(a.public))
    assert len(s) == flen  # RFC 5903 7: x only; MODP: modulus length


@pytest.mark.parametrize("group", [DhId.MODP_1024, DhId.MODP_2048], ids=lambda g: DhId(g).name)
def test_modp_known_private_matches_pow(group: int) -> None:
    # RFC 7296 3.4: g^x mod p, big-endian, left-padded to the modulus length (g = 2)
    p = dh._MODP_PRIMES[group]
    x = random.Random(1).getrandbits(256) | 1 << 255
    det = dh.key_exchange_from_private(group, x.to_bytes(32, "big"))
    assert det.public == pow(2, x, p).to_bytes(dh.public_length(group), "big")
    small = dh.key_exchange_from_private(group, b"\x03")
    assert small.public == (8).to_bytes(dh.public_length(group), "big")  # leading zeros kept
    other = dh.new_key_exchange(group, RNG)
    shared = det.compute(other.public)
    assert shared == other.compute(det.public)
    assert shared == pow(int.from_bytes(other.public, "big"), x, p).to_bytes(len(shared), "big")


@pytest.mark.parametrize("group,bits,c", [(DhId.MODP_1024, 1024, 129093), (DhId.MODP_2048, 2048, 124476),
                                          (DhId.MODP_3072, 3072, 1690314), (DhId.MODP_4096, 4096, 240904)])
def test_modp_primes_follow_rfc3526_formula(group: int, bits: int, c: int) -> None:
    # RFC 2409 6.2 / RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * { [2^(n-130) pi] + c }. The pi bits
    # are shared by all groups: each prime's middle part minus c must be a prefix of the next one's.
    p = dh._MODP_PRIMES[group]
    assert p.bit_length() == bits
    mid = (p - 2**bits + 2 ** (bits - 64) + 1) >> 64
    pi_bits = mid - c
    ref = dh._MODP_PRIMES[DhId.MODP_4096]
    ref_pi = ((ref - 2**4096 + 2**4032 + 1) >> 64) - 240904
    assert ref_pi >> (4096 - bits) == pi_bits
    assert pow(2, p - 1, p) == 1  # Fermat check


def test_modp_rejects_bad_values() -> None:
    ke = dh.new_key_exchange(DhId.MODP_2048, RNG)
    p = dh._MODP_PRIMES[DhId.MODP_2048]
    bad = [0, 1, p - 1, p, p + 1 if p + 1 < 2**2048 else p]
    for y in bad:
        with pytest.raises(ProtocolError) as ei:
            ke.compute(y.to_bytes(256, "big"))
        assert ei.value.notify == NotifyType.INVALID_SYNTAX
    with pytest.raises(ProtocolError):
        ke.compute(b"\x02" * 255)  # wrong length


@pytest.mark.parametrize("group", [DhId.ECP_256, DhId.ECP_384, DhId.ECP_521], ids=lambda g: DhId(g).name)
def test_ecp_rejects_off_curve_and_bad_length(group: int) -> None:
    ke = dh.new_key_exchange(group, RNG)
    other = bytearray(dh.new_key_exchange(group, RNG).public)
    other[-1] ^= 1  # y changed: almost surely off the curve (RFC 6989 2.3)
    for bad in (bytes(other), bytes(len(other)), bytes(other[:-1])):
        with pytest.raises(ProtocolError) as ei:
            ke.compute(bad)
        assert ei.value.notify == NotifyType.INVALID_SYNTAX


def test_x25519_rejects_low_order_points() -> None:
    # RFC 7748 6.1: an all-zero output (e.g. the point u=0 or u=1) must be refused (RFC 8031 2.3)
    ke = dh.new_key_exchange(DhId.CURVE25519, RNG)
    for bad in (bytes(32), (1).to_bytes(32, "little"), bytes(31)):
        with pytest.raises(ProtocolError) as ei:
            ke.compute(bad)
        assert ei.value.notify == NotifyType.INVALID_SYNTAX


def test_x448_rejects_zero_point() -> None:
    ke = dh.new_key_exchange(DhId.CURVE448, RNG)
    with pytest.raises(ProtocolError):
        ke.compute(bytes(56))


def test_unsupported_group() -> None:
    with pytest.raises(LocalError):
        dh.new_key_exchange(22, RNG)
    with pytest.raises(LocalError):
        dh.public_length(99)


@pytest.mark.parametrize("group", [DhId.CURVE25519, DhId.ECP_256])
def test_the_key_pool_hands_out_each_fresh_pair_once(group: int) -> None:
    """RFC 7296 1.2 / 2.12: every exchange gets its own key pair; the pool only makes them in batches."""
    pool = dh.KeyPool(batch=4)
    taken = [pool.take(group, RNG) for _ in range(10)]
    assert len(pool) == 2  # three batches of 4 made, 10 taken
    assert len({k.public for k in taken}) == 10 and all(k.group == group for k in taken)
    peer = dh.new_key_exchange(group, RNG)
    assert taken[0].compute(peer.public) == peer.compute(taken[0].public)  # a working pair


def test_the_key_pool_keeps_groups_apart_and_makes_modp_on_demand() -> None:
    pool = dh.KeyPool(batch=3)
    assert pool.take(DhId.CURVE25519, RNG).group == DhId.CURVE25519
    assert pool.take(DhId.CURVE448, RNG).group == DhId.CURVE448
    assert len(pool) == 4
    assert pool.take(DhId.MODP_2048, RNG).group == DhId.MODP_2048  # its exponent from `rng`, one at a time
    assert len(pool) == 4
    with pytest.raises(LocalError):
        pool.take(999, RNG)


def test_the_key_pool_refills_used_up_groups_only() -> None:
    """KeyPool.refill (called when nothing waits): the next batch of each group whose pairs are used up,
    none for groups never taken or still holding pairs; a take then finds a pair made."""
    pool = dh.KeyPool(batch=2)
    assert pool.refill(RNG) == 0  # nothing taken yet: nothing made
    first = [pool.take(DhId.CURVE25519, RNG) for _ in range(2)]
    pool.take(DhId.ECP_256, RNG)  # one of two left
    assert pool.refill(RNG) == 2 and len(pool) == 3  # x25519's next batch; ECP-256 still holds one
    assert pool.refill(RNG) == 0  # bounded: at most a batch per group
    nxt = [pool.take(DhId.CURVE25519, RNG) for _ in range(2)]
    assert len({k.public for k in first + nxt}) == 4
    pool.take(DhId.MODP_2048, RNG)
    assert pool.refill(RNG) == 2 and len(pool) == 3  # x25519 again; MODP is never pooled


def test_the_key_pool_refills_a_group_used_up_twice_once() -> None:
    """A group whose pairs ran out twice between two refills (the second batch made by `take` itself) gets one
    batch from the next refill, not one per time it ran out: at most `batch` pairs per group are held."""
    pool = dh.KeyPool(batch=2)
    taken = [pool.take(DhId.CURVE25519, RNG) for _ in range(4)]  # two batches made by take, both used up
    assert len(pool) == 0 and len({k.public for k in taken}) == 4
    assert pool.refill(RNG) == 2 and len(pool) == 2
    assert pool.refill(RNG) == 0
    pool.take(DhId.CURVE25519, RNG)
    assert pool.refill(RNG) == 0 and len(pool) == 1  # one left: nothing made
