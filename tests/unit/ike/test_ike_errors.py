"""Errors typed by consequence (core_ike/errors.py): local misuse is a LocalUsageError, never a
ProtocolError; authentication failures are recognised by type (AuthenticationFailed, or the peer's
AUTHENTICATION_FAILED), carried as IkeSaFailed.authentication and IkeSa.failure, not by message text."""

from __future__ import annotations

import pytest
from ike_pair import make_pair

from core_ike.constants import NotifyType
from core_ike.errors import LocalUsageError, ProtocolError
from core_ike.ike import events as ev


def test_local_misuse_is_not_a_protocol_error() -> None:
    p = make_pair()
    with pytest.raises(LocalUsageError) as ei:
        p.a.initiate("no-such-connection", now=p.now)
    assert not isinstance(ei.value, ProtocolError)
    p.a.configs[0].remote_addrs = ["%any"]
    with pytest.raises(LocalUsageError, match="no remote address"):
        p.a.initiate("home", now=p.now)


def test_authentication_failure_is_typed_on_both_sides() -> None:
    p = make_pair()
    p.b.creds.shared.clear()
    p.b.creds.add_psk("another-secret-entirely", "alice@test", "bob@test")
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    (fa,), (fb,) = p.of("a", ev.IkeSaFailed), p.of("b", ev.IkeSaFailed)
    assert fa.authentication and fb.authentication
    assert fa.notify == fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert sa.failure is not None and sa.failure.authentication and not sa.failure.timeout


def test_missing_own_credentials_count_as_authentication_failure() -> None:
    p = make_pair()
    p.a.creds.shared.clear()
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.authentication and sa.failure is not None and "no shared key found" in sa.failure.reason


def test_other_failures_are_not_authentication() -> None:
    p = make_pair(b_proposals="aes256-sha384-modp3072")  # nothing in common: NO_PROPOSAL_CHOSEN
    sa = p.a.initiate("home", now=p.now)
    p.pump()
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert fa.notify == NotifyType.NO_PROPOSAL_CHOSEN and not fa.authentication
    assert sa.failure is not None and not sa.failure.authentication
    p = make_pair()
    p.drop = lambda side, data: True  # the peer never answers
    sa = p.a.initiate("home", now=p.now)
    p.advance(sa.config.retransmit.give_up_after(True) + 1.0)
    (fa,) = p.of("a", ev.IkeSaFailed)
    assert not fa.authentication and sa.failure is not None and sa.failure.timeout
