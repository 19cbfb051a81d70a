"""CHILD_SAs and what the data plane can install: proposals restricted to the declared ESP transforms
(as initiator and as responder), a clear failure when nothing is left (at load, at `up`), and a CHILD_SA
the data plane refuses anyway deleted with a DELETE and reported as that CHILD_SA's failure.

Two sans-IO engines back to back (tests/unit/ike/ike_pair.py), each with the daemon's glue over a fake
data plane that records what it was asked to install.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from core_ike.constants import EncrId
from core_ike.daemon.config import DaemonConfig, DaemonSettings, load
from core_ike.daemon.control import Waiter
from core_ike.daemon.glue import DataPlaneGlue, engine_child_deleter
from core_ike.daemon.runtime import Daemon
from core_ike.errors import LocalError
from core_ike.esp import USERSPACE, EspTransforms
from core_ike.ike import events as ev
from core_ike.ike.config import ChildConfig
from core_ike.io.dataplane import DataPlaneError, Direction, PolicyParams, SaParams, SaUsage
from core_ike.io.xfrm import XFRM_TRANSFORMS
from tests.unit.ike.ike_pair import Pair, make_pair


class FakeDataPlane:
    """Records SAs and policies; `refuse(params)` True makes install_sa fail like a kernel would."""

    def __init__(self, caps: EspTransforms = USERSPACE, refuse: Any = None, name: str = "fake") -> None:
        self.name = name
        self.esp_transforms = caps
        self.refuse = refuse
        self.sas: dict[tuple[int, Direction], SaParams] = {}
        self.policies: list[PolicyParams] = []
        self.calls: list[str] = []

    def allocate_spi(self, src: str, dst: str, reqid: int = 0) -> int:
        return 0x1000 + len(self.sas)

    def install_sa(self, params: SaParams) -> None:
        self.calls.append(f"install {params.direction.name}")
        if self.refuse is not None and self.refuse(params):
            raise DataPlaneError(f"no {params.encr_id.name} in this kernel (EPROTONOSUPPORT)")
        self.sas[(params.spi, params.direction)] = params

    def update_sa(self, spi: int, direction: Direction, **kw: Any) -> None:
        return None

    def delete_sa(self, spi: int, direction: Direction) -> None:
        self.calls.append(f"delete {direction.name}")
        self.sas.pop((spi, direction), None)

    def install_policy(self, policy: PolicyParams) -> None:
        self.policies.append(policy)

    def delete_policy(self, policy: PolicyParams) -> None:
        self.policies.remove(policy)

    def query_usage(self, spi: int, direction: Direction) -> SaUsage:
        return SaUsage(0, 0, 0.0)

    def next_event(self) -> None:
        return None

    def close(self) -> None:
        return None


class Glued:
    """A pair whose events go through each side's glue, in order, as the daemon's runtime does."""

    def __init__(self, pair: Pair, dp_a: FakeDataPlane | None, dp_b: FakeDataPlane | None) -> None:
        self.p = pair
        self.glues: dict[str, DataPlaneGlue] = {}
        for side, dp in (("a", dp_a), ("b", dp_b)):
            if dp is not None:
                eng = pair.engine(side)
                self.glues[side] = DataPlaneGlue(dp, engine_child_deleter(eng))
                eng.extensions.append(self.glues[side])
        self.out: dict[str, list[object]] = {"a": [], "b": []}
        self._seen = {"a": 0, "b": 0}

    def run(self) -> None:
        for _ in range(20):
            self.p.pump()
            moved = False
            for side in "ab":
                evs = self.p.events_a if side == "a" else self.p.events_b
                while self._seen[side] < len(evs):
                    e = evs[self._seen[side]]
                    self._seen[side] += 1
                    glue = self.glues.get(side)
                    self.out[side].append(glue.handle(e) if glue is not None else e)
                    moved = True
            if not moved:
                return

    def of(self, side: str, kind: type) -> list[Any]:
        return [e for e in self.out[side] if isinstance(e, kind)]


def _up(esp_a: str, esp_b: str, dp_a: FakeDataPlane | None, dp_b: FakeDataPlane | None) -> Glued:
    g = Glued(make_pair(esp=esp_a, b_esp=esp_b), dp_a, dp_b)
    g.p.a.initiate("home", now=g.p.now)
    g.run()
    return g


def _encr(dp: FakeDataPlane) -> set[EncrId]:
    return {p.encr_id for p in dp.sas.values()}


# -- (a) proposals restricted to what the data plane installs --------------------------------------


def test_responder_skips_what_its_data_plane_cannot_install() -> None:
    """The peer prefers ChaCha20-Poly1305; a responder whose data plane lacks it picks AES-GCM-16."""
    a, b = FakeDataPlane(), FakeDataPlane(XFRM_TRANSFORMS, name="xfrm")
    g = _up("chacha20poly1305,aes128gcm16", "chacha20poly1305,aes128gcm16", a, b)
    (est,) = g.of("b", ev.ChildSaEstablished)
    assert est.proposal == "AES_GCM_16_128/NO_EXT_SEQ"
    assert _encr(a) == _encr(b) == {EncrId.AES_GCM_16} and len(a.sas) == len(b.sas) == 2


def test_responder_with_full_data_plane_takes_the_peers_first_choice() -> None:
    a, b = FakeDataPlane(), FakeDataPlane()
    g = _up("chacha20poly1305,aes128gcm16", "aes128gcm16,chacha20poly1305", a, b)
    (est,) = g.of("b", ev.ChildSaEstablished)
    assert est.proposal == "CHACHA20_POLY1305/NO_EXT_SEQ"
    assert _encr(a) == _encr(b) == {EncrId.CHACHA20_POLY1305}
    k = g.of("a", ev.ChildSaEstablished)[0].keys
    assert len(k.key_in) == len(k.key_out) == 36 and a.sas[(k.spi_in, Direction.IN)].encr_key_bits == 256


def test_initiator_offers_only_what_its_data_plane_installs() -> None:
    a, b = FakeDataPlane(XFRM_TRANSFORMS, name="xfrm"), FakeDataPlane()
    g = _up("chacha20poly1305,aes128ccm12,aes256gcm16", "chacha20poly1305,aes256gcm16", a, b)
    (est,) = g.of("a", ev.ChildSaEstablished)
    assert est.proposal == "AES_GCM_16_256/NO_EXT_SEQ"  # b would have preferred chacha: not offered
    assert _encr(a) == {EncrId.AES_GCM_16}


def test_initiator_with_nothing_installable_fails_naming_the_algorithm() -> None:
    a = FakeDataPlane(XFRM_TRANSFORMS, name="xfrm")
    g = _up("chacha20poly1305,aes128gcm8", "chacha20poly1305", a, FakeDataPlane())
    (failed,) = g.of("a", ev.ChildSaFailed)
    assert failed.reason == ("esp_proposals 'chacha20poly1305,aes128gcm8' of CHILD_SA 'net': the xfrm data plane "
                             "cannot install CHACHA20_POLY1305, AES_GCM_8_128")
    assert not g.of("a", ev.ChildSaEstablished) and not a.sas


def test_second_child_with_nothing_installable_fails_alone() -> None:
    """CREATE_CHILD_SA: the IKE_SA and its first CHILD_SA stay; the other CHILD_SA fails locally."""
    a = FakeDataPlane(XFRM_TRANSFORMS, name="xfrm")
    g = _up("aes128gcm16", "aes128gcm16,chacha20poly1305", a, FakeDataPlane())
    cfg = g.p.a.config("home")
    cfg.children.append(ChildConfig("fast", local_ts=["10.1.1.0/24"], remote_ts=["10.2.1.0/24"],
                                    esp_proposals="chacha20poly1305"))
    g.p.a.initiate("home", "fast", now=g.p.now)
    g.run()
    (failed,) = g.of("a", ev.ChildSaFailed)
    assert failed.name == "fast" and "xfrm data plane cannot install CHACHA20_POLY1305" in failed.reason
    (sa,) = g.p.a.ike_sas()
    assert sa.established and [c.name for c in sa.children.values()] == ["net"]


def test_responder_with_nothing_installable_answers_no_proposal_chosen(caplog: pytest.LogCaptureFixture) -> None:
    b = FakeDataPlane(XFRM_TRANSFORMS, name="xfrm")
    g = _up("chacha20poly1305", "chacha20poly1305", FakeDataPlane(), b)
    (failed,) = g.of("a", ev.ChildSaFailed)
    assert failed.reason == "NO_PROPOSAL_CHOSEN from the peer"
    assert "the xfrm data plane cannot install CHACHA20_POLY1305" in caplog.text
    assert not b.sas


# -- (b) a CHILD_SA the data plane refuses anyway -------------------------------------------------


@pytest.mark.parametrize("refusing", ["a", "b"])
def test_refused_install_deletes_the_child_sa_and_reports_its_failure(refusing: str) -> None:
    def outbound(p: SaParams) -> bool:
        return p.direction == Direction.OUT  # the inbound SA went in first: it must be taken out again

    dps = {s: FakeDataPlane(refuse=outbound if s == refusing else None) for s in "ab"}
    g = _up("aes128gcm16", "aes128gcm16", dps["a"], dps["b"])
    other = "b" if refusing == "a" else "a"
    (failed,) = g.of(refusing, ev.ChildSaFailed)
    assert failed.name == "net" and failed.reason.startswith(
        "the fake data plane could not install it (AES_GCM_16_128/NO_EXT_SEQ): no AES_GCM_16 in this kernel")
    assert not g.of(refusing, ev.ChildSaEstablished)  # the other consumers never see it established
    assert dps[refusing].calls == ["install IN", "install OUT", "delete IN"] and not dps[refusing].sas
    assert not dps[refusing].policies
    # the peer got a DELETE for it (RFC 7296 1.4.1), and its own SAs are gone too
    assert [e.name for e in g.of(other, ev.ChildSaDeleted)] == ["net"]
    assert not dps[other].sas and not dps[other].policies
    for side in "ab":
        (sa,) = g.p.engine(side).ike_sas()
        assert sa.established and not sa.children  # the IKE_SA stays


def test_runtime_turns_a_refused_child_into_the_up_failure() -> None:
    """Daemon.on_event: the glue runs first, so `ikectl up`'s waiter and the counters see the failure."""
    async def go() -> dict[str, Any]:
        conn = make_pair().a.config("home")
        daemon = Daemon(DaemonConfig(DaemonSettings(listen=["192.0.2.1"], control="/nonexistent/x.ctl"),
                                     [conn], make_pair().a.creds))
        deleted: list[tuple[int, int, str]] = []
        daemon.glue = DataPlaneGlue(FakeDataPlane(refuse=lambda p: True), lambda *a: deleted.append(a))
        waiter = Waiter("home", ["net"])
        daemon.control.waiters.append(waiter)
        g = _up("aes128gcm16", "aes128gcm16", None, None)  # an established event to replay
        for e in g.out["a"]:
            daemon.on_event(e)
        assert deleted and deleted[0][:2] == (1, 1)
        assert daemon.events["child-failed"] == 1 and "child-established" not in daemon.events
        return await asyncio.wait_for(waiter.done, 1)

    res = asyncio.run(go())
    assert res["ok"] is False and res["error"].startswith(
        "CHILD_SA 'net' failed: the fake data plane could not install it (AES_GCM_16_128/NO_EXT_SEQ): no AES_GCM_16")


