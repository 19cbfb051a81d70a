"""Check lists ([ME] §5, docs/protocol.md §6-§8): pairing, pacing, retransmission, triggered checks, prflx
learning, selection and failure, with a fake clock and a tiny simulated NAT."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from core_ike.constants import MeEndpointType
from core_ike.errors import LocalError
from core_ike.me.checklist import (
    CheckList,
    CheckListConfig,
    CheckListEvent,
    CheckListFailed,
    CheckListStopped,
    CheckListSucceeded,
    ListState,
    PairState,
    PairStateChanged,
    pair_priority,
    retransmit_timeout,
)
from core_ike.me.checks import decode_check, make_check, request_endpoint, response_endpoint
from core_ike.me.endpoints import (
    Addr,
    Endpoint,
    decode_endpoint,
    encode_endpoint,
    make_endpoint,
    srflx_endpoint,
)

CID = bytes.fromhex("deadbeef")
KEY_A = bytes(range(16))
KEY_B = bytes(range(16, 32))
A_HOST, A_PUB = ("10.1.0.2", 4500), ("203.0.113.1", 4500)
B_HOST, B_PUB = ("10.2.0.2", 4500), ("203.0.113.2", 4500)
MS = ("198.51.100.1", 4500)


def eps_of(host: Addr, pub: Addr) -> list[Endpoint]:
    return [make_endpoint(MeEndpointType.HOST, *host), srflx_endpoint(pub[0], pub[1], base=host)]


def wire(eps: list[Endpoint]) -> list[Endpoint]:
    """What the other side sees after ME_CONNECT relay: no base."""
    return [decode_endpoint(encode_endpoint(e)) for e in eps]


def make_pair_of_lists(cfg: CheckListConfig | None = None, now: float = 0.0) -> tuple[CheckList, CheckList]:
    a = CheckList.for_initiator(CID, KEY_A, eps_of(A_HOST, A_PUB), now, cfg)  # when sending ME_CONNECT
    b = CheckList.for_responder(CID, KEY_A, wire(eps_of(A_HOST, A_PUB)), now, cfg)
    b.set_responder_data(KEY_B, eps_of(B_HOST, B_PUB), now)
    a.set_responder_data(KEY_B, wire(eps_of(B_HOST, B_PUB)), now)
    return a, b


def drain(cl: CheckList) -> list[CheckListEvent]:
    out = []
    while (ev := cl.next_event()) is not None:
        out.append(ev)
    return out


# --- pure functions ------------------------------------------------------------------------------

def test_pair_priority_formula() -> None:
    g, d = 0x00FFFFFF, 0x0040FFFF
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    assert pair_priority(g, g) == (g << 32) + 2 * g


def test_dual_stack_ipv6_host_pair_ranks_first() -> None:
    """docs/protocol.md §11.2: gathered HOSTs prefer IPv6, so the v6 host pair is pair 1 on both sides, above
    the v4 host pair and far above the v4 host -> srflx pair (v6 has no srflx: no NAT, no v6 MS)."""
    from core_ike.me.endpoints import host_endpoints

    a_eps = [*host_endpoints(["10.1.0.2", "2001:db8:1::2"], 4500), srflx_endpoint(*A_PUB, base=A_HOST)]
    b_eps = [*host_endpoints(["10.2.0.2", "2001:db8:2::2"], 4500), srflx_endpoint(*B_PUB, base=B_HOST)]
    a = CheckList.for_initiator(CID, KEY_A, a_eps, 0.0)
    b = CheckList.for_responder(CID, KEY_A, wire(a_eps), 0.0)
    b.set_responder_data(KEY_B, b_eps, 0.0)
    a.set_responder_data(KEY_B, wire(b_eps), 0.0)
    assert [(p.id, p.base, p.remote_addr) for p in a.pairs] == [
        (1, ("2001:db8:1::2", 4500), ("2001:db8:2::2", 4500)), (2, A_HOST, B_HOST), (3, A_HOST, B_PUB)]
    assert [(p.id, p.base, p.remote_addr) for p in b.pairs] == [
        (1, ("2001:db8:2::2", 4500), ("2001:db8:1::2", 4500)), (2, B_HOST, A_HOST), (3, B_HOST, A_PUB)]
    assert [p.priority for p in a.pairs[:2]] == [p.priority for p in b.pairs[:2]]
    assert a.pairs[0].priority > a.pairs[1].priority > a.pairs[2].priority


STRONGSWAN_RETRANSMISSION = CheckListConfig(rto_max=0.0, max_retransmits=13)  # strongSwan's check schedule: waits grow without bound (core_ike/me/checklist.py CheckListConfig)


def test_retransmission_schedule_values() -> None:
    ms = [round(retransmit_timeout(STRONGSWAN_RETRANSMISSION, n) * 1000) for n in range(1, 15)]
    assert ms == [25, 25, 45, 81, 145, 262, 472, 850, 1530, 2754, 4958, 8926, 16067, 28920]


def test_retransmission_waits_are_bounded_by_default() -> None:
    """RFC 8445 14.3 style: strongSwan's fast start, then no wait above rto_max (1 s), which grows with the
    number of active pairs (rto_per_pair each) so that many pairs do not multiply the packet rate."""
    cfg = CheckListConfig()
    ms = [round(retransmit_timeout(cfg, n) * 1000) for n in range(1, 15)]
    assert ms == [25, 25, 45, 81, 145, 262, 472, 850] + [1000] * 6
    assert retransmit_timeout(cfg, 14, active=20) == 1.0
    assert retransmit_timeout(cfg, 14, active=60) == pytest.approx(3.0)
    assert retransmit_timeout(cfg, 3, active=60) == 0.045  # the fast start is never slowed down


def test_default_retransmissions_go_on_until_the_deadline() -> None:
    """A pair nobody answers is checked about once a second until the list's transaction timeout."""
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.0)
    a.set_responder_data(KEY_B, [make_endpoint(MeEndpointType.HOST, *B_HOST)], 0.0)
    sent = [t for t, _, _ in run_alone(a, 100.0)]
    deadline = CheckListConfig().transaction_timeout
    assert len(sent) == 1 + 8 + 28 and sent[-1] == pytest.approx(29.905)  # last check just before 30 s
    assert all(b - a_ <= 1.0 + 1e-9 for a_, b in itertools.pairwise(sent))
    failed = [e for e in drain(a) if isinstance(e, CheckListFailed)]
    assert len(failed) == 1 and failed[0].reason == f"no check succeeded within {deadline:.1f} s"


