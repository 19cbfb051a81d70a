"""The small IKE tasks of the mediation extension (design principle 5), for both roles.

They only carry payloads in and out; the decisions live in `client.MediationClient` and in
`mediation_server.relay.MediationServer`, which hand callbacks to the tasks. Protocol:
docs/protocol.md ([ME] = draft-brunner-ikev2-mediation-00).

`MeOutbox` serializes our ME_CONNECT requests per IKE_SA: the task manager batches queued tasks of
the same exchange type into one message, which must not happen to two ME_CONNECTs (each carries
exactly one ID_PEER, docs/protocol.md §2.5).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from ..codec.message import Message
from ..codec.payloads import NotifyPayload, Payload, VendorIdPayload
from ..constants import ExchangeType, MeEndpointType, NotifyType, PayloadType
from ..errors import ProtocolError
from ..ike.context import IkeSaView, Status, Task
from ..ike.state import IkeState
from .connect import ConnectResult, parse_connect_response
from .endpoints import (
    IMPL_VENDOR_ID,
    RELAY_VENDOR_ID,
    Endpoint,
    addressless_endpoint,
    decode_endpoint,
    encode_endpoint,
)

log = logging.getLogger("core_ike.me")

FailedCb = Callable[[IkeSaView, str, float], None]
Addr = tuple[str, int]


@dataclass(slots=True)  # one per mediation SA: a server holds 100k
class MeSaState:
    """What the mediation extension knows about one IKE_SA ([ME] = draft-brunner-ikev2-mediation §3);
    `sa.extension(MeSaState)` (typed per-extension state, core_ike/ike/context.py)."""

    # "peer": our mediation SA to the server; "server": a peer's mediation SA at the server; None: neither
    role: Literal["peer", "server"] | None = None
    relay: bool = False  # both ends negotiated the data relay (our extension, RELAY_VENDOR_ID)
    ours: bool = False  # server: the peer is our own client (IMPL_VENDOR_ID)
    server_ours: bool = False  # peer: the server announced IMPL_VENDOR_ID (it takes our private notifies)
    requested: bool = False  # server: the peer sent N(ME_MEDIATION) in IKE_SA_INIT ([ME] §3.1)
    srflx: Endpoint | None = None  # peer: our server-reflexive endpoint as the server saw it ([ME] §3.3)
    answered: float | None = None  # server: when we answered the peer's last ME_CONNECT request

    def for_successor(self) -> MeSaState:
        """RFC 7296 2.18: the rekeyed IKE_SA is the same mediation connection: role, relay and srflx
        carry over (a copy); the timing of the last answer does not."""
        return replace(self, answered=None)


def me_state(sa: IkeSaView) -> MeSaState | None:
    return sa.find_extension(MeSaState)


def me_role(sa: IkeSaView) -> str | None:
    st = sa.find_extension(MeSaState)
    return st.role if st is not None else None


def has_relay_vid(msg: Message) -> bool:
    return any(isinstance(p, VendorIdPayload) and p.data == RELAY_VENDOR_ID for p in msg.payloads)


def has_impl_vid(msg: Message) -> bool:
    return any(isinstance(p, VendorIdPayload) and p.data == IMPL_VENDOR_ID for p in msg.payloads)


def has_notify(msg: Message, ntype: int) -> bool:
    return msg.notify(ntype) is not None


class Outgoing(Protocol):
    def datagrams_to_send(self) -> list[tuple[bytes, Addr, Addr]]: ...


def send_queued(engine: Outgoing, send_now: Callable[[bytes, Addr, Addr], None] | None) -> None:
    """What `engine` queued to send leaves now through the adapter's immediate send (MeOutbox.flush; the
    datagrams are as the engine made them, non-ESP marker included); without one it stays queued."""
    if send_now is not None:
        for data, local, remote in engine.datagrams_to_send():
            send_now(data, local, remote)


class _Inside:
    """MeOutbox.inside's context: a class, not a generator context manager (entered on every ME_CONNECT
    response and answer; a generator's context costs several calls more)."""

    __slots__ = ("_marks", "_new", "_uid")

    def __init__(self, marks: set[int], uid: int) -> None:
        self._marks, self._uid = marks, uid
        self._new = False

    def __enter__(self) -> None:
        self._new = self._uid not in self._marks
        self._marks.add(self._uid)

    def __exit__(self, *exc: object) -> None:
        if self._new:
            self._marks.discard(self._uid)


