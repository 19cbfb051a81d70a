"""One real `deploy/install.sh --root DIR` per session, shared by the deploy tests (root needed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from unitfiles import installed_root


@pytest.fixture(scope="session")
def installed() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (install.sh sets owners; the daemons run as another user)")
    yield from installed_root()
