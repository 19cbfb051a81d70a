"""The responder's IKE_SA_INIT response leaves before its IKE_SA's keys are derived (tasks/ike_init.py
defer_keys, Engine.derive_keys; docs/architecture.md "Key derivation after the IKE_SA_INIT response"):
the keys come with Engine.prepare, or before the next message is read when no adapter calls it; a KE
value that would give no shared secret is refused before the response (RFC 7296 2.7, RFC 8031 2.3)."""

from __future__ import annotations

from typing import Any

import pytest
from ike_pair import B_IP, Pair, make_pair

from core_ike.codec.message import decode_message
from core_ike.constants import DhId, NotifyType
from core_ike.ike import events as ev
from core_ike.ike import fastinit
from core_ike.ike.state import IkeState
from core_ike.ike.tasks import ike_init

LOCAL, REMOTE = (B_IP, 500), ("192.0.2.1", 500)


class _FakeKe:
    """An initiator's key pair whose public value is `public` (a peer sending what it likes)."""

    group = int(DhId.CURVE25519)

    def __init__(self, public: bytes) -> None:
        self.public = public

    def compute(self, peer_public: bytes) -> bytes:
        return b"\x01" * 32


def _pair(fast: bool, monkeypatch: pytest.MonkeyPatch) -> Pair:
    """A pair whose responder negotiated the offer once (so the direct answer may be taken), and that
    calls Engine.prepare only when the test does."""
    ike_init._NEGOTIATED.clear()
    if not fast:
        monkeypatch.setattr(fastinit, "answer", lambda *a: False)
    p = make_pair(seed=11)
    p.a.initiate("home", now=p.now)
    p.pump()
    assert len(p.of("b", ev.IkeSaEstablished)) == 1
    p.prepare = False
    return p


def _counting_derivations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    orig = ike_init.derive_ike_keys

    def counting(*a: Any) -> Any:
        calls.append(1)
        return orig(*a)

    monkeypatch.setattr(ike_init, "derive_ike_keys", counting)
    return calls


def _init_request(p: Pair, ke: Any = None) -> bytes:
    p.a.initiate("home", now=p.now, remote=(B_IP, 500), key_exchange=ke)
    ((data, _, _),) = p.a.datagrams_to_send()
    return data


@pytest.mark.parametrize("fast", [True, False])
def test_the_response_leaves_before_the_keys_and_prepare_derives_them(monkeypatch: pytest.MonkeyPatch,
                                                                      fast: bool) -> None:
    p = _pair(fast, monkeypatch)
    calls = _counting_derivations(monkeypatch)
    taken: list[bool] = []
    orig = fastinit.answer
    monkeypatch.setattr(fastinit, "answer", lambda *a: taken.append(orig(*a) if fast else False) or taken[-1])
    data = _init_request(p)
    p.b.receive(data, LOCAL, REMOTE, p.now)
    assert taken == [fast]
    ((resp, _, _),) = p.b.datagrams_to_send()
    assert decode_message(resp).is_response
    (sb,) = [s for s in p.b.ike_sas() if s.spi_i == data[:8]]
    # answered, not keyed: half-open, no SK_* and no protectors until the derivation ran
    assert calls == [] and sb.pending_keys is not None
    assert sb.in_prot is None and sb.out_prot is None and sb.sk_d == b"" and sb.sk_pr == b""
    assert sb.state is IkeState.CREATED and sb.half_open and sb.proposal_text
    p.b.prepare()
    assert calls == [1] and sb.pending_keys is None
    assert sb.in_prot is not None and sb.out_prot is not None and sb.sk_d != b""
    p.b.prepare()  # nothing left to derive
    assert calls == [1]
    # the initiator takes the response and the exchange completes
    p.a.receive(resp, REMOTE, LOCAL, p.now)
    p.pump()
    assert len(p.of("b", ev.IkeSaEstablished)) == len(p.of("a", ev.IkeSaEstablished)) == 2
    assert not sb.half_open and sb.established


