"""One real `deploy/install.sh --root DIR` per session, shared by the deploy tests (root needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from unitfiles import installed_root

from tests.guards import require


@pytest.fixture(scope="session")
def installed() -> Iterator[Path]:
    require("root", why="install.sh sets owners; the daemons run as another user")
    yield from installed_root()
