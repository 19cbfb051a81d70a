"""The target role of the mediation client ([ME] = draft-brunner-ikev2-mediation-00; § numbers are
docs/protocol.md sections): `TargetRole`, the part of `MediationClient` (client.py) that answers a
relayed ME_CONNECT request (§4.1 step 5: responder check list, own ME_CONNECT with ME_RESPONSE), starts
its checks when the server accepted that answer (step 6), stops them on the mediated IKE_SA_INIT that
carries the connect ID (§8), and ends the session when the initiator goes away (§4.5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from ..codec.payloads import Payload
from ..ike.context import IkeSaView
from ..ike.engine import Engine
from ..ike.identity import Identity
from ..ike.state import IkeState
from ..rng import Rng
from . import events as mev
from . import tiebreak
from .attempt import Attempt, AttemptState
from .birthday import Probes
from .checktypes import CheckListConfig
from .clienttypes import MediationClientConfig, Session
from .connect import ConnectResult, build_connect, build_connect_failed, id_peer, new_connect_key
from .endpoints import Endpoint
from .engine import CheckEngine
from .tasks import MeConnectRequest, MeOutbox
from .upgrade import Paths

log = logging.getLogger("core_ike.me")


class TargetRole:
    """Mixed into MediationClient, which sets these attributes and defines the methods below them."""

    engine: Engine
    config: MediationClientConfig
    rng: Rng
    checks: CheckEngine
    paths: Paths
    probes: Probes
    outbox: MeOutbox
    attempts: dict[str, Attempt]
    sessions: dict[bytes, Session]
    _mediated: dict[int, str]
    _target_sas: dict[int, str]
    _unsent: dict[str, tuple[IkeSaView, MeConnectRequest]]
    _unsent_answers: dict[bytes, tuple[IkeSaView, MeConnectRequest]]
    _after: list[Callable[[float], None]]
    _paced: tuple[CheckListConfig, CheckListConfig] | None = None  # `_responder_checks`: (checks, without burst)

    def gather(self, sa: IkeSaView) -> list[Endpoint]:
        raise NotImplementedError

    def _with_nat(self, sa: IkeSaView, payloads: list[Payload]) -> list[Payload]:
        raise NotImplementedError

    def _yield(self, att: Attempt, cid: bytes, now: float, why: str) -> None:
        raise NotImplementedError

    def _fail(self, att: Attempt, reason: str, now: float) -> None:
        raise NotImplementedError

    def _pump(self, now: float) -> None:
        raise NotImplementedError

    def _start_probe(self, cid: bytes, now: float) -> None:
        raise NotImplementedError

    def _ike_deadline(self, now: float) -> float | None:
        raise NotImplementedError

    def _relayed_request(self, sa: IkeSaView, cid: bytes, key: bytes, eps: list[Endpoint], peer: Identity,
                         now: float, nat: str | None = None) -> list[Payload]:
        """We are the target (docs/protocol.md §4.1 step 5): responder list, empty answer, own ME_CONNECT.
        With our own attempt to `peer` in progress, the tie-break (tiebreak.py) keeps one of the two."""
        rival = next((a for a in self.attempts.values() if a.active and a.state is not AttemptState.YIELDED and a.peer == peer
                      and a.mediation == sa.config.name), None)
        if rival is not None:
            own = str(self.engine.config(rival.mediation).local.id)
            decision = tiebreak.decide(rival.state, rival.connect_id, rival.name not in self._unsent, cid, own,
                                       str(peer))
            if decision == "keep":  # empty answer, no check list: the peer abandons its attempt
                log.info("simultaneous ME_CONNECT from '%s' (connect ID %s): keeping our attempt '%s' "
                         "(connect ID %s)", peer, cid.hex(), rival.name, (rival.connect_id or b"").hex())
                return []
            if decision == "yield":
                self._yield(rival, cid, now, "simultaneous ME_CONNECT, yielded to its")
        if self.checks.get(cid) is not None:  # docs/protocol.md §6.2: a duplicate connect ID is refused
            why = f"checklist with connect ID {cid.hex()} already exists"
            log.info("ME_CONNECT from '%s' refused: %s", peer, why)
            if rival is not None and rival.state is AttemptState.YIELDED and rival.connect_id == cid:
                self._fail(rival, f"mediation by the peer failed: {why}", now)
            return build_connect_failed()
        sess = Session(cid, False, peer, mediation=sa.config.name, peer_nat=nat)
        self.sessions[cid] = sess
        sending = [True]  # outbox.send below makes and sends our answer first, the rest after it

        def made(t: float) -> None:
            cl = self.checks.get(cid)  # answers the peer's checks from now on; ours start in `done`
            if cl is not None and cl.keys is None:
                cl.set_responder_data(sess.key, sess.endpoints, t, start=False)
            self.engine.emit(mev.MeConnectSent("", str(peer), cid.hex(), tuple(map(str, sess.endpoints)), True))

        def build(s: IkeSaView, t: float) -> list[Payload]:
            self._unsent_answers.pop(cid, None)
            sess.key, sess.endpoints = new_connect_key(self.rng), self.gather(s)
            if not sending[0]:
                made(t)
            return self._with_nat(s, build_connect(cid, sess.key, sess.endpoints, id_peer(peer), response=True))

        def done(s: IkeSaView, result: ConnectResult, t: float) -> None:
            if self.checks.get(cid) is None:
                return
            if not result.ok:  # docs/protocol.md §4.1 step 6 (draft): the initiator has left
                self._end_target(cid, "the mediation server refused our answer", t)
                return
            # docs/protocol.md §4.1 step 6: our checks start once the datagrams read with this response have
            # been handled (`_after`): the server relays our answer before it responds to us, so a check of
            # the initiator's may already be queued behind this response; it is answered before our own
            # first checks are made (the initiator waits for that answer, nobody for our checks' order)
            self._after.append(lambda t2: self._start_checks(cid, peer, t2))

        def failed(s: IkeSaView, reason: str, t: float) -> None:
            self._unsent_answers.pop(cid, None)
            self._end_target(cid, f"answer not delivered: {reason}", t)

        answer = MeConnectRequest(build, done, failed)
        self._unsent_answers[cid] = (sa, answer)
        self.outbox.send(sa, answer, now)  # made and sent now (MeOutbox.flush) unless the SA is busy
        sending[0] = False
        # the responder list (its pairs), which the peer's checks need, and they can only follow the answer
        self.checks.create_responder(cid, key, eps, now, self._responder_checks(sa))
        log.info("received ME_CONNECT from '%s' (connect ID %s, %d endpoints)", peer, cid.hex(), len(eps))
        self.engine.emit(mev.MediationRequested(str(peer), cid.hex(), tuple(map(str, eps))))
        if cid not in self._unsent_answers:
            made(now)
        return []

    def _start_checks(self, cid: bytes, peer: Identity, now: float) -> None:
        """The target's checks start (docs/protocol.md §4.1 step 6), unless the session ended meanwhile or
        the initiator's mediated IKE_SA_INIT already came (§8: it ends the checks; `_mediated_request`)."""
        cl = self.checks.get(cid)
        if cl is None or cl.finished or cid not in self.sessions:
            return
        cl.start_checks(now)
        self.checks.handle_timer(now)  # the first ones leave now, not a turn of the event loop later
        self._pump(now)  # ... before the probing and the event, which the peer does not wait for
        self._start_probe(cid, now)
        self.engine.emit(mev.ChecksStarted("", str(peer), cid.hex(), False, tuple(str(p) for p in cl.tried())))
        self._pump(now)

    def _responder_checks(self, sa: IkeSaView) -> CheckListConfig | None:
        """The target's check list config: without a NAT here (NAT-D of the mediation SA, RFC 7296 2.23)
        the initiator's checks arrive without ours opening a mapping, so the initial burst, which exists
        to open them early (docs/protocol.md §7.6), would only delay our answer to its first check; our
        checks start paced, and a check that arrives still triggers one at once (§11.10). A stateful
        firewall without NAT in front of us still needs our checks to let the initiator's in: there they
        open one pair per pacing interval (T) instead of up to `initial_burst` at once."""
        cfg = self.config.checks
        if sa.nat_here or cfg.initial_burst <= 1:
            return None
        paced = self._paced
        if paced is None or paced[0] is not cfg:  # made once: the request waits for our answer
            paced = self._paced = (cfg, replace(cfg, initial_burst=1))
        return paced[1]

    def _mediated_request(self, sa: IkeSaView, cid: bytes, now: float) -> None:
        """Responder: IKE_SA_INIT + N(ME_CONNECTID) stops that check list (docs/protocol.md §8). The SA is
        tied to the session at once; the list stops right after the IKE_SA_INIT response has left
        (`_after`: the initiator waits for the response, nobody for the stop; until then the list answers
        checks, as it does once stopped)."""
        sess = self.sessions.pop(cid, None)
        if sess is not None:
            self._target_sas[sa.unique_id] = str(sess.peer)
        for att in self.attempts.values():
            if att.state is AttemptState.YIELDED and att.connect_id == cid:  # docs/protocol.md §11.9: our connect() waits
                att.sa_id, att.deadline = sa.unique_id, self._ike_deadline(now)
                self._mediated[sa.unique_id] = att.name
        self._after.append(lambda t: self._stop_checks(sa, cid, sess.peer_nat if sess is not None else None, t))

    def _stop_checks(self, sa: IkeSaView, cid: bytes, peer_nat: str | None, now: float) -> None:
        cl = self.checks.get(cid)
        if sa.state is not IkeState.DESTROYED:
            self.paths.track(sa.unique_id, cl, peer_nat)
            self.probes.mediated(cl, sa.local, sa.remote, now)
        if self.checks.stop(cid, now):  # the check list's own line says why it stopped, at info
            log.debug("mediated IKE_SA_INIT for connect ID %s, checks stopped", cid.hex())
        self._pump(now)

    def _end_target(self, cid: bytes, reason: str, now: float) -> None:
        sess = self.sessions.pop(cid, None)
        self.checks.remove(cid)
        unsent = self._unsent_answers.pop(cid, None)
        if unsent is not None:  # the initiator gave up before our answer left: withdraw it
            self.outbox.cancel(unsent[0], unsent[1], now)
        if sess is not None:
            log.info("checks for connect ID %s from '%s' ended: %s", cid.hex(), sess.peer, reason)
            self.engine.emit(mev.ChecksEnded(str(sess.peer), cid.hex(), reason))
        for att in list(self.attempts.values()):
            if att.state is AttemptState.YIELDED and att.connect_id == cid and att.sa_id is None:
                self._fail(att, f"mediation by the peer failed: {reason}", now)
