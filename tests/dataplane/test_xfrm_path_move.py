"""The XFRM data plane follows an IKE_SA's path change (RFC 7296 §2.23: the peer's NAT mapping, or our
move to an extra socket of many-port probing): the CHILD_SA's policies get the new template addresses
(XFRM_MSG_UPDPOLICY, read back from the kernel), the source route in table 220 its new next hop, and
the SAs their new addresses and UDP encapsulation ports.

What this kernel cannot run: it lacks INET_ESP, so the SA step (charon's order: XFRM_MSG_GETAE for the
replay state and usage, delete, XFRM_MSG_NEWSA with them) is recorded (tests/dataplane/noesp.py); the
message that re-adds the SA is checked by the kernel up to the ESP type. Policies, routes, the virtual
IP and the kernel's choice of source and next hop are real.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from core_ike.constants import EncrId, IntegId
from core_ike.daemon.glue import DataPlaneGlue
from core_ike.ike import events as ev
from core_ike.io.dataplane import DataPlaneError, Direction, SaParams
from core_ike.io.xfrmwire import (
    MAPPING,
    NEWSA,
    UDP_ENCAP,
    UDP_ENCAP_ESPINUDP,
    XFRMA_LTIME_VAL,
    XFRMA_REPLAY_ESN_VAL,
    XFRMA_REPLAY_VAL,
    XFRMNLGRP_MAPPING,
    XfrmSocket,
    encode_mapping,
    encode_newsa,
)
from core_ike.me.upgrade import PathChanged
from scenarios.lab.netns import wait_for
from tests.dataplane.noesp import NoEspXfrm
from tests.dataplane.xfrmns import inside_namespace, policy_templates, route_table, veth

pytestmark = pytest.mark.netns

NS = f"pmove{os.getpid() % 100000}"
VIP, HERE, GW, GW2 = "10.3.0.7", "192.0.2.10", "192.0.2.254", "192.0.2.253"
PEER, PEER2 = "198.51.100.1", "203.0.113.9"  # the peer before and after the move


def table() -> str:
    return route_table(NS)


def templates() -> set[tuple[str, str, str]]:
    """(direction, tmpl src, tmpl dst) of every policy in the kernel (`ip xfrm policy`)."""
    return policy_templates(NS)


@pytest.fixture
def netns() -> Iterator[None]:
    """x0 192.0.2.10/24; the first peer reached through 192.0.2.254 (the default route), the peer's new
    address through 192.0.2.253 (another next hop, as after a move to another network)."""
    with inside_namespace(NS, [*veth("x0", "x1"), ["addr", "add", f"{HERE}/24", "dev", "x0"],
                               ["route", "add", "default", "via", GW], ["route", "add", f"{PEER2}/32", "via", GW2]],
                          why="XFRM policies and routes in a network namespace"):
        yield


def _keys() -> ev.ChildKeys:
    return ev.ChildKeys(encr_id=20, key_bits=128, integ_id=0, esn=False, spi_in=0xC1, spi_out=0xC2,
                        key_in=bytes(20), integ_in=b"", key_out=bytes(20), integ_out=b"")


def _child(uid: int = 7) -> ev.ChildSaEstablished:
    return ev.ChildSaEstablished("rw", 1, "net", uid, 3, (HERE, 4500), (PEER, 4500), True, (f"{VIP}/32",),
                                 ("10.5.0.0/16",), _keys(), "AES_GCM_16_128")


def _ends(dp: NoEspXfrm) -> tuple[tuple[str, int, str, int], tuple[str, int, str, int]]:
    out, inb = dp.installed_sa(0xC2, Direction.OUT), dp.installed_sa(0xC1, Direction.IN)
    assert out is not None and inb is not None
    return (out.src, out.src_port, out.dst, out.dst_port), (inb.src, inb.src_port, inb.dst, inb.dst_port)


def test_the_peers_new_address_moves_policies_route_and_sas(netns: None) -> None:
    dp = NoEspXfrm()
    glue = DataPlaneGlue(dp)
    try:
        glue.handle(ev.VirtualIpAssigned("rw", 1, VIP))
        assert glue.handle(_child()) is not None
        assert templates() == {("out", HERE, PEER), ("in", PEER, HERE), ("fwd", PEER, HERE)}
        assert table() == f"10.5.0.0/16 via {GW} dev x0 proto static src {VIP}"
        glue.handle(ev.PeerAddressChanged(1, (PEER2, 4501), (HERE, 4500)))
        assert templates() == {("out", HERE, PEER2), ("in", PEER2, HERE), ("fwd", PEER2, HERE)}  # the kernel's
        assert table() == f"10.5.0.0/16 via {GW2} dev x0 proto static src {VIP}"  # the next hop to the new peer
        assert _ends(dp) == ((HERE, 4500, PEER2, 4501), (PEER2, 4501, HERE, 4500))
        assert [(o.dst, n.dst) for o, n in dp.moves] == [(PEER, PEER2), (HERE, HERE)]
        assert sorted(dp.sas) == [(0xC1, Direction.IN), (0xC2, Direction.OUT)]
        glue.handle(ev.ChildSaDeleted("rw", "net", 7, 0xC1, 0xC2, "deleted"))
        assert templates() == set() and dp.sas == []  # the moved policies are the ones deleted
        # the kernel's route table, read with a dump (no rtnetlink subscription here): a poll
        wait_for(lambda: table() == "", 5, what="the route removed with the CHILD_SA")
    finally:
        dp.close()


def test_a_move_to_an_extra_socket_changes_only_the_encapsulation_ports(netns: None) -> None:
    dp = NoEspXfrm()
    glue = DataPlaneGlue(dp)
    try:
        glue.handle(ev.VirtualIpAssigned("rw", 1, VIP))
        glue.handle(_child())
        glue.handle(PathChanged(1, (PEER, 4500), True, "check on pair succeeded", (HERE, 40123)))
        assert _ends(dp) == ((HERE, 40123, PEER, 4500), (PEER, 4500, HERE, 40123))
        assert templates() == {("out", HERE, PEER), ("in", PEER, HERE), ("fwd", PEER, HERE)}  # unchanged
        assert table() == f"10.5.0.0/16 via {GW} dev x0 proto static src {VIP}"
        moves = len(dp.moves)
        glue.handle(ev.PeerAddressChanged(1, (PEER, 4500), (HERE, 40123)))  # the engine's report of it too
        assert len(dp.moves) == moves
    finally:
        dp.close()


def _cbc(**kw: object) -> SaParams:
    """The SA kernel_supports_esp() probes with (cbc(aes) + hmac(sha256): this kernel has both ciphers)."""
    base: dict[str, object] = {"spi": 0x100, "direction": Direction.OUT, "src": "192.0.2.1", "dst": "192.0.2.2",
                               "encr_id": EncrId.AES_CBC, "encr_key_bits": 128, "encr_key": bytes(16),
                               "integ_id": IntegId.HMAC_SHA2_256_128, "integ_key": bytes(32), "encap": True,
                               "src_port": 40123, "dst_port": 4501}
    base.update(kw)
    return SaParams(**base)  # type: ignore[arg-type]


def _newsa_errno(body: bytes) -> int:
    try:
        XfrmSocket().request(NEWSA, body)
    except DataPlaneError as e:
        return e.errno
    return 0


def test_the_re_added_sa_carries_replay_state_and_usage_past_the_kernels_checks(netns: None) -> None:
    """The message that re-adds a moved SA with the replay state and usage XFRM_MSG_GETAE reported: the
    kernel checks its attributes (xfrm_user's verify_newsa_info and attribute policy) before it looks for
    the ESP type, so EPROTONOSUPPORT here (0 on a kernel with ESP) means they passed; a truncated
    attribute is refused before that (shown first, so the check can fail)."""
    replay = struct.pack("=3I", 7, 5, 0x1F)  # struct xfrm_replay_state: oseq, seq, bitmap
    usage = struct.pack("=4Q", 1500, 3, 1_700_000_000, 1_700_000_005)  # struct xfrm_lifetime_cur
    bad = _newsa_errno(encode_newsa(_cbc(), {XFRMA_REPLAY_VAL: replay[:4]}))
    assert bad not in (0, errno.EPROTONOSUPPORT)
    assert _newsa_errno(encode_newsa(_cbc(), {XFRMA_REPLAY_VAL: replay, XFRMA_LTIME_VAL: usage})) in (
        0, errno.EPROTONOSUPPORT)
    esn = struct.pack("=6I", 4, 9, 0, 12, 0, 128) + bytes(16)  # struct xfrm_replay_state_esn, 128-bit window
    assert _newsa_errno(encode_newsa(_cbc(esn=True), {XFRMA_REPLAY_ESN_VAL: esn, XFRMA_LTIME_VAL: usage})) in (
        0, errno.EPROTONOSUPPORT)


class _Transport:
    """The IKE transport's socket lookup (core_ike/io/transport.py `socket_for`) over real sockets."""

    def __init__(self, socks: dict[tuple[str, int], socket.socket]) -> None:
        self.sockets = socks

    def socket_for(self, local: tuple[str, int]) -> socket.socket | None:
        return self.sockets.get(local)


def _encap_type(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_UDP, UDP_ENCAP)


def test_the_socket_an_encapsulated_sa_uses_gets_udp_encap(netns: None) -> None:
    """The kernel decapsulates ESP-in-UDP only on a socket with UDP_ENCAP (RFC 3948 §2.2 demultiplexing in
    the kernel): the NAT-T socket when the CHILD_SA is installed, the extra socket when the IKE_SA moves
    there; never the IKE port. IKE behind the non-ESP marker still reaches the socket; a datagram that is
    ESP for the kernel does not (this kernel has no SA for it and drops it)."""
    socks = {}
    for port in (500, 4500, 0):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HERE, port))
        socks[(HERE, s.getsockname()[1])] = s
    extra = max(p for _, p in socks)
    dp = NoEspXfrm()
    dp.attach_transport(_Transport(socks), 4500)
    glue = DataPlaneGlue(dp)
    try:
        glue.handle(_child())
        assert [_encap_type(socks[(HERE, p)]) for p in (500, 4500, extra)] == [0, UDP_ENCAP_ESPINUDP, 0]
        glue.handle(PathChanged(1, (PEER, 4500), True, "check on pair succeeded", (HERE, extra)))
        assert _encap_type(socks[(HERE, extra)]) == UDP_ENCAP_ESPINUDP and _encap_type(socks[(HERE, 500)]) == 0
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((HERE, 0))
        sender.sendto(bytes.fromhex("c0ffee01") + bytes(28), (HERE, extra))  # ESP: SPI c0ffee01
        sender.sendto(bytes(4) + b"an IKE message", (HERE, extra))  # the non-ESP marker
        sender.close()
        socks[(HERE, extra)].settimeout(5)
        assert socks[(HERE, extra)].recv(100) == bytes(4) + b"an IKE message"  # the ESP never came up
    finally:
        dp.close()
        for s in socks.values():
            s.close()


