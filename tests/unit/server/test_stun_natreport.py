"""The NAT behaviour report (core_ike/me/natinfo.py) in memory: our server announces IMPL_VENDOR_ID to
our clients only, a client's N(IKEME_NAT_BEHAVIOUR) lands in the server's registry and status, and a
malformed report is answered but ignored. Three sans-IO engines on the simulated internet of
tests/unit/me_ext/mex_net.py, fake clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "me_ext"))

from mex_net import IDS, make_net, register

from core_ike.codec.payloads import NotifyPayload
from core_ike.me.natinfo import (
    IKEME_NAT_BEHAVIOUR,
    MAX_TEXT,
    NatReport,
    decode_nat,
    encode_nat,
)
from core_ike.me.tasks import MeSaState

TEXT = "mapping APDM, filtering APDF, port not preserved, random ports, no hairpinning"


def _medsrv(net, name):  # type: ignore[no-untyped-def]
    (sa,) = [s for s in net.nodes[name].engine.ike_sas() if s.name == "medsrv"]
    return sa


def test_report_reaches_the_registry() -> None:
    net = make_net()
    register(net)
    sa = _medsrv(net, "alice")
    assert sa.extension(MeSaState).server_ours is True  # our server announced itself
    assert all(s.extension(MeSaState).ours for s in net.nodes["ms"].engine.ike_sas())
    sa.queue_task(NatReport(TEXT), net.now)
    net.run(2.0)
    srv = net.nodes["ms"].ext
    rec = srv.lookup(IDS["alice"])
    assert rec is not None and rec.nat == TEXT
    status = {p.identity: p for p in srv.status()}
    assert status[IDS["alice"]].nat == TEXT and status[IDS["bob"]].nat is None


def test_malformed_report_is_answered_and_ignored() -> None:
    net = make_net()
    register(net)
    sa = _medsrv(net, "alice")

    class Bad(NatReport):
        def build_i(self, sa, msg, now):  # type: ignore[no-untyped-def]
            msg.payloads.append(NotifyPayload(IKEME_NAT_BEHAVIOUR, b"\x00\xffnot text"))

    sa.queue_task(Bad(""), net.now)
    net.run(2.0)
    assert net.nodes["ms"].ext.lookup(IDS["alice"]).nat is None
    assert sa.established  # the exchange was answered: the SA lives on


@pytest.mark.parametrize(("data", "text"), [
    (b"mapping EIM", "mapping EIM"), (b"", None), (b"x" * (MAX_TEXT + 1), None), (b"a\nb", None),
    (bytes([0xC3, 0xA9]), None),
])
def test_decode(data: bytes, text: str | None) -> None:
    assert decode_nat(data) == text


def test_encode_is_printable_and_bounded() -> None:
    assert decode_nat(encode_nat("é" + "x" * 400)) == "?" + "x" * (MAX_TEXT - 1)
