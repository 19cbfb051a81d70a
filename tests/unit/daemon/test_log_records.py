"""The daemons' log handlers write a loop turn's lines together, after the turn (core_ike/logutil.py)."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

from core_ike.daemon.startup import log_handler
from core_ike.logutil import TurnBatchedStreamHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def _logger(h: logging.Handler) -> logging.Logger:
    h.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.log_batching")
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_a_turns_lines_are_written_once_after_the_turn() -> None:
    stream = CountingStream()
    log = _logger(TurnBatchedStreamHandler(stream))

    async def main() -> tuple[str, str, int]:
        log.info("one")
        log.info("two")
        during = stream.getvalue()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return during, stream.getvalue(), stream.writes

    during, after, writes = asyncio.run(main())
    assert during == ""
    assert after == "one\ntwo\n"
    assert writes == 1


def test_without_a_loop_each_line_is_written_at_once_and_in_order() -> None:
    stream = CountingStream()
    log = _logger(TurnBatchedStreamHandler(stream))
    log.info("start-up")
    assert stream.getvalue() == "start-up\n"

    async def main() -> None:
        log.info("in the loop")
        await asyncio.to_thread(log.info, "from a thread")  # no loop there: written with what waits
        log.info("last")

    asyncio.run(main())
    logging.getLogger("test.log_batching").handlers[0].flush()
    assert stream.getvalue() == "start-up\nin the loop\nfrom a thread\nlast\n"


def test_file_target_is_batched_and_flushed_on_close(tmp_path: Path) -> None:
    h = log_handler(f"file:{tmp_path}/iked.log", "iked")
    log = _logger(h)

    async def main() -> None:
        log.info("inside")

    async def close_in_turn() -> None:
        log.info("at close")
        h.close()  # before the turn ends: nothing may be lost

    asyncio.run(main())
    asyncio.run(close_in_turn())
    assert (tmp_path / "iked.log").read_text() == "inside\nat close\n"
