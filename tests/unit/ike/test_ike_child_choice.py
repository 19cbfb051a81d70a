"""The CHILD_SA responder's shortcuts (core_ike/ike/tasks/child_create.py: the proposal choice kept per
offer shape, our SA payload's body written from it; core_ike/ike/ts.py: narrowing without making the
intersections it does not need) give what the full paths give: RFC 7296 2.7 selection and 3.3 encoding,
2.9 narrowing."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace
from typing import Any

import pytest

from core_ike.buffer import Buffer
from core_ike.codec import sawire
from core_ike.codec.payloads import Proposal, SaPayload, TrafficSelector
from core_ike.constants import NotifyType, ProtocolId, TsType
from core_ike.crypto.proposals import describe, parse_proposals, select_proposal
from core_ike.errors import ProtocolError
from core_ike.esp.algorithms import EspTransforms
from core_ike.ike import ts as tsmod
from core_ike.ike.config import ChildConfig
from core_ike.ike.tasks import child_create as cc


def _offer(text: str, spi: bytes) -> SaPayload:
    """The peer's SA payload as the codec decodes it from the wire (with its shape), SPI `spi`."""
    props = parse_proposals(text, ProtocolId.ESP)
    for p in props:
        p.spi = spi
    buf = Buffer()
    sawire.push_sa(buf, SaPayload(props))
    return sawire.pull_sa_body(buf.getvalue())


def _sa(dp: EspTransforms | None = None) -> Any:
    return SimpleNamespace(ctx=SimpleNamespace(esp_transforms=lambda: dp))


def _push(sa: SaPayload) -> bytes:
    buf = Buffer()
    sawire.push_sa(buf, sa)
    return buf.getvalue()


@pytest.mark.parametrize(("ours", "theirs"), [
    ("aes128gcm16", "aes128gcm16"),
    ("aes256gcm16,aes128gcm16", "aes128gcm16-aes256gcm16"),  # several of a type in one proposal
    ("aes128-sha256-esn", "aes256-sha1,aes128-sha256-sha1-esn-noesn"),  # the peer's 2nd proposal
    ("aes128gcm16-x25519", "aes128gcm16-x25519-modp2048"),  # with PFS
    ("aes128-sha256", "aes128gcm16,chacha20poly1305"),  # nothing acceptable
])
def test_the_kept_choice_is_the_selection_for_every_spi(ours: str, theirs: str) -> None:
    cc._CHOICES.clear()
    cfg = ChildConfig("net", esp_proposals=ours)
    for spi in (b"\x01\x02\x03\x04", b"\xc0\xff\xee\x00", b"\x01\x02\x03\x04"):
        offer = _offer(theirs, spi)
        want = select_proposal(parse_proposals(ours, ProtocolId.ESP), offer.proposals)
        if want is None:
            with pytest.raises(ProtocolError, match="no acceptable ESP proposal") as e:
                cc._choose(_sa(), cfg, offer, False)
            assert e.value.notify == NotifyType.NO_PROPOSAL_CHOSEN
            continue
        c = cc._choose(_sa(), cfg, offer, False)
        assert offer.proposals[c.index].spi == spi == want.spi
        assert (c.num, c.protocol, list(c.transforms)) == (want.num, want.protocol, want.transforms)
        assert c.text == describe(want)
        mine = b"\x0a\x0b\x0c\x0d"
        ours_sa = c.sa_payload(mine, list(c.transforms))
        assert ours_sa.raw == _push(SaPayload([Proposal(want.num, want.protocol, mine, want.transforms)]))
        assert ours_sa == SaPayload([Proposal(want.num, want.protocol, mine, want.transforms)])
    assert len(cc._CHOICES) == 1  # one offer shape, whatever its SPIs


