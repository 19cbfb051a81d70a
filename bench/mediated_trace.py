"""The daemons' own lines for ``bench/mediated_setup.py --trace``: a sitecustomize that gives their log
lines microseconds, and the step lines of one setup picked from a daemon's log with their times."""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from pathlib import Path

TRACE_STEPS = re.compile(r"ME_CONNECT|checklist \w+: (NONE|pair \d+: \w+ -> |selected|check \d+ from)|checks stopped|"
                         r"IKE_SA_INIT|IKE_AUTH|established|installed CHILD_SA|control: ")

# put first on the daemons' PYTHONPATH by --trace: their log lines carry microseconds (the shipped format
# has milliseconds, too coarse for steps a fraction of a millisecond apart)
MICROSECOND_LOGS = """\
import logging

_init = logging.Formatter.__init__


def _formatter(self, fmt=None, *args, **kwargs):
    if fmt and "%(msecs)03d" in fmt:
        fmt = fmt.replace("%(msecs)03d", "%(usecs)06d")
    _init(self, fmt, *args, **kwargs)


logging.Formatter.__init__ = _formatter
_record = logging.getLogRecordFactory()


def _factory(*args, **kwargs):
    r = _record(*args, **kwargs)
    r.usecs = int(r.created % 1 * 1e6)
    return r


logging.setLogRecordFactory(_factory)

try:  # the daemons' own formatter (core_ike/daemon/startup.py) writes milliseconds without a format string
    from core_ike.daemon import startup as _startup
except ImportError:
    _startup = None
if _startup is not None and hasattr(_startup, "TimedFormatter"):
    _format = _startup.TimedFormatter.format

    def _timed(self, record):
        s = _format(self, record)
        return s[:8] + f".{int(record.created % 1 * 1e6):06d}" + s[12:] if s[8:9] == "." else s

    _startup.TimedFormatter.format = _timed
"""


def site_dir() -> str:
    """A new directory holding MICROSECOND_LOGS as sitecustomize.py (to put first on the daemons' path)."""
    site = tempfile.mkdtemp(prefix="medtrace-")
    Path(site, "sitecustomize.py").write_text(MICROSECOND_LOGS)
    return site


def step_lines(name: str, log: str, t0: float) -> list[tuple[float, str]]:
    """(time, text) of the TRACE_STEPS lines in daemon ``name``'s ``log``, in ms since ``t0`` (the
    namespaces share the host's clock; the lines carry the time of day, this day's)."""
    lt = time.localtime(t0)
    day = time.mktime((*lt[:3], 0, 0, 0, *lt[6:]))
    out: list[tuple[float, str]] = []
    for line in log.splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d\.\d+) (.*)", line)
        if m and TRACE_STEPS.search(m.group(4)):
            t = day + int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            out.append((t, f"{(t - t0) * 1000:8.2f} ms  {name:<6} {m.group(4)[:150]}"))
    return out


def cpu_ns(pids: list[int]) -> int:
    """CPU time the processes `pids` have run, all their threads, in ns (/proc/PID/task/TID/schedstat, first
    field: time on a CPU, proc(5)); a process gone counts nothing."""
    total = 0
    for pid in pids:
        tasks = Path(f"/proc/{pid}/task")
        with contextlib.suppress(OSError):
            for t in tasks.iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((t / "schedstat").read_text().split()[0])
    return total
