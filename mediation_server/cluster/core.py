"""The cluster's sans-IO core: which peer is registered at which server, and the messages between
servers (docs/architecture.md, "Cluster"). No IO and no clock (the order of registrations is the
engine's numbers, callback times are the caller's): the caller carries `outbox` entries (channel, bytes) over the engine (redis_bus.py), handing received ones to `receive`.

Channels: `PRESENCE` (every server) carries "up"/"down" of each registration and "hello" from a server
that (re)joined; `server_channel(name)` carries ME_CONNECTs and failures forwarded to one server ([ME]
§4: the server relays ME_CONNECT between the two peers; here the two peers' servers relay it between
them) and the resynchronisation of one server.

Resynchronisation is paced, so that an engine restart with every server holding 100k peers is not a
burst of every registration at once (a subscriber that falls behind is cut off by Redis's output
buffer limit, which would start the resync over): `start_sync(to, ...)` snapshots the identities and
sends them to server `to` in "sync" messages of `SYNC_CHUNK` registrations, at most `SYNC_WINDOW` of them
not yet acknowledged by `to` ("ack", sent as each one is taken in). Each registration is read when its
message is made, not when the snapshot is taken, so a "down" published in between is not undone.

One registration per identity across the cluster, newest wins, in the engine's order and not by any
server's clock: a new registration's "up" is queued on the pseudo-channel `SEQUENCE`, and the bus publishes
it with a number the engine gives it in the same step (redis_bus.py: one Lua script takes the number and
publishes); `sequenced(n)` then tells the core the number of its oldest registration waiting for one. A
server that holds an older registration of that identity tears its SA down (`PeerElsewhere`). Each "up"
also says whether the peer's mediation SA negotiated the data relay (docs/protocol.md §11.1), so that a
requester's server knows whether to offer one for it (relay.py). A forwarded ME_CONNECT may carry the
requester's NAT behaviour ("nat", docs/protocol.md §11.17), which the target's server passes on only to
our own clients; a server that does not know the field ignores it, and its messages without it mean none.
Messages are JSON; a malformed one is logged and dropped (`ClusterMessageError`), never a crash.

Memory: each server keeps every peer of the others (`known()` of them), so one entry per remote peer is
an identity (UTF-8 bytes) and one packed bytes value (`_pack`): server index, sequence number, relay flag,
endpoint; `where()` unpacks it into a `RemotePeer` on demand.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core_ike.me.natinfo import MAX_TEXT, decode_nat

log = logging.getLogger("mediation_server.cluster")

Addr = tuple[str, int]
PRESENCE = "ikeme.presence"
SEQUENCE = "ikeme.sequence"  # outbox pseudo-channel: publish on PRESENCE with the engine's next number
MAX_SERVERS = 4096  # server names kept (an index of 2 bytes in each packed entry; names come from outside)
MAX_OUTBOX = 100_000  # messages kept while the engine is unreachable; a hello resends the presence anyway
SYNC_CHUNK = 500  # registrations per "sync" message (about 40 KB of JSON)
SYNC_WINDOW = 4  # "sync" messages per receiving server sent and not yet acknowledged


def server_channel(name: str) -> str:
    return f"ikeme.server.{name}"


class ClusterMessageError(ValueError):
    """A message from the engine that is not one of ours (logged and dropped)."""


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """Where a peer of another server is registered (made by `where()` from the packed entry)."""

    server: str
    endpoint: Addr | None
    seq: int  # the engine's number of the registration: higher is newer
    relay: bool = False  # its mediation SA negotiated our data relay (docs/protocol.md §11.1)


@dataclass(frozen=True)
class PeerElsewhere:
    """`identity` registered at `server`, number `seq` (the newest registration seen for it)."""

    identity: str
    server: str
    seq: int
    relay: bool = False


@dataclass(frozen=True)
class Sequenced:
    """Our registration of `identity` got the engine's number `seq` (the order of "newest wins")."""

    identity: str
    seq: int


