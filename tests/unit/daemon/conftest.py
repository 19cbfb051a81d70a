"""Fixtures shared by the daemon tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from core_ike.daemon.startup import log_handler


@pytest.fixture
def root_to_file(tmp_path: Path) -> Iterator[Path]:
    """The root logger to a file (as setup_logging sets it up); `_daemon_log` logs through it."""
    path = tmp_path / "root.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    h = log_handler(f"file:{path}", "iked")
    root.handlers[:], root.level = [h], logging.INFO
    try:
        yield path
    finally:
        root.handlers[:], root.level = saved
        h.close()


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path, logging.Handler]]:
    """A logger writing to a file through the daemons' file handler: (logger, file, handler)."""
    path = tmp_path / "d.log"
    h = log_handler(f"file:{path}", "iked")
    log = logging.getLogger("core_ike.test_log_file")
    saved = log.handlers[:], log.propagate, log.level
    log.handlers[:], log.propagate, log.level = [h], False, logging.DEBUG
    try:
        yield log, path, h
    finally:
        log.handlers[:], log.propagate, log.level = saved
        h.close()
