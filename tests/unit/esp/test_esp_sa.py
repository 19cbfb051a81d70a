"""EspSa: round trips, independent known-answer checks, drops and counters (RFC 4303/4106/4868)."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from core_ike.constants import EncrId, IntegId
from core_ike.errors import IntegrityError, LocalError
from core_ike.esp import (
    DropReason,
    EspIntegrityError,
    EspPaddingError,
    EspReplayError,
    EspSa,
    EspTruncatedError,
    EspUnknownSpiError,
    InboundSad,
    SequenceExhaustedError,
    key_lengths,
)

SUITES = [
    (EncrId.AES_GCM_16, 128, IntegId.NONE),
    (EncrId.AES_GCM_16, 256, IntegId.NONE),
    (EncrId.AES_GCM_8, 128, IntegId.NONE),
    (EncrId.AES_GCM_12, 192, IntegId.NONE),
    (EncrId.AES_CCM_8, 128, IntegId.NONE),
    (EncrId.AES_CCM_12, 256, IntegId.NONE),
    (EncrId.AES_CCM_16, 128, IntegId.NONE),
    (EncrId.CHACHA20_POLY1305, 256, IntegId.NONE),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
]
HASHES = {
    IntegId.HMAC_SHA1_96: ("sha1", 12),
    IntegId.HMAC_SHA2_256_128: ("sha256", 16),
    IntegId.HMAC_SHA2_384_192: ("sha384", 24),
    IntegId.HMAC_SHA2_512_256: ("sha512", 32),
}
SPI = 0xC0FFEE01
# RFC 4106 8.1, RFC 4309 7.1, RFC 7634 2: (salt length, ICV length)
AEAD = {EncrId.AES_GCM_8: (4, 8), EncrId.AES_GCM_12: (4, 12), EncrId.AES_GCM_16: (4, 16),
        EncrId.AES_CCM_8: (3, 8), EncrId.AES_CCM_12: (3, 12), EncrId.AES_CCM_16: (3, 16),
        EncrId.CHACHA20_POLY1305: (4, 16)}
GCM, CBC = (EncrId.AES_GCM_16, 128, IntegId.NONE), (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)
# the drop tests run for one suite of each cipher family and ICV length
DROP_SUITES = [GCM, (EncrId.AES_GCM_8, 128, IntegId.NONE), (EncrId.AES_CCM_12, 256, IntegId.NONE),
               (EncrId.CHACHA20_POLY1305, 256, IntegId.NONE), CBC]


def _suite_id(s: tuple[EncrId, int, IntegId]) -> str:
    return f"{s[0].name}-{s[1]}-{s[2].name}"


def _aead_by_hand(encr: EncrId, key: bytes, encrypt: bool, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """`cryptography` used directly; GCM short tags are the full tag's leading octets (SP 800-38D 5.2.1.2),
    checked here by recomputing the full tag (no truncated-tag API involved)."""
    _salt_len, icv = AEAD[encr]
    if encr == EncrId.CHACHA20_POLY1305:
        c: AESGCM | AESCCM | ChaCha20Poly1305 = ChaCha20Poly1305(key)
    elif encr in (EncrId.AES_CCM_8, EncrId.AES_CCM_12, EncrId.AES_CCM_16):
        c = AESCCM(key, tag_length=icv)
    else:
        c = AESGCM(key)
        if icv < 16:
            if encrypt:
                return c.encrypt(nonce, data, aad)[: len(data) + icv]
            ct, tag = data[:-icv], data[-icv:]
            plain = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor().update(ct)
            assert c.encrypt(nonce, plain, aad)[len(plain) : len(plain) + icv] == tag
            return plain
    return c.encrypt(nonce, data, aad) if encrypt else c.decrypt(nonce, data, aad)


def _keys(encr: EncrId, bits: int, integ: IntegId, seed: int = 1) -> tuple[bytes, bytes]:
    el, il = key_lengths(encr, bits, integ)
    material = hashlib.sha512(bytes([seed])).digest() * 2  # deterministic KEYMAT
    return material[:el], material[el : el + il]


def _pair(suite: tuple[EncrId, int, IntegId], **kw: object) -> tuple[EspSa, EspSa]:
    ek, ik = _keys(*suite)
    return (
        EspSa(SPI, suite[0], suite[1], ek, suite[2], ik, **kw),  # type: ignore[arg-type]
        EspSa(SPI, suite[0], suite[1], ek, suite[2], ik, **kw),  # type: ignore[arg-type]
    )


def _independent_open(suite: tuple[EncrId, int, IntegId], packet: bytes, esn_hi: int | None = None) -> bytes:
    """Decrypt with `cryptography`/`hashlib` directly, following RFC 4303/4106 by hand."""
    ek, ik = _keys(*suite)
    spi_seq = packet[:8]
    if suite[0] in AEAD:  # nonce = salt | explicit IV; AAD = SPI | (Seq-hi |) Seq-lo (RFC 4106 4-5, 4309 4-5, 7634 2)
        salt = AEAD[suite[0]][0]
        aad = spi_seq if esn_hi is None else packet[:4] + struct.pack(">I", esn_hi) + packet[4:8]
        return _aead_by_hand(suite[0], ek[:-salt], False, ek[-salt:] + packet[8:16], packet[16:], aad)
    name, icv_len = HASHES[suite[2]]
    extra = b"" if esn_hi is None else struct.pack(">I", esn_hi)
    icv = hmac.digest(ik, packet[:-icv_len] + extra, name)[:icv_len]
    assert icv == packet[-icv_len:]
    dec = Cipher(algorithms.AES(ek), modes.CBC(packet[8:24])).decryptor()
    return dec.update(packet[24:-icv_len]) + dec.finalize()


@pytest.mark.parametrize("suite", SUITES, ids=_suite_id)
@pytest.mark.parametrize("esn", [False, True])
def test_round_trip_and_independent_decrypt(suite: tuple[EncrId, int, IntegId], esn: bool) -> None:
    tx, rx = _pair(suite, esn=esn)
    block = 4 if suite[0] in AEAD else 16
    for n in (0, 1, 2, 3, 20, 84, 1400, 1401):
        inner = os.urandom(n)
        pkt = tx.seal(inner, 4, now=5.0)
        assert pkt[:4] == SPI.to_bytes(4, "big")
        seq = tx.seq_out
        assert pkt[4:8] == (seq & 0xFFFFFFFF).to_bytes(4, "big")
        plain = _independent_open(suite, pkt, esn_hi=0 if esn else None)
        # RFC 4303 2.4: monotonic padding, Pad Length, Next Header, aligned
        padlen = plain[-2]
        assert plain[-1] == 4 and len(plain) % block == 0
        assert plain[n:-2] == bytes(range(1, padlen + 1)) and plain[:n] == inner
        assert rx.open(pkt, now=6.0) == (4, inner)
    assert tx.counters.packets_out == 8 and rx.counters.packets_in == 8
    assert tx.counters.bytes_out == rx.counters.bytes_in == 0 + 1 + 2 + 3 + 20 + 84 + 1400 + 1401
    assert tx.counters.last_out == 5.0 and rx.counters.last_in == 6.0


def test_gcm_known_answer() -> None:
    """Known answer computed independently: explicit IV = counter, trailer by hand, AAD = SPI | Seq."""
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308") + bytes.fromhex("cafebabe")
    sa = EspSa(0x00004321, EncrId.AES_GCM_16, 128, key)
    inner = bytes.fromhex("4500001c00000000400100000a0100020a0200020800f7ff00000000")
    pkt = sa.seal(inner, 4)
    # SPI | Seq=1 | IV = 64-bit counter 1 (RFC 4106 3.1)
    assert pkt[:16] == bytes.fromhex("00004321000000010000000000000001")
    expect_plain = inner + bytes([1, 2, 2, 4])  # 28+4 aligned to 4: pad 1,2 + PadLen 2 + NH 4
    expect = AESGCM(key[:16]).encrypt(bytes.fromhex("cafebabe0000000000000001"), expect_plain, pkt[:8])
    assert pkt[16:] == expect
    assert len(pkt) == 8 + 8 + len(expect_plain) + 16


def test_gcm_nonce_is_salt_and_iv() -> None:
    """McGrew-Viega GCM test case 3 key/nonce: salt cafebabe, IV facedbaddecaf888 (seq)."""
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308cafebabe")
    sa = EspSa(1, EncrId.AES_GCM_16, 128, key, esn=True)
    sa.seq_out = 0xFACEDBADDECAF888 - 1
    pkt = sa.seal(b"\x45" + bytes(19), 4)
    assert pkt[8:16] == bytes.fromhex("facedbaddecaf888")
    aad = pkt[:4] + bytes.fromhex("facedbad") + pkt[4:8]  # RFC 4106 5: SPI | Seq-hi | Seq-lo
    plain = AESGCM(key[:16]).decrypt(bytes.fromhex("cafebabefacedbaddecaf888"), pkt[16:], aad)
    assert plain[:20] == b"\x45" + bytes(19)


def test_key_lengths_match_keymat_layout() -> None:
    assert key_lengths(EncrId.AES_GCM_16, 128) == (20, 0)
    assert key_lengths(EncrId.AES_GCM_16, 256) == (36, 0)
    assert key_lengths(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96) == (16, 20)
    assert key_lengths(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256) == (32, 64)
    with pytest.raises(LocalError):
        key_lengths(EncrId.AES_CBC, 128, IntegId.NONE)
    with pytest.raises(LocalError):
        EspSa(1, EncrId.AES_GCM_16, 128, bytes(16))  # salt missing
    with pytest.raises(LocalError):
        EspSa(0, EncrId.AES_GCM_16, 128, bytes(20))


@pytest.mark.parametrize("suite", DROP_SUITES, ids=_suite_id)
def test_replay_dropped_and_counted(suite: tuple[EncrId, int, IntegId]) -> None:
    tx, rx = _pair(suite, replay_window=32)
    pkts = [tx.seal(bytes(40)) for _ in range(40)]
    rx.open(pkts[39])
    rx.open(pkts[10])  # within window, first time: accepted
    with pytest.raises(EspReplayError) as ei:
        rx.open(pkts[10])
    assert ei.value.reason == DropReason.REPLAY and ei.value.seq == 11
    with pytest.raises(EspReplayError):
        rx.open(pkts[5])  # seq 6 <= 40 - 32: left of the window
    assert rx.counters.drop_replay == 2 and rx.counters.packets_in == 2


@pytest.mark.parametrize("suite", DROP_SUITES, ids=_suite_id)
def test_bad_icv_does_not_advance_window(suite: tuple[EncrId, int, IntegId]) -> None:
    tx, rx = _pair(suite)
    good = tx.seal(bytes(100))
    for pos in (8, 20, len(good) - 1):  # IV, ciphertext, ICV
        bad = bytearray(good)
        bad[pos] ^= 0x01
        with pytest.raises(EspIntegrityError) as ei:
            rx.open(bytes(bad))
        assert isinstance(ei.value, IntegrityError)
    assert rx.counters.drop_bad_icv == 3
    assert rx.open(good)[1] == bytes(100)  # the forged copies did not consume seq 1


def _craft(suite: tuple[EncrId, int, IntegId], plain: bytes, seq: int = 1) -> bytes:
    """Build an ESP packet around an arbitrary (possibly badly padded) plaintext."""
    ek, ik = _keys(*suite)
    hdr = struct.pack(">II", SPI, seq)
    if suite[0] in AEAD:
        iv = struct.pack(">Q", seq)
        salt = AEAD[suite[0]][0]
        return hdr + iv + _aead_by_hand(suite[0], ek[:-salt], True, ek[-salt:] + iv, plain, hdr)
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(ek), modes.CBC(iv)).encryptor()
    body = hdr + iv + enc.update(plain) + enc.finalize()
    name, icv_len = HASHES[suite[2]]
    return body + hmac.digest(ik, body, name)[:icv_len]


@pytest.mark.parametrize("suite", DROP_SUITES, ids=_suite_id)
def test_bad_padding(suite: tuple[EncrId, int, IntegId]) -> None:
    _, rx = _pair(suite)
    block = 4 if suite[0] in AEAD else 16
    inner = bytes(block * 2 - 4)
    cases = [
        inner + bytes([0, 0]) + bytes([2, 4]),  # pad bytes must be 1, 2 (RFC 4303 2.4)
        inner + bytes([1, 3]) + bytes([2, 4]),
        bytes(block - 2) + bytes([block + 5, 4]),  # Pad Length beyond the payload
    ]
    for i, plain in enumerate(cases, start=1):
        with pytest.raises(EspPaddingError):
            rx.open(_craft(suite, plain, seq=i))
    assert rx.counters.drop_bad_padding == 3
    ok = _craft(suite, inner + bytes([1, 2, 2, 4]), seq=10)
    assert rx.open(ok) == (4, inner)


@pytest.mark.parametrize("suite", DROP_SUITES, ids=_suite_id)
def test_truncated(suite: tuple[EncrId, int, IntegId]) -> None:
    tx, rx = _pair(suite)
    pkt = tx.seal(bytes(64))
    for cut in (0, 7, 8, 16, 30, len(pkt) - 1):
        with pytest.raises(EspTruncatedError):
            rx.open(pkt[:cut])
    assert rx.counters.drop_truncated == 6
    assert rx.open(pkt) == (4, bytes(64))


def test_sad_unknown_spi_and_rekey_overlap() -> None:
    suite = GCM
    tx_old, rx_old = _pair(suite)
    ek, _ = _keys(suite[0], suite[1], suite[2], seed=9)
    tx_new = EspSa(0x2222, suite[0], suite[1], ek)
    rx_new = EspSa(0x2222, suite[0], suite[1], ek)
    sad = InboundSad()
    sad.add(rx_old)
    sad.add(rx_new)  # make-before-break: both accepted
    assert sad.open(tx_old.seal(b"a" * 20))[0] is rx_old
    assert sad.open(tx_new.seal(b"b" * 20))[2] == b"b" * 20
    sad.remove(SPI)
    with pytest.raises(EspUnknownSpiError) as ei:
        sad.open(tx_old.seal(b"a" * 20))
    assert ei.value.reason == DropReason.UNKNOWN_SPI and ei.value.spi == SPI
    with pytest.raises(EspTruncatedError):
        sad.open(b"\x00\x00")
    assert sad.drop_unknown_spi == 1 and sad.drop_truncated == 1


def test_sequence_exhaustion() -> None:
    tx, rx = _pair(GCM)
    tx.seq_out = 0xFFFFFFFE
    rx.open(tx.seal(b"x" * 20))  # seq 2^32-1 is the last one
    assert tx.seq_remaining == 0
    with pytest.raises(SequenceExhaustedError):
        tx.seal(b"x" * 20)
    assert tx.counters.packets_out == 1


@pytest.mark.parametrize("suite", DROP_SUITES, ids=_suite_id)
def test_esn_crosses_32_bit_boundary(suite: tuple[EncrId, int, IntegId]) -> None:
    tx, rx = _pair(suite, esn=True, replay_window=64)
    tx.seq_out = 0xFFFFFFF0
    pkts = [tx.seal(bytes([i]) * 30) for i in range(40)]
    for i, p in enumerate(pkts):
        if i % 3 == 0:
            continue
        assert rx.open(p)[1] == bytes([i]) * 30
    for i in range(0, 40, 3):  # late arrivals from before the wrap, still inside the window
        assert rx.open(pkts[i])[1] == bytes([i]) * 30
    assert rx.window.top == 0xFFFFFFF0 + 40
    with pytest.raises(EspReplayError):
        rx.open(pkts[39])
