"""The mediation client's vocabulary: its configuration, its per-connect-ID session and the status it
reports (`MediationClient.status`, shown by `ikectl status`); `core_ike.me.client` re-exports them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..ike.context import IkeSaView
from ..ike.identity import Identity
from .birthday import PortPool, ProbeConfig
from .checklist import CheckListConfig
from .checktypes import PairInfo
from .endpoints import Endpoint
from .predict import DEFAULT_COUNT, Allocation
from .upgrade import UpgradeConfig

Addr = tuple[str, int]


@dataclass
class MediationClientConfig:
    """Everything a test or operator tunes (design principle 7)."""

    checks: CheckListConfig = field(default_factory=CheckListConfig)
    server_timeout: float = 30.0  # mediation SA must be up within this -> "mediation server unreachable"
    # the server's answer to our ME_CONNECT: 0 = as long as the mediation SA retransmits the request (its
    # RetransmitConfig, early schedule); > 0 = also give up this long after the request was *sent* (a request
    # queued behind another exchange of the SA has no deadline of its own: window 1, RFC 7296 2.3)
    connect_timeout: float = 0.0
    callback_timeout: float = 120.0  # wait for ME_CALLBACK after ME_CONNECT_FAILED -> "peer offline"
    # the server's rate limit (TEMPORARY_FAILURE, RFC 7296 3.10.1): ask again after rate_limit_retry s,
    # doubling each time, at most rate_limit_tries times, then fail as "rate limited"
    rate_limit_retry: float = 0.5
    rate_limit_tries: int = 5
    # the mediated IKE_SA after the pair was selected: 0 = as long as its own retransmissions go on (the
    # mediated connection's RetransmitConfig); > 0 = also give up after this long
    ike_timeout: float = 0.0
    srflx_always: bool = True  # request the srflx even without NAT here (strongSwan: only with NAT)
    relay: bool = True  # announce RELAY_VENDOR_ID: accept RELAYED endpoints from our server (extension)
    # [ME] §3.3.1: the local addresses to offer as HOST endpoints, read by the adapter (the core never asks
    # the OS; mediation_client/hostaddr.py); None: none, only the server-reflexive endpoint
    host_addresses: Callable[[], Iterable[str]] | None = None
    # more local endpoints for the mediation SA's local transport address (the adapter's port mappings on
    # the gateway, mediation_client/portmap.py); None: none
    extra_endpoints: Callable[[Addr], Iterable[Endpoint]] | None = None
    # the port allocation of our NAT when it is APDM with sequential ports (the adapter's RFC 5780
    # discovery); its next ports are offered as predicted candidates (core_ike/me/predict.py); None: none
    port_allocation: Callable[[], Allocation | None] | None = None
    predicted: int = DEFAULT_COUNT  # how many (the ME_CONNECT stays within the server's 16 endpoints)
    upgrade: UpgradeConfig = field(default_factory=UpgradeConfig)  # relay -> direct (core_ike/me/upgrade.py)
    # many-port probing (core_ike/me/birthday.py): our NAT's behaviour (the adapter's RFC 5780 summary,
    # sent to our own server in ME_CONNECT), the adapter's extra sockets, the bounds
    nat_behaviour: Callable[[], str | None] | None = None
    port_pool: PortPool | None = None
    # our NAT's discovery has not answered yet: ME_CONNECTs of a mediation SA that just came up wait for it
    # (so that they carry our NAT's behaviour), at most probing.nat_wait seconds; `nat_known` ends the wait
    nat_pending: Callable[[], bool] | None = None
    probing: ProbeConfig = field(default_factory=ProbeConfig)
    # the adapter's immediate send: a connectivity check (or its answer) leaves when made, not after the
    # rest of the event loop's turn (e.g. the ME_CONNECT response built after the checks start, [ME] §5.2);
    # None: with the engine's other datagrams
    send_now: Callable[[bytes, Addr, Addr], None] | None = None


@dataclass
class Session:
    """Our side of one connect ID (initiator = we sent the first ME_CONNECT)."""

    connect_id: bytes
    initiator: bool
    peer: Identity
    name: str = ""
    key: bytes = b""
    endpoints: list[Endpoint] = field(default_factory=list)
    mediation: str = ""  # config of the mediation SA the request came on (target sessions)
    peer_nat: str | None = None  # the peer's NAT behaviour, when our server relayed it (birthday.py)


@dataclass(frozen=True)
class MediationSaStatus:
    name: str
    unique_id: int
    state: str
    local: Addr
    remote: Addr
    srflx: Addr | None


@dataclass(frozen=True)
class ConnectionStatus:
    name: str
    peer: str
    state: str
    since: float
    connect_id: str | None
    pairs: tuple[str, ...]
    selected: str | None
    sa_id: int | None
    reason: str
    path: str | None = None  # a tunnel that came up relayed: where it runs now (core_ike/me/upgrade.py)
    probing: str | None = None  # many-port probing of its checks: under way, or how it ended (birthday.py)


@dataclass(frozen=True)
class ClientStatus:
    mediation: tuple[MediationSaStatus, ...]
    connections: tuple[ConnectionStatus, ...]
    target_lists: tuple[str, ...]  # check lists where we are the ME_CONNECT target


def rate_limit_backoff(cfg: MediationClientConfig, n: int) -> float:
    """Seconds before asking again after the n-th rate-limit refusal in a row (n >= 1): doubling."""
    return float(cfg.rate_limit_retry * 2 ** (n - 1))


def pairs_text(tried: Iterable[PairInfo]) -> str:
    return ", ".join(f"{p.local[0]}[{p.local[1]}]-{p.remote[0]}[{p.remote[1]}] {p.state.value}"
                     for p in tried) or "no pairs"


def failure_text(default: str, sa: IkeSaView) -> str:
    """The report of a lost SA: authentication failures by their type (errors.AuthenticationFailed, or
    AUTHENTICATION_FAILED from the peer, RFC 7296 2.21.2), everything else under `default`."""
    f = sa.failure
    if f is None:
        return f"{default}: IKE_SA destroyed"
    if f.authentication:
        return f"authentication failed: {f.reason}"
    return f"{default}: {f.reason}"
