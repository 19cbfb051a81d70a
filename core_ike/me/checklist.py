"""Check lists: pairing, pacing, retransmission, triggered checks, selection ([ME] §5, RFC 8445).

Sans-IO: every entry point takes `now` (seconds, monotonic); the owner drains `datagrams_to_send()`,
`next_event()` and re-arms one timer from `get_timer()`, calling `handle_timer(now)` when it fires.

One CheckList per connect ID. Roles are fixed by ME_CONNECT: the ME_CONNECT initiator is the
controlling side (it selects the pair and nominates it by sending IKE_SA_INIT, docs/protocol.md §8).
Create the initiator's list when *sending* ME_CONNECT: the relayed answer may arrive before the response
to our own request (docs/protocol.md §4.4).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence

from ..codec.message import Message
from ..constants import MeEndpointFamily, MeEndpointType
from ..errors import DecodeError, LocalError, ProtocolError
from .checks import (
    Check,
    decode_check,
    encode_check,
    mac_key,
    make_check,
    request_endpoint,
    response_endpoint,
)
from .checktypes import (
    CheckListConfig,
    CheckListEvent,
    CheckListFailed,
    CheckListStopped,
    CheckListSucceeded,
    Datagram,
    ListState,
    Pair,
    PairInfo,
    PairState,
    PairStateChanged,
    _Side,
    earliest,
    pair_priority,
    retransmit_timeout,
)
from .endpoints import Addr, Endpoint, limit_endpoints, make_endpoint, normalize_addr, remove_redundant
from .predict import predicted_among

log = logging.getLogger("core_ike.me")
# members bound once: on Python 3.11 a member read off its Enum class runs EnumType's attribute hook (the
# pair and list states are read in loops over the pairs for every check sent and received)
_WAITING, _IN_PROGRESS, _SUCCEEDED, _FAILED = PairState.WAITING, PairState.IN_PROGRESS, PairState.SUCCEEDED, PairState.FAILED
_RELAYED, _LIST_NONE = MeEndpointType.RELAYED, ListState.NONE

__all__ = ["CheckList", "CheckListConfig", "CheckListEvent", "CheckListFailed", "CheckListStopped",
           "CheckListSucceeded", "Datagram", "ListState", "Pair", "PairInfo", "PairState", "PairStateChanged",
           "pair_priority", "retransmit_timeout"]  # the vocabulary lives in checktypes.py


class CheckList:
    """The checks of one connect ID, on one side."""

    def __init__(self, connect_id: bytes, *, is_initiator: bool, now: float,
                 config: CheckListConfig | None = None) -> None:
        self.connect_id = connect_id
        self.is_initiator = is_initiator  # ME_CONNECT initiator = controlling side
        self.config = config or CheckListConfig()
        self.created = now
        self.state = _LIST_NONE
        self.finished = False
        self.answered = 0  # check requests whose MAC verified, answered (logged when the list stops)
        # the owner's immediate send of what is queued (CheckEngine.flush): an answer leaves before the
        # triggered check it causes is made ([ME] §5.2: the peer's pair succeeds on the answer)
        self.flush: Callable[[], None] | None = None
        self.pairs: list[Pair] = []
        self._initiator, self._responder = _Side(), _Side()
        self._by_id: dict[int, Pair] = {}
        self._triggered: deque[Pair] = deque()
        self._ladder: list[Pair] = []  # pairs to the peer's predicted ports, checked first (predict.py)
        self._next_tick: float | None = None
        self._last_check: float | None = None
        self._finish_at: float | None = None
        self._rtt: float | None = None  # smallest check round trip seen (adaptive finish wait)
        self._rtt_low: float | None = None  # smallest time from a check's last transmission to its answer
        # the RELAYED pair is the last resort (the rule above `hold_relay`): its checks are held until
        # _relay_at (the wait _relay_delay is granted once more when a direct pair is heard) and a
        # succeeded RELAYED pair is not selected before relay_hold (many-port probing, birthday.py)
        self._relay_held = False
        self._relay_at: float | None = None
        self._relay_delay = 0.0
        self._first_success: float | None = None
        self._expires_at: float | None = now + self._timeout()
        self._out: list[Datagram] = []
        self._events: deque[CheckListEvent] = deque()
        self._early: list[tuple[Check, Addr, Addr]] = []
        self.relay_hold: float | None = None

    def _timeout(self) -> float:
        return self.config.transaction_timeout if self.is_initiator else self.config.responder_timeout

    # --- construction (docs/protocol.md §4.1 steps 3, 5, 6, 8) ---------------------------------------------

    @classmethod
    def for_initiator(cls, connect_id: bytes, my_key: bytes, my_endpoints: Sequence[Endpoint],
                      now: float, config: CheckListConfig | None = None) -> CheckList:
        """A: when *sending* ME_CONNECT; then `set_responder_data` when the peer's answer arrives."""
        cl = cls(connect_id, is_initiator=True, now=now, config=config)
        cl.set_initiator_data(my_key, my_endpoints, now)
        return cl

    @classmethod
    def for_responder(cls, connect_id: bytes, peer_key: bytes, peer_endpoints: Sequence[Endpoint],
                      now: float, config: CheckListConfig | None = None) -> CheckList:
        """B: on the relayed ME_CONNECT request; `set_responder_data` when sending its own request."""
        cl = cls(connect_id, is_initiator=False, now=now, config=config)
        cl.set_initiator_data(peer_key, peer_endpoints, now)
        return cl

    def set_initiator_data(self, key: bytes, endpoints: Sequence[Endpoint], now: float) -> None:
        """Data of the ME_CONNECT initiator (own data on A, the peer's on B); state stays NONE."""
        if self._initiator.key is not None:
            raise LocalError("initiator data already set")
        self._initiator = _Side(key, self._accept(endpoints, local=self.is_initiator))

    def set_responder_data(self, key: bytes, endpoints: Sequence[Endpoint], now: float, *,
                           start: bool = True) -> None:
        """Data of the ME_CONNECT responder: builds the pairs and starts checking at `now`; without
        `start`, the checks start at `start_checks`. B knows its data when its own ME_CONNECT leaves and
        starts checking when the server accepts it (docs/protocol.md §4.1 step 6); the peer's checks,
        which can only follow that request, are answered from the moment it leaves: one that overtakes
        the server's answer is not held until it comes."""
        if self._initiator.key is None or self._responder.key is not None:
            raise LocalError("responder data out of order")
        self._responder = _Side(key, self._accept(endpoints, local=not self.is_initiator))
        self._build_pairs()
        if start:
            self.start_checks(now)
        else:
            self._answer_early(now)

    def start_checks(self, now: float) -> None:
        """The checks start at `now` (after `set_responder_data` without `start`)."""
        if self._responder.key is None:
            raise LocalError("checks cannot start before the responder data is known")
        if self.finished or self.state != _LIST_NONE:
            return
        self._set_list_state(ListState.WAITING)
        # [ME] §4.3: the checks get their whole time from when they can start; the wait for the peer's
        # answer before that (state NONE) was bounded from creation (its ME_CONNECTs may have been
        # retransmitted under loss, which must not eat into the checks' time)
        self._expires_at = now + self._timeout()
        if not self.pairs:
            log.info("checklist %s: no pairs (no common address family)", self.connect_id.hex())
        self._hold_relay(now)
        self._schedule_tick(now)
        self._answer_early(now)
        self._update(now)

    def _answer_early(self, now: float) -> None:
        early, self._early = self._early, []
        for check, src, dst in early:  # checks that arrived before both keys were known
            self._process(check, src, dst, now)

    def _accept(self, endpoints: Sequence[Endpoint], *, local: bool) -> list[Endpoint]:
        eps = [e for e in endpoints if e.address is not None and e.family != MeEndpointFamily.NONE]
        if not local:
            eps = limit_endpoints(remove_redundant(eps), self.config.max_remote_endpoints)
        return eps

    @property
    def _local(self) -> _Side:
        return self._initiator if self.is_initiator else self._responder

    @property
    def _remote(self) -> _Side:
        return self._responder if self.is_initiator else self._initiator

    # --- pairing ([ME] §5.1, docs/protocol.md §6.2) --------------------------------------------------

    def _build_pairs(self) -> None:
        candidates: list[tuple[Endpoint, Endpoint, int]] = []
        # docs/protocol.md §6.2 step 1: initiator x responder endpoints, same family only
        for i_ep in self._initiator.endpoints:
            for r_ep in self._responder.endpoints:
                if i_ep.family != r_ep.family:
                    continue
                local, remote = (i_ep, r_ep) if self.is_initiator else (r_ep, i_ep)
                candidates.append((local, remote, pair_priority(i_ep.priority, r_ep.priority)))
        candidates.sort(key=lambda c: -c[2])  # stable: ties keep insertion order (docs/protocol.md §6.2 step 4)
        seen: set[tuple[Addr, Addr]] = set()
        pruned: list[tuple[Endpoint, Endpoint, int]] = []
        for local, remote, prio in candidates:
            key = (local.local_base, remote.addr)
            if key in seen:  # RFC 8445 6.1.2.4: prune by (local base, remote)
                continue
            seen.add(key)
            pruned.append((local, remote, prio))
        limit = self.config.max_pairs
        kept = pruned[:limit]  # RFC 8445 6.1.2.5: drop lowest first ...
        relayed = next((c for c in pruned[limit:] if c[1].type == _RELAYED), None)
        if relayed is not None and limit > 0 and not any(c[1].type == _RELAYED for c in kept):
            kept = [*kept[:limit - 1], relayed]  # ... but keep the best relayed pair (limit_endpoints)
        for local, remote, prio in kept:
            self._add_pair(local, remote, prio)
        # core_ike/me/predict.py: the peer's predicted ports (a sequential APDM NAT) get our first new
        # mappings, in order, so that each of our checks to them runs the five-tuple the peer's own runs
        guesses = {e.addr for e in predicted_among(self._remote.endpoints)}
        self._ladder = [p for p in self.pairs if p.remote.address is not None and p.remote_addr in guesses]

    def _add_pair(self, local: Endpoint, remote: Endpoint, prio: int) -> Pair:
        """New pair: id = count + 1 (its checks' Message ID), inserted after equal priorities."""
        pair = Pair(len(self._by_id) + 1, local, remote, prio)
        idx = len(self.pairs)
        while idx > 0 and self.pairs[idx - 1].priority < prio:
            idx -= 1
        self.pairs.insert(idx, pair)
        self._by_id[pair.id] = pair
        log.debug("checklist %s: added pair %s", self.connect_id.hex(), pair)  # Pair.__str__: its info
        return pair

    def _pair_priority(self, local: Endpoint, remote: Endpoint) -> int:
        if self.is_initiator:
            return pair_priority(local.priority, remote.priority)
        return pair_priority(remote.priority, local.priority)

    # --- the one mutation point of pair states (design principle 6) -------------------------------

    def _set_pair_state(self, pair: Pair, new: PairState) -> None:
        old = pair.state
        if old == new:
            return
        pair.state = new
        # outcomes at info; progress and the pairs a finished list abandons (its last line says why) at debug
        level = logging.INFO if new == _SUCCEEDED or (new == _FAILED and not self.finished) else logging.DEBUG
        if log.isEnabledFor(level):  # most changes are progress: no text made for a level not logged
            log.log(level, "checklist %s: pair %s: %s -> %s", self.connect_id.hex(), pair.id, old.value, new.value)
        if new is _SUCCEEDED:  # the one change its owners act on (a pair's progress is in the debug line)
            self._events.append(PairStateChanged(self.connect_id, pair.info(), old, new))

    def _set_list_state(self, new: ListState) -> None:
        if self.state != new:
            log.debug("checklist %s: %s -> %s", self.connect_id.hex(), self.state.value, new.value)
            self.state = new

    # --- sans-IO surface ----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> CheckListEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return None if self.finished else earliest((self._next_tick, self._finish_at, self._expires_at, self._relay_at),
                                                   self.pairs)

    def handle_timer(self, now: float) -> None:
        if self.finished:
            return
        if self._expires_at is not None and now >= self._expires_at:
            self._expire(now)
            return
        for pair in list(self.pairs):
            if pair.deadline is not None and now >= pair.deadline:
                self._retransmit(pair, now)
        self._release_relay(now)
        if self._next_tick is not None and now >= self._next_tick:
            self._tick(now)
        if self._finish_at is not None and now >= self._finish_at:
            self._select(now)
            return
        self._update(now)

    def stop(self, now: float, reason: str = "mediated IKE_SA_INIT received") -> None:
        """The responder stops on IKE_SA_INIT carrying this connect ID (docs/protocol.md §8, §9.2)."""
        if self.finished:
            return
        self._finish()
        self._events.append(CheckListStopped(self.connect_id, reason))
        log.info("checklist %s stopped: %s (%d verified check(s) answered)", self.connect_id.hex(), reason,
                 self.answered)

    # --- sending ([ME] §5.1, docs/protocol.md §7.6) --------------------------------------------------

    def _schedule_tick(self, now: float) -> None:
        if self._next_tick is None and not self.finished and self.state != _LIST_NONE:
            last = self._last_check
            self._next_tick = now if last is None else max(now, last + self.config.pacing)

    def _tick(self, now: float) -> None:
        """Triggered FIFO first, else the highest-priority Waiting pair, else stop ticking; the list's
        first tick sends up to `initial_burst` checks."""
        burst = max(1, self.config.initial_burst) if self._last_check is None else 1
        sent = 0
        while sent < burst and (pair := self._next_waiting()) is not None:
            if sent and self.flush is not None:
                self.flush()  # a burst's checks leave one by one as they are made (docs/protocol.md §7.6)
            self._send_request(pair, now)
            sent += 1
        if not sent:
            self._next_tick = None
            return
        self._last_check = now
        self._next_tick = now + self.config.pacing

    def _next_waiting(self) -> Pair | None:
        held: list[Pair] = []  # triggered but held (the RELAYED pair): they keep their place
        found = None
        while self._triggered:
            cand = self._triggered.popleft()
            if cand.state != _WAITING:
                continue
            if self._held(cand):
                held.append(cand)
                continue
            found = cand
            break
        self._triggered.extendleft(reversed(held))
        if found is not None:
            return found
        ladder = next((p for p in self._ladder if p.state == _WAITING and not self._held(p)), None)
        return ladder or next((p for p in self.pairs if p.state == _WAITING and not self._held(p)), None)

    # --- the RELAYED pair is the last resort (our relay extension, docs/protocol.md §11.1) -------------
    #
    # One rule, on the controlling side: a direct pair that may still work gets its chance before the
    # relay, so that the relay costs nothing (no packets through the server, no pacing slot) where a
    # direct pair wins. Its two halves are:
    # - checking: the RELAYED pair's checks wait relay_delay_rtts mediation round trips (`_hold_relay`),
    #   as long again when the peer's checks arrive on a direct pair by then, never once a direct pair
    #   succeeded, at once when every direct pair failed (`_release_relay`);
    # - selecting: a succeeded RELAYED pair is nominated no earlier than `_relay_due`: not while many-port
    #   probing or a peer-reflexive pair to be learnt may still bring a direct pair (`hold_relay`, set by
    #   birthday.py), nor within relay_wait of the first success while a better pair hears the peer's
    #   checks (that path works at least one way; only its answers may have been lost).
    # The controlled side checks the RELAYED pair at once: its check latches the relay for ours.

    def hold_relay(self, until: float | None, now: float) -> None:
        """Select no RELAYED pair before `until` (None: no longer wait for that)."""
        self.relay_hold = until
        if not self.finished:
            self._finish_at = None
            self._update(now)

    def _relay_due(self, best: Pair, now: float) -> float:
        """The earliest time a succeeded RELAYED `best` may be nominated (-inf: not the relay)."""
        if best.remote.type != _RELAYED:
            return -math.inf
        due = self.relay_hold if self.relay_hold is not None else -math.inf
        if any(p.heard for p in self._better_pending(best)):
            first = self._first_success if self._first_success is not None else now
            due = max(due, first + self.config.relay_wait)
        return due

    def _held(self, pair: Pair) -> bool:
        return self._relay_held and pair.remote.type == _RELAYED

    def _direct(self) -> list[Pair]:
        return [p for p in self.pairs if p.remote.type != _RELAYED]

    def _hold_relay(self, now: float) -> None:
        """When the checks start: the mediation round trip (from sending ME_CONNECT to the peer's answer)
        is a relayed check's path, about two direct round trips."""
        cfg = self.config
        if not self.is_initiator or not any(p.remote.type == _RELAYED for p in self.pairs) \
                or not self._direct():
            return
        self._relay_delay = min(cfg.relay_delay_max, cfg.relay_delay_rtts * max(0.0, now - self.created))
        if self._relay_delay > 0:
            self._relay_held, self._relay_at = True, now + self._relay_delay

    def _release_relay(self, now: float) -> None:
        """A direct pair heard from by the hold's end has its triggered check under way: the hold's length
        once more. A succeeded direct pair keeps the hold (the RELAYED pair ranks last: not selectable)."""
        if not self._relay_held:
            return
        direct = self._direct()
        if any(p.state == _SUCCEEDED for p in direct):
            self._relay_at = None
            return
        if self._relay_at is not None and now >= self._relay_at and self._relay_delay > 0 \
                and any(p.heard and p.state != _FAILED for p in direct):
            self._relay_at, self._relay_delay = now + self._relay_delay, 0.0  # once
            return
        if (self._relay_at is not None and now >= self._relay_at) or all(p.state == _FAILED for p in direct):
            self._relay_held, self._relay_at = False, None
            log.debug("checklist %s: RELAYED pair released", self.connect_id.hex())
            self._schedule_tick(now)

    def _send_request(self, pair: Pair, now: float) -> None:
        own, peer = self._keys()
        key = mac_key(False, True, own, peer, self.config.key_rule)
        check = make_check(False, pair.id, self.connect_id, request_endpoint(), key)
        pair.packet = encode_check(check)
        pair.retransmits = 0
        pair.deadline = now + retransmit_timeout(self.config, 1, self._active(), pair.heard)
        pair.clean = pair.initial_sent is None
        if pair.initial_sent is None:
            pair.initial_sent = now
        pair.sent_at = pair.first_sent = now
        self._out.append((pair.packet, pair.base, pair.remote_addr))
        self._set_pair_state(pair, _IN_PROGRESS)

    def _retransmit(self, pair: Pair, now: float) -> None:
        if pair.state != _IN_PROGRESS or pair.packet is None:
            pair.deadline = None
            return
        if pair.retransmits >= self.config.max_retransmits and not (pair.heard and self.config.rto_heard > 0):
            pair.deadline = None
            self._set_pair_state(pair, _FAILED)
            return
        pair.retransmits += 1
        pair.deadline = now + retransmit_timeout(self.config, pair.retransmits + 1, self._active(), pair.heard)
        pair.sent_at, pair.clean = now, False
        self._out.append((pair.packet, pair.base, pair.remote_addr))  # cached packet replayed

    def _active(self) -> int:
        return sum(1 for p in self.pairs if p.state in (_WAITING, _IN_PROGRESS))

    def _keys(self) -> tuple[bytes, bytes]:
        own, peer = self._local.key, self._remote.key
        if own is None or peer is None:
            raise LocalError("check list keys not known yet")
        return own, peer

    # --- receiving ------------------------------------------------------------------------------------

    def receive_check(self, data: bytes | Message | Check, src: Addr, dst: Addr, now: float) -> str | None:
        """Process a check received from `src` on local address `dst`.

        Returns None when accepted, else the reason it was dropped ([ME] §5.2: drop silently;
        the caller may log the reason at debug level).
        """
        try:
            check = data if isinstance(data, Check) else decode_check(data)
        except (DecodeError, ProtocolError) as exc:
            return self._drop(f"malformed check: {exc}")
        if check.connect_id != self.connect_id:
            return self._drop("unknown connect ID")
        src, dst = normalize_addr(src), normalize_addr(dst)
        if self._local.key is None or self._remote.key is None:
            if len(self._early) >= self.config.max_early_checks or check.is_response:
                return self._drop("check list not ready")
            self._early.append((check, src, dst))
            return None
        reason = self._process(check, src, dst, now)
        self._update(now)
        return reason

    def _drop(self, reason: str) -> str:
        log.debug("checklist %s: dropping check: %s", self.connect_id.hex(), reason)
        return reason

    def _process(self, check: Check, src: Addr, dst: Addr, now: float) -> str | None:
        own, peer = self._keys()
        if not check.verify(mac_key(check.is_response, False, own, peer, self.config.key_rule)):
            return self._drop(f"invalid ME_CONNECTAUTH in check {check.message_id} from {src}")
        if check.is_response:
            return self._on_response(check, src, dst, now)
        self._on_request(check, src, dst, now)
        return None

    def _on_request(self, check: Check, src: Addr, dst: Addr, now: float) -> None:
        """[ME] §5.2, docs/protocol.md §7.4."""
        req_ep = check.endpoint
        own, peer = self._keys()
        # docs/protocol.md §7.4 step 3: same MID, observed source, priority copied, our own MAC (§7.2);
        # the answer leaves before a triggered check of ours: the peer's pair succeeds on it
        key = mac_key(True, True, own, peer, self.config.key_rule)
        resp = make_check(True, check.message_id, self.connect_id,
                          response_endpoint(src, req_ep.priority), key)
        self._out.append((encode_check(resp), dst, src))
        self.answered += 1
        if self.flush is not None:
            self.flush()
        if not self.finished:
            pair = self._find_or_create_pair(src, dst, req_ep.priority)
            if pair is not None:
                pair.heard = True
                self._trigger(pair, now)

    def _find_or_create_pair(self, src: Addr, dst: Addr, prflx_priority: int) -> Pair | None:
        for p in self.pairs:
            if p.base == dst and p.remote_addr == src:
                return p
        remote = next((e for e in self._remote.endpoints if e.addr == src), None)
        if remote is None:
            # RFC 8445 7.3.1.3: remote PEER_REFLEXIVE, request's priority
            learnt = sum(1 for e in self._remote.endpoints if e.type == MeEndpointType.PEER_REFLEXIVE)
            if learnt >= self.config.max_learnt_remote:
                return None
            remote = make_endpoint(MeEndpointType.PEER_REFLEXIVE, src[0], src[1], priority=prflx_priority)
            self._remote.endpoints.append(remote)
            log.info("checklist %s: learnt remote peer reflexive %s", self.connect_id.hex(), remote)
        if len(self.pairs) >= self.config.max_pairs:
            return None
        # docs/protocol.md §7.4, no pair yet: local = our endpoint based at the destination, else HOST there
        local = next((e for e in self._local.endpoints if e.local_base == dst), None)
        if local is None:
            local = make_endpoint(MeEndpointType.HOST, dst[0], dst[1])
        if local.family != remote.family:
            return None
        return self._add_pair(local, remote, self._pair_priority(local, remote))

    def _trigger(self, pair: Pair, now: float) -> None:
        """RFC 8445 7.3.1.4: cancel the retransmissions, then re-queue (docs/protocol.md §11.10). A pair's
        first triggered check leaves at once, as strongSwan's do: the peer's check has just opened its NAT
        toward us, and one check per pair the peer's own (paced) checks arrive on is no load a pacing
        interval would spare; later ones wait for the tick."""
        if pair.state == _SUCCEEDED:
            return
        if pair.state == _IN_PROGRESS:
            pair.deadline = None  # no more retransmissions; a late response is still accepted
        self._set_pair_state(pair, _WAITING)
        if not pair.instant and not self._held(pair):
            pair.instant = True
            if pair in self._triggered:
                self._triggered.remove(pair)
            self._send_request(pair, now)
            return
        if pair not in self._triggered:
            self._triggered.append(pair)
        self._schedule_tick(now)

    def _on_response(self, check: Check, src: Addr, dst: Addr, now: float) -> str | None:
        """[ME] §5.3, docs/protocol.md §7.5."""
        pair = self._by_id.get(check.message_id)
        if pair is None:
            return self._drop(f"response for unknown pair {check.message_id}")
        if pair.state in (_SUCCEEDED, _FAILED) or self.finished:
            return None  # duplicate or late answer: nothing to learn
        pair.deadline = None
        if src != pair.remote_addr or dst != pair.base:
            # RFC 8445 7.2.5.2.1: non-symmetric addresses fail the pair (strongSwan leaves it)
            log.info("checklist %s: pair %d: asymmetric response %s -> %s", self.connect_id.hex(),
                     pair.id, src, dst)
            self._set_pair_state(pair, _FAILED)
            return None
        pair.mapped = self._learn_local(check.endpoint, pair)
        start = pair.sent_at if pair.clean or pair.initial_sent is None else pair.initial_sent
        rtt = max(0.0, now - start)
        self._rtt = rtt if self._rtt is None else min(self._rtt, rtt)
        low = max(0.0, now - pair.sent_at)
        self._rtt_low = low if self._rtt_low is None else min(self._rtt_low, low)
        if self._first_success is None:
            self._first_success = now
        self._set_pair_state(pair, _SUCCEEDED)
        return None

    def _learn_local(self, mapped: Endpoint, pair: Pair) -> Endpoint:
        """RFC 8445 7.2.5.3.1: an unknown mapped address is a local prflx, base = the pair's base.

        The draft's valid pair (mapped local, remote) is recorded on the checked pair
        (`PairInfo.mapped`); it has the same (base, remote) so it needs no check of its own.
        """
        for e in self._local.endpoints:
            if e.addr == mapped.addr:
                return e
        local = make_endpoint(MeEndpointType.PEER_REFLEXIVE, mapped.addr[0], mapped.addr[1],
                              base=pair.base, priority=mapped.priority)
        self._local.endpoints.append(local)
        log.info("checklist %s: learnt local peer reflexive %s", self.connect_id.hex(), local)
        return local

    # --- list state and selection ([ME] §5.4, docs/protocol.md §7.7, §8) -----------------------------

    def _recompute_state(self) -> None:
        if self.state == _LIST_NONE or self.finished:
            return
        states = [p.state for p in self.pairs]  # a list: `in` compares by identity, a set hashes in Python (Enum)
        if _WAITING in states:
            return  # docs/protocol.md §7.7: unchanged while any pair is Waiting
        if _IN_PROGRESS in states:
            self._set_list_state(ListState.IN_PROGRESS)
        elif _SUCCEEDED in states:
            self._set_list_state(ListState.SUCCEEDED)
        else:
            self._set_list_state(ListState.FAILED)

    def _update(self, now: float) -> None:
        if self.finished:
            return
        self._release_relay(now)
        self._recompute_state()
        if self.state == ListState.FAILED:
            self._fail(f"all {len(self.pairs)} pairs failed" if self.pairs else "no candidate pairs")
            return
        if not self.is_initiator:
            return  # the controlled side waits for IKE_SA_INIT (docs/protocol.md §8)
        best = self._best_succeeded()
        if best is None:
            return
        due = max(self._finish_due(best, now), self._relay_due(best, now))
        if due <= now and not self._better_pending(best):
            self._select(now)
        else:
            # a better pair whose time is up is given up at the next timer, so that an answer that
            # arrived together with this one is read first
            self._finish_at = due

    def _better_pending(self, best: Pair) -> list[Pair]:
        return [p for p in self.pairs if p.priority > best.priority
                and p.state in (_WAITING, _IN_PROGRESS)]

    def _finish_due(self, best: Pair, now: float) -> float:
        """When the controlling side nominates `best` ([ME] §5.4, docs/protocol.md §8): at once when no
        better pair is pending; else once every better pending pair had its round trip without an answer,
        at most finish_wait after the first success. A better pair with our check in flight or the peer's
        checks arriving on it may well work: it gets finish_rtts round trips from its first check plus a
        margin (finish_margin; at most one more round trip where only our check is out), so that of two pairs checked together whose
        answers arrive close together the better one is nominated whichever answer comes first. The round
        trip is Karn's (an upper bound) where the peer's checks arrive, else the quickest answer seen (a
        lower bound: the peer checks the better pair first, so its silence there, with one of ours out,
        leaves only our own check to wait for). A better pair not checked yet that the peer's checks do
        not arrive on gets finish_rtts quickest round trips from the next tick, no margin."""
        better = self._better_pending(best)
        if not better:
            return now
        cfg = self.config
        first = self._first_success if self._first_success is not None else now
        due = -math.inf
        for p in better:
            sent = p.first_sent if p.state == _IN_PROGRESS and p.first_sent is not None else None
            start = sent if sent is not None else (self._next_tick if self._next_tick is not None else now)
            rtt = self._rtt if p.heard else self._rtt_low
            if rtt is None:
                rtt = cfg.finish_wait
            # the peer's checks arrive on a heard pair: the path is open and its answer is coming, so the
            # whole margin covers the two peers' scheduling (not the path); our check alone in flight may
            # go nowhere (a private host address): one more round trip, but not less than the scheduling
            # floor finish_margin_min, which a fast path does not shorten
            margin = (cfg.finish_margin if p.heard else min(cfg.finish_margin, max(rtt, cfg.finish_margin_min))
                      if sent is not None else 0.0)
            due = max(due, start + cfg.finish_rtts * rtt + margin)
        return min(due, first + cfg.finish_wait)

    def _best_succeeded(self) -> Pair | None:
        return next((p for p in self.pairs if p.state == _SUCCEEDED), None)

    def _select(self, now: float) -> None:
        best = self._best_succeeded()
        if best is None:
            self._finish_at = None
            return
        self._finish()
        info = best.info()
        log.info("checklist %s: selected pair %s", self.connect_id.hex(), info)
        self._events.append(CheckListSucceeded(self.connect_id, info, self.tried()))

    def _fail(self, reason: str) -> None:
        self._finish()
        log.info("checklist %s failed: %s; tried: %s", self.connect_id.hex(), reason,
                 ", ".join(str(p) for p in self.tried()) or "nothing")
        self._events.append(CheckListFailed(self.connect_id, reason, self.tried()))

    def _expire(self, now: float) -> None:
        if self.is_initiator and self._best_succeeded() is not None:
            self._select(now)
            return
        if self.state == _LIST_NONE:
            reason = "no answer from the peer within %.1f s" % (now - self.created)
        elif self.is_initiator:
            reason = "no check succeeded within %.1f s" % (now - self.created)
        else:
            reason = "no mediated IKE_SA_INIT within %.1f s" % (now - self.created)
        self._fail(reason)

    def _finish(self) -> None:
        """The list ends: pairs without an answer by now end FAILED (late answers are ignored), so
        every pair a report lists ends SUCCEEDED or FAILED."""
        self.finished = True
        self._next_tick = self._finish_at = self._expires_at = None
        self._triggered.clear()
        for p in self.pairs:
            p.deadline = None
            if p.state in (_WAITING, _IN_PROGRESS):
                self._set_pair_state(p, _FAILED)

    def tried(self) -> tuple[PairInfo, ...]:
        return tuple(p.info() for p in self.pairs)

    @property
    def keys(self) -> tuple[bytes, bytes] | None:
        """(ours, the peer's) once both are known: a later list of the same connect ID reuses them."""
        own, peer = self._local.key, self._remote.key
        return None if own is None or peer is None else (own, peer)

    @property
    def local_endpoints(self) -> list[Endpoint]:
        return list(self._local.endpoints)

    @property
    def remote_endpoints(self) -> list[Endpoint]:
        return list(self._remote.endpoints)