@dataclass(frozen=True)
class PeerGoneElsewhere:
    identity: str
    server: str


@dataclass(frozen=True)
class ForwardedConnect:
    """An ME_CONNECT (request or response) from `requester` at `origin` to `target`, registered here."""

    origin: str
    requester: tuple[int, bytes]  # ID type and data of the requester (it becomes ID_PEER)
    target: str
    response: bool
    connect_id: bytes
    key: bytes
    endpoints: tuple[bytes, ...]  # ME_ENDPOINT octets as the requester sent them
    # the requester's N(IKEME_NAT_BEHAVIOUR) data (core_ike/me/natinfo.py), for the target's server to
    # pass on to our own clients only (docs/protocol.md §11.17); None: none sent, or a server without it
    nat: bytes | None = None


@dataclass(frozen=True)
class ForwardedFailure:
    """Tell `to` (registered here) that its ME_CONNECT `connect_id` to `about` failed ([ME] §4)."""

    to: str
    connect_id: bytes
    about: tuple[int, bytes]


@dataclass(frozen=True)
class SyncAsked:
    server: str


@dataclass(frozen=True)
class CallbackElsewhere:
    """A callback registration made at another server ([ME] §4.1 ME_CALLBACK): kept here too, so that
    it fires wherever its requester is registered when the target comes online."""

    target: str
    requester: str
    created: float
    expires: float


@dataclass(frozen=True)
class CallbackFiredElsewhere:
    target: str
    requester: str


@dataclass(frozen=True)
class SyncChunk:
    """One "sync" message from `server`: the registrations that are news here (newest wins) and the
    callback registrations it knows."""

    server: str
    peers: tuple[PeerElsewhere, ...]
    callbacks: tuple[CallbackElsewhere, ...]


ClusterEvent = (PeerElsewhere | PeerGoneElsewhere | ForwardedConnect | ForwardedFailure | SyncAsked
                | CallbackElsewhere | CallbackFiredElsewhere | SyncChunk)
# identity -> (endpoint, seq, relay) if registered here; seq 0: its number has not come back yet
Lookup = Callable[[str], "tuple[Addr | None, int, bool] | None"]
_HEAD = struct.Struct(">HQB")  # server index, seq, flags (bit 0: relay; bit 1: IPv6; bit 2: endpoint)
_PORT = struct.Struct(">H")