# --- pairing on the worked example of docs/protocol.md §6.2 ------------------------------------------

def test_worked_example_pairs() -> None:
    a, b = make_pair_of_lists()
    assert [(p.id, p.base, p.remote_addr) for p in a.pairs] == [(1, A_HOST, B_HOST), (2, A_HOST, B_PUB)]
    assert [(p.id, p.base, p.remote_addr) for p in b.pairs] == [(1, B_HOST, A_HOST), (2, B_HOST, A_PUB)]
    # G = the ME_CONNECT initiator's endpoint on both sides: host-host ranks the same on A and B
    assert a.pairs[0].priority == b.pairs[0].priority
    assert a.pairs[1].priority == pair_priority(0x00FFFFFF, 0x0040FFFF)  # A host -> B srflx
    assert b.pairs[1].priority == pair_priority(0x0040FFFF, 0x00FFFFFF)  # A srflx -> B host
    assert a.state == b.state == ListState.WAITING
    assert [(p.id, p.state) for p in a.pairs] == [(1, PairState.WAITING), (2, PairState.WAITING)]
    assert not [e for e in drain(a) if isinstance(e, PairStateChanged)]  # only a success is an event


def test_family_mismatch_not_paired_and_no_pairs_fails() -> None:
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, "2001:db8::1", 4500)], 0.0)
    a.set_responder_data(KEY_B, wire(eps_of(B_HOST, B_PUB)), 0.0)
    ev = drain(a)
    assert isinstance(ev[-1], CheckListFailed) and ev[-1].reason == "no candidate pairs"


def test_limits_on_remote_endpoints_and_pairs() -> None:
    cfg = CheckListConfig(max_remote_endpoints=3, max_pairs=2)
    remote = [make_endpoint(MeEndpointType.RELAYED, f"192.0.2.{i}", 4500) for i in range(1, 5)]
    remote.append(make_endpoint(MeEndpointType.HOST, "192.0.2.9", 4500))
    a = CheckList.for_initiator(CID, KEY_A, eps_of(A_HOST, A_PUB), 0.0, cfg)
    a.set_responder_data(KEY_B, remote, 0.0)
    assert len(a.remote_endpoints) == 3 and ("192.0.2.9", 4500) in [e.addr for e in a.remote_endpoints]
    assert len(a.pairs) == 2 and a.pairs[0].remote_addr == ("192.0.2.9", 4500)