@pytest.mark.parametrize("fast", [True, False])
def test_ike_auth_without_prepare_derives_first(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """An adapter that never calls Engine.prepare (the sans-IO engine alone): the IKE_AUTH request finds
    the keys derived before it is read, and the IKE_SA and its CHILD_SA come up."""
    p = _pair(fast, monkeypatch)
    calls = _counting_derivations(monkeypatch)
    p.a.initiate("home", now=p.now, remote=(B_IP, 500))
    p.pump()
    assert len(p.of("b", ev.IkeSaEstablished)) == len(p.of("a", ev.IkeSaEstablished)) == 2
    assert len(p.of("b", ev.ChildSaEstablished)) == 2
    assert calls.count(1) == 2  # each side derives once (the initiator on the response)
    assert all(s.pending_keys is None for s in p.b.ike_sas())


def test_a_timer_derives_pending_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _pair(True, monkeypatch)
    data = _init_request(p)
    p.b.receive(data, LOCAL, REMOTE, p.now)
    (sb,) = [s for s in p.b.ike_sas() if s.spi_i == data[:8]]
    assert sb.in_prot is None
    p.b.handle_timer(p.now)
    assert sb.in_prot is not None and sb.pending_keys is None


def test_another_ike_sa_init_does_not_wait_for_a_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new IKE_SA_INIT request needs no other IKE_SA's keys: it is answered with theirs still pending."""
    p = _pair(True, monkeypatch)
    calls = _counting_derivations(monkeypatch)
    first = _init_request(p)
    p.b.receive(first, LOCAL, REMOTE, p.now)
    second = _init_request(p)
    p.b.receive(second, LOCAL, REMOTE, p.now)
    assert len(p.b.datagrams_to_send()) == 2 and calls == []
    p.b.prepare()
    assert calls == [1, 1]


SMALL_ORDER = [bytes(32), (1).to_bytes(32, "little"),
               bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("public", SMALL_ORDER)
def test_a_small_order_ke_is_refused_before_any_state(monkeypatch: pytest.MonkeyPatch, fast: bool,
                                                      public: bytes) -> None:
    """RFC 8031 2.3: a Curve25519 value whose shared secret is all zero is answered with INVALID_SYNTAX
    (RFC 7296 2.21.1) before a response with our KE leaves, and no IKE_SA is held."""
    p = _pair(fast, monkeypatch)
    held = len(p.b.ike_sas())
    data = _init_request(p, _FakeKe(public))
    p.b.receive(data, LOCAL, REMOTE, p.now)
    ((resp, _, _),) = p.b.datagrams_to_send()
    msg = decode_message(resp)
    assert msg.notify(NotifyType.INVALID_SYNTAX) is not None and msg.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is None
    assert len(p.b.ike_sas()) == held and p.b.half_open == 0


def test_a_ke_rejected_at_derivation_ends_the_half_open_sa(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value the check lets through but the key exchange rejects (here: the check switched off): the
    response has left, the derivation fails, the half-open IKE_SA is deleted and counted, and the
    initiator's IKE_AUTH meets no IKE_SA (RFC 7296 2.21.4)."""
    p = _pair(True, monkeypatch)
    monkeypatch.setattr(fastinit, "check_public", lambda group, data: None)
    data = _init_request(p, _FakeKe(bytes(32)))
    p.b.receive(data, LOCAL, REMOTE, p.now)
    ((resp, _, _),) = p.b.datagrams_to_send()
    assert decode_message(resp).notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None  # a real response
    (sb,) = [s for s in p.b.ike_sas() if s.spi_i == data[:8]]
    assert p.b.half_open == 1
    p.b.prepare()
    assert sb.state is IkeState.DESTROYED and sb.in_prot is None
    assert p.b.counters["drop-invalid-ke"] == 1 and p.b.half_open == 0
    assert sb not in p.b.ike_sas()
    p.a.receive(resp, REMOTE, LOCAL, p.now)
    p.pump()
    assert len(p.of("a", ev.IkeSaEstablished)) == 1  # only the first IKE_SA


def test_the_random_draws_do_not_depend_on_when_the_keys_are_derived(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same inputs give the same responder SPIs, nonces and IV counters whether Engine.prepare runs after
    each IKE_SA_INIT or after two (an AEAD protector's IV counter start is drawn with the response)."""
    def run(prepare_between: bool) -> list[tuple[bytes, ...]]:
        ike_init._NEGOTIATED.clear()
        p = make_pair(seed=13)
        requests = [_init_request(p) for _ in range(2)]
        for data in requests:
            p.b.receive(data, LOCAL, REMOTE, p.now)
            if prepare_between:
                p.b.prepare()
        p.b.prepare()
        assert all(s.sk_d for s in p.b.ike_sas())
        # (the key pairs come from OpenSSL: the keys themselves differ between the runs)
        return [(s.spi_r, s.nr, s.in_prot._counter, s.out_prot._counter)  # type: ignore[union-attr]
                for s in p.b.ike_sas()]

    assert run(True) == run(False)


@pytest.mark.parametrize("fast", [True, False])
def test_a_responder_draws_its_randomness_for_an_ike_sa_init_twice(monkeypatch: pytest.MonkeyPatch,
                                                                   fast: bool) -> None:
    """Each draw of the OS source is a system call: the responder's SPI is one draw, its nonce and its
    AEAD protectors' IV counter starts (RFC 7296 2.10, RFC 5282 3.1) one more; the octets are the ones
    the three separate draws gave (a seeded run is the same)."""
    p = _pair(fast, monkeypatch)
    draws: list[int] = []
    rng = p.b.rng
    orig = rng.bytes

    def counting(n: int) -> bytes:
        draws.append(n)
        return orig(n)

    monkeypatch.setattr(rng, "bytes", counting)
    data = _init_request(p)
    p.b.receive(data, LOCAL, REMOTE, p.now)
    (sb,) = [s for s in p.b.ike_sas() if s.spi_i == data[:8]]
    assert draws == [8, ike_init.NONCE_LEN + 16] and len(sb.nr) == ike_init.NONCE_LEN
    p.b.prepare()
    assert draws == [8, ike_init.NONCE_LEN + 16]  # the derivation takes the counter starts drawn before
    assert sb.in_prot is not None and sb.out_prot is not None