def _packed_ip(address: str) -> bytes:
    """inet_pton (C, not the ipaddress module: this runs for every peer of the other servers)."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except OSError:
        raise ClusterMessageError(f"{address!r} is not an IP address") from None


def _pack(server: int, seq: int, relay: bool, endpoint: Addr | None) -> bytes:
    if endpoint is None:
        return _HEAD.pack(server, seq, int(relay))
    ip = _packed_ip(endpoint[0])
    return _HEAD.pack(server, seq, int(relay) | (2 if len(ip) == 16 else 0) | 4) + _PORT.pack(endpoint[1]) + ip


def _unpack(v: bytes) -> tuple[int, int, bool, Addr | None]:
    server, seq, flags = _HEAD.unpack_from(v)
    if not flags & 4:
        return server, seq, bool(flags & 1), None
    (port,) = _PORT.unpack_from(v, _HEAD.size)
    family = socket.AF_INET6 if flags & 2 else socket.AF_INET
    return server, seq, bool(flags & 1), (socket.inet_ntop(family, v[_HEAD.size + 2:]), port)

CallbackRow = tuple[str, str, float, float]  # target, requester, created, expires


@dataclass
class _SyncOut:
    """A resynchronisation under way towards one server."""

    stream: int
    identities: list[str]
    callbacks: list[CallbackRow]
    lookup: Lookup
    pos: int = 0  # next index in identities + callbacks
    sent: int = 0  # "sync" messages sent
    acked: int = 0  # of which acknowledged

    @property
    def total(self) -> int:
        return len(self.identities) + len(self.callbacks)


def _field(d: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    v = d.get(key)
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise ClusterMessageError(f"field {key!r}: expected {kind}, got {v!r}")
    return v


def _hex(d: dict[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(_field(d, key, str))
    except ValueError:
        raise ClusterMessageError(f"field {key!r}: not hex") from None


def _seq(d: dict[str, Any]) -> int:
    v = _field(d, "seq", int)
    if not 0 < v < 1 << 64:
        raise ClusterMessageError(f"field 'seq': {v} out of range")
    return int(v)


def _endpoint(ep: Any) -> Addr | None:
    if ep is None:
        return None
    if not (isinstance(ep, list) and len(ep) == 2 and isinstance(ep[0], str) and isinstance(ep[1], int)
            and not isinstance(ep[1], bool) and 0 <= ep[1] < 65536):
        raise ClusterMessageError(f"field 'ep': expected [address, port], got {ep!r}")
    return ep[0], ep[1]


def _ident(d: dict[str, Any], key: str) -> tuple[int, bytes]:
    v = _field(d, key, list)
    if len(v) != 2 or not isinstance(v[0], int) or not isinstance(v[1], str):
        raise ClusterMessageError(f"field {key!r}: expected [id type, hex data]")
    try:
        return v[0], bytes.fromhex(v[1])
    except ValueError:
        raise ClusterMessageError(f"field {key!r}: not hex") from None


class Cluster:
    """One server's view of the others; `outbox` holds what to publish, in order."""

    def __init__(self, name: str) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"cluster server name {name!r}: a non-empty word expected")
        self.name = name
        self._remote: dict[bytes, bytes] = {}  # identity (UTF-8) -> _pack(...) (peers of other servers)
        self._servers: list[str] = []  # index -> server name
        self._index: dict[str, int] = {}
        self._held: list[int] = []  # index -> how many peers of ours that server holds
        self.outbox: list[tuple[str, bytes]] = []
        self.on_output: Any = None  # called when outbox turns non-empty (the bus wakes its publisher)
        self.dropped = 0  # messages not queued because the outbox was full
        self.syncs: dict[str, _SyncOut] = {}  # server -> the resynchronisation we send it
        self._streams = 0
        self._awaiting: deque[str] = deque()  # identities of the SEQUENCE entries sent, oldest first
        self._lost: list[str] = []  # identities whose number was asked for on a closed connection

    # ------------------------------------------------------------------ the others' peers
    def _server_index(self, server: str) -> int:
        i = self._index.get(server)
        if i is None:
            if len(self._servers) >= MAX_SERVERS:
                raise ClusterMessageError(f"more than {MAX_SERVERS} server names: {server!r} ignored")
            i = self._index[server] = len(self._servers)
            self._servers.append(server)
            self._held.append(0)
        return i

    def where(self, identity: str) -> RemotePeer | None:
        v = self._remote.get(identity.encode())
        if v is None:
            return None
        server, seq, relay, ep = _unpack(v)
        return RemotePeer(self._servers[server], ep, seq, relay)

    def known(self) -> int:
        """How many peers of other servers this one knows."""
        return len(self._remote)

    def held_by(self, server: str) -> int:
        i = self._index.get(server)
        return self._held[i] if i is not None else 0

    def servers_holding_peers(self) -> list[str]:
        return sorted(self._servers[i] for i, n in enumerate(self._held) if n)

    def _set(self, key: bytes, server: int, seq: int, relay: bool, ep: Addr | None) -> None:
        value = _pack(server, seq, relay, ep)  # raises ClusterMessageError before anything changes
        old = self._remote.get(key)
        if old is not None:
            self._held[_HEAD.unpack_from(old)[0]] -= 1
        self._remote[key] = value
        self._held[server] += 1

    def _forget(self, key: bytes) -> bytes | None:
        old = self._remote.pop(key, None)
        if old is not None:
            self._held[_HEAD.unpack_from(old)[0]] -= 1
        return old

    def clear_remote(self) -> None:
        """A new engine connection: the others say their peers again (redis_bus.py)."""
        self._remote.clear()
        self._held = [0] * len(self._servers)

    def reset(self) -> None:
        """A new engine connection: what was queued is stale (the hello and the syncs replace it), the
        numbers asked for on the old one will not come back (the daemon asks again, `unsequenced`)."""
        self.take_outbox()
        self.clear_remote()
        self.syncs.clear()
        self._lost += self._awaiting
        self._awaiting.clear()

    def take_lost(self) -> list[str]:
        """The identities registered here whose "up" went with a closed engine connection: the daemon
        registers those still here again (`register`)."""
        out, self._lost = self._lost, []
        return out

    # ------------------------------------------------------------------ what this server says
    def _put(self, channel: str, msg: dict[str, Any], seq_last: bool = False) -> bool:
        msg["srv"] = self.name
        if len(self.outbox) >= MAX_OUTBOX:
            self.dropped += 1
            return False
        data = json.dumps(msg, separators=(",", ":"))
        if seq_last:  # the engine appends the number and the closing brace (redis_bus.py SEQUENCE_SCRIPT)
            data = data[:-1] + ',"seq":'
        self.outbox.append((channel, data.encode()))
        if len(self.outbox) == 1 and self.on_output is not None:
            self.on_output()
        return True

    def _up(self, identity: str, endpoint: Addr | None, relay: bool) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": "up", "id": identity, "ep": list(endpoint) if endpoint else None}
        if relay:
            msg["r"] = 1
        return msg

    def register(self, identity: str, endpoint: Addr | None, relay: bool = False) -> None:
        """A new registration here: announced to every server with the engine's next number, which
        comes back through `sequenced` (module text)."""
        self._forget(identity.encode())  # registered here now (a newer "up" from elsewhere may follow)
        if self._put(SEQUENCE, self._up(identity, endpoint, relay), seq_last=True):
            self._awaiting.append(identity)
        else:  # the outbox is full (the engine is away): asked again after the reconnection
            self._lost.append(identity)

    def sequenced(self, seq: int) -> Sequenced | None:
        """The engine's number of the oldest `register` still waiting for one (None: none waits)."""
        return Sequenced(self._awaiting.popleft(), seq) if self._awaiting else None

    def announce(self, identity: str, endpoint: Addr | None, seq: int, to: str | None = None,
                 relay: bool = False) -> None:
        """A registration here that has its number already (restated); `to`: only that server."""
        msg = self._up(identity, endpoint, relay)
        msg["seq"] = seq
        self._put(server_channel(to) if to else PRESENCE, msg)

    def withdraw(self, identity: str) -> None:
        self._put(PRESENCE, {"t": "down", "id": identity})

    def callback_added(self, target: str, requester: str, created: float, expires: float,
                       to: str | None = None) -> None:
        self._put(server_channel(to) if to else PRESENCE, {"t": "cb", "target": target, "req": requester,
                                                           "created": created, "expires": expires})

    def callback_fired(self, target: str, requester: str) -> None:
        self._put(PRESENCE, {"t": "cbfired", "target": target, "req": requester})

    def hello(self) -> None:
        """Joined (or reconnected to) the engine: ask every server to announce its peers again."""
        self._put(PRESENCE, {"t": "hello"})

    def forward_connect(self, server: str, requester: tuple[int, bytes], target: str, *, response: bool,
                        connect_id: bytes, key: bytes, endpoints: tuple[bytes, ...],
                        nat: bytes | None = None) -> None:
        """`nat`: the requester's NAT behaviour text (natinfo.py), carried as the optional "nat" field;
        a value that is not printable ASCII of at most MAX_TEXT octets is left out (and logged)."""
        msg: dict[str, Any] = {
            "t": "connect", "req": [requester[0], requester[1].hex()], "target": target, "response": response,
            "cid": connect_id.hex(), "key": key.hex(), "eps": [e.hex() for e in endpoints]}
        if nat is not None:
            text = decode_nat(nat)
            if text is None:
                log.warning("ME_CONNECT to '%s': not forwarding a malformed NAT behaviour (%d octets)", target, len(nat))
            else:
                msg["nat"] = text
        self._put(server_channel(server), msg)

    def forward_failure(self, server: str, to: str, connect_id: bytes, about: tuple[int, bytes]) -> None:
        self._put(server_channel(server), {"t": "failed", "to": to, "cid": connect_id.hex(),
                                           "about": [about[0], about[1].hex()]})

    def start_sync(self, to: str, identities: list[str], lookup: Lookup,
                   callbacks: Sequence[CallbackRow] = ()) -> None:
        """Send server `to` our registrations (paced, see the module text); a sync already under way
        to it starts over (it said hello again: what it took in is void)."""
        if to == self.name:
            return
        self._streams += 1
        self.syncs[to] = _SyncOut(self._streams, identities, list(callbacks), lookup)
        self._pump(to)

    def _pump(self, to: str) -> None:
        st = self.syncs.get(to)
        if st is None:
            return
        n_ids = len(st.identities)
        while st.sent - st.acked < SYNC_WINDOW and st.pos < st.total:
            end = min(st.pos + SYNC_CHUNK, st.total)
            ups = []
            for identity in st.identities[st.pos:min(end, n_ids)]:
                cur = st.lookup(identity)
                if cur is not None and cur[1] > 0:  # one without its number yet: its own "up" follows
                    ups.append([identity, list(cur[0]) if cur[0] else None, cur[1], int(cur[2])])
            cbs = [list(c) for c in st.callbacks[max(st.pos - n_ids, 0):max(end - n_ids, 0)]]
            st.pos = end
            self._put(server_channel(to), {"t": "sync", "s": st.stream, "n": st.sent, "up": ups, "cb": cbs})
            st.sent += 1
        if st.pos >= st.total and st.acked >= st.sent:
            del self.syncs[to]

    def _rx_ack(self, srv: str, d: dict[str, Any]) -> None:
        st = self.syncs.get(srv)
        stream, n = _field(d, "s", int), _field(d, "n", int)
        if st is not None and st.stream == stream:
            st.acked = max(st.acked, min(n + 1, st.sent))
            self._pump(srv)

    def _rx_sync(self, srv: str, d: dict[str, Any]) -> SyncChunk:
        ups, cbs = _field(d, "up", list), _field(d, "cb", list)
        stream, n = _field(d, "s", int), _field(d, "n", int)
        peers: list[PeerElsewhere] = []
        for u in ups:
            if not (isinstance(u, list) and len(u) == 4):
                raise ClusterMessageError(f"sync entry {u!r}: expected [identity, endpoint, seq, relay]")
            ev = self._rx_up(srv, {"id": u[0], "ep": u[1], "seq": u[2], "r": u[3]})
            if ev is not None:
                peers.append(ev)
        callbacks: list[CallbackElsewhere] = []
        for c in cbs:
            if not (isinstance(c, list) and len(c) == 4 and isinstance(c[0], str) and isinstance(c[1], str)
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in c[2:])):
                raise ClusterMessageError(f"sync callback {c!r}: expected [target, requester, created, expires]")
            callbacks.append(CallbackElsewhere(c[0], c[1], float(c[2]), float(c[3])))
        self._put(server_channel(srv), {"t": "ack", "s": stream, "n": n})
        return SyncChunk(srv, tuple(peers), tuple(callbacks))

    def take_outbox(self) -> list[tuple[str, bytes]]:
        out, self.outbox = self.outbox, []
        return out

    # ------------------------------------------------------------------ what the others say
    def receive(self, data: bytes) -> ClusterEvent | None:
        """One message from the engine; None when it needs no action here (our own, or stale)."""
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ClusterMessageError("not JSON") from None
        if not isinstance(d, dict):
            raise ClusterMessageError("not a JSON object")
        srv = _field(d, "srv", str)
        if srv == self.name:
            return None
        t = _field(d, "t", str)
        handler = _RECEIVERS.get(t)
        if handler is None:
            raise ClusterMessageError(f"unknown message type {t!r}")
        return handler(self, srv, d)

    def _rx_up(self, srv: str, d: dict[str, Any]) -> PeerElsewhere | None:
        identity, seq = _field(d, "id", str), _seq(d)
        ep, relay = _endpoint(d.get("ep")), bool(d.get("r"))
        key = identity.encode()
        old = self._remote.get(key)
        if old is not None and _HEAD.unpack_from(old)[1] > seq:
            return None  # an older registration announced late (or again, after a hello)
        i = self._server_index(srv)
        self._set(key, i, seq, relay, ep)
        return PeerElsewhere(identity, self._servers[i], seq, relay)

    def _rx_down(self, srv: str, d: dict[str, Any]) -> PeerGoneElsewhere | None:
        identity = _field(d, "id", str)
        key = identity.encode()
        old = self._remote.get(key)
        if old is None or self._servers[_HEAD.unpack_from(old)[0]] != srv:
            return None
        self._forget(key)
        return PeerGoneElsewhere(identity, srv)

    def server_gone(self, server: str) -> list[str]:
        """`server` left (its engine connection closed): its peers are no longer reachable there."""
        self.syncs.pop(server, None)
        i = self._index.get(server)
        if i is None or not self._held[i]:
            return []
        gone = [k for k, v in self._remote.items() if _HEAD.unpack_from(v)[0] == i]
        for k in gone:
            del self._remote[k]
        self._held[i] = 0
        return [k.decode() for k in gone]


