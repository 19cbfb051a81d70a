"""Log destinations (docs/configuration.md, "Logging"): syslog lines carry the program's tag and
facility, journald gets priority prefixes instead of time stamps, an unusable destination is a
one-line start-up error, and a start-up failure also reaches a log that is not stderr."""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from core_ike.daemon.startup import JournalFormatter, log_handler, one_line, report_failure, under_journald
from core_ike.errors import LocalError


@pytest.fixture
def syslogd(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket standing in for /dev/log."""
    path = str(tmp_path / "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()


def _record(level: int, msg: str, name: str = "core_ike.ike") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def test_syslog_line_has_tag_facility_and_priority(syslogd: tuple[str, socket.socket]) -> None:
    path, server = syslogd
    h = log_handler("syslog:local3", "mediation-server", syslog_socket=path)
    try:
        h.handle(_record(logging.WARNING, "IKE_SA medsrv[1] established"))
        data = server.recv(4096)
    finally:
        h.close()
    # PRI = facility local3 (19) * 8 + warning (4) = 156 (RFC 5424 6.2.1)
    assert data == f"<156>mediation-server[{os.getpid()}]: [core_ike.ike] IKE_SA medsrv[1] established\0".encode()


def test_syslog_that_went_away_drops_lines_quietly(syslogd: tuple[str, socket.socket],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, server = syslogd
    h = log_handler("syslog", "iked", syslog_socket=path)
    server.close()
    os.unlink(path)
    try:
        h.handle(_record(logging.INFO, "lost"))
    finally:
        h.close()
    assert capsys.readouterr().err == ""


def test_no_syslog_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(LocalError) as e:
        log_handler("syslog", "iked", syslog_socket=str(tmp_path / "nothing"))
    assert str(e.value) == f"cannot log to syslog: {tmp_path}/nothing: No such file or directory"


def test_unwritable_log_file_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(LocalError) as e:
        log_handler(f"file:{tmp_path}/nodir/iked.log", "iked")
    assert str(e.value) == f"cannot write the log to {tmp_path}/nodir/iked.log: No such file or directory"


def test_journald_is_recognised_by_its_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w") as f, open(tmp_path / "other", "w") as g:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(f) and not under_journald(g)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not under_journald(f)


def test_journal_lines_carry_their_priority() -> None:
    fmt = JournalFormatter("[%(name)s] %(message)s")
    assert fmt.format(_record(logging.INFO, "sending DPD request")) == "<6>[core_ike.ike] sending DPD request"
    assert fmt.format(_record(logging.WARNING, "w")) == "<4>[core_ike.ike] w"
    assert fmt.format(_record(logging.ERROR, "a\nb")) == "<3>[core_ike.ike] a\n<3>b"
    assert fmt.format(_record(logging.DEBUG, "d")) == "<7>[core_ike.ike] d"


def test_failure_also_goes_to_the_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    h = log_handler(f"file:{tmp_path}/iked.log", "iked")
    root.handlers[:] = [h]
    try:
        report_failure("iked", "cannot listen on 192.0.2.7[500]: Cannot assign requested address")
    finally:
        h.close()
        root.handlers[:] = saved
    assert capsys.readouterr().err == "iked: cannot listen on 192.0.2.7[500]: Cannot assign requested address\n"
    assert (tmp_path / "iked.log").read_text().endswith(
        "[iked] cannot start: cannot listen on 192.0.2.7[500]: Cannot assign requested address\n")


@pytest.mark.parametrize("exc,text", [
    (FileNotFoundError(2, "No such file or directory", "/etc/ikeme/x.key"), "/etc/ikeme/x.key: No such file or directory"),
    (PermissionError(13, "Permission denied"), "Permission denied"),
    (LocalError("two\n  lines"), "two lines"),
    (ValueError(), "ValueError"),
])
def test_one_line(exc: BaseException, text: str) -> None:
    assert one_line(exc) == text


def test_stream_target_has_time_stamps() -> None:
    h = log_handler("stdout", "iked")
    assert h.formatter is not None
    line = h.formatter.format(_record(logging.INFO, "x"))
    assert line.endswith(" [core_ike.ike] x") and line[2] == ":"
    assert isinstance(h, logging.StreamHandler) and not isinstance(h.stream, io.StringIO)
