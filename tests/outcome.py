"""Whether tests failed while a module- or test-scoped resource stood, for fixtures that keep a lab's files
(logs, captures) only then (``scenarios.lab.lab_session(..., failed=...)``): a fixture's body does not see
its tests fail, pytest raises nothing at its ``yield``."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def failed_since(request: pytest.FixtureRequest) -> Callable[[], bool]:
    """A check, asked at the fixture's end: did the session count more failed tests than now?"""
    before = request.session.testsfailed
    return lambda: request.session.testsfailed > before
