"""What the info level says about a CHILD_SA the data plane installs (docs/operations.md, "Logging"):
the "CHILD_SA ... established with SPIs ... and TS ..." line, as charon's level 1; the installation
itself at debug, and a refused installation as an error with its reason."""

from __future__ import annotations

import logging

import pytest

from core_ike.ike import events as ev
from tests.unit.daemon.test_glue_esp import FakeDataPlane, Glued
from tests.unit.ike.ike_pair import make_pair


def _up(dp_b: FakeDataPlane) -> Glued:
    g = Glued(make_pair(esp="aes128gcm16", b_esp="aes128gcm16"), FakeDataPlane(), dp_b)
    g.p.a.initiate("home", now=g.p.now)
    g.run()
    return g


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_an_installed_child_sa_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    g = _up(FakeDataPlane())
    (est,) = g.of("b", ev.ChildSaEstablished)
    info = _lines(caplog, logging.INFO)
    spis = f"{est.keys.spi_in:08x}_i {est.keys.spi_out:08x}_o"
    assert any(x.startswith(f"CHILD_SA net{{{est.unique_id}}} established with SPIs {spis} and TS ") for x in info)
    assert not [x for x in info if x.startswith("installed CHILD_SA")]
    assert [x for x in _lines(caplog, logging.DEBUG) if x.startswith(f"installed CHILD_SA net{{{est.unique_id}}} ")]


def test_a_refused_installation_is_an_error_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _up(FakeDataPlane(refuse=lambda p: True))
    (err,) = [x for x in _lines(caplog, logging.ERROR) if x.startswith("unable to install CHILD_SA net{")]
    assert "the fake data plane could not install it (AES_GCM_16_128/NO_EXT_SEQ): no AES_GCM_16" in err
