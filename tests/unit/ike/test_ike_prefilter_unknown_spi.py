"""Messages for IKE_SAs the engine does not have are settled on the raw header (core_ike/ike/prefilter.py:
spi_known, header_message): never decoded, counted, a request answered with INVALID_IKE_SPI
(RFC 7296 2.21.4, rate-limited), while every message of a known IKE_SA still goes through."""

from __future__ import annotations

import os

import pytest
from ike_pair import A_IP, B_IP, make_pair

from core_ike.codec.message import Message, decode_message, encode_message
from core_ike.codec.payloads import NotifyPayload
from core_ike.constants import ExchangeType, HeaderFlag, NotifyType
from core_ike.ike import engine as engine_mod
from core_ike.ike.prefilter import header_message, spi_known


def _msg(spi_i: bytes, spi_r: bytes, flags: HeaderFlag, exchange: int = ExchangeType.INFORMATIONAL) -> bytes:
    return encode_message(Message(spi_i, spi_r, exchange, flags, 9, [NotifyPayload(NotifyType.COOKIE2, b"x" * 8)]))[0]


def test_our_spi_is_spir_from_the_initiator_and_spii_otherwise() -> None:
    ours, theirs = b"\x01" * 8, b"\x02" * 8
    sas = {ours}
    assert spi_known(_msg(theirs, ours, HeaderFlag.INITIATOR), int(HeaderFlag.INITIATOR), 37, sas)
    assert not spi_known(_msg(ours, theirs, HeaderFlag.INITIATOR), int(HeaderFlag.INITIATOR), 37, sas)
    assert spi_known(_msg(ours, theirs, HeaderFlag.RESPONSE), int(HeaderFlag.RESPONSE), 37, sas)
    assert not spi_known(_msg(theirs, ours, HeaderFlag.RESPONSE), int(HeaderFlag.RESPONSE), 37, sas)
    # an IKE_SA_INIT response to our request: filed under our SPIi
    assert spi_known(_msg(ours, theirs, HeaderFlag.RESPONSE, 34), int(HeaderFlag.RESPONSE), 34, sas)
    h = header_message(_msg(theirs, ours, HeaderFlag.INITIATOR))
    assert (h.spi_i, h.spi_r, h.message_id, h.payloads, h.is_initiator) == (theirs, ours, 9, [], True)


def test_unknown_spi_is_not_decoded_and_a_request_gets_invalid_ike_spi(monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_pair()
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert p.b.ike_sas() and p.b.ike_sas()[0].established
    decoded: list[bytes] = []
    real = engine_mod.decode_message

    def counting(data: bytes) -> Message:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(engine_mod, "decode_message", counting)
    local, remote = (B_IP, 500), (A_IP, 500)
    stray = _msg(os.urandom(8), os.urandom(8), HeaderFlag.INITIATOR)
    p.b.receive(stray, local, remote, p.now)
    assert decoded == []
    assert p.b.counters["drop-unknown-spi"] == 1 and p.b.counters["invalid-spi-sent"] == 1
    (answer,) = [d for d, _, _ in p.b.datagrams_to_send()]
    resp = decode_message(answer)
    assert resp.is_response and resp.notify(NotifyType.INVALID_IKE_SPI) is not None
    assert (resp.spi_i, resp.spi_r, resp.message_id) == (stray[:8], stray[8:16], 9)
    # a stray response is dropped without an answer
    p.b.receive(_msg(os.urandom(8), os.urandom(8), HeaderFlag.RESPONSE), local, remote, p.now)
    assert p.b.counters["drop-unknown-spi"] == 2 and p.b.datagrams_to_send() == [] and decoded == []
    # the IKE_SA both have is untouched: alice's DELETE reaches bob, decoded, and both close it
    p.a.terminate(sa, p.now)
    p.pump()
    assert decoded and p.a.ike_sas() == [] and p.b.ike_sas() == []
    assert p.b.counters["drop-unknown-spi"] == 2


def test_zero_spis_pass_to_the_extensions_and_a_nonzero_spir_on_a_new_request_is_unknown() -> None:
    p = make_pair()
    local, remote = (B_IP, 500), (A_IP, 500)
    check = p.b.prefilter.check
    zero = bytes(8)
    # zero SPIs both (an ME connectivity check, docs/protocol.md): the engine's extensions decide
    assert check(_msg(zero, zero, HeaderFlag.INITIATOR), local, remote, p.now) is False
    assert check(_msg(zero, zero, HeaderFlag.RESPONSE, ExchangeType.IKE_SA_INIT), local, remote, p.now) is False
    assert "drop-unknown-spi" not in p.b.counters
    # an IKE_SA_INIT request naming an SPIr, or with a zero SPIi and a SPIr: an IKE_SA we do not have
    assert check(_msg(b"\x05" * 8, b"\x06" * 8, HeaderFlag.INITIATOR, ExchangeType.IKE_SA_INIT), local, remote, p.now)
    assert check(_msg(zero, b"\x06" * 8, HeaderFlag.INITIATOR, ExchangeType.IKE_SA_INIT), local, remote, p.now)
    assert p.b.counters["drop-unknown-spi"] == 2
