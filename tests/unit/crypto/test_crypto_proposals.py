"""Proposal strings (strongSwan syntax), RFC 7296 2.7 responder selection, log names."""

from __future__ import annotations

import pytest

from core_ike.codec.payloads import Proposal, Transform
from core_ike.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from core_ike.crypto.proposals import (
    Algorithms,
    describe,
    parse_esp_proposals,
    parse_ike_proposals,
    parse_proposals,
    select_proposal,
    to_keywords,
)
from core_ike.errors import LocalError

E, P, INT, D, N = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH,
                 TransformType.ESN)

# (string, protocol, strongSwan log text of each proposal)
PARSE_CASES = [
    ("aes128gcm16-prfsha256-x25519", ProtocolId.IKE, ["AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"]),
    ("aes256-sha256-modp2048", ProtocolId.IKE, ["AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"]),
    ("aes128-sha256-x25519", ProtocolId.IKE, ["AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519"]),
    ("aes256gcm16-prfsha384-ecp384", ProtocolId.IKE, ["AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384"]),
    ("aes128-sha1-sha256-modp3072-ecp521", ProtocolId.IKE,
     ["AES_CBC_128/HMAC_SHA1_96/HMAC_SHA2_256_128/PRF_HMAC_SHA1/PRF_HMAC_SHA2_256/MODP_3072/ECP_521"]),
    ("aes192-sha512-prfsha384-x448", ProtocolId.IKE,
     ["AES_CBC_192/HMAC_SHA2_512_256/PRF_HMAC_SHA2_384/CURVE_448"]),
    ("aes128gcm16-prfsha256-x25519, aes256-sha384-ecp256", ProtocolId.IKE,
     ["AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
      "AES_CBC_256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/ECP_256"]),
    ("aes128gcm128-x25519", ProtocolId.ESP, ["AES_GCM_16_128/CURVE_25519/NO_EXT_SEQ"]),
    ("aes128gcm16", ProtocolId.ESP, ["AES_GCM_16_128/NO_EXT_SEQ"]),
    ("aes256gcm8-aes256gcm12", ProtocolId.ESP, ["AES_GCM_8_256/AES_GCM_12_256/NO_EXT_SEQ"]),
    ("aes256-sha256-esn", ProtocolId.ESP, ["AES_CBC_256/HMAC_SHA2_256_128/EXT_SEQ"]),
    ("aes128-sha1-esn-noesn", ProtocolId.ESP, ["AES_CBC_128/HMAC_SHA1_96/EXT_SEQ/NO_EXT_SEQ"]),
    ("chacha20poly1305-prfsha256-x25519", ProtocolId.IKE, ["CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519"]),
    ("AES128-SHA256-MODP2048", ProtocolId.IKE, ["AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"]),
]