class MeOutbox:
    """One ME_CONNECT exchange in flight per IKE_SA (window 1, no batching)."""

    def __init__(self, flush: Callable[[], None] | None = None) -> None:
        self._queues: dict[int, deque[MeConnectRequest]] = {}
        self._busy: dict[int, MeConnectRequest] = {}
        self._inside: set[int] = set()
        # the owner's immediate send of what the engine queued: a request started here leaves when it is
        # made, not after the rest of the datagram being processed (e.g. the response to the request that
        # started it, which nobody waits for)
        self.flush = flush

    def inside(self, sa: IkeSaView) -> _Inside:
        """Mark code running inside the task manager of `sa` (its message ID is not advanced yet:
        new requests are only queued; the task manager starts them afterwards). A `with` block."""
        return _Inside(self._inside, sa.unique_id)

    def send(self, sa: IkeSaView, task: MeConnectRequest, now: float) -> None:
        task.outbox = self
        self._queues.setdefault(sa.unique_id, deque()).append(task)
        self._pump(sa, now)

    def finished(self, sa: IkeSaView, task: MeConnectRequest, now: float) -> None:
        if self._busy.get(sa.unique_id) is task:
            del self._busy[sa.unique_id]
            self._pump(sa, now)

    def _pump(self, sa: IkeSaView, now: float) -> None:
        q = self._queues.get(sa.unique_id)
        if sa.unique_id in self._busy or not q or sa.state is IkeState.DESTROYED:
            return  # an ended SA takes no request: the rest are told by `drop`'s owner
        task = q.popleft()
        self._busy[sa.unique_id] = task
        sa.queue.append(task)
        if sa.unique_id not in self._inside:
            sa.initiate_next(now)
            if self.flush is not None:
                self.flush()

    def cancel(self, sa: IkeSaView, task: MeConnectRequest, now: float) -> bool:
        """Withdraw a request not built yet (still queued here or in the SA's queue); False if sent."""
        q = self._queues.get(sa.unique_id)
        if q is not None and task in q:
            q.remove(task)
            return True
        if self._busy.get(sa.unique_id) is task and task in sa.queue:
            sa.queue.remove(task)
            del self._busy[sa.unique_id]
            self._pump(sa, now)
            return True
        return False

    def drop(self, sa: IkeSaView) -> list[MeConnectRequest]:
        """The SA is gone: the requests still waiting here, never handed to it (the caller tells each,
        `MeConnectRequest.failed`). The one it carried was told by the SA's end (docs/architecture.md
        "Tasks when the IKE_SA ends"), which finished it here."""
        self._busy.pop(sa.unique_id, None)
        return list(self._queues.pop(sa.unique_id, ()))

    def pending(self, sa: IkeSaView) -> int:
        return len(self._queues.get(sa.unique_id, ())) + (1 if sa.unique_id in self._busy else 0)


# --- IKE_SA_INIT ------------------------------------------------------------------------------------

class MediationInit(Task):
    """Peer: N(ME_MEDIATION) in the IKE_SA_INIT of a mediation connection ([ME] §3.1, docs/protocol.md §3.2),
    plus our relay Vendor ID when `relay` (the server's echo is recorded in MeSaState.relay)."""

    exchange = ExchangeType.IKE_SA_INIT
    name = "ME_MEDIATION"

    def __init__(self, relay: bool = False) -> None:
        self.relay = relay

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        sa.extension(MeSaState).role = "peer"
        msg.payloads.append(NotifyPayload(NotifyType.ME_MEDIATION))
        msg.payloads.append(VendorIdPayload(IMPL_VENDOR_ID))
        if self.relay:
            msg.payloads.append(VendorIdPayload(RELAY_VENDOR_ID))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        if msg.get(PayloadType.SA) is None:
            return Status.DONE  # COOKIE / INVALID_KE round: IKE_INIT restarts the exchange
        if not has_notify(msg, NotifyType.ME_MEDIATION):
            # [ME] §3.1: the peer MUST abort
            raise ProtocolError("server did not return a ME_MEDIATION", None)
        if self.relay and has_relay_vid(msg):
            sa.extension(MeSaState).relay = True
        if has_impl_vid(msg):
            sa.extension(MeSaState).server_ours = True
        return Status.DONE


