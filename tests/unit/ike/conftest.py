"""Fixtures shared by the IKE unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from core_ike.ike import creds as creds_mod


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """The issuer signature checks made (their results), counted through creds' verify_certificate_signature."""
    calls: list[bool | None] = []
    real = creds_mod.verify_certificate_signature

    def spy(*a: Any) -> bool | None:
        calls.append(real(*a))
        return calls[-1]

    monkeypatch.setattr(creds_mod, "verify_certificate_signature", spy)
    return calls
