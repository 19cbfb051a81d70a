"""ESP AEAD transforms beyond AES-GCM-16: published vectors through our cipher wiring, KEYMAT layout,
and the data planes' declarations of what they install (RFC 4106, RFC 4309, RFC 7634).

Framing (nonce, AAD, padding, ESN, anti-replay) for every transform: test_esp_sa.py, whose suites
include AES-GCM-8/12, AES-CCM-8/12/16 and ChaCha20-Poly1305.
"""

from __future__ import annotations

import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from core_ike.codec.payloads import Transform
from core_ike.constants import EncrId, IntegId, ProtocolId, TransformType
from core_ike.crypto.proposals import parse_proposals, restrict_proposals, to_keywords, transform_name
from core_ike.errors import LocalError
from core_ike.esp import USERSPACE, EspIntegrityError, EspPaddingError, EspSa, key_lengths
from core_ike.esp.algorithms import aead_ciphers
from core_ike.io.dataplane import declared_transforms
from core_ike.io.xfrm import XFRM_TRANSFORMS

# RFC 8439 2.8.2 (= RFC 7539 2.8.2): the AEAD_CHACHA20_POLY1305 example
RFC8439_KEY = bytes(range(0x80, 0xA0))
RFC8439_NONCE = bytes.fromhex("070000004041424344454647")
RFC8439_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC8439_PLAIN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
                 b"sunscreen would be it.")
RFC8439_CT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
    "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116")
RFC8439_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")

# McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4 (96-bit IV, 20-octet AAD)
GCM_KEY = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
GCM_IV = bytes.fromhex("cafebabefacedbaddecaf888")
GCM_AAD = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_PLAIN = bytes.fromhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                          "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
GCM_CT = bytes.fromhex("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
                       "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091")
GCM_TAG = bytes.fromhex("5bc94fbc3221a5db94fae95ae7121a47")

# NIST SP 800-38C Appendix C, example 3 (Tlen = 64 bits)
CCM_KEY = bytes.fromhex("404142434445464748494a4b4c4d4e4f")
CCM_NONCE = bytes.fromhex("101112131415161718191a1b")
CCM_AAD = bytes.fromhex("000102030405060708090a0b0c0d0e0f10111213")
CCM_PLAIN = bytes.fromhex("202122232425262728292a2b2c2d2e2f3031323334353637")
CCM_OUT = bytes.fromhex("e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5484392fbc1b09951")


def _flip(data: bytes, pos: int) -> memoryview:
    b = bytearray(data)
    b[pos] ^= 0x80
    return memoryview(bytes(b))


def test_chacha20_poly1305_rfc8439_vector() -> None:
    seal, open_ = aead_ciphers(EncrId.CHACHA20_POLY1305, RFC8439_KEY)
    assert seal(RFC8439_NONCE, RFC8439_PLAIN, RFC8439_AAD) == RFC8439_CT + RFC8439_TAG
    assert open_(RFC8439_NONCE, memoryview(RFC8439_CT + RFC8439_TAG), RFC8439_AAD) == RFC8439_PLAIN
    with pytest.raises(InvalidTag):
        open_(RFC8439_NONCE, _flip(RFC8439_CT + RFC8439_TAG, 100), RFC8439_AAD)


def test_chacha20_poly1305_rfc8439_vector_as_esp_with_esn() -> None:
    """The RFC 8439 2.8.2 inputs read as an RFC 7634 ESP packet: salt 07000000, IV 4041424344454647,
    AAD = SPI 50515253 | 64-bit ESN c0c1c2c3c4c5c6c7 (RFC 7634 2.1). Its 114-octet plaintext is not
    4-octet aligned, so the packet carries the first 112 octets (the same keystream: a stream cipher)
    under a tag for those; EspSa.open must accept the ICV (nonce and AAD built as RFC 7634 says) and
    then refuse the trailer, which is text."""
    sa = EspSa(0x50515253, EncrId.CHACHA20_POLY1305, 256, RFC8439_KEY + RFC8439_NONCE[:4], esn=True)
    sa.window.top = 0xC0C1C2C3_C4C5C6C0  # the receiver is in the ESN's high epoch (RFC 4303 A2.2)
    body = aead_ciphers(EncrId.CHACHA20_POLY1305, RFC8439_KEY)[0](RFC8439_NONCE, RFC8439_PLAIN[:112], RFC8439_AAD)
    assert body[:112] == RFC8439_CT[:112]
    packet = bytes.fromhex("50515253c4c5c6c7") + RFC8439_NONCE[4:] + body
    bad = bytearray(packet)
    bad[7] ^= 1  # another sequence number: another AAD
    with pytest.raises(EspIntegrityError):
        sa.open(bytes(bad))
    with pytest.raises(EspPaddingError):
        sa.open(packet)
    assert sa.window.top == 0xC0C1C2C3_C4C5C6C7  # the window moved: the packet authenticated