class MediationEcho(Task):
    """Server: echo N(ME_MEDIATION) (docs/protocol.md §3.2; strongSwan echoes it for any initiator), and our
    relay Vendor ID when the peer sent it and the server relays (`relay`)."""

    exchange = ExchangeType.IKE_SA_INIT
    name = "ME_MEDIATION"

    def __init__(self, relay: bool = False) -> None:
        self.relay = relay
        self.echo = False
        self.ours = False

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        st = sa.extension(MeSaState)
        st.role = "server"
        st.ours = has_impl_vid(msg)
        self.echo = self.relay and has_relay_vid(msg)
        st.relay = self.echo
        self.ours = st.ours

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        msg.payloads.append(NotifyPayload(NotifyType.ME_MEDIATION))
        if self.ours:  # only to our own clients: they may then send our private notifies (natinfo.py)
            msg.payloads.append(VendorIdPayload(IMPL_VENDOR_ID))
        if self.echo:
            msg.payloads.append(VendorIdPayload(RELAY_VENDOR_ID))


class ConnectIdInit(Task):
    """Mediated IKE_SA_INIT: N(ME_CONNECTID) in every request, COOKIE/INVALID_KE retries included
    ([ME] §4.4 / docs/protocol.md §9.2); a failure is the task manager's to report (IkeSa.failure)."""

    exchange = ExchangeType.IKE_SA_INIT
    name = "ME_CONNECTID"

    def __init__(self, connect_id: bytes) -> None:
        self.connect_id = connect_id

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        msg.payloads.append(NotifyPayload(NotifyType.ME_CONNECTID, self.connect_id))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        return Status.DONE


class ConnectIdResponder(Task):
    """Target: IKE_SA_INIT carrying ME_CONNECTID stops that check list (docs/protocol.md §8, §9.2)."""

    exchange = ExchangeType.IKE_SA_INIT
    name = "ME_CONNECTID"

    def __init__(self, connect_id: bytes, on_request: Callable[[IkeSaView, bytes, float], None]) -> None:
        self.connect_id = connect_id
        self.on_request = on_request

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        self.on_request(sa, self.connect_id, now)

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        return None  # docs/protocol.md §9.2: the responder does not echo it


# --- IKE_AUTH: server-reflexive discovery ----------------------------------------------------------

def first_endpoint(msg: Message) -> Endpoint | None:
    """The first ME_ENDPOINT of a message (docs/protocol.md §3.4: only the first one counts), or None."""
    n = msg.notify(NotifyType.ME_ENDPOINT)
    if n is None:
        return None
    try:
        return decode_endpoint(n.data)
    except ProtocolError as e:
        log.info("ignoring invalid ME_ENDPOINT: %s", e)
        return None


class SrflxRequest(Task):
    """Peer: address-less SERVER_REFLEXIVE ME_ENDPOINT in IKE_AUTH, srflx from the response
    ([ME] §3.3.2.2, docs/protocol.md §3.4). `on_result(sa, endpoint or None, now)` runs after the IKE_SA
    is established."""

    exchange = ExchangeType.IKE_AUTH
    name = "ME_SRFLX"

    def __init__(self, send: bool, on_result: Callable[[IkeSaView, Endpoint | None, float], None],
                 outbox: MeOutbox) -> None:
        self.send = send
        self.on_result = on_result
        self.outbox = outbox

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        if self.send:
            ep = addressless_endpoint(MeEndpointType.SERVER_REFLEXIVE)
            msg.payloads.append(NotifyPayload(NotifyType.ME_ENDPOINT, encode_endpoint(ep)))

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        if not sa.established:
            return Status.DONE  # IKE_AUTH failed; reported through `failed`
        ep = first_endpoint(msg)
        if ep is not None and (ep.type != MeEndpointType.SERVER_REFLEXIVE or ep.address is None):
            ep = None
        with self.outbox.inside(sa):
            self.on_result(sa, ep, now)
        return Status.DONE


