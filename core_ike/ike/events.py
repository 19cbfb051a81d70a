"""Events out of the IKE engine (design principle 9): frozen dataclasses drained by the adapter."""

from __future__ import annotations

from dataclasses import dataclass

Addr = tuple[str, int]


@dataclass(frozen=True)
class IkeSaEstablished:
    name: str
    unique_id: int
    local: Addr
    remote: Addr
    local_id: str
    remote_id: str
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    rekeyed_from: int | None = None


@dataclass(frozen=True)
class IkeSaFailed:
    """An IKE_SA could not be established; `reason` says why in words a user understands."""

    name: str
    unique_id: int
    reason: str
    notify: int | None = None
    initiator: bool = False  # we initiated it (keyingtries applies)
    authentication: bool = False  # credentials were refused or missing (errors.AuthenticationFailed)


@dataclass(frozen=True)
class IkeSaDeleted:
    name: str
    unique_id: int
    reason: str


@dataclass(frozen=True)
class ChildKeys:
    """Everything a data plane needs to install one CHILD_SA (both directions)."""

    encr_id: int
    key_bits: int
    integ_id: int
    esn: bool
    spi_in: int
    spi_out: int
    key_in: bytes  # encryption (+ salt) key for inbound
    integ_in: bytes
    key_out: bytes
    integ_out: bytes


@dataclass(frozen=True)
class ChildSaEstablished:
    ike_name: str
    ike_unique_id: int
    name: str
    unique_id: int
    reqid: int
    local: Addr
    remote: Addr
    encap: bool
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    keys: ChildKeys
    proposal: str
    rekeyed_from: int | None = None  # unique id of the CHILD_SA this one replaces (make-before-break)
    replay_window: int = 128  # RFC 4303 3.4.3, from the CHILD_SA's config


@dataclass(frozen=True)
class ChildSaFailed:
    ike_name: str
    name: str
    reason: str


@dataclass(frozen=True)
class ChildSaDeleted:
    ike_name: str
    name: str
    unique_id: int
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class VirtualIpAssigned:
    """The peer assigned us a virtual IP in its CFG_REPLY (RFC 7296 §2.19, §3.15.1): our traffic leaves
    from it while IKE_SA `ike_unique_id` (or the IKE_SA rekeying it) lives."""

    ike_name: str
    ike_unique_id: int
    address: str


@dataclass(frozen=True)
class PeerAddressChanged:
    """The IKE_SA's path changed (RFC 7296 2.23 dynamic address update: the peer's NAT mapping, or
    the local end an authenticated message arrived on): its CHILD_SAs' ESP follows."""

    ike_unique_id: int
    remote: Addr
    local: Addr | None = None  # the IKE_SA's local end after the change (None: not reported)


Event = (
    IkeSaEstablished | IkeSaFailed | IkeSaDeleted | ChildSaEstablished | ChildSaFailed | ChildSaDeleted
    | PeerAddressChanged | VirtualIpAssigned
)