def _rx_connect(_cluster: Cluster, srv: str, d: dict[str, Any]) -> ForwardedConnect:
    eps = _field(d, "eps", list)
    if not all(isinstance(e, str) for e in eps):
        raise ClusterMessageError("field 'eps': expected hex strings")
    try:
        endpoints = tuple(bytes.fromhex(e) for e in eps)
    except ValueError:
        raise ClusterMessageError("field 'eps': not hex") from None
    return ForwardedConnect(srv, _ident(d, "req"), _field(d, "target", str),
                            bool(_field(d, "response", bool)), _hex(d, "cid"), _hex(d, "key"), endpoints,
                            _nat(srv, d))


def _nat(srv: str, d: dict[str, Any]) -> bytes | None:
    """The optional "nat" field of a forwarded ME_CONNECT: absent (a server without it) means none; a
    value that is not printable ASCII of at most MAX_TEXT octets is dropped with a log line, and the
    ME_CONNECT goes on without it (its peers then do without many-port probing, docs/protocol.md §11.17)."""
    v = d.get("nat")
    if v is None:
        return None
    if isinstance(v, str) and len(v) <= MAX_TEXT and v.isascii() and decode_nat(v.encode("ascii")) is not None:
        return v.encode("ascii")
    shown = repr(v[:40]) if isinstance(v, str) else type(v).__name__
    log.warning("forwarded ME_CONNECT from server %s: dropping a malformed NAT behaviour (%s)", srv, shown)
    return None


# message type ("t") -> its reader: the event it means here, None when it needs no action
_RECEIVERS: dict[str, Callable[[Cluster, str, dict[str, Any]], ClusterEvent | None]] = {
    "hello": lambda _c, srv, _d: SyncAsked(srv),
    "up": Cluster._rx_up,
    "down": Cluster._rx_down,
    "connect": _rx_connect,
    "cb": lambda _c, _srv, d: CallbackElsewhere(_field(d, "target", str), _field(d, "req", str),
                                                float(_field(d, "created", (int, float))),
                                                float(_field(d, "expires", (int, float)))),
    "cbfired": lambda _c, _srv, d: CallbackFiredElsewhere(_field(d, "target", str), _field(d, "req", str)),
    "sync": Cluster._rx_sync,
    "ack": Cluster._rx_ack,
    "failed": lambda _c, _srv, d: ForwardedFailure(_field(d, "to", str), _hex(d, "cid"), _ident(d, "about")),
}
