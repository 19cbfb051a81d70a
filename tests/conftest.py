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
import re
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.guards import REQUIRE_ALL, require
from tests.outcome import failed_since

if TYPE_CHECKING:
    from scenarios.lab import Lab

ALLOWED_SKIPS = ("kernel lacks INET_ESP",)
pytest_plugins = ["pytester"]  # tests/test_guards.py runs the needs marker in an inner session


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*components, why=''): components the test needs (tests/guards.py); "
                                       "missing ones skip it, or fail it under IKEME_REQUIRE_ALL=1")


# -- parallel runs (pytest-xdist: ``-n N --dist loadgroup`` in scripts/test.sh) ------------------------
#
# A worker runs whole groups. By default a group is one test module, so a module's fixtures (a lab, a
# browser, a charon pair) are built once. A directory whose tests share one thing that must not be built
# twice or be used by two tests at once is one group:
SHARED_GROUPS = {
    "deploy": "one deploy/install.sh per run (the session fixture ``installed`` of tests/deploy/)",
    "web": "one PostgreSQL, one MariaDB and one portal (lighttpd, eight FastCGI processes) per run",
    "dataplane": "bulk transfers whose captures and offload counters need the CPU to themselves",
    "bench": "bench smoke runs measure CPU and packet rates",
}
# ... and these groups run alone, on the last worker, once the others have ended: what they measure is
# only theirs while nothing runs beside them.
ALONE = ("dataplane", "bench")
# The other groups are handed out longest first, so that no long lab run starts late and holds up the
# end while the other workers idle (xdist's --no-loadscope-reorder keeps this order).
FIRST = ("web", "scenarios", "deploy", "resilience", "interop")


def xdist_group(nodeid: str) -> str:
    """The group of a test: its directory under tests/ when that is one of SHARED_GROUPS, else its
    module. (xdist's own ``xdist_group`` marks are not used: under pytest 9.2 xdist cannot put them into
    the node ids, where its scheduler looks for them.)"""
    path = nodeid.partition("::")[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in SHARED_GROUPS:
        return parts[1]
    return path


def _rank(nodeid: str) -> int:
    parts = nodeid.partition("::")[0].split("/")
    top = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    if top in ALONE:
        return len(FIRST) + 1 + ALONE.index(top)
    return FIRST.index(top) if top in FIRST else len(FIRST)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadgroup by :func:`xdist_group`, formed from the node ids alone (the controller collects
    nothing), with the ALONE groups held back until one worker is left and idle."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down or not self.workqueue or next(iter(self.workqueue)) not in ALONE:
                super()._reschedule(node)
                return
            # A worker holds its last test back (unstarted) until it gets more or is shut down, so
            # one pending test means idle.
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            others = [n for n in self.assigned_work if n is not node]
            if any(not n.shutting_down for n in others):
                node.shutdown()  # it runs its last test and ends; the last worker runs the ALONE groups
            elif not others:
                self._assign_work_unit(node)
            # else: the others are running their last tests; remove_node asks again when they end

        def remove_node(self, node: Any) -> Any:
            crashed = super().remove_node(node)
            for other in list(self.assigned_work):
                self._reschedule(other)
            return crashed

    return GroupScheduling(config, log)


# Every worker collects the suite itself, and xdist aborts the run ("Different tests were collected")
# unless they all collect the same tests. A test file that appears while they collect (written by an
# editor or a generator beside the run) would be seen by some only, so the controller lists the files
# under tests/ once, when it starts the workers, and each worker collects those and no later one.
_FILES_KEY = "ikeme_test_files"


def _test_files(root: Path) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root / "tests"):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        out += [str(Path(d, f).relative_to(root)) for f in files if f.endswith(".py")]
    return sorted(out)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist controller) The list of test files for the worker about to start."""
    config = node.config
    files = getattr(config, "_ikeme_test_files", None)
    if files is None:
        files = config._ikeme_test_files = _test_files(config.rootpath)
    node.workerinput[_FILES_KEY] = files


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """(xdist worker) A Python file under tests/ that was not there when the controller listed them."""
    files = getattr(config, "workerinput", {}).get(_FILES_KEY)
    if files is None or collection_path.suffix != ".py":
        return None
    try:
        rel = collection_path.relative_to(config.rootpath)
    except ValueError:
        return None
    if rel.parts[:1] == ("tests",) and str(rel) not in files:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts alike
        items.sort(key=lambda item: _rank(item.nodeid))  # stable: a module's tests keep their order


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


def _lab(topology: str, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The lab keeps its files when a test failed while it stood (tests/outcome.py)."""
    import scenarios.lab as labs

    with labs.lab_session(getattr(labs, topology), failed=failed_since(request)) as lab:
        yield lab


@pytest.fixture(scope="module")
def nat_lab_per_module(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One ``nat_lab()`` for the test module: alice behind natA, bob behind natB (EIM NATs with the WAN
    drop rule), carol on the internet segment. Flush conntrack between cases that must not share mappings."""
    yield from _lab("nat_lab", request)


@pytest.fixture
def nat_lab_per_test(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh ``nat_lab()`` for one test."""
    yield from _lab("nat_lab", request)


@pytest.fixture(scope="module")
def two_hosts_per_module(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One ``two_hosts()`` lab for the test module: alice 192.0.2.1 <-> bob 192.0.2.2, inner addresses
    10.10.1.1 / 10.10.2.1 on ``lo``."""
    yield from _lab("two_hosts", request)


@pytest.fixture
def two_hosts_per_test(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh ``two_hosts()`` lab for one test."""
    yield from _lab("two_hosts", request)


# A lab whose tests failed keeps its directory (daemon logs, captures) for the post-mortem (lab_session);
# one that passed removes it. A session without failures also removes the lab directories made while it ran whose maker has exited (labs are
# named lab-lb<pid>x..., scenarios.lab.netns.unique_prefix), leaving labs kept by `scenarios/run --keep`
# (marked in scenarios.lab.netns.KEPT_DIR) and those of processes still running (another session's).
_LAB_DIRS_AT_START: set[str] = set()
_LAB_DIR = re.compile(r"lab-lb(\d+)x")


def pytest_sessionstart(session: pytest.Session) -> None:
    _LAB_DIRS_AT_START.update(p.name for p in Path(tempfile.gettempdir()).glob("lab-lb*"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.testsfailed or exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        return
    from scenarios.lab.netns import KEPT_DIR

    kept = {p.name for p in KEPT_DIR.iterdir()} if KEPT_DIR.is_dir() else set()
    for d in Path(tempfile.gettempdir()).glob("lab-lb*"):
        m = _LAB_DIR.match(d.name)
        if d.name in _LAB_DIRS_AT_START or m is None or any(d.name.startswith(f"lab-{k}") for k in kept):
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