@pytest.mark.parametrize("encr,icv", [(EncrId.AES_GCM_8, 8), (EncrId.AES_GCM_12, 12), (EncrId.AES_GCM_16, 16)])
def test_gcm_short_icv_is_the_leading_octets_of_the_tag(encr: EncrId, icv: int) -> None:
    """RFC 4106 6 / SP 800-38D 5.2.1.2: an 8- or 12-octet ICV is the full tag truncated."""
    seal, open_ = aead_ciphers(encr, GCM_KEY)
    assert seal(GCM_IV, GCM_PLAIN, GCM_AAD) == GCM_CT + GCM_TAG[:icv]
    assert open_(GCM_IV, memoryview(GCM_CT + GCM_TAG[:icv]), GCM_AAD) == GCM_PLAIN
    for pos in (0, len(GCM_CT), len(GCM_CT) + icv - 1):  # ciphertext, first and last ICV octet
        with pytest.raises(InvalidTag):
            open_(GCM_IV, _flip(GCM_CT + GCM_TAG[:icv], pos), GCM_AAD)
    with pytest.raises(InvalidTag):
        open_(GCM_IV, memoryview(GCM_CT + GCM_TAG[:icv]), GCM_AAD[:-1])
    if icv < 16:  # a 16-octet tag is not taken as a shorter ICV, nor is a cut-down one
        with pytest.raises(InvalidTag):
            open_(GCM_IV, memoryview(GCM_CT + GCM_TAG), GCM_AAD)
        with pytest.raises(InvalidTag):
            open_(GCM_IV, memoryview(GCM_TAG[: icv - 1]), GCM_AAD)


def test_ccm_icv_length_sp800_38c_example3() -> None:
    seal, open_ = aead_ciphers(EncrId.AES_CCM_8, CCM_KEY)
    assert seal(CCM_NONCE, CCM_PLAIN, CCM_AAD) == CCM_OUT
    assert open_(CCM_NONCE, memoryview(CCM_OUT), CCM_AAD) == CCM_PLAIN
    with pytest.raises(InvalidTag):
        open_(CCM_NONCE, _flip(CCM_OUT, len(CCM_OUT) - 1), CCM_AAD)
    for encr, icv in ((EncrId.AES_CCM_12, 12), (EncrId.AES_CCM_16, 16)):
        assert len(aead_ciphers(encr, CCM_KEY)[0](CCM_NONCE, CCM_PLAIN, CCM_AAD)) == len(CCM_PLAIN) + icv


def test_ccm_nonce_is_three_octet_salt_and_iv() -> None:
    """RFC 4309 4: nonce = 3-octet salt (the last KEYMAT octets) | 8-octet IV = 11 octets."""
    key = CCM_KEY + bytes.fromhex("a1a2a3")
    sa = EspSa(7, EncrId.AES_CCM_16, 128, key)
    pkt = sa.seal(b"\x45" + bytes(21), 4)
    plain = AESCCM(CCM_KEY, tag_length=16).decrypt(bytes.fromhex("a1a2a3") + pkt[8:16], pkt[16:], pkt[:8])
    assert plain == b"\x45" + bytes(21) + bytes([0, 4])  # 22 + PadLen 0 + NH: aligned, no padding
    assert pkt[8:16] == struct.pack(">Q", 1)