def test_relayed_endpoint_survives_the_limits() -> None:
    """Our relay extension: the RELAYED endpoint ranks last (type preference 0) but is the only one that
    works between symmetric NATs; neither max_remote_endpoints nor max_pairs may drop it first."""
    cfg = CheckListConfig(max_remote_endpoints=4, max_pairs=3)
    relayed = make_endpoint(MeEndpointType.RELAYED, *MS)
    remote = [make_endpoint(MeEndpointType.HOST, f"192.0.2.{i}", 4500) for i in range(1, 7)] + [relayed]
    local = [make_endpoint(MeEndpointType.HOST, f"10.1.0.{i}", 4500) for i in range(2, 5)]
    a = CheckList.for_initiator(CID, KEY_A, local, 0.0, cfg)
    a.set_responder_data(KEY_B, remote, 0.0)
    assert len(a.remote_endpoints) == 4 and relayed.addr in [e.addr for e in a.remote_endpoints]
    assert len(a.pairs) == 3
    assert [p.remote.type for p in a.pairs] == [MeEndpointType.HOST, MeEndpointType.HOST, MeEndpointType.RELAYED]
    assert a.pairs[-1].remote_addr == MS
    # without a RELAYED endpoint the limits simply keep the highest priorities
    b = CheckList.for_initiator(CID, KEY_A, local, 0.0, cfg)
    b.set_responder_data(KEY_B, remote[:-1], 0.0)
    assert len(b.remote_endpoints) == 4 and all(p.remote.type == MeEndpointType.HOST for p in b.pairs)


# --- pacing and retransmission --------------------------------------------------------------------

def run_alone(cl: CheckList, until: float) -> list[tuple[float, Addr, Addr]]:
    sent = []
    while (t := cl.get_timer()) is not None and t <= until:
        cl.handle_timer(t)
        sent += [(t, src, dst) for _, src, dst in cl.datagrams_to_send()]
    return sent


def test_pacing_and_retransmission_timestamps() -> None:
    cfg = CheckListConfig(transaction_timeout=100.0, rto_max=0.0, max_retransmits=13)
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.0, cfg)
    a.set_responder_data(KEY_B, [make_endpoint(MeEndpointType.HOST, *B_HOST)], 0.0)
    sent = run_alone(a, 100.0)
    expected = [0, 25, 50, 95, 176, 321, 583, 1055, 1905, 3435, 6189, 11147, 20073, 36140]
    assert [round(t * 1000) for t, _, _ in sent] == expected  # 14 packets, docs/protocol.md §7.6
    ev = drain(a)
    failed = [e for e in ev if isinstance(e, CheckListFailed)]
    assert len(failed) == 1 and failed[0].reason == "all 1 pairs failed"
    assert [p.state for p in a.pairs] == [PairState.FAILED] and a.get_timer() is None
    assert not [e for e in ev if isinstance(e, PairStateChanged)]


def test_pacing_one_check_every_t() -> None:
    cfg = CheckListConfig(pacing=0.010, transaction_timeout=100.0, initial_burst=1)
    a = CheckList.for_initiator(CID, KEY_A, eps_of(A_HOST, A_PUB), 0.0, cfg)
    a.set_responder_data(KEY_B, wire(eps_of(B_HOST, B_PUB)), 0.0)
    first = run_alone(a, 0.011)
    assert [(round(t * 1000), d) for t, _, d in first] == [(0, B_HOST), (10, B_PUB)]


def test_first_checks_go_out_together_then_paced() -> None:
    """The pair that works (here the second) is not delayed by the first one's pacing interval; the
    checks after the initial burst, triggered ones included, keep the pacing."""
    many = [make_endpoint(MeEndpointType.HOST, f"10.2.0.{i}", 4500) for i in range(2, 8)]
    cfg = CheckListConfig(pacing=0.010, transaction_timeout=100.0, initial_burst=3, rto=1.0)
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.0, cfg)
    a.set_responder_data(KEY_B, wire(many), 0.0)
    sent = run_alone(a, 0.031)
    assert [(round(t * 1000), d[0]) for t, _, d in sent] == [
        (0, "10.2.0.2"), (0, "10.2.0.3"), (0, "10.2.0.4"), (10, "10.2.0.5"), (20, "10.2.0.6"), (30, "10.2.0.7")]


# --- requests: responses, triggered checks, prflx learning ---------------------------------------

STRONGSWAN_PACING = CheckListConfig(pacing=0.025, initial_burst=1)  # strongSwan's ME_INTERVAL, as the timelines below assume


def started_initiator() -> CheckList:
    a = CheckList.for_initiator(CID, KEY_A, eps_of(A_HOST, A_PUB), 0.0, STRONGSWAN_PACING)
    a.set_responder_data(KEY_B, wire(eps_of(B_HOST, B_PUB)), 0.0)
    return a


def request_from_b(mid: int) -> bytes:
    from core_ike.me.checks import encode_check

    return encode_check(make_check(False, mid, CID, request_endpoint(), KEY_B))


