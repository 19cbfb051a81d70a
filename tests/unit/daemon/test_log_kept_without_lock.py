"""A line kept for the write after its loop callback takes no lock (core_ike/daemon/startup.py,
LoopBatchingHandler): the loop does not wait while another thread holds the handler's lock (a write
of that thread's own lines), and the kept line is written after the callback, once that thread is done."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from tests.unit.daemon.logtools import log_lines, run_in_loop


def test_the_loop_keeps_a_line_while_another_thread_holds_the_lock(
        logged: tuple[logging.Logger, Path, logging.Handler]) -> None:
    log, path, handler = logged
    held, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def writer() -> None:
        with handler.lock:  # type: ignore[union-attr]  # as a write from this thread holds it
            held.set()
            released.append(release.wait(10))  # False: the loop waited for the lock (10 s, not forever)
        log.info("from the thread")

    seen: list[list[str]] = []

    async def turn() -> None:
        t = threading.Thread(target=writer)
        t.start()
        held.wait()
        log.info("kept by the loop")  # would wait for the lock, forever, if it took it
        seen.append(log_lines(path))
        release.set()
        t.join()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(done.set_result, None)
        await done
        seen.append(log_lines(path))

    run_in_loop("asyncio", turn)
    assert released == [True]
    # the thread's write takes what the loop kept before its own line
    assert seen == [[], ["kept by the loop", "from the thread"]]
