"""The target answers the initiator's checks from the moment its own ME_CONNECT leaves (docs/protocol.md
§4.1 step 6), not from the server's acknowledgement of it: a check that overtakes the acknowledgement
is answered at once and the mediated IKE_SA does not wait for the server."""

from __future__ import annotations

from mex_net import B_IP, make_net, register

from core_ike.constants import NON_ESP_MARKER
from core_ike.ike import events as ev
from core_ike.me import events as mev

ME_CONNECT = 240  # [ME] §4: exchange type
ACK_DELAY = 0.5


def _is_ack_to_bob(sender: str, data: bytes, dst: tuple[str, int]) -> bool:
    ike = data[4:] if data.startswith(NON_ESP_MARKER) else data
    return sender == "ms" and dst[0] == B_IP and len(ike) > 19 and ike[18] == ME_CONNECT and bool(ike[19] & 0x20)


def test_check_overtaking_the_servers_ack_is_answered_and_the_sa_comes_up_before_it() -> None:
    """Bob on a public address (one candidate pair, as in bench/mediated_setup.py's `public`)."""
    net = make_net(latency=0.005)
    net.nodes["bob"].nat = None  # bob on a public address: alice's checks reach it without its own
    register(net)
    acks: list[float] = []

    def hook(sender: str, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> float | None:
        if _is_ack_to_bob(sender, data, dst):
            acks.append(net.now)
            return ACK_DELAY  # the server's answer to bob's ME_CONNECT is late
        return 0.0

    net.hook = hook
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    t0 = net.now
    alice.ext.connect("bob", net.now)
    net.run(5.0, until=lambda: bool((alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished))
                                    or alice.of(mev.MediationFailed)))
    assert not alice.of(mev.MediationFailed)
    assert acks, "no acknowledgement of bob's ME_CONNECT seen"
    t_child = next(t for t, e in alice.events if isinstance(e, ev.ChildSaEstablished))
    # bob's ack would arrive at acks[0] + ACK_DELAY; everything was done well before
    assert t_child < acks[0] + ACK_DELAY and t_child - t0 < 0.1
    assert not bob.of(mev.ChecksStarted), (t_child - t0, acks)  # bob's own checks never had to start
