"""How ``lab_session`` (scenarios/lab/topologies.py) ends its lab: a body that passed leaves neither namespaces nor
directory; one that raised, or whose ``failed`` says so (a pytest fixture's tests), keeps the lab's files and
says where: in the exception's notes (under its traceback in the failure output) and on stderr."""

from __future__ import annotations

import shutil
import traceback

import pytest

from scenarios.lab import lab_session, two_hosts
from scenarios.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.needs("root", "iproute2")]


def _namespaces(lab: Lab) -> str:
    return lab.run(None, ["ip", "netns", "list"]).stdout


def test_a_body_that_passed_leaves_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with lab_session(two_hosts, inner=False) as lab:
        (lab.host_dir("alice") / "daemon.log").write_text("a line\n")
        assert lab.ns("alice") in _namespaces(lab)
    assert not lab.dir.exists()
    assert lab.ns("alice") not in _namespaces(lab)
    assert capsys.readouterr().err == ""


def test_a_body_that_raised_keeps_the_files_and_the_failure_says_where(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="the body failed") as info, lab_session(two_hosts, inner=False) as lab:
        log = lab.host_dir("alice") / "daemon.log"
        log.write_text("what went wrong\n")
        raise RuntimeError("the body failed")
    try:
        assert log.read_text() == "what went wrong\n"
        assert lab.ns("alice") not in _namespaces(lab)  # torn down all the same
        where = f"files of the failed run: {lab.dir}"
        assert where in "".join(traceback.format_exception(info.value))  # what pytest prints under the error
        assert where in capsys.readouterr().err
    finally:
        shutil.rmtree(lab.dir, ignore_errors=True)


@pytest.mark.parametrize("failed", [True, False])
def test_a_fixture_tells_through_failed(failed: bool, capsys: pytest.CaptureFixture[str]) -> None:
    said: list[str] = []
    asked: list[bool] = []

    def tests_failed() -> bool:
        asked.append(failed)
        return failed

    with lab_session(two_hosts, inner=False, failed=tests_failed, say=said.append) as lab:
        (lab.host_dir("bob") / "daemon.log").write_text("a line\n")
        assert not asked  # asked at the end, not when built
    try:
        assert asked == [failed]
        assert lab.ns("bob") not in _namespaces(lab)
        assert lab.dir.exists() is failed
        assert said == ([f"lab {lab.prefix}: files of the failed run: {lab.dir}"] if failed else [])
        assert capsys.readouterr().err == ""
    finally:
        shutil.rmtree(lab.dir, ignore_errors=True)
