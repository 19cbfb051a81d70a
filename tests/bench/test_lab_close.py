"""How a run ends its lab (scenarios.lab.netns.Lab.close, which ``with lab:`` calls and every bench that
builds a lab goes through): a run that passed leaves no directory behind, a failed one keeps its files and
says where, a lab torn down earlier still loses its directory, a detached one keeps it."""

from __future__ import annotations

import shutil

import pytest

from scenarios.lab.netns import Lab, cleanup_stale

pytestmark = [pytest.mark.netns, pytest.mark.needs("root", "iproute2")]


def test_a_passed_run_removes_the_labs_namespaces_and_directory(capsys: pytest.CaptureFixture[str]) -> None:
    with Lab() as lab:
        lab.add_host("alice")
        (lab.host_dir("alice") / "daemon.log").write_text("a line\n")
        ns = lab.ns("alice")
    assert not lab.dir.exists()
    assert ns not in lab.run(None, ["ip", "netns", "list"]).stdout
    assert capsys.readouterr().err == ""


def test_a_failed_run_keeps_the_files_and_says_where(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="the run failed"), Lab() as lab:
        lab.add_host("alice")
        log = lab.host_dir("alice") / "daemon.log"
        log.write_text("what went wrong\n")
        raise RuntimeError("the run failed")
    try:
        assert log.read_text() == "what went wrong\n"
        assert lab.ns("alice") not in lab.run(None, ["ip", "netns", "list"]).stdout  # torn down all the same
        assert f"files of the failed run: {lab.dir}" in capsys.readouterr().err
    finally:
        lab.teardown(remove_dir=True)
    assert not lab.dir.exists()


def test_a_lab_torn_down_inside_the_run_loses_its_directory_when_the_run_passes() -> None:
    with Lab() as lab:
        lab.teardown()  # as a scenario's own cleanup does before its story's end
        assert lab.dir.exists()
    assert not lab.dir.exists()


def test_a_detached_lab_keeps_its_directory() -> None:
    lab = Lab()
    try:
        lab.detach()
        lab.close(passed=True)
        assert lab.dir.exists()
    finally:
        cleanup_stale(lab.prefix)
        shutil.rmtree(lab.dir, ignore_errors=True)
