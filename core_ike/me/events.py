"""Events of the ME extension (design principle 9): frozen dataclasses the adapter drains from
`Engine.next_event()` next to the IKE events, and turns into log lines, status and DB writes.

Peer side: MediationSaUp .. MediatedEstablished / MediationFailed. Every mediated connection that
`MediationClient.connect()` starts ends in exactly one MediatedEstablished or MediationFailed.
Server side: PeerOnline / PeerOffline / ConnectRelayed / ConnectRefused / CallbackSent.
"""

from __future__ import annotations

from dataclasses import dataclass

Addr = tuple[str, int]


# --- peer (client) side -------------------------------------------------------------------------

@dataclass(frozen=True)
class MediationSaUp:
    """The mediation connection is established; `srflx` as learnt from the server ([ME] §3.3.2.2)."""

    name: str
    unique_id: int
    local: Addr
    remote: Addr
    srflx: Addr | None


@dataclass(frozen=True)
class MediatedConnecting:
    """`connect(name)` accepted: mediation with `peer` (its mediation identity) starts."""

    name: str
    peer: str
    at: float


@dataclass(frozen=True)
class MeConnectSent:
    """Our ME_CONNECT left (docs/protocol.md §4.1 step 1 or 6); `endpoints` as advertised."""

    name: str
    peer: str
    connect_id: str
    endpoints: tuple[str, ...]
    response: bool = False  # True: we are the target answering with ME_RESPONSE


@dataclass(frozen=True)
class PeerNotOnline:
    """The server answered ME_CONNECT_FAILED: waiting for ME_CALLBACK until `until` ([ME] §5)."""

    name: str
    peer: str
    until: float


@dataclass(frozen=True)
class CallbackReceived:
    """The server reported `peer` online again (N(ME_CALLBACK)); mediation is retried."""

    peer: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class MediationRequested:
    """We are the target of a relayed ME_CONNECT from `peer` (docs/protocol.md §4.1 step 5)."""

    peer: str
    connect_id: str
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class ChecksStarted:
    """Both endpoint sets are known; connectivity checks run ([ME] §5)."""

    name: str  # mediated connection ("" on the target side)
    peer: str
    connect_id: str
    initiator: bool
    pairs: tuple[str, ...]


@dataclass(frozen=True)
class PairSucceeded:
    name: str
    peer: str
    connect_id: str
    pair: str


@dataclass(frozen=True)
class MediatedInitiating:
    """Checks selected a pair; the mediated IKE_SA_INIT (+ N(ME_CONNECTID)) goes out on it."""

    name: str
    peer: str
    connect_id: str
    local: Addr
    remote: Addr


@dataclass(frozen=True)
class MediatedEstablished:
    """The mediated IKE_SA is up (its CHILD_SAs are reported by the IKE events)."""

    name: str
    peer: str
    unique_id: int
    local: Addr
    remote: Addr
    elapsed: float  # seconds since connect()


@dataclass(frozen=True)
class MediationFailed:
    """The clear, final report of a failed mediated connection.

    `reason` starts with one of: "mediation server unreachable", "peer offline", "checks failed",
    "authentication failed", "mediated IKE_SA failed", "refused", "mediation connection lost".
    """

    name: str
    peer: str
    reason: str


@dataclass(frozen=True)
class ChecksEnded:
    """Target side: our check list for `connect_id` ended without a mediated IKE_SA_INIT."""

    peer: str
    connect_id: str
    reason: str


# --- server side ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerOnline:
    identity: str
    unique_id: int
    endpoint: Addr
    replaced: int | None  # unique id of the mediation SA this registration replaced


@dataclass(frozen=True)
class PeerOffline:
    identity: str
    unique_id: int


@dataclass(frozen=True)
class ConnectRelayed:
    requester: str
    target: str
    connect_id: str
    response: bool


@dataclass(frozen=True)
class ConnectRefused:
    """An ME_CONNECT answered with an error notify (offline target, limits, authorization)."""

    requester: str
    target: str
    reason: str
    notify: int


@dataclass(frozen=True)
class CallbackSent:
    requester: str
    online: str


@dataclass(frozen=True)
class RelayAllocated:
    """Our relay extension: ports `a_port` (where A sends) and `b_port` on `address` for A <-> B."""

    relay_id: int
    a: str
    b: str
    connect_id: str
    address: str
    a_port: int
    b_port: int


@dataclass(frozen=True)
class RelayFreed:
    relay_id: int
    a: str
    b: str
    reason: str
    bytes_a_to_b: int
    bytes_b_to_a: int


MeEvent = (
    MediationSaUp | MediatedConnecting | MeConnectSent | PeerNotOnline | CallbackReceived
    | MediationRequested | ChecksStarted | PairSucceeded | MediatedInitiating | MediatedEstablished
    | MediationFailed | ChecksEnded | PeerOnline | PeerOffline | ConnectRelayed | ConnectRefused
    | CallbackSent | RelayAllocated | RelayFreed
)