class ServerAuth(Task):
    """Server side of IKE_AUTH on a mediation SA: srflx answer and child refusal, done by `answer`."""

    exchange = ExchangeType.IKE_AUTH
    name = "ME_AUTH"

    def __init__(self, answer: Callable[[IkeSaView, Message, bool, bool], None]) -> None:
        self.answer = answer
        self.want_srflx = False
        self.has_child = False

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        ep = first_endpoint(msg)
        self.want_srflx = ep is not None and ep.type == MeEndpointType.SERVER_REFLEXIVE
        self.has_child = msg.get(PayloadType.SA) is not None

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        self.answer(sa, msg, self.want_srflx, self.has_child)


# --- ME_CONNECT (exchange 240) ----------------------------------------------------------------------

class MeConnectRequest(Task):
    """One ME_CONNECT request we send ([ME] §4, docs/protocol.md §2.5); sent through a MeOutbox.

    `build(sa, now)` returns the payloads (called when the request is generated: the initiator's
    check list is created there, docs/protocol.md §4.4); `done(sa, result, now)` gets the response;
    `on_failed(sa, reason, now)` a timeout or the loss of the SA.
    """

    exchange = ExchangeType.ME_CONNECT
    name = "ME_CONNECT"
    prompt = True  # a mediated `up` waits for it, at both ends of the relay (RetransmitConfig early schedule)

    def __init__(self, build: Callable[[IkeSaView, float], list[Payload]],
                 done: Callable[[IkeSaView, ConnectResult, float], None] | None = None,
                 on_failed: FailedCb | None = None) -> None:
        self.build = build
        self.done = done
        self.on_failed = on_failed
        self.outbox: MeOutbox | None = None
        self.completed = False

    def build_i(self, sa: IkeSaView, msg: Message, now: float) -> None:
        msg.payloads += self.build(sa, now)

    def process_i(self, sa: IkeSaView, msg: Message, now: float) -> Status:
        self.completed = True
        assert self.outbox is not None
        with self.outbox.inside(sa):
            if self.done is not None:
                self.done(sa, parse_connect_response(msg.payloads), now)
            self.outbox.finished(sa, self, now)
        return Status.DONE

    def failed(self, sa: IkeSaView, reason: str, now: float) -> None:
        if self.completed:
            return
        self.completed = True
        assert self.outbox is not None
        with self.outbox.inside(sa):
            if self.on_failed is not None:
                self.on_failed(sa, reason, now)
            self.outbox.finished(sa, self, now)


class MeConnectResponder(Task):
    """A received ME_CONNECT request: `handler(sa, msg, now)` returns the response payloads
    (empty, or N(ME_CONNECT_FAILED)); a ProtocolError is answered with its notify (INVALID_SYNTAX)."""

    exchange = ExchangeType.ME_CONNECT
    name = "ME_CONNECT"

    def __init__(self, handler: Callable[[IkeSaView, Message, float], list[Payload]], outbox: MeOutbox) -> None:
        self.handler = handler
        self.outbox = outbox
        self.reply: list[Payload] = []

    def process_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        # a request the handler starts on this SA (the target's own ME_CONNECT, [ME] §4.1 step 5) is made and
        # sent before this response: our message IDs are not the peer's (RFC 7296 2.3), and the peer waits
        # for the request, not for the response
        self.reply = self.handler(sa, msg, now)

    def build_r(self, sa: IkeSaView, msg: Message, now: float) -> None:
        msg.payloads += self.reply
