"""A hostile peer against the mediation server: authenticated ME_CONNECT requests with mutated
payloads (and mutated connectivity checks to a client) are refused or dropped, never raise, and the
server keeps mediating for everybody else."""

from __future__ import annotations

import random
import struct

from mex_net import MS_IP, make_net, register

from core_ike.codec.payloads import IdPayload
from core_ike.codec.wire import encode_payloads
from core_ike.constants import ExchangeType, IdType, PayloadType
from core_ike.ike import events as ev
from core_ike.ike.identity import Identity
from core_ike.me.checks import encode_check, make_check, request_endpoint
from core_ike.me.connect import build_connect, new_connect_id, new_connect_key
from core_ike.me.endpoints import host_endpoints
from core_ike.rng import SeededRng

SEEDED = SeededRng("fuzz")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[rng.randrange(len(b) + 1):]
        elif op == 2:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randint(1, 24))
        elif len(b) > 8:
            pos = rng.randrange(len(b) - 2)
            struct.pack_into("!H", b, pos, rng.randrange(65536))
    return bytes(b)


def _seal(sa, mid: int, first: int, inner: bytes) -> bytes:  # type: ignore[no-untyped-def]
    sk_len = 4 + sa.out_prot.sealed_length(len(inner))
    hdr = sa.spi_i + sa.spi_r + bytes([46, 0x20, ExchangeType.ME_CONNECT, 0x08]) + \
        struct.pack("!II", mid, 28 + sk_len)
    prefix = hdr + bytes([first, 0]) + struct.pack("!H", sk_len)
    return prefix + sa.out_prot.seal(prefix, inner)


def test_server_survives_mutated_me_connect_and_keeps_mediating() -> None:
    rng = random.Random(40962)
    net = make_net()
    register(net)
    alice, bob, ms = net.nodes["alice"], net.nodes["bob"], net.nodes["ms"]
    a_sa = alice.engine.ike_sas()[0]
    ms_sa = next(s for s in ms.engine.ike_sas() if s.peer_id == a_sa.my_id)
    bob_id = Identity.parse("bob@example.net")
    good = build_connect(new_connect_id(SEEDED), new_connect_key(SEEDED), host_endpoints(["10.1.0.2"], 4500),
                         IdPayload(PayloadType.ID_PEER, IdType.RFC822_ADDR, bob_id.data), callback=True)
    inner = encode_payloads(good)
    first = int(good[0].ptype)
    answered = 0
    for _ in range(400):
        data = _seal(a_sa, ms_sa.peer_mid, first, _mutate(rng, inner))
        ms.engine.receive(data, (MS_IP, 4500), ("203.0.113.1", 4500), net.now)
        answered += len(ms.engine.datagrams_to_send())
    assert answered >= 300  # processed and answered (refusals included), not dropped wholesale
    # mutated connectivity checks thrown at bob's client are dropped
    check = encode_check(make_check(False, 1, b"\x01\x02\x03\x04", request_endpoint(), b"k" * 16))
    for _ in range(300):
        bob.engine.receive(_mutate(rng, check), ("10.2.0.2", 4500), ("203.0.113.1", 4500), net.now)
    # the server still mediates: after the flood alice is rate limited at first (told so at once),
    # then, once her token bucket refilled, her real attempt to reach bob succeeds
    a_sa.tm.my_mid = ms_sa.peer_mid
    net.run(3.0)
    alice.ext.connect("bob", net.now)
    net.run(10.0, until=lambda: bool(alice.of(ev.ChildSaEstablished)))
    assert alice.of(ev.ChildSaEstablished) and bob.of(ev.ChildSaEstablished)