def test_key_lengths_of_the_aeads() -> None:
    assert key_lengths(EncrId.CHACHA20_POLY1305, 256) == (36, 0)  # RFC 7634 2: 256-bit key + 4-octet salt
    assert key_lengths(EncrId.CHACHA20_POLY1305, 0) == (36, 0)  # no Key Length attribute
    assert key_lengths(EncrId.AES_CCM_8, 128) == (19, 0)  # RFC 4309 7.1: 3-octet salt
    assert key_lengths(EncrId.AES_CCM_16, 256) == (35, 0)
    assert key_lengths(EncrId.AES_GCM_8, 192) == (28, 0)
    with pytest.raises(LocalError, match="CHACHA20_POLY1305 does not take a 128-bit key"):
        key_lengths(EncrId.CHACHA20_POLY1305, 128)
    with pytest.raises(LocalError, match="no integrity transform"):
        key_lengths(EncrId.AES_CCM_12, 128, IntegId.HMAC_SHA2_256_128)
    with pytest.raises(LocalError, match="unsupported ESP encryption"):
        key_lengths(EncrId.AES_CTR, 128)


# -- what the data planes declare, and the proposal restriction -----------------------------------

ENCR = TransformType.ENCR


def test_declarations() -> None:
    every = [to_keywords(p) for p in parse_proposals(
        "aes128gcm8,aes192gcm12,aes256gcm16,aes128ccm8,aes128ccm12,aes256ccm16,chacha20poly1305,"
        "aes128-sha1,aes256-sha512", ProtocolId.ESP)]
    for text in every:
        (p,) = parse_proposals(text, ProtocolId.ESP)
        assert all(USERSPACE.accepts(t) for t in p.transforms), text
    assert XFRM_TRANSFORMS.accepts(Transform(ENCR, EncrId.AES_GCM_16, 256))
    assert XFRM_TRANSFORMS.accepts(Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128))
    for t in (Transform(ENCR, EncrId.CHACHA20_POLY1305), Transform(ENCR, EncrId.AES_GCM_8, 128),
              Transform(ENCR, EncrId.AES_CCM_16, 128)):
        assert not XFRM_TRANSFORMS.accepts(t)
    assert not USERSPACE.accepts(Transform(ENCR, EncrId.AES_CTR, 128))
    assert not USERSPACE.accepts(Transform(ENCR, EncrId.AES_GCM_16, 64))
    assert not USERSPACE.accepts(Transform(TransformType.INTEG, IntegId.AES_XCBC_96))
    assert USERSPACE.supports(EncrId.CHACHA20_POLY1305, 256) and USERSPACE.supports(EncrId.CHACHA20_POLY1305, 0)
    assert declared_transforms("userspace") is USERSPACE and declared_transforms("xfrm") is XFRM_TRANSFORMS
    assert declared_transforms("auto") is None and declared_transforms("none") is None


def test_restrict_proposals_drops_and_renumbers() -> None:
    props = parse_proposals("chacha20poly1305,aes128gcm16-aes256gcm8-x25519,aes128ccm12,aes256-sha256-sha1,aes128-sha1",
                            ProtocolId.ESP)
    kept, refused = restrict_proposals(props, XFRM_TRANSFORMS.accepts)
    assert [p.num for p in kept] == [1, 2, 3]
    assert [transform_name(t) for t in refused] == ["CHACHA20_POLY1305", "AES_GCM_8_256", "AES_CCM_12_128"]
    assert to_keywords(kept[0]) == "aes128gcm16-x25519-noesn"  # the PFS group and ESN stay
    assert to_keywords(kept[1]) == "aes256-sha256-sha1-noesn"

    def no_sha1(t: Transform) -> bool:
        return not (t.type == TransformType.INTEG and t.id == IntegId.HMAC_SHA1_96)

    kept, refused = restrict_proposals(parse_proposals("aes128-sha1,aes128-sha1-sha256", ProtocolId.ESP), no_sha1)
    # classic encryption without any integrity algorithm left is no proposal
    assert [to_keywords(p) for p in kept] == ["aes128-sha256-noesn"] and kept[0].num == 1
    kept, refused = restrict_proposals(parse_proposals("chacha20poly1305", ProtocolId.ESP), XFRM_TRANSFORMS.accepts)
    assert kept == [] and [transform_name(t) for t in refused] == ["CHACHA20_POLY1305"]
