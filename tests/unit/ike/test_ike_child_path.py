"""The responder's CHILD_SA path in IKE_AUTH: traffic selector narrowing (RFC 7296 §2.9), their text, the
TS payloads read from kept octets (RFC 7296 §3.13), the response's size bound (RFC 7383) and the data
plane's SA parameters, each against the general computation it stands for."""

from __future__ import annotations

import dataclasses
import itertools
import random

from core_ike.buffer import Buffer
from core_ike.codec.payloads import Proposal, SaPayload, TrafficSelector, Transform, TsPayload
from core_ike.codec.sawire import pull_sa_body
from core_ike.codec.wire import encode_payloads, pull_body
from core_ike.constants import EncrId, IntegId, PayloadType, ProtocolId, TransformType, TsType
from core_ike.ike import fastauth
from core_ike.ike import ts as tsmod
from core_ike.ike.config import ChildConfig, IkeConfig
from core_ike.io.dataplane import Direction, Lifetime, SaParams

V4, V6 = TsType.IPV4_ADDR_RANGE, TsType.IPV6_ADDR_RANGE


def sel(kind: TsType, lo: int, hi: int, proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    n = 4 if kind == V4 else 16
    return TrafficSelector(kind, proto, ports[0], ports[1], lo.to_bytes(n, "big"), hi.to_bytes(n, "big"))


def reference_narrow(offered: list[TrafficSelector], configured: list[TrafficSelector]) -> list[TrafficSelector]:
    """RFC 7296 §2.9 written out: every intersection of an offered selector with a configured one, in the
    configured ones' order, without repeats and without those another result holds."""
    def meet(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
        if a.ts_type != b.ts_type or (a.ip_proto and b.ip_proto and a.ip_proto != b.ip_proto):
            return None
        sp, ep = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
        sa, ea = max(a.start_addr, b.start_addr), min(a.end_addr, b.end_addr)
        if sp > ep or sa > ea:
            return None
        return TrafficSelector(a.ts_type, a.ip_proto or b.ip_proto, sp, ep, sa, ea)

    def holds(outer: TrafficSelector, inner: TrafficSelector) -> bool:
        return meet(inner, outer) == inner

    out: list[TrafficSelector] = []
    for c in configured:
        for o in offered:
            x = meet(o, c)
            if x is not None and x not in out:
                out.append(x)
    return [x for x in out if not any(y != x and holds(y, x) for y in out)]


def selectors(rng: random.Random) -> list[TrafficSelector]:
    """Edge cases and random ones: reversed ranges and ports, other types and protocols, hosts, overlaps."""
    out = [sel(V4, 0, 2**32 - 1), sel(V4, 0x0AC90000, 0x0AC9FFFF), sel(V4, 0x0AC90107, 0x0AC90107),
           sel(V4, 0x0AC90107, 0x0AC90107, 6, (443, 443)), sel(V4, 0x0AC90107, 0x0AC90107, 17),
           sel(V4, 0x0AC90108, 0x0AC90106), sel(V4, 0x0AC90107, 0x0AC90107, 0, (500, 400)),
           sel(V6, 0, 2**128 - 1), sel(V6, 1, 1), sel(V4, 0x0AC80001, 0x0AC80001)]
    for _ in range(40):
        a, b = sorted(rng.getrandbits(4) for _ in range(2))
        base = 0x0AC90100
        p1, p2 = sorted(rng.choice((0, 80, 443, 65535)) for _ in range(2))
        out.append(sel(V4, base + a, base + b, rng.choice((0, 0, 6, 17)), (p1, p2) if rng.random() < 0.3 else (0, 65535)))
    return out


def test_narrowing_equals_rfc_7296_2_9_over_a_table_of_selector_pairs() -> None:
    table = selectors(random.Random(13))
    for o, c in itertools.product(table, repeat=2):  # one selector a side: the common case
        assert tsmod.narrow([o], [c]) == reference_narrow([o], [c]), (o, c)
    rng = random.Random(14)
    for _ in range(3000):  # several on a side
        offered = rng.sample(table, rng.randrange(1, 4))
        configured = rng.sample(table, rng.randrange(1, 4))
        assert tsmod.narrow(offered, configured) == reference_narrow(offered, configured), (offered, configured)


def test_an_offered_selector_held_whole_is_returned_itself() -> None:
    """What the choice among configurations relies on: a narrowed list that starts with the offered
    selector object holds it (RFC 7296 §2.9's preference for the initiator's first selectors)."""
    for o, c in itertools.product(selectors(random.Random(15)), repeat=2):
        got = tsmod.narrow([o], [c])
        if got and got[0] is o:
            assert tsmod.within(o, o) and tsmod.within(o, c)
        elif got:
            assert got[0] != o or not tsmod.within(o, c)


def test_host_text_equals_the_general_rendering() -> None:
    for s in [sel(V4, 0, 0), sel(V4, 2**32 - 1, 2**32 - 1), sel(V4, 0x0AC90107, 0x0AC90107),
              sel(V4, 0x0AC90107, 0x0AC90107, 6), sel(V4, 0x0AC90107, 0x0AC90107, 0, (0, 65534)),
              sel(V4, 0x0AC90107, 0x0AC90107, 0, (1, 65535)), sel(V4, 0x0AC90107, 0x0AC90107, 17, (53, 53)),
              sel(V6, 5, 5), sel(V4, 0x0AC90107, 0x0AC90108)]:
        assert tsmod.to_text(s) == tsmod._text(s), s
    assert tsmod.to_text(sel(V4, 0x0AC90107, 0x0AC90107)) == "10.201.1.7/32"


def ts_body(selectors: list[TrafficSelector]) -> bytes:
    return encode_payloads([TsPayload(PayloadType.TSi, selectors)])[4:]


def test_ts_payloads_read_again_from_kept_octets_are_the_codecs_and_their_own() -> None:
    body = ts_body([sel(V4, 0x0AC80001, 0x0AC80001), sel(V6, 1, 2**64)])
    for ptype in (PayloadType.TSi, PayloadType.TSr, PayloadType.TSi):
        got = fastauth._pull_ts(body, int(ptype))
        assert got is not None
        assert got == pull_body(Buffer(body), ptype, False, len(body))
        assert got.ptype == ptype
        got.selectors.clear()  # one request's payload changed: the next one is whole
    again = fastauth._pull_ts(body, int(PayloadType.TSr))
    assert again is not None and len(again.selectors) == 2
    for bad in (body[:-1], body + b"\x00", b"\x03" + body[1:]):  # refused each time, never kept
        assert fastauth._pull_ts(bad, 44) is None
        assert fastauth._pull_ts(bad, 44) is None


def test_ts_octets_kept_are_bounded() -> None:
    for i in range(fastauth._TS_SEEN_MAX + 10):
        fastauth._pull_ts(ts_body([sel(V4, i, i)]), 44)
        assert len(fastauth._TS_SEEN) <= fastauth._TS_SEEN_MAX
    got = fastauth._pull_ts(ts_body([sel(V4, 3, 3)]), 45)
    assert got is not None and got.selectors == [sel(V4, 3, 3)]


def _esp(spi: bytes, *extra: Transform) -> Proposal:
    return Proposal(1, ProtocolId.ESP, spi, [Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
                                             Transform(TransformType.ESN, 0), *extra])


def _bound_computed(cfg: IkeConfig, child: list[SaPayload | TsPayload]) -> int:
    """_child_bound with nothing kept."""
    fastauth._SA_BOUNDS.clear()
    return fastauth._child_bound(cfg, list(child))


def test_the_response_bound_kept_by_offer_shape_equals_the_computed_one() -> None:
    cfg = IkeConfig(name="c", children=[ChildConfig(name="net", local_ts=["10.200.0.1/32"],
                                                    remote_ts=["10.201.0.0/16", "10.202.0.0/16"])])
    tsi = TsPayload(PayloadType.TSi, [sel(V4, 1, 1)])
    tsr = TsPayload(PayloadType.TSr, [sel(V4, 2, 2), sel(V6, 2, 2)])
    offers = [[_esp(b"\x01\x02\x03\x04")], [_esp(b"\x09\x09\x09\x09")],  # the same shape, another SPI
              [_esp(b"\x01\x02\x03\x04", Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128))],
              [_esp(b"\x01\x02\x03\x04\x05\x06\x07\x08")],  # another SPI size: another shape
              [_esp(b"\x01\x02\x03\x04"), Proposal(2, ProtocolId.ESP, b"\x05\x06\x07\x08",
                                                   [Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
                                                    Transform(TransformType.INTEG, IntegId.HMAC_SHA1_96),
                                                    Transform(TransformType.DH, 31),
                                                    Transform(TransformType.ESN, 0)])]]
    bodies = [encode_payloads([SaPayload(p)])[4:] for p in offers]
    fastauth._SA_BOUNDS.clear()
    for _ in range(2):  # computed, then kept
        for body in bodies:
            sa = pull_sa_body(body)
            assert sa.shape is not None
            expect = _bound_computed(cfg, [pull_sa_body(body), tsi, tsr])
            assert fastauth._child_bound(cfg, [sa, tsi, tsr]) == expect
            assert fastauth._child_bound(cfg, [sa, tsi, tsr]) == expect
    assert len({fastauth._child_bound(cfg, [pull_sa_body(b), tsi, tsr]) for b in bodies}) == 4


def test_sa_params_are_values() -> None:
    a = SaParams(0x1001, Direction.IN, "192.0.2.1", "192.0.2.2", EncrId.AES_GCM_16, 128, b"k" * 20)
    b = SaParams(0x1001, Direction.IN, "192.0.2.1", "192.0.2.2", EncrId.AES_GCM_16, 128, b"k" * 20)
    assert a == b and hash(a) == hash(b) and a is not b
    assert a.lifetime == Lifetime() and a.integ_id == IntegId.NONE and a.nat_keepalive is None
    moved = dataclasses.replace(a, src="198.51.100.1", src_port=1234)
    assert moved != a and a.src == "192.0.2.1" and (moved.src, moved.src_port) == ("198.51.100.1", 1234)
    assert dataclasses.replace(moved, src="192.0.2.1", src_port=4500) == a
    assert {a: 1}[b] == 1
    assert "k" * 20 not in repr(a) and "6b6b" not in repr(a)
    assert not hasattr(a, "__dict__")


def reference_narrow_remote_nat(cfg: ChildConfig, offered: list[TrafficSelector], v6: bool) -> list[TrafficSelector]:
    """A peer behind a NAT (docs/configuration.md, "Traffic selectors"): each configured remote selector,
    `dynamic` as the whole address family, narrowed on its own; from a `dynamic` one single hosts only."""
    out: list[TrafficSelector] = []
    for text in cfg.remote_ts:
        dynamic = text.split("[", 1)[0] == "dynamic"
        configured = tsmod.parse(text, ("::/0" if v6 else "0.0.0.0/0") if dynamic else None)
        for t in reference_narrow(offered, [configured]):
            if t not in out and (t.start_addr == t.end_addr or not dynamic):
                out.append(t)
    return out


def test_a_peers_selectors_behind_a_nat_narrowed_as_written_out() -> None:
    from types import SimpleNamespace

    from core_ike.ike.tasks.child_create import narrow_remote

    rng = random.Random(16)
    table = selectors(rng)
    texts = ["dynamic", "dynamic[tcp/443]", "10.201.0.0/16", "10.201.1.7", "10.201.1.0/28[udp]", "0.0.0.0/0",
             "10.201.1.8/30"]
    narrowed = 0
    for _ in range(2000):
        cfg = ChildConfig(name="net", remote_ts=rng.sample(texts, rng.randrange(1, 4)))
        offered = rng.sample(table, rng.randrange(1, 4))
        sa = SimpleNamespace(nat_there=True, peer_vip=None, remote=("198.51.100.9", 4500))
        got = narrow_remote(sa, cfg, offered)  # type: ignore[arg-type]
        assert got == reference_narrow_remote_nat(cfg, offered, False), (cfg, offered)
        narrowed += len(got) > 1
        sa.nat_there = False  # not behind a NAT: `dynamic` is the address we see
        there = [tsmod.parse(t, "198.51.100.9") for t in cfg.remote_ts]
        assert narrow_remote(sa, cfg, offered) == reference_narrow(offered, there)  # type: ignore[arg-type]
    assert narrowed > 100  # the table narrows to several selectors often enough to compare orders


def test_policies_and_their_selectors_are_values_with_a_kept_hash() -> None:
    from core_ike.io.dataplane import PolicyParams
    from core_ike.io.dataplane import TrafficSelector as Sel

    a, b = Sel.parse("10.200.0.1/32"), Sel.parse("10.200.0.1")
    assert a == b and hash(a) == hash(b) and a != Sel.parse("10.200.0.1/32", 6)
    assert hash(a) == hash((a.net, 0, 0, 65535)) and a.net == (4, 32, int(a.subnet.network_address))  # kept, from its parts
    p = PolicyParams(a, Sel.parse("10.201.0.7/32"), Direction.OUT, 7, "192.0.2.1", "192.0.2.2")
    table = {p: "out"}
    moved = dataclasses.replace(p, tunnel_src="198.51.100.1")
    assert moved != p and moved not in table and hash(moved) != hash(p)
    back = dataclasses.replace(moved, tunnel_src="192.0.2.1")
    assert back == p and hash(back) == hash(p) and table[back] == "out"
    assert not hasattr(p, "__dict__") and not hasattr(a, "__dict__")
