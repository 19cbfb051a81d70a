"""The state machines of core_ike/ike/state.py and core_ike/me/attempt.py: one mutation point each,
which logs old => new."""

from __future__ import annotations

import logging

import pytest

from core_ike.ike.config import ChildConfig
from core_ike.ike.identity import Identity
from core_ike.ike.state import ChildSa, ChildState
from core_ike.me.attempt import Attempt, AttemptState


def test_child_state_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    c = ChildSa("net", 3, 1, ChildConfig("net"), spi_in=0x1234)
    assert c.state is ChildState.CREATED and not c.state.live
    with caplog.at_level(logging.DEBUG, logger="core_ike.ike"):
        c.set_state(ChildState.INSTALLED)
        c.set_state(ChildState.INSTALLED)  # no change, no line
        c.set_state(ChildState.DELETING)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["CHILD_SA net{3} state change: CREATED => INSTALLED",
                     "CHILD_SA net{3} state change: INSTALLED => DELETING"]
    assert c.state.live and c.state == "DELETING"  # a str: status output shows the name


def test_attempt_state_and_deadline_change_together(caplog: pytest.LogCaptureFixture) -> None:
    a = Attempt("bob", "med", Identity.parse("bob@med"), 0.0, deadline=30.0)
    with caplog.at_level(logging.DEBUG, logger="core_ike.me"):
        a.set_state(AttemptState.CONNECTING, None)
        a.set_state(AttemptState.CALLBACK, 120.0)
    assert a.state is AttemptState.CALLBACK and a.deadline == 120.0 and a.active
    a.set_state(AttemptState.FAILED, None)
    assert not a.active and a.deadline is None
    assert "mediated connection 'bob' state change: connecting => callback" in caplog.text
