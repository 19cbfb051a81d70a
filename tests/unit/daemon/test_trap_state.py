"""What the trap manager says is what the data plane holds (core_ike/daemon/traps.py): a connection is
routed with all its CHILD_SA configs or not at all, whether its selectors or the data plane refuse."""

from __future__ import annotations

import dataclasses

import pytest

from core_ike.daemon.traps import TrapManager
from core_ike.errors import LocalError
from core_ike.ike import events as ev
from core_ike.ike.config import ChildConfig
from core_ike.io.dataplane import PolicyParams
from core_ike.io.userspace import UserspaceDataPlane
from tests.unit.fakes import Clock
from tests.unit.ike.ike_pair import A_IP, make_pair


class RefusingDataPlane(UserspaceDataPlane):
    """A userspace data plane that refuses policies towards one subnet, as a kernel may refuse one."""

    def __init__(self, refused: str) -> None:
        super().__init__(lambda d, a: None, clock=Clock())
        self.refused = refused

    def install_policy(self, p: PolicyParams) -> None:
        if str(p.remote.subnet) == self.refused:
            raise OSError(22, "Invalid argument")
        super().install_policy(p)


def two_children(second_remote: str) -> tuple[TrapManager, RefusingDataPlane]:
    pair = make_pair()
    pair.a.config("home").children = [
        ChildConfig("one", local_ts=["10.1.0.0/24"], remote_ts=["10.2.0.0/24"]),
        ChildConfig("two", local_ts=["10.1.0.0/24"], remote_ts=[second_remote])]
    dp = RefusingDataPlane("10.4.0.0/24")
    return TrapManager(pair.a, dp, lambda remote: A_IP), dp


@pytest.mark.parametrize(("second", "why"), [
    ("192.0.2.0/24", "holds the peer's address 192.0.2.2"),  # the peer's IKE traffic would go into the tunnel
    ("10.4.0.0/24", "trap policy not installed: [Errno 22] Invalid argument"),  # the data plane refuses
])
def test_a_connection_is_routed_whole_or_not_at_all(second: str, why: str) -> None:
    traps, dp = two_children(second)
    with pytest.raises(LocalError) as info:
        traps.route("home", by_command=True)
    assert why in str(info.value)
    assert traps.routed() == {} and traps.status(0.0) == [] and dp._policies == []
    assert "home" not in traps.commanded  # a route that failed is not kept for the next reload


def test_a_refused_change_leaves_the_connection_unrouted() -> None:
    """Routed, then a reload changes the second CHILD_SA config to one the data plane refuses: the
    first one's trap does not stay behind, alone and of the old config."""
    traps, dp = two_children("10.3.0.0/24")
    assert traps.route("home") == ["one", "two"] and len(dp._policies) == 2
    cfg = traps.engine.config("home")
    changed = dataclasses.replace(cfg, children=[
        cfg.children[0], ChildConfig("two", local_ts=["10.1.0.0/24"], remote_ts=["10.4.0.0/24"])])
    traps.engine.configs[:] = [changed]
    traps.sync(traps.engine.configs)  # logs the refusal, as a reload does
    assert traps.routed() == {} and dp._policies == []


def test_a_trap_the_data_plane_refuses_again_is_no_longer_listed() -> None:
    """The last CHILD_SA of a routed config goes and the trap is installed again (the XFRM kernel keeps
    one policy per selector); when the data plane refuses that, the trap is gone and `status` says
    so, and `route` installs it again."""
    pair = make_pair()
    pair.a.config("home").children[0].start_action = "trap"
    dp = RefusingDataPlane("none")
    traps = TrapManager(pair.a, dp, lambda remote: A_IP)
    traps.sync(pair.a.configs)
    sa = pair.a.initiate("home", None, pair.now)
    pair.pump()
    (uid,) = sa.children
    assert [r["state"] for r in traps.status(pair.now)] == ["child-up"]
    dp.refused = "10.2.0.0/24"
    pair.a.terminate_child(sa, uid, pair.now)
    pair.pump()
    (gone,) = pair.of("a", ev.ChildSaDeleted)
    traps.on_event(gone)
    assert traps.status(pair.now) == [] and traps.routed() == {} and dp._policies == []
    dp.refused = "none"
    assert traps.route("home") == ["net"] and [r["state"] for r in traps.status(pair.now)] == ["waiting"]
    assert [str(p.remote.subnet) for p in dp._policies] == ["10.2.0.0/24"]
