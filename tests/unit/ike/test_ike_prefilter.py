"""The responder's pre-filter (core_ike/ike/prefilter.py, Prefilter.check): header checks on raw
bytes, the COOKIE decided and answered without decoding (RFC 7296 2.6), the per-source limit while
COOKIEs are demanded, every drop counted by reason."""

from __future__ import annotations

import struct

import pytest
from ike_pair import A_IP, B_IP, make_pair

from core_ike.codec import message as message_mod
from core_ike.codec.message import Message, decode_message, encode_message
from core_ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
from core_ike.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from core_ike.crypto.proposals import parse_proposals
from core_ike.ike.creds import Credentials
from core_ike.ike.engine import Engine, EngineConfig
from core_ike.ike.prefilter import SourceLimiter, cookie_reply, scan_init
from core_ike.ike.sa import IkeState

LOCAL = (B_IP, 500)


def _init(spi: bytes = b"\x11" * 8, nonce: bytes = b"\x22" * 32, cookie: bytes | None = None,
          mid: int = 0, flags: HeaderFlag = HeaderFlag.INITIATOR) -> bytes:
    payloads = [SaPayload(parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)),
                KePayload(31, b"\x09" * 32), NoncePayload(nonce)]
    if cookie is not None:
        payloads.insert(0, NotifyPayload(NotifyType.COOKIE, cookie))
    return encode_message(Message(spi, bytes(8), ExchangeType.IKE_SA_INIT, flags, mid, payloads))[0]


def _engine(**kw: object) -> Engine:
    return Engine([], Credentials(), EngineConfig(**{"force_cookies": True, **kw}))  # type: ignore[arg-type]


def _cookie_of(pkt: bytes) -> bytes:
    msg = decode_message(pkt)
    n = msg.notify(NotifyType.COOKIE)
    assert n is not None and msg.is_response and msg.spi_r == bytes(8)
    return n.data


def test_cookie_reply_is_what_the_encoder_builds() -> None:
    for cookie in (b"\x01" + b"c" * 32, b"x"):
        resp = Message(b"\x33" * 8, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 7,
                       [NotifyPayload(NotifyType.COOKIE, cookie)])
        assert cookie_reply(b"\x33" * 8, struct.pack("!I", 7), cookie) == encode_message(resp)[0]


def test_scan_finds_cookie_and_nonce_and_rejects_broken_chains() -> None:
    pkt = _init(cookie=b"\x05" * 33)
    assert scan_init(pkt, pkt[16]) == (b"\x05" * 33, b"\x22" * 32)
    plain = _init()
    assert scan_init(plain, plain[16]) == (b"", b"\x22" * 32)
    assert scan_init(plain[:-10], plain[16]) is None  # chain runs past the end
    assert scan_init(_init(nonce=b"n" * 8), plain[16]) is None  # RFC 7296 3.9: 16..256 octets
    no_nonce = encode_message(Message(b"\x11" * 8, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0,
                                      [NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20))] * 3))[0]
    assert scan_init(no_nonce, no_nonce[16]) is None


def test_cookie_is_answered_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _engine()
    calls = []
    real = message_mod.decode_message
    monkeypatch.setattr("core_ike.ike.engine.decode_message", lambda d: calls.append(d) or real(d))
    eng.receive(_init(), LOCAL, ("198.51.100.9", 500), 1.0)
    ((pkt, local, remote),) = eng.datagrams_to_send()
    assert (local, remote) == (LOCAL, ("198.51.100.9", 500)) and calls == []
    assert eng.counters["cookies-sent"] == 1 and not eng.sas
    # the cookie is the one the decoding path accepts (same secret, Ni, IPi, SPIi)
    retry = decode_message(_init(cookie=_cookie_of(pkt)))
    assert eng.prefilter.cookie_ok(retry, ("198.51.100.9", 500))
    assert not eng.prefilter.cookie_ok(retry, ("198.51.100.10", 500))  # another address: another cookie


def test_natt_port_answer_carries_the_non_esp_marker() -> None:
    eng = _engine()
    eng.receive(_init(), (B_IP, 4500), ("198.51.100.9", 4500), 1.0)
    ((pkt, _, _),) = eng.datagrams_to_send()
    assert pkt[:4] == bytes(4) and _cookie_of(pkt[4:])


