"""Suite-wide rules.

With IKEME_REQUIRE_ALL=1 (set by scripts/test.sh, the README's test command, which installs every
component first) a test may not skip because a component is missing or root is lacking: such a skip
would hide a broken setup, so it fails instead. The only skips allowed there are the ones this machine
cannot do at all (kernel ESP), listed in ALLOWED_SKIPS.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

ALLOWED_SKIPS = ("kernel lacks INET_ESP",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("IKEME_REQUIRE_ALL") != "1":
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(a in reason for a in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped where every component is installed ({reason}); "
                       "a skip here would hide a broken setup")