def test_request_answered_with_observed_address_and_own_key() -> None:
    a = started_initiator()
    assert a.receive_check(request_from_b(7), B_PUB, A_HOST, 0.0) is None
    (data, src, dst), (check, *way) = a.datagrams_to_send()  # the answer first, then our triggered check
    resp = decode_check(data)
    assert (src, dst) == (A_HOST, B_PUB) and resp.is_response and resp.message_id == 7
    assert resp.endpoint.addr == B_PUB and resp.endpoint.type == MeEndpointType.PEER_REFLEXIVE
    assert resp.verify(KEY_A)  # the sender's own key (docs/protocol.md §7.2)
    assert not decode_check(check).is_response and tuple(way) == (A_HOST, B_PUB)


def test_a_pairs_first_triggered_check_leaves_at_once_later_ones_keep_the_pacing() -> None:
    a = started_initiator()
    a.handle_timer(0.0)  # pair 1 sent
    a.handle_timer(0.025)  # pair 2 sent (and pair 1 retransmitted)
    a.datagrams_to_send()
    p2 = a.pairs[1]
    assert p2.state == PairState.IN_PROGRESS and p2.deadline == pytest.approx(0.050)
    a.receive_check(request_from_b(1), B_PUB, A_HOST, 0.030)
    out = a.datagrams_to_send()  # the answer, then the triggered check at once (docs/protocol.md §11.10)
    assert [decode_check(d).is_response for d, _, _ in out] == [True, False]
    assert (out[1][1], out[1][2]) == (p2.base, p2.remote_addr)
    assert p2.state == PairState.IN_PROGRESS and p2.retransmits == 0
    assert p2.first_sent == pytest.approx(0.030) and p2.deadline == pytest.approx(0.055)  # a new transaction
    # the peer's next check on the pair: retransmissions cancelled, the check waits for the tick (T)
    a.receive_check(request_from_b(1), B_PUB, A_HOST, 0.032)
    assert p2.state == PairState.WAITING and p2.deadline is None
    assert len(a.datagrams_to_send()) == 1  # only the response
    assert a.get_timer() == pytest.approx(0.050)
    a.handle_timer(0.050)
    out = a.datagrams_to_send()
    assert (p2.base, p2.remote_addr) in [(s, d) for _, s, d in out]
    assert p2.state == PairState.IN_PROGRESS and p2.retransmits == 0


def test_triggered_failed_pair_is_rechecked() -> None:
    cfg = CheckListConfig(max_retransmits=0, transaction_timeout=100.0, initial_burst=1)
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.0, cfg)
    a.set_responder_data(KEY_B, [make_endpoint(MeEndpointType.HOST, *B_PUB),
                                 make_endpoint(MeEndpointType.HOST, *B_HOST)], 0.0)
    a.handle_timer(0.0)  # pair 1 sent
    a.handle_timer(0.025)  # pair 1 times out (no retransmissions allowed), pair 2 sent
    assert [p.state for p in a.pairs] == [PairState.FAILED, PairState.IN_PROGRESS]
    a.receive_check(request_from_b(1), B_PUB, A_HOST, 0.030)
    assert a.pairs[0].state == PairState.IN_PROGRESS and a.pairs[0].first_sent == pytest.approx(0.030)


def test_remote_prflx_learnt_from_request_and_paired() -> None:
    a = started_initiator()
    odd = ("203.0.113.2", 61000)  # B behind a NAT that changed its port
    a.receive_check(request_from_b(3), odd, A_HOST, 0.0)
    prflx = [e for e in a.remote_endpoints if e.addr == odd]
    assert prflx and prflx[0].type == MeEndpointType.PEER_REFLEXIVE and prflx[0].priority == 0x0080FFFF
    new = [p for p in a.pairs if p.remote_addr == odd]
    assert len(new) == 1 and new[0].id == 3 and new[0].base == A_HOST
    assert a.pairs.index(new[0]) == 1  # inserted by priority: prflx ranks above srflx


def test_local_prflx_learnt_from_response() -> None:
    a = started_initiator()
    a.handle_timer(0.0)
    a.datagrams_to_send()
    p1 = a.pairs[0]
    mapped = ("198.51.100.77", 3333)
    from core_ike.me.checks import encode_check

    resp = make_check(True, p1.id, CID, response_endpoint(mapped, 0x0080FFFF), KEY_B)
    assert a.receive_check(encode_check(resp), B_HOST, A_HOST, 0.001) is None
    learnt = [e for e in a.local_endpoints if e.addr == mapped]
    assert learnt and learnt[0].base == A_HOST and learnt[0].type == MeEndpointType.PEER_REFLEXIVE
    assert p1.state == PairState.SUCCEEDED and p1.info().mapped == mapped
    ev = drain(a)
    ok = [e for e in ev if isinstance(e, CheckListSucceeded)]
    assert ok and ok[0].selected.id == 1  # highest pair succeeded: finish at once


