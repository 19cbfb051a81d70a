"""Daemon lifecycle pieces that need no engine: readiness notification and configuration diffs.

sd_notify: systemd's readiness protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the
unix socket named by `$NOTIFY_SOCKET` (a leading `@` names an abstract socket). Without the variable
nothing is sent, so the daemons need no systemd. See docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from ..ike.config import IkeConfig
from .startup import flush_logs

log = logging.getLogger("core_ike.daemon")


def sd_notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=...") to the service manager; False when there is none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    flush_logs()  # whoever reads the notification may read the log next: the lines before it are there
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(lines).encode(), addr)
    except OSError as e:
        log.warning("cannot notify the service manager at %s: %s", path, e)
        return False
    return True


def monotonic_usec() -> str:
    """`MONOTONIC_USEC=` that must accompany `RELOADING=1` (systemd's Type=notify-reload)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


@dataclass
class ConfigDiff:
    """What a reload changes, by connection name (order of the new configuration)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" + (f" ({', '.join(v)})" if v and k != "unchanged" else "")
                 for k, v in (("added", self.added), ("removed", self.removed), ("changed", self.changed),
                              ("unchanged", self.unchanged))]
        return ", ".join(parts)


def diff_configs(old: list[IkeConfig], new: list[IkeConfig]) -> tuple[ConfigDiff, list[IkeConfig]]:
    """Compare two connection lists; returns the diff and the list to run with, which keeps the old
    object of every unchanged connection (live SAs keep pointing at their own config)."""
    before = {c.name: c for c in old}
    d = ConfigDiff()
    merged: list[IkeConfig] = []
    for c in new:
        prev = before.get(c.name)
        if prev is None:
            d.added.append(c.name)
            merged.append(c)
        elif prev == c:
            d.unchanged.append(c.name)
            merged.append(prev)
        else:
            d.changed.append(c.name)
            merged.append(c)
    names = {c.name for c in new}
    d.removed = [c.name for c in old if c.name not in names]
    return d, merged
