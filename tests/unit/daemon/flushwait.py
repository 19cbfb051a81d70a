"""Waiting on a transport's read batches instead of polling: the transports end every batch they read with
`_settle()` (core_ike/io/transport.py, itself or through `flush()`) or `flush()` (a stand-in transport that
core_ike/io/portpool.py reads for), so a condition on what they received can only change then."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def after_batches(tr: Any, cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Return once `cond()` holds, checked now and after each read batch `tr` finishes."""
    batch = asyncio.Event()
    name = "_settle" if hasattr(tr, "_settle") else "flush"
    end = getattr(tr, name)

    def ended() -> None:
        end()
        batch.set()

    setattr(tr, name, ended)
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                batch.clear()
                await batch.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    finally:
        setattr(tr, name, end)


async def datagrams(sock: Any, want: int, timeout: float = 10.0) -> list[bytes]:
    """The next `want` datagrams on the non-blocking socket `sock`, read as they arrive."""
    loop = asyncio.get_running_loop()
    out: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < want:
                out.append(await loop.sock_recv(sock, 65535))
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {want} datagrams (got {len(out)})") from None
    return out