def test_asymmetric_response_fails_pair() -> None:
    a = started_initiator()
    a.handle_timer(0.0)
    from core_ike.me.checks import encode_check

    resp = make_check(True, 1, CID, response_endpoint(A_HOST, 0x0080FFFF), KEY_B)
    a.receive_check(encode_check(resp), ("10.2.0.3", 4500), A_HOST, 0.001)
    assert a.pairs[0].state == PairState.FAILED


def test_drops_with_reasons() -> None:
    a = started_initiator()
    from core_ike.me.checks import encode_check

    bad_mac = encode_check(make_check(False, 1, CID, request_endpoint(), KEY_A))  # peer must use KEY_B
    assert "ME_CONNECTAUTH" in (a.receive_check(bad_mac, B_PUB, A_HOST, 0.0) or "")
    other = encode_check(make_check(False, 1, b"\x01\x02\x03\x04", request_endpoint(), KEY_B))
    assert a.receive_check(other, B_PUB, A_HOST, 0.0) == "unknown connect ID"
    assert "malformed" in (a.receive_check(b"\x00" * 10, B_PUB, A_HOST, 0.0) or "")
    assert a.datagrams_to_send() == []
    assert a.answered == 0  # the stop line's count of verified, answered checks
    assert a.receive_check(request_from_b(7), B_PUB, A_HOST, 0.0) is None
    assert a.answered == 1


def test_early_request_buffered_until_keys_known() -> None:
    a = CheckList.for_initiator(CID, KEY_A, eps_of(A_HOST, A_PUB), 0.0)
    assert a.receive_check(request_from_b(2), B_PUB, A_HOST, 0.001) is None
    assert a.datagrams_to_send() == []
    a.set_responder_data(KEY_B, wire(eps_of(B_HOST, B_PUB)), 0.002)
    out = a.datagrams_to_send()  # the answer, then the triggered check; the rest waits for the tick
    assert [decode_check(d).is_response for d, _, _ in out] == [True, False]
    assert a.pairs[1].state == PairState.IN_PROGRESS and a.pairs[0].state == PairState.WAITING


def request_from_a(mid: int) -> bytes:
    from core_ike.me.checks import encode_check

    return encode_check(make_check(False, mid, CID, request_endpoint(), KEY_A))


def test_responder_answers_from_its_answer_on_and_checks_from_the_servers_ack() -> None:
    """docs/protocol.md §4.1 step 6: B's data is set when its ME_CONNECT leaves, its checks start when the
    server accepts it; A's check that overtakes the server's answer is answered at once, not held."""
    b = CheckList.for_responder(CID, KEY_A, wire(eps_of(A_HOST, A_PUB)), 0.0)
    b.set_responder_data(KEY_B, eps_of(B_HOST, B_PUB), 0.001, start=False)
    assert b.state == ListState.NONE and b.datagrams_to_send() == [] and b.get_timer() == b._expires_at
    assert b.receive_check(request_from_a(3), A_PUB, B_HOST, 0.002) is None
    out = b.datagrams_to_send()  # the answer, then the triggered check on that pair; nothing else yet
    resp = decode_check(out[0][0])
    assert resp.is_response and resp.message_id == 3 and resp.verify(KEY_B) and out[0][1:] == (B_HOST, A_PUB)
    assert [decode_check(d).is_response for d, _, _ in out] == [True, False] and out[1][1:] == (B_HOST, A_PUB)
    assert b.state == ListState.NONE
    b.start_checks(0.004)
    b.handle_timer(0.004)
    later = b.datagrams_to_send()  # the first burst: the pairs not checked yet
    assert later and all(not decode_check(d).is_response and dst != A_PUB for d, _, dst in later)
    assert b.state != ListState.NONE
    b.start_checks(0.005)  # once only
    assert b.datagrams_to_send() == []


def test_responder_checks_cannot_start_without_its_data() -> None:
    b = CheckList.for_responder(CID, KEY_A, wire(eps_of(A_HOST, A_PUB)), 0.0)
    with pytest.raises(LocalError):
        b.start_checks(0.001)


# --- the simulated network ------------------------------------------------------------------------

@dataclass
class Nat:
    """RFC 4787 NAT: EIM or symmetric (address+port dependent) mapping, APDF filtering."""

    public_ip: str
    symmetric: bool = False
    ports: itertools.count[int] = field(default_factory=lambda: itertools.count(40000))
    out_map: dict[tuple[Addr, Addr | None], int] = field(default_factory=dict)
    in_map: dict[int, Addr] = field(default_factory=dict)
    permits: dict[int, set[Addr]] = field(default_factory=dict)

    def outbound(self, src: Addr, dst: Addr) -> Addr:
        key = (src, dst if self.symmetric else None)
        port = self.out_map.get(key)
        if port is None:
            port = src[1] if src[1] not in self.in_map else next(self.ports)
            self.out_map[key] = port
            self.in_map[port] = src
        self.permits.setdefault(port, set()).add(dst)  # APDF: remember where we sent to
        return (self.public_ip, port)

    def inbound(self, src: Addr, port: int) -> Addr | None:
        if src not in self.permits.get(port, set()):
            return None
        return self.in_map.get(port)