def test_full_round_with_cookies_and_ipv6_addresses() -> None:
    p = make_pair(engine_b=EngineConfig(force_cookies=True))
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED and p.b.counters["cookies-sent"] == 1
    eng = _engine()
    eng.receive(_init(), ("2001:db8::2", 500), ("2001:db8:1::7", 500), 1.0)
    ((pkt, _, _),) = eng.datagrams_to_send()
    assert eng.prefilter.cookie_ok(decode_message(_init(cookie=_cookie_of(pkt))), ("2001:db8:1::7", 500))


@pytest.mark.parametrize("data,reason", [
    (b"\x00" * 10, "drop-malformed"),
    (_init()[:-1], "drop-malformed"),  # IKE length says one octet more
    (_init()[:18] + b"\x21" + _init()[19:], "drop-header"),  # reserved exchange type 33
    (_init(mid=1), "drop-header"),  # RFC 7296 2.2: IKE_SA_INIT is Message ID 0
    (_init(flags=HeaderFlag.NONE), "drop-header"),  # RFC 7296 3.1: sent by the original initiator
    (_init()[:17] + b"\x30" + _init()[18:], "drop-header"),  # major version 3 while COOKIEs are demanded
    (_init(nonce=b"n" * 8), "drop-invalid"),
])
def test_drops_are_counted_by_reason(data: bytes, reason: str) -> None:
    eng = _engine()
    eng.receive(data, LOCAL, ("198.51.100.9", 500), 1.0)
    assert eng.datagrams_to_send() == [] and dict(eng.counters) == {reason: 1}


def test_one_source_cannot_starve_the_others() -> None:
    eng = _engine(init_rate_ip=50.0)
    for i in range(500):  # 500 requests from one address within 0.5 s
        eng.receive(_init(spi=struct.pack("!Q", i + 1)), LOCAL, ("198.51.100.9", 500), 1.0 + i / 1000)
    sent = eng.counters["cookies-sent"]
    assert 50 + 24 <= sent <= 50 + 25  # the burst (one second's worth), then 50/s
    assert eng.counters["drop-init-rate"] == 500 - sent
    eng.datagrams_to_send()
    eng.receive(_init(), LOCAL, ("198.51.100.10", 500), 1.5)  # another source is answered
    assert len(eng.datagrams_to_send()) == 1
    eng.receive(_init(), LOCAL, ("198.51.100.9", 500), 3.0)  # and the first one again, once refilled
    assert len(eng.datagrams_to_send()) == 1


def test_limit_applies_only_while_cookies_are_demanded() -> None:
    eng = Engine([], Credentials(), EngineConfig(init_rate_ip=1.0))
    for i in range(5):
        eng.receive(_init(spi=struct.pack("!Q", i + 1)), LOCAL, ("198.51.100.9", 500), 1.0)
    assert "drop-init-rate" not in eng.counters  # no COOKIEs demanded: the normal path (no config here)


def test_ipv6_sources_share_a_limit_per_64() -> None:
    lim = SourceLimiter(2.0)
    assert lim.allow("2001:db8:1:2::1", 1.0) and lim.allow("2001:db8:1:2::ffff", 1.0)
    assert not lim.allow("2001:db8:1:2:abcd::9", 1.0)
    assert lim.allow("2001:db8:1:3::1", 1.0)


def test_limiter_memory_is_bounded_under_spoofed_sources() -> None:
    lim = SourceLimiter(50.0, max_sources=1000)
    for i in range(100_000):
        assert lim.allow(f"100.64.{i >> 8 & 255}.{i & 255}" if i < 65536 else f"100.65.{i >> 8 & 255}.{i & 255}",
                         1.0 + i / 100_000)
        assert len(lim) <= 1000


def test_retransmit_of_an_accepted_request_is_answered_from_the_cache() -> None:
    """COOKIEs became necessary after this request was accepted: its retransmission gets the cached
    IKE_SA_INIT response, not a COOKIE."""
    p = make_pair(engine_b=EngineConfig(cookie_threshold=1))
    p.drop = lambda side, data: side == "b->a"
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    assert p.b.half_open == 1  # from now on COOKIEs are demanded
    p.drop = None
    p.advance(4.1)  # alice retransmits
    assert sa.state is IkeState.ESTABLISHED and p.b.counters["cookies-sent"] == 0


def test_established_traffic_passes_untouched() -> None:
    p = make_pair(engine_b=EngineConfig(force_cookies=True))
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    p.a.rekey_child(sa, next(iter(sa.children)), now=p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    assert {k for k in p.b.counters if k.startswith("drop-")} == set()
    assert A_IP in {s.remote[0] for s in p.b.ike_sas()}
