"""Suite-wide rules.

What a test needs (root, strongSwan, lighttpd, ...) is declared with the ``needs`` marker of
tests/guards.py and checked here before the test's fixtures are set up.

With IKEME_REQUIRE_ALL=1 (set by scripts/test.sh, the README's test command, which installs every
component first) a test may not skip because a component is missing or root is lacking: such a skip
would hide a broken setup, so it fails instead (tests/guards.py fails it directly; any other skip is
turned into a failure below). The only skips allowed there are the ones this machine cannot do at all
(kernel ESP), listed in ALLOWED_SKIPS.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.guards import REQUIRE_ALL, require

if TYPE_CHECKING:
    from scenarios.lab import Lab

ALLOWED_SKIPS = ("kernel lacks INET_ESP",)
pytest_plugins = ["pytester"]  # tests/test_guards.py runs the needs marker in an inner session


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*components, why=''): components the test needs (tests/guards.py); "
                                       "missing ones skip it, or fail it under IKEME_REQUIRE_ALL=1")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        require(*mark.args, why=mark.kwargs.get("why", ""))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get(REQUIRE_ALL) != "1":
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(a in reason for a in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped where every component is installed ({reason}); "
                       "a skip here would hide a broken setup")


# -- labs (scenarios/lab): imported when a test asks for one, so unit-test runs need no pyroute2 ----------


def _lab(topology: str) -> Iterator[Lab]:
    import scenarios.lab as labs

    with labs.lab_session(getattr(labs, topology)) as lab:
        yield lab


@pytest.fixture(scope="module")
def nat_lab_per_module() -> Iterator[Lab]:
    """One ``nat_lab()`` for the test module: alice behind natA, bob behind natB (EIM NATs with the WAN
    drop rule), carol on the internet segment. Flush conntrack between cases that must not share mappings."""
    yield from _lab("nat_lab")


@pytest.fixture
def nat_lab_per_test() -> Iterator[Lab]:
    """A fresh ``nat_lab()`` for one test."""
    yield from _lab("nat_lab")


@pytest.fixture(scope="module")
def two_hosts_per_module() -> Iterator[Lab]:
    """One ``two_hosts()`` lab for the test module: alice 192.0.2.1 <-> bob 192.0.2.2, inner addresses
    10.10.1.1 / 10.10.2.1 on ``lo``."""
    yield from _lab("two_hosts")


@pytest.fixture
def two_hosts_per_test() -> Iterator[Lab]:
    """A fresh ``two_hosts()`` lab for one test."""
    yield from _lab("two_hosts")