@dataclass
class Host:
    cl: CheckList
    private: Addr
    nat: Nat


class Net:
    def __init__(self, latency: float = 0.005) -> None:
        self.hosts: list[Host] = []
        self.latency = latency
        self.flight: list[tuple[float, bytes, Addr, Addr]] = []  # (arrival, data, src, dst) public view

    def send(self, host: Host, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        assert src == host.private
        pub_src = host.nat.outbound(src, dst)
        self.flight.append((now + self.latency, data, pub_src, dst))

    def deliver(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        for h in self.hosts:
            if dst[0] == h.nat.public_ip:
                inside = h.nat.inbound(src, dst[1])
                if inside is not None:
                    h.cl.receive_check(data, src, inside, now)
        # private destinations are not routable across the internet: dropped

    def run(self, until: float, stop_when_finished: CheckList | None = None) -> float:
        now = 0.0
        while stop_when_finished is None or not stop_when_finished.finished:
            for h in self.hosts:
                for data, src, dst in h.cl.datagrams_to_send():
                    self.send(h, data, src, dst, now)
            times = [t for h in self.hosts if (t := h.cl.get_timer()) is not None]
            times += [f[0] for f in self.flight]
            if not times or min(times) > until:
                return now
            now = min(times)
            arrived = [f for f in self.flight if f[0] <= now]
            self.flight = [f for f in self.flight if f[0] > now]
            for _, data, src, dst in arrived:
                self.deliver(data, src, dst, now)
            for h in self.hosts:
                t = h.cl.get_timer()
                if t is not None and t <= now:
                    h.cl.handle_timer(now)
        return now


def two_peers(symmetric: bool, cfg: CheckListConfig | None = None) -> tuple[Net, CheckList, CheckList]:
    nat_a, nat_b = Nat("203.0.113.1", symmetric), Nat("203.0.113.2", symmetric)
    # the mediation SAs created the srflx mappings (EIM: 4500 -> 4500), filtering only the MS in
    assert nat_a.outbound(A_HOST, MS) == A_PUB and nat_b.outbound(B_HOST, MS) == B_PUB
    a, b = make_pair_of_lists(cfg)
    net = Net()
    net.hosts = [Host(a, A_HOST, nat_a), Host(b, B_HOST, nat_b)]
    return net, a, b


def test_two_lists_through_eim_apdf_nats_select_host_to_srflx() -> None:
    net, a, b = two_peers(symmetric=False)
    net.run(until=0.5)
    ev_a = drain(a)
    ok = [e for e in ev_a if isinstance(e, CheckListSucceeded)]
    assert len(ok) == 1
    sel = ok[0].selected
    assert (sel.local, sel.remote) == (A_HOST, B_PUB) and sel.id == 2
    assert sel.local_type == MeEndpointType.HOST and sel.remote_type == MeEndpointType.SERVER_REFLEXIVE
    assert sel.mapped == A_PUB
    assert a.finished and not b.finished  # B waits for IKE_SA_INIT
    assert [p.state for p in b.pairs] == [PairState.IN_PROGRESS, PairState.SUCCEEDED]
    # a finished list reports every pair as SUCCEEDED or FAILED, never still IN_PROGRESS
    assert {p.state for p in ok[0].tried} <= {PairState.SUCCEEDED, PairState.FAILED}
    assert [p.state for p in a.tried()] == [PairState.FAILED, PairState.SUCCEEDED]
    b.stop(0.5)
    assert isinstance(drain(b)[-1], CheckListStopped)
    assert [p.state for p in b.tried()] == [PairState.FAILED, PairState.SUCCEEDED]
    assert b.get_timer() is None


def test_success_is_fast() -> None:
    """RTT 10 ms: both first checks leave at 0 (initial burst), pair 2 (host->srflx) is answered at 10 ms;
    pair 1 (host->host, better, unreachable) left at the same moment and the peer's checks never arrive on
    it: it had its round trip by the quickest answer, so the list selects at 10 ms, when pair 2 answers
    (strongSwan: 1000 ms more)."""
    net, a, _ = two_peers(symmetric=False)
    done_at = net.run(until=1.0, stop_when_finished=a)
    ok = [e for e in drain(a) if isinstance(e, CheckListSucceeded)]
    assert ok and ok[0].selected.id == 2
    assert done_at == pytest.approx(0.010)


def answer(cl: CheckList, mid: int, src: Addr, now: float) -> None:
    """The peer's response to our check `mid`, arriving from `src` at our host address."""
    from core_ike.me.checks import encode_check

    resp = make_check(True, mid, CID, response_endpoint(A_HOST, 0x0080FFFF), KEY_B)
    assert cl.receive_check(encode_check(resp), src, A_HOST, now) is None


def host_and_srflx_list(cfg: CheckListConfig) -> CheckList:
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.0, cfg)
    a.set_responder_data(KEY_B, wire(eps_of(B_HOST, B_PUB)), 0.0)  # pair 1 -> B_HOST, pair 2 -> B_PUB
    a.handle_timer(0.0)
    return a


def advance(cl: CheckList, until: float) -> None:
    """Run the list's timers up to `until` (nothing arrives meanwhile)."""
    while (t := cl.get_timer()) is not None and t <= until:
        cl.handle_timer(t)
        cl.datagrams_to_send()


def selected_at(cl: CheckList) -> int | None:
    ok = [e for e in drain(cl) if isinstance(e, CheckListSucceeded)]
    return ok[0].selected.id if ok else None


def test_better_pair_the_peer_is_heard_on_answering_within_its_round_trip_is_selected() -> None:
    a = host_and_srflx_list(CheckListConfig(transaction_timeout=100.0))  # both checks left at 0
    a.receive_check(request_from_b(8), B_HOST, A_HOST, 0.002)  # the peer's check on pair 1: re-sent at 2 ms
    answer(a, 2, B_PUB, 0.010)  # RTT 10 ms: pair 1 is waited for until 2 + 10 + 5 ms
    advance(a, 0.0169)
    assert selected_at(a) is None
    answer(a, 1, B_HOST, 0.0169)
    assert selected_at(a) == 1  # the better pair, at once: nothing better is pending


def test_heard_better_pair_gets_the_whole_margin() -> None:
    """On a fast path (RTT 1 ms) the better pair the peer is heard on gets finish_margin's 5 ms beyond its
    round trip: its path is open, and the margin covers the peers' scheduling, which a fast path does not
    shorten."""
    a = host_and_srflx_list(CheckListConfig(transaction_timeout=100.0))
    a.receive_check(request_from_b(8), B_HOST, A_HOST, 0.0)  # pair 1 heard, re-sent at 0
    answer(a, 2, B_PUB, 0.001)
    advance(a, 0.0059)
    assert selected_at(a) is None
    advance(a, 0.0061)
    assert selected_at(a) == 2


def test_margin_where_only_our_check_is_out_is_one_round_trip_at_least_the_floor() -> None:
    """A better pair with only our check out (it may go to an address nothing answers from, a private host
    address) gets one more round trip of margin, at least finish_margin_min (2 ms), not finish_margin's 5."""
    a = host_and_srflx_list(CheckListConfig(transaction_timeout=100.0))
    answer(a, 2, B_PUB, 0.001)
    advance(a, 0.0029)
    assert selected_at(a) is None
    advance(a, 0.0031)
    assert selected_at(a) == 2


def test_better_pair_silent_for_its_round_trip_is_not_waited_for() -> None:
    # strictly paced: pair 1 left at 0, pair 2 at 10 ms and is answered at 20 ms (RTT 10 ms); pair 1 had
    # 20 ms without an answer and the peer's checks never arrived on it: no wait, the list selects at the
    # next timer, due at once (an answer that arrived with pair 2's is read first)
    a = host_and_srflx_list(CheckListConfig(transaction_timeout=100.0, pacing=0.010, initial_burst=1, rto=1.0))
    a.handle_timer(0.010)
    answer(a, 2, B_PUB, 0.020)
    assert a.get_timer() is not None and a.get_timer() <= 0.020
    a.handle_timer(0.020)
    assert selected_at(a) == 2 and a.finished


def test_an_answer_that_arrived_with_the_deciding_one_is_read_first() -> None:
    """The silent better pair's time is up when pair 2 answers, but the list selects only at its next
    timer: pair 1's answer, read in the same turn, still wins."""
    a = host_and_srflx_list(CheckListConfig(transaction_timeout=100.0))
    answer(a, 2, B_PUB, 0.010)
    assert selected_at(a) is None
    answer(a, 1, B_HOST, 0.010)
    assert selected_at(a) == 1


def test_silent_better_pair_gets_one_round_trip_by_the_quickest_answer() -> None:
    """The peer checks pair 1 before pair 2 (priority order), so when its checks arrive on pair 2 and not
    on pair 1, pair 1 is waited for only one round trip by the quickest answer seen (a lower bound: the
    triggered re-send's) plus the margin (at most that round trip), from its first check."""
    a = CheckList.for_initiator(CID, KEY_A, [make_endpoint(MeEndpointType.HOST, *A_HOST)], 0.0,
                                CheckListConfig(transaction_timeout=100.0, pacing=0.010, initial_burst=1, rto=1.0))
    a.set_responder_data(KEY_B, wire(eps_of(B_HOST, B_PUB)), 0.0)
    advance(a, 0.010)  # pair 1 at 0, pair 2 at 10 ms
    a.receive_check(request_from_b(9), B_PUB, A_HOST, 0.012)  # heard on pair 2: re-sent at 12 ms
    answer(a, 2, B_PUB, 0.014)  # 2 ms after the re-send: pair 1 due at 0 + 2 + 2 ms, long passed
    advance(a, 0.014)
    assert selected_at(a) == 2


def test_round_trip_after_a_triggered_resend_is_timed_from_the_first_check() -> None:
    """Karn's rule for a better pair the peer is heard on (it may well work): the answer that comes after a
    re-send may belong to the first check; timing it from the re-send would shorten the estimate and
    dismiss that pair too early."""
    a = host_and_srflx_list(CheckListConfig(transaction_timeout=100.0))
    a.receive_check(request_from_b(8), B_HOST, A_HOST, 0.001)  # the peer's check on pair 1: re-sent at 1 ms
    a.receive_check(request_from_b(9), B_PUB, A_HOST, 0.008)  # ... on pair 2: re-sent at 8 ms
    assert a.pairs[1].state == PairState.IN_PROGRESS and a.pairs[1].first_sent == pytest.approx(0.008)
    answer(a, 2, B_PUB, 0.010)  # 10 ms after the first check, 2 ms after the re-send
    # pair 1 (re-sent at 1 ms) is waited for until 1 + RTT 10 ms + margin 5 ms; timed from pair 2's re-send
    # (2 ms) its time would have passed at 5 ms
    advance(a, 0.0159)
    assert selected_at(a) is None
    advance(a, 0.016)
    assert selected_at(a) == 2


def test_finish_wait_is_bounded_by_config() -> None:
    """The adaptive wait never exceeds finish_wait, however slow the measured round trip."""
    cfg = CheckListConfig(finish_wait=0.020, finish_rtts=1000.0)
    net, a, _ = two_peers(symmetric=False, cfg=cfg)
    done_at = net.run(until=1.0, stop_when_finished=a)
    ok = [e for e in drain(a) if isinstance(e, CheckListSucceeded)]
    assert ok and done_at <= 0.015 + 0.020 + 1e-9


def test_symmetric_nat_fails_within_deadline_listing_pairs() -> None:
    cfg = CheckListConfig(transaction_timeout=5.0, responder_timeout=10.0)
    net, a, b = two_peers(symmetric=True, cfg=cfg)
    net.run(until=20.0)
    failed = [e for e in drain(a) if isinstance(e, CheckListFailed)]
    assert len(failed) == 1
    assert failed[0].reason.startswith("no check succeeded within 5.0")
    assert [(p.local, p.remote, p.state) for p in failed[0].tried] == [
        (A_HOST, B_HOST, PairState.FAILED), (A_HOST, B_PUB, PairState.FAILED)]
    assert "10.1.0.2[4500] - 203.0.113.2[4500]" in str(failed[0].tried[1])
    b_failed = [e for e in drain(b) if isinstance(e, CheckListFailed)]
    assert b_failed and "IKE_SA_INIT" in b_failed[0].reason  # responder timeout, docs/protocol.md §11.3


def test_symmetric_nat_all_pairs_failed() -> None:
    cfg = CheckListConfig(max_retransmits=3)
    net, a, _ = two_peers(symmetric=True, cfg=cfg)
    net.run(until=5.0)
    failed = [e for e in drain(a) if isinstance(e, CheckListFailed)]
    assert len(failed) == 1 and failed[0].reason == "all 2 pairs failed"
    assert all(p.state == PairState.FAILED for p in failed[0].tried)


def test_default_deadline_bounds_failure() -> None:
    net, a, _ = two_peers(symmetric=True)
    end = net.run(until=120.0)
    failed = [e for e in drain(a) if isinstance(e, CheckListFailed)]
    assert len(failed) == 1 and a.finished
    assert end <= CheckListConfig().responder_timeout + 1


def test_finish_wait_configurable_and_deadline_selects_success() -> None:
    cfg = CheckListConfig(finish_wait=100.0, finish_rtts=1e6, transaction_timeout=1.0)
    net, a, _ = two_peers(symmetric=False, cfg=cfg)
    end = net.run(until=5.0, stop_when_finished=a)
    ok = [e for e in drain(a) if isinstance(e, CheckListSucceeded)]
    assert ok and ok[0].selected.id == 2 and end == pytest.approx(1.0)