def test_the_kernels_mapping_report_reaches_the_daemon(netns: None) -> None:
    """XFRM_MSG_MAPPING (the kernel decapsulated the peer's ESP from a new source, RFC 3948 §2.2; this
    kernel has no ESP to see one, so the message is multicast by hand on the XFRMNLGRP_MAPPING group the
    way the kernel sends it): the data plane's subscription reads it and hands (inbound SPI, new source)
    to the daemon (core_ike/daemon/runtime.py `_esp_mapping`: the IKE_SA follows and checks it)."""
    import select

    dp = NoEspXfrm()
    seen: list[tuple[int, tuple[str, int]]] = []
    dp.on_mapping = lambda spi, src: seen.append((spi, src))
    body = encode_mapping(HERE, 0xC1, 3, (PEER, 4500), (PEER2, 61001))
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 6)  # NETLINK_XFRM
    try:
        sender.sendto(struct.pack("=IHHII", 16 + len(body), MAPPING, 0, 1, 0) + body, (0, 1 << (XFRMNLGRP_MAPPING - 1)))
        ready, _, _ = select.select([dp.fileno()], [], [], 5.0)  # a deadline, not a sleep: ready at once
        assert ready
        dp.read_events()
        assert seen == [(0xC1, (PEER2, 61001))]
    finally:
        sender.close()
        dp.close()
