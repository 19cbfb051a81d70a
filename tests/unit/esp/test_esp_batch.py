"""Batch decryption (EspSa.open_many, InboundSad.open_batch) gives exactly what one `open` per packet
gives: the same inner packets, the same errors in the same places, the same counters and replay window
(RFC 4303 3.4.3: replay check before the ICV, the window moves only after it)."""

from __future__ import annotations

import os

import pytest

from core_ike.constants import EncrId, IntegId
from core_ike.esp import (
    EspError,
    EspIntegrityError,
    EspPaddingError,
    EspReplayError,
    EspSa,
    EspTruncatedError,
    EspUnknownSpiError,
    InboundSad,
    key_lengths,
)

SUITES = [
    (EncrId.AES_GCM_16, 128, IntegId.NONE, False),
    (EncrId.AES_GCM_8, 256, IntegId.NONE, False),
    (EncrId.AES_GCM_16, 128, IntegId.NONE, True),  # ESN: through open()
    (EncrId.CHACHA20_POLY1305, 256, IntegId.NONE, False),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, False),
]


def pair(encr: EncrId, bits: int, integ: IntegId, esn: bool, spi: int = 0x1234) -> tuple[EspSa, EspSa, EspSa]:
    el, il = key_lengths(encr, bits, integ)
    ek, ik = os.urandom(el), os.urandom(il)
    return (EspSa(spi, encr, bits, ek, integ, ik, esn=esn), EspSa(spi, encr, bits, ek, integ, ik, esn=esn),
            EspSa(spi, encr, bits, ek, integ, ik, esn=esn))


def outcome(r: tuple[int, bytes] | EspError) -> object:
    return type(r).__name__ if isinstance(r, EspError) else r


@pytest.mark.parametrize("encr,bits,integ,esn", SUITES)
def test_open_many_matches_open(encr: EncrId, bits: int, integ: IntegId, esn: bool) -> None:
    tx, rx_one, rx_many = pair(encr, bits, integ, esn)
    inner = [bytes([0x45]) + os.urandom(n) for n in (40, 1399, 3, 700, 1000, 1000)]
    pkts = [tx.seal(p, 4) for p in inner]
    bad_icv = bytearray(pkts[4])
    bad_icv[-1] ^= 1
    batch = [pkts[0], pkts[1], pkts[1],  # replay
             pkts[2][:11],  # truncated
             bytes(bad_icv), pkts[3], pkts[4], pkts[0],  # bad ICV, then the real one, an old one replayed
             pkts[5]]
    one = []
    for p in batch:
        try:
            one.append(rx_one.open(p, 5.0))
        except EspError as e:
            one.append(e)
    many = rx_many.open_many(batch, 5.0)
    assert [outcome(r) for r in many] == [outcome(r) for r in one]
    assert [outcome(r) for r in many] == [
        (4, inner[0]), (4, inner[1]), "EspReplayError", "EspTruncatedError", "EspIntegrityError",
        (4, inner[3]), (4, inner[4]), "EspReplayError", (4, inner[5])]
    assert rx_many.counters.as_dict() == rx_one.counters.as_dict()
    assert (rx_many.window.top, rx_many.window._bitmap) == (rx_one.window.top, rx_one.window._bitmap)


def test_open_many_bad_padding() -> None:
    tx, _, rx = pair(EncrId.AES_GCM_16, 128, IntegId.NONE, False)
    # a trailer whose pad octets are not 1, 2, 3 (RFC 4303 2.4): sealed by hand through the AEAD
    seq, iv = 1, (1).to_bytes(8, "big")
    hdr = tx._spi_bytes + seq.to_bytes(4, "big")
    body = b"\x45" + bytes(11) + b"\x09\x09\x02\x04"  # pad length 2, pad octets 9 9
    pkt = hdr + iv + tx._seal_aead(tx._salt + iv, body, hdr)
    (r,) = rx.open_many([pkt])
    assert isinstance(r, EspPaddingError) and rx.counters.drop_bad_padding == 1
    assert rx.window.top == 1  # the ICV was right: the window moved (RFC 4303 3.4.3)


def test_open_batch_runs_of_spis() -> None:
    a_tx, _, a_rx = pair(EncrId.AES_GCM_16, 128, IntegId.NONE, False, spi=0x1001)
    b_tx, _, b_rx = pair(EncrId.AES_GCM_16, 128, IntegId.NONE, False, spi=0x1002)
    sad = InboundSad()
    sad.add(a_rx)
    sad.add(b_rx)
    pa = [a_tx.seal(b"\x45" + bytes([i]) * 30, 4) for i in range(3)]
    pb = [b_tx.seal(b"\x60" + bytes([i]) * 50, 41) for i in range(2)]
    stray = b"\x00\x00\x99\x99" + pa[0][4:]
    res = sad.open_batch([pa[0], pa[1], pb[0], b"\x00\x01", pb[1], stray, pa[2]], 1.0)
    assert [r if isinstance(r, EspError) else (r[0].spi, r[1], r[2][:2]) for r in res][:3] == [
        (0x1001, 4, b"\x45\x00"), (0x1001, 4, b"\x45\x01"), (0x1002, 41, b"\x60\x00")]
    assert isinstance(res[3], EspTruncatedError) and isinstance(res[5], EspUnknownSpiError)
    assert not isinstance(res[4], EspError) and not isinstance(res[6], EspError)
    assert (sad.drop_truncated, sad.drop_unknown_spi) == (1, 1)
    assert (a_rx.counters.packets_in, b_rx.counters.packets_in) == (3, 2)
    assert not isinstance(res[0], EspReplayError | EspIntegrityError)
