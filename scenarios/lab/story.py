"""Printing a scenario as a story: timed steps, details, checks, and the labs to tear down at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Protocol, TextIO

from scenarios.lab.netns import Lab
from scenarios.lab.pcap import Packet


class Stoppable(Protocol):
    def stop(self) -> object: ...


class Story:
    """Collects what a scenario does and whether its checks passed.

    ``keep``: leave the labs (namespaces, daemons) running after the scenario for inspection.
    """

    def __init__(self, name: str, keep: bool = False, out: TextIO = sys.stdout) -> None:
        self.name = name
        self.keep = keep
        self.out = out
        self.t0 = time.monotonic()
        self.failures: list[str] = []
        self.checks = 0
        self.labs: list[Lab] = []

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def lab(self, lab: Lab) -> Lab:
        """Register a lab for teardown (unless ``keep``) and return it."""
        self.labs.append(lab)
        self.say(f"lab prefix {lab.prefix}, files in {lab.dir}")
        return lab

    def end(self, *daemons: Stoppable) -> None:
        """Stop `daemons` (gracefully: they delete their SAs) at the scenario's end, unless ``keep``
        leaves them running for inspection as the lab's namespaces are (teardown stops them otherwise)."""
        if self.keep:
            return
        for d in daemons:
            d.stop()

    def step(self, text: str) -> None:
        self._print(f"[{time.monotonic() - self.t0:7.2f}s] {text}")

    def say(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self._print(f"           {line}")

    def packets(self, title: str, packets: Iterable[Packet], limit: int = 8) -> None:
        pkts = list(packets)
        self.say(f"{title}: {len(pkts)} packet(s)")
        for p in pkts[:limit]:
            self.say(f"  {p}")
        if len(pkts) > limit:
            self.say(f"  ... {len(pkts) - limit} more")

    def check(self, ok: bool, text: str) -> bool:
        self.checks += 1
        self._print(f"           {'PASS' if ok else 'FAIL'}  {text}")
        if not ok:
            self.failures.append(text)
        return ok

    def finish(self) -> int:
        """Tear the labs down (unless ``keep``), print the verdict; returns the exit code."""
        if self.keep:
            for lab in self.labs:
                lab.detach()
                self.say(f"kept: namespaces {lab.prefix}*, files {lab.dir}; "
                         f"remove with: scenarios/run --cleanup {lab.prefix}")
        else:
            # a passed run leaves nothing behind; a failed one keeps its files (configs, logs, captures)
            for lab in self.labs:
                lab.close(passed=not self.failures, say=self.say)
        verdict = "PASSED" if not self.failures else f"FAILED ({len(self.failures)} of {self.checks} checks)"
        self.step(f"{self.name}: {verdict}")
        for f in self.failures:
            self.say(f"failed: {f}")
        return 0 if not self.failures else 1
