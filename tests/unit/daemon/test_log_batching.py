"""Log lines of an event-loop callback are formatted and written after it (core_ike/daemon/startup.py,
LoopBatchingHandler; docs/operations.md, "Logging"): in their order, with the time they were logged;
at once for warnings, for lines from outside the loop (other threads), for a full batch, before a
control reply or a notification; and none lost when the daemon stops (run_daemon, SIGTERM)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from core_ike.daemon import startup
from core_ike.daemon.lifecycle import sd_notify
from core_ike.daemon.startup import BATCH_RECORDS, TimedFormatter, log_handler
from tests.unit.daemon.ikedproc import iked
from tests.unit.daemon.logtools import LOOPS, log_lines, run_in_loop


async def _next_callback() -> None:
    """Returns in a loop callback queued after everything the current one queued."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done


@pytest.mark.parametrize("kind", LOOPS)
def test_lines_of_a_callback_are_written_after_it_in_order(kind: str, logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    seen: list[list[str]] = []

    async def turn() -> None:
        log.info("received packet")
        log.debug("parsed IKE_SA_INIT request 0")
        log.info("sending packet")
        seen.append(log_lines(path))  # the callback is still running: nothing written yet
        await _next_callback()
        seen.append(log_lines(path))

    run_in_loop(kind, turn)
    assert seen == [[], ["received packet", "parsed IKE_SA_INIT request 0", "sending packet"]]


def test_a_line_keeps_the_time_it_was_logged(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    stamps: list[logging.LogRecord] = []

    def stamp(r: logging.LogRecord) -> bool:
        r.created, r.msecs = 1700000000.123, 123.0  # as if logged then (filters run before the handler)
        stamps.append(r)
        return True

    log.addFilter(stamp)
    try:
        async def turn() -> None:
            log.info("generating %s request %d", "IKE_AUTH", 1)

        run_in_loop("asyncio", turn)
    finally:
        log.removeFilter(stamp)
    want = TimedFormatter().format(logging.makeLogRecord(dict(stamps[0].__dict__)))
    assert want.startswith(time.strftime("%H:%M:%S", time.localtime(1700000000)) + ".123 ")
    assert path.read_text() == want + "\n"


def test_an_argument_that_changes_later_shows_its_value_when_logged(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    payloads = ["SA", "KE"]
    mapping = {"n": 1}

    async def turn() -> None:
        log.info("generating [ %s ]", payloads)
        log.info("%(n)d SA(s)", mapping)
        log.info("%s", ("fixed", 1))
        payloads.append("AUTH")
        mapping["n"] = 2

    run_in_loop("asyncio", turn)
    assert log_lines(path) == ["generating [ ['SA', 'KE'] ]", "1 SA(s)", "('fixed', 1)"]


@pytest.mark.parametrize("kind", LOOPS)
def test_a_warning_is_written_at_once_after_the_lines_before_it(
        kind: str, logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    seen: list[list[str]] = []

    async def turn() -> None:
        log.info("first")
        log.warning("retransmit 2 of request with message ID 0")
        seen.append(log_lines(path))
        log.info("after")
        seen.append(log_lines(path))
        await _next_callback()
        seen.append(log_lines(path))

    run_in_loop(kind, turn)
    warned = ["first", "retransmit 2 of request with message ID 0"]
    assert seen == [warned, warned, [*warned, "after"]]


def test_a_line_from_another_thread_is_written_at_once(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    seen: list[list[str]] = []

    async def turn() -> None:
        log.info("in the loop")
        t = threading.Thread(target=log.info, args=("from the netlink worker",))
        t.start()
        t.join()
        seen.append(log_lines(path))  # the thread wrote what the loop kept before its own line

    run_in_loop("asyncio", turn)
    assert seen == [["in the loop", "from the netlink worker"]]


def test_threads_and_the_loop_lose_and_mix_no_line(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    n = 300

    def worker(name: str) -> None:
        for i in range(n):
            log.info("%s %d", name, i)

    async def turn() -> None:
        threads = [threading.Thread(target=worker, args=(f"t{k}",)) for k in range(3)]
        for t in threads:
            t.start()
        for i in range(n):
            log.info("loop %d", i)
            if i % 10 == 0:
                await _next_callback()
        for t in threads:
            t.join()

    run_in_loop("asyncio", turn)
    lines = log_lines(path)
    assert len(lines) == 4 * n
    for name in ("loop", "t0", "t1", "t2"):
        assert [x for x in lines if x.split()[0] == name] == [f"{name} {i}" for i in range(n)]


def test_a_full_batch_is_written_within_the_callback(logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, _ = logged
    seen: list[int] = []

    async def turn() -> None:
        for i in range(BATCH_RECORDS - 1):
            log.info("line %d", i)
        seen.append(len(log_lines(path)))
        log.info("line %d", BATCH_RECORDS - 1)
        seen.append(len(log_lines(path)))
        for i in range(BATCH_RECORDS, BATCH_RECORDS + 5):
            log.info("line %d", i)
        seen.append(len(log_lines(path)))

    run_in_loop("asyncio", turn)
    assert seen == [0, BATCH_RECORDS, BATCH_RECORDS]
    assert log_lines(path) == [f"line {i}" for i in range(BATCH_RECORDS + 5)]


def test_close_writes_what_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    h = log_handler(f"file:{path}", "iked")
    log = logging.getLogger("core_ike.test_loop_batching_close")
    log.handlers[:], log.propagate, log.level = [h], False, logging.DEBUG
    try:
        async def turn() -> None:
            log.warning("w")
            log.info("kept")
            h.close()  # e.g. logging.shutdown at exit, while the loop still runs

        run_in_loop("asyncio", turn)
        assert log_lines(path) == ["w", "kept"]
    finally:
        log.handlers[:] = []
        h.close()


def test_a_notification_follows_the_lines_before_it(root_to_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(sock_path))
        manager.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
        seen: list[list[str]] = []
        log = logging.getLogger("core_ike.test_loop_batching_notify")

        async def turn() -> None:
            log.info("reloaded configuration")
            assert sd_notify("READY=1")
            manager.recv(100)
            seen.append(log_lines(root_to_file))  # what the service manager reads right after READY=1

        run_in_loop("asyncio", turn)
    assert seen == [["reloaded configuration"]]


def test_run_daemon_flushes_when_the_loop_ends_with_lines_kept(root_to_file: Path) -> None:
    log = logging.getLogger("core_ike.test_loop_batching_end")

    async def run() -> None:
        log.info("stopping")
        raise KeyboardInterrupt  # Ctrl-C ends the loop inside the callback that logged

    assert startup.run_daemon("iked", run, lambda: None, event_loop="asyncio") == 130
    assert log_lines(root_to_file) == ["stopping"]


def test_iked_log_holds_its_last_lines_after_sigterm(tmp_path: Path) -> None:
    """A real iked logging to a file: after SIGTERM the file ends with its stop lines, and a control
    reply finds the request's debug line in the file already."""
    from core_ike.daemon.ctl import call

    log = tmp_path / "iked-file.log"
    conf = tmp_path / "iked.toml"
    conf.write_text(f"""[daemon]
listen = ["127.0.0.1"]
port = 0
natt_port = 0
control = "{tmp_path}/ctl.sock"
dataplane = "none"
log_level = "debug"
log_target = "file:{log}"
""")
    with iked(conf) as run:
        assert call(str(tmp_path / "ctl.sock"), {"cmd": "stats"})["ok"]
        assert "[core_ike.control] control: stats request read" in log.read_text()
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(30) == 0
    text = log.read_text()
    assert "iked stopping: deleting 0 IKE_SA(s)" in text, text
