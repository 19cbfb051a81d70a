"""Fixtures of the interop tests (the labs themselves come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scenarios.lab import Lab
from tests.interop.charon_pair import Pair, nat_pair


@pytest.fixture(scope="module", name="nat_pair")
def nat_pair_fixture(nat_lab_per_module: Lab) -> Iterator[Pair]:
    """Our iked on alice behind natA and charon on carol, one PSK tunnel (tests/interop/charon_pair.py)."""
    yield from nat_pair(nat_lab_per_module)