def test_the_choice_follows_the_configuration_and_the_data_plane() -> None:
    """A reloaded proposal string, or a data plane that cannot install what was chosen, is chosen
    from again; a data plane that can install none of ours refuses with its reason."""
    cc._CHOICES.clear()
    offer = _offer("aes256gcm16,aes128gcm16", b"\x01\x02\x03\x04")
    assert cc._choose(_sa(), ChildConfig("net", esp_proposals="aes128gcm16,aes256gcm16"), offer, True).index == 0
    assert cc._choose(_sa(), ChildConfig("net", esp_proposals="aes128gcm16"), offer, True).index == 1
    only128 = EspTransforms("userspace", frozenset({(20, 128)}), frozenset())
    cfg = ChildConfig("net", esp_proposals="aes256gcm16,aes128gcm16")
    assert cc._choose(_sa(only128), cfg, offer, True).index == 1
    assert cc._choose(_sa(), cfg, offer, True).index == 0
    nothing = EspTransforms("userspace", frozenset(), frozenset())
    for _ in range(2):
        with pytest.raises(ProtocolError, match="data plane cannot install") as e:
            cc._choose(_sa(nothing), cfg, offer, True)
        assert e.value.notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_the_kept_choices_are_bounded() -> None:
    cc._CHOICES.clear()
    for i in range(cc._PROPOSALS_MAX + 5):
        cc._choose(_sa(), ChildConfig(f"net{i}", esp_proposals="aes128gcm16"), _offer("aes128gcm16", bytes(4)),
                   True)
    assert len(cc._CHOICES) <= cc._PROPOSALS_MAX


def _v4(lo: int, hi: int, proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    return TrafficSelector(TsType.IPV4_ADDR_RANGE, proto, ports[0], ports[1], lo.to_bytes(4, "big"),
                           hi.to_bytes(4, "big"))


def _general_intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """RFC 7296 2.9's intersection made field by field."""
    if a.ts_type != b.ts_type or (a.ip_proto and b.ip_proto and a.ip_proto != b.ip_proto):
        return None
    sp, ep = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    sa, ea = max(a.start_addr, b.start_addr), min(a.end_addr, b.end_addr)
    if sp > ep or sa > ea:
        return None
    return TrafficSelector(a.ts_type, a.ip_proto or b.ip_proto, sp, ep, sa, ea)


def _random_selectors(rng: random.Random, n: int) -> list[TrafficSelector]:
    out = []
    for _ in range(n):
        lo = rng.choice([0x0A000000, 0x0A000100, 0x0A0000FF, 0x0A010000])
        hi = lo + rng.choice([0, 1, 255, 65535, -1])
        proto = rng.choice([0, 0, 6, 17])
        ports = rng.choice([(0, 65535), (80, 80), (0, 1023), (443, 80)])
        out.append(_v4(lo, hi, proto, ports))
    out.append(TrafficSelector(TsType.IPV6_ADDR_RANGE, 0, 0, 65535, bytes(16), b"\xff" * 16))
    return out


def test_within_and_intersect_are_the_field_by_field_intersection() -> None:
    sels = _random_selectors(random.Random(7), 40)
    for a, b in itertools.product(sels, repeat=2):
        want = _general_intersect(a, b)
        assert tsmod.intersect(a, b) == want
        assert tsmod.within(a, b) == (want == a)
        if want == a:
            assert tsmod.intersect(a, b) is a  # nothing new made


def test_narrowing_keeps_rfc7296_2_9_results() -> None:
    """Each offered selector intersected with each configured one, none that another one holds."""
    rng = random.Random(11)
    sels = _random_selectors(rng, 30)
    for _ in range(300):
        offered, configured = rng.sample(sels, rng.randint(1, 3)), rng.sample(sels, rng.randint(1, 3))
        got = tsmod.narrow(offered, configured)
        inter: list[TrafficSelector] = []
        for c in configured:
            for o in offered:
                x = _general_intersect(o, c)
                if x is not None and x not in inter:
                    inter.append(x)
        assert got == [x for x in inter if not any(y != x and _general_intersect(x, y) == x for y in inter)]


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes256gcm16", "aes128-sha256", "aes256-sha1", "chacha20poly1305"])
def test_keymat_from_the_kept_lengths_is_derive_child_keys(esp: str) -> None:
    """RFC 7296 2.17: the responder's KEYMAT split with the lengths kept with its choice."""
    from core_ike.constants import PrfId
    from core_ike.crypto.keys import child_keymat, derive_child_keys

    (prop,) = parse_proposals(esp, ProtocolId.ESP)
    c = cc._Choice(0, prop)
    assert c.lengths is not None
    sk_d, ni, nr, shared = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32, b"\x44" * 32
    for pfs in (None, shared):
        want = derive_child_keys(PrfId.HMAC_SHA2_256, sk_d, ni, nr, c.encr, c.key_bits, c.integ or None, pfs)
        got = child_keymat(PrfId.HMAC_SHA2_256, sk_d, (pfs or b"") + ni + nr, *c.lengths)
        assert got == (want.encr_i, want.integ_i, want.encr_r, want.integ_r)
