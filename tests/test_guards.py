"""tests/guards.py and the ``needs`` marker: a missing component skips with its reason, fails under
IKEME_REQUIRE_ALL=1, and is checked before the test's fixtures run."""

from __future__ import annotations

import pytest

from tests import guards

INNER = '''
import pytest
from tests.guards import needs

pytestmark = needs("root", "nothing-here", why="the lab")

@pytest.fixture
def costly():
    raise AssertionError("a fixture ran for a test that cannot run")

def test_marked(costly):
    pass
'''


@pytest.fixture
def absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(guards.COMPONENTS, "nothing-here", lambda: "/nowhere is missing (Debian package none)")
    monkeypatch.setitem(guards.COMPONENTS, "root", lambda: None)


def test_require_skips_with_the_reason(absent: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(guards.REQUIRE_ALL, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^the lab: /nowhere is missing \(Debian package none\)$"):
        guards.require("root", "nothing-here", why="the lab")
    guards.require("root")  # present: no exception


def test_require_fails_where_everything_must_be_installed(absent: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(guards.REQUIRE_ALL, "1")
    with pytest.raises(pytest.fail.Exception, match=r"/nowhere is missing .*IKEME_REQUIRE_ALL=1"):
        guards.require("nothing-here")


def test_unknown_component_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown components"):
        guards.needs("charon")  # the component is called "strongswan"


@pytest.mark.parametrize("require_all,outcome", [("", "skipped"), ("1", "errors")])
def test_marker_acts_before_fixtures(absent: None, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                     require_all: str, outcome: str) -> None:
    monkeypatch.setenv(guards.REQUIRE_ALL, require_all)
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_inprocess("-p", "tests.conftest", "-rs")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*the lab: /nowhere is missing (Debian package none)*"])
    result.stdout.no_fnmatch_line("*a fixture ran*")
