"""check_public (core_ike/crypto/dh.py): it refuses a peer's KE value exactly where `compute` would, so
a responder can check it before its IKE_SA_INIT response and compute the secret after (RFC 8031 2.3,
RFC 6989 2.1, 2.3, RFC 7748 5)."""

from __future__ import annotations

import pytest

from core_ike.constants import DhId
from core_ike.crypto import dh
from core_ike.crypto.dh import _SMALL_ORDER, SUPPORTED_GROUPS, check_public, new_key_exchange, public_length
from core_ike.errors import ProtocolError
from core_ike.rng import SeededRng


def _encodings(group: int) -> list[bytes]:
    """Each small-order u of `group` as sent: canonical, + p where that still fits, and (Curve25519) with
    the ignored top bit set."""
    p, mask, bad = _SMALL_ORDER[group]
    n = public_length(group)
    out = []
    for u in bad:
        out.append(u.to_bytes(n, "little"))
        if u + p < 1 << (8 * n - (1 if mask else 0)):
            out.append((u + p).to_bytes(n, "little"))
        if mask:
            out.append((u | 1 << 255).to_bytes(n, "little"))
    return out


@pytest.mark.parametrize("group", [DhId.CURVE25519, DhId.CURVE448])
def test_small_order_points_are_refused_as_compute_refuses_them(group: int) -> None:
    ke = new_key_exchange(group, SeededRng("x"))
    values = _encodings(group)
    assert len(values) >= 5
    for v in values:
        with pytest.raises(ProtocolError):
            ke.compute(v)
        with pytest.raises(ProtocolError) as e:
            check_public(group, v)
        assert "all-zero" in str(e.value)


@pytest.mark.parametrize("group", sorted(SUPPORTED_GROUPS))
def test_a_real_public_value_passes_and_computes(group: int) -> None:
    rng = SeededRng("y")
    ours, theirs = new_key_exchange(group, rng), new_key_exchange(group, rng)
    check_public(group, theirs.public)
    assert ours.compute(theirs.public) == theirs.compute(ours.public)


@pytest.mark.parametrize("group", sorted(SUPPORTED_GROUPS))
def test_a_wrong_length_is_refused(group: int) -> None:
    with pytest.raises(ProtocolError, match="length"):
        check_public(group, bytes(public_length(group) - 1) + b"\x05" * 2)


def test_modp_out_of_range_and_ecp_off_the_curve_are_refused() -> None:
    n = public_length(DhId.MODP_2048)
    for y in (1, 0):
        with pytest.raises(ProtocolError, match="range"):
            check_public(DhId.MODP_2048, y.to_bytes(n, "big"))
    with pytest.raises(ProtocolError, match="range"):
        check_public(DhId.MODP_2048, b"\xff" * n)
    good = new_key_exchange(DhId.ECP_256, SeededRng("z")).public
    off = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ProtocolError):
        check_public(DhId.ECP_256, off)
    with pytest.raises(ProtocolError):
        new_key_exchange(DhId.ECP_256, SeededRng("w")).compute(off)


@pytest.mark.parametrize("group", [DhId.ECP_256, DhId.ECP_384])
def test_an_ecp_point_check_public_loaded_is_taken_by_compute_once(group: int) -> None:
    rng = SeededRng("kept")
    ours, again, theirs = (new_key_exchange(group, rng) for _ in range(3))
    dh._ECP_CHECKED.clear()
    check_public(group, theirs.public)
    assert (group, theirs.public) in dh._ECP_CHECKED
    z = ours.compute(theirs.public)
    assert z == theirs.compute(ours.public)  # the kept point gives the secret a fresh load gives
    assert (group, theirs.public) not in dh._ECP_CHECKED  # taken, not held for the IKE_SA's lifetime
    assert again.compute(theirs.public) == theirs.compute(again.public)  # without a check: loaded anew


def test_points_checked_but_never_computed_are_bounded() -> None:
    dh._ECP_CHECKED.clear()
    rng = SeededRng("bound")
    values = [new_key_exchange(DhId.ECP_256, rng).public for _ in range(dh._ECP_CHECKED_MAX + 3)]
    for v in values:
        check_public(DhId.ECP_256, v)
    assert 0 < len(dh._ECP_CHECKED) <= dh._ECP_CHECKED_MAX
    assert (DhId.ECP_256, values[-1]) in dh._ECP_CHECKED
    dh._ECP_CHECKED.clear()