@pytest.mark.parametrize("text,protocol,names", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_and_describe(text: str, protocol: ProtocolId, names: list[str]) -> None:
    props = parse_proposals(text, protocol)
    assert [describe(p) for p in props] == names
    assert [p.num for p in props] == list(range(1, len(names) + 1))
    assert all(p.protocol == protocol and p.spi == b"" for p in props)
    for p in props:  # to_keywords is an inverse
        assert parse_proposals(to_keywords(p), protocol)[0].transforms == p.transforms


def test_transform_values() -> None:
    [p] = parse_ike_proposals("aes128gcm16-prfsha256-x25519")
    assert p.transforms == [Transform(E, EncrId.AES_GCM_16, 128), Transform(P, PrfId.HMAC_SHA2_256),
                            Transform(D, DhId.CURVE25519)]
    [p] = parse_esp_proposals("aes256-sha256")
    assert p.transforms == [Transform(E, EncrId.AES_CBC, 256), Transform(INT, IntegId.HMAC_SHA2_256_128),
                            Transform(N, EsnId.NO_ESN)]
    assert describe(p, with_protocol=True) == "ESP:AES_CBC_256/HMAC_SHA2_256_128/NO_EXT_SEQ"


@pytest.mark.parametrize(
    "text,protocol,needle",
    [("aes128-sha256-bogus", ProtocolId.IKE, "bogus"),
     ("aes128gcm16-x25519", ProtocolId.IKE, "PRF"),
     ("aes128-prfsha256-x25519", ProtocolId.IKE, "integrity"),
     ("aes128-sha256", ProtocolId.IKE, "key exchange"),
     ("aes128gcm16-sha256-prfsha256-x25519", ProtocolId.IKE, "AEAD"),
     ("aes128gcm16-aes128-sha256-x25519", ProtocolId.IKE, "mixes"),
     ("sha256-x25519", ProtocolId.IKE, "encryption"),
     ("aes128-sha256-esn-x25519", ProtocolId.IKE, "ESN"),
     ("aes128gcm16-prfsha256", ProtocolId.ESP, "PRF"),
     ("", ProtocolId.ESP, "empty")],
)
def test_parse_errors(text: str, protocol: ProtocolId, needle: str) -> None:
    with pytest.raises(LocalError, match=needle):
        parse_proposals(text, protocol)


def _offer(text: str, protocol: ProtocolId = ProtocolId.IKE, spi: bytes = b"", first: int = 1) -> list[Proposal]:
    props = parse_proposals(text, protocol)
    for i, p in enumerate(props):
        p.num, p.spi = first + i, spi
    return props


SELECT_CASES = [
    # (ours, theirs, protocol, ke_group, expected description or None)
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-x25519", ProtocolId.IKE, None,
     "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),
    # the peer's order wins inside a type and across proposals (RFC 7296 2.7)
    ("aes128-aes256-sha256-sha1-modp2048-x25519", "aes256-aes128-sha1-sha256-x25519-modp2048",
     ProtocolId.IKE, None, "AES_CBC_256/HMAC_SHA1_96/PRF_HMAC_SHA1/CURVE_25519"),
    ("aes128-sha256-modp2048,aes128gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-x25519,aes128-sha256-modp2048",
     ProtocolId.IKE, None, "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),
    # KE group of the received KE payload is preferred when acceptable
    ("aes128-sha256-modp2048-x25519", "aes128-sha256-x25519-modp2048", ProtocolId.IKE, DhId.MODP_2048,
     "AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"),
    ("aes128-sha256-modp2048", "aes128-sha256-x25519-modp2048", ProtocolId.IKE, DhId.CURVE25519,
     "AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"),
    # ... also in a later proposal pair: charon's default offer (CBC proposal with every group first, KE x25519)
    ("aes128gcm16-prfsha256-x25519,aes256-sha256-modp2048",
     "aes128-aes256-sha256-x25519-modp2048,aes128gcm16-prfsha256-x25519", ProtocolId.IKE, DhId.CURVE25519,
     "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"),
    # no common DH group / key length / PRF
    ("aes128-sha256-modp2048", "aes128-sha256-x25519", ProtocolId.IKE, None, None),
    ("aes128-sha256-modp2048", "aes256-sha256-modp2048", ProtocolId.IKE, None, None),
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16-prfsha384-x25519", ProtocolId.IKE, None, None),
    # ESP: PFS must agree; ESN chosen from the offer
    ("aes128gcm16", "aes128gcm16", ProtocolId.ESP, None, "AES_GCM_16_128/NO_EXT_SEQ"),
    ("aes128gcm16-x25519", "aes128gcm16-x25519", ProtocolId.ESP, None, "AES_GCM_16_128/CURVE_25519/NO_EXT_SEQ"),
    ("aes128gcm16", "aes128gcm16-x25519", ProtocolId.ESP, None, None),
    ("aes128gcm16-x25519", "aes128gcm16", ProtocolId.ESP, None, None),
    ("aes128-sha256-esn-noesn", "aes128-sha256-esn", ProtocolId.ESP, None, "AES_CBC_128/HMAC_SHA2_256_128/EXT_SEQ"),
    ("aes128-sha256", "aes128-sha256-esn", ProtocolId.ESP, None, None),
    ("aes128gcm16", "aes256gcm16, aes128gcm16", ProtocolId.ESP, None, "AES_GCM_16_128/NO_EXT_SEQ"),
]


@pytest.mark.parametrize("ours,theirs,protocol,ke_group,expected", SELECT_CASES)
def test_select(ours: str, theirs: str, protocol: ProtocolId, ke_group: int | None, expected: str | None) -> None:
    spi = b"\x01\x02\x03\x04" if protocol == ProtocolId.ESP else b""
    offered = _offer(theirs, protocol, spi, first=5)
    got = select_proposal(parse_proposals(ours, protocol), offered, ke_group)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert describe(got) == expected
    src = next(p for p in offered if all(t in p.transforms for t in got.transforms))
    assert (got.num, got.spi) == (src.num, src.spi)  # peer's number and SPI are kept


def test_select_ignores_other_protocol() -> None:
    ike = parse_ike_proposals("aes128gcm16-prfsha256-x25519")
    esp = _offer("aes128gcm16", ProtocolId.ESP)
    assert select_proposal(ike, esp) is None


def test_select_accepts_explicit_none() -> None:
    # A peer may offer INTEG NONE with AEAD or DH NONE (no PFS) explicitly (RFC 7296 3.3.3)
    offered = [Proposal(1, ProtocolId.ESP, b"abcd", [
        Transform(E, EncrId.AES_GCM_16, 256), Transform(INT, IntegId.NONE),
        Transform(D, DhId.NONE), Transform(N, EsnId.NO_ESN)])]
    got = select_proposal(parse_esp_proposals("aes256gcm16"), offered)
    assert got is not None
    assert describe(got) == "AES_GCM_16_256/NONE/NONE/NO_EXT_SEQ"
    algs = Algorithms.from_proposal(got)
    assert algs == Algorithms(EncrId.AES_GCM_16, 256, None, None, None, False)
    assert algs.is_aead


def test_algorithms_from_proposal() -> None:
    [p] = parse_ike_proposals("aes256-sha384-ecp384")
    assert Algorithms.from_proposal(p) == Algorithms(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192,
                                                     PrfId.HMAC_SHA2_384, DhId.ECP_384, False)
    [p] = parse_esp_proposals("aes128-sha1-esn")
    assert Algorithms.from_proposal(p).esn
    [p] = parse_ike_proposals("aes128-aes256-sha256-x25519")
    with pytest.raises(LocalError):
        Algorithms.from_proposal(p)  # not a chosen proposal: two ENCR transforms


def test_describe_unknown_ids() -> None:
    p = Proposal(1, ProtocolId.IKE, b"", [Transform(E, 99, 128), Transform(D, 1234)])
    assert describe(p) == "ENCR_99_128/KE_1234"