# -- at load ----------------------------------------------------------------------------------------

CONF = """\
[daemon]
dataplane = "{dp}"
[connections.home]
remote_addrs = ["192.0.2.2"]
local = {{ auth = "psk", id = "a@x" }}
remote = {{ auth = "psk", id = "b@x" }}
[connections.home.children.net]
esp_proposals = "{esp}"
"""


@pytest.mark.parametrize("dp,esp,ok", [
    ("xfrm", "chacha20poly1305", False), ("xfrm", "chacha20poly1305-aes128ccm8,aes192gcm12", False),
    ("xfrm", "chacha20poly1305,aes128gcm16", True), ("userspace", "chacha20poly1305", True),
    ("userspace", "aes256ccm16,aes128gcm8", True), ("auto", "chacha20poly1305", True),
    ("none", "chacha20poly1305", True)])
def test_load_refuses_a_child_sa_its_data_plane_cannot_install(tmp_path: Path, dp: str, esp: str, ok: bool) -> None:
    path = tmp_path / "iked.toml"
    path.write_text(textwrap.dedent(CONF.format(dp=dp, esp=esp)))
    if ok:
        assert load(path).connections[0].children[0].esp_proposals == esp
        return
    with pytest.raises(LocalError) as ei:
        load(path)
    msg = str(ei.value)
    assert msg.startswith(f"[connections.home.children.net] esp_proposals '{esp}': the xfrm data plane cannot "
                          "install CHACHA20_POLY1305")
    assert msg.endswith("(it installs AES_CBC_128/192/256, AES_GCM_16_128/192/256; integrity HMAC_SHA1_96, "
                        "HMAC_SHA2_256_128, HMAC_SHA2_384_192, HMAC_SHA2_512_256)")
