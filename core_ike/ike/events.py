"""Events out of the IKE engine (design principle 9): frozen dataclasses drained by the adapter.

The events made for every IKE_SA and CHILD_SA (IkeSaEstablished, ChildSaEstablished, ChildKeys) have an
`__init__` of their own: the generated one of a frozen dataclass calls `object.__setattr__` once per field,
each call binding a method wrapper and walking the class's MRO (CPython's hackcheck), several times the
cost of a plain assignment. The passing events set their `__dict__` in one such call; ChildKeys, which its
CHILD_SA keeps, has slots, each set through its member descriptor. The instances stay frozen (assignment
and deletion raise FrozenInstanceError); equality, hash, repr and `dataclasses.replace` are the
dataclass's own (tests/unit/ike/test_ike_event_init.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Addr = tuple[str, int]
_set = object.__setattr__


@dataclass(frozen=True, init=False)
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

    def __init__(  # noqa: PLR0913, PLR0917 - the dataclass fields, positional as the generated __init__
        self, name: str, unique_id: int, local: Addr, remote: Addr, local_id: str, remote_id: str, spi_i: bytes,
        spi_r: bytes, initiator: bool, rekeyed_from: int | None = None,
    ) -> None:
        _set(self, "__dict__", {
            "name": name, "unique_id": unique_id, "local": local, "remote": remote, "local_id": local_id,
            "remote_id": remote_id, "spi_i": spi_i, "spi_r": spi_r, "initiator": initiator,
            "rekeyed_from": rekeyed_from,
        })


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


@dataclass(frozen=True, slots=True, init=False)
class ChildKeys:
    """Everything a data plane needs to install one CHILD_SA (both directions).

    Kept by the CHILD_SA (state.ChildSa.keys) for its life: slots (no per-instance dict), each set through
    its slot's own setter (no MRO walk of object.__setattr__)."""

    encr_id: int
    key_bits: int
    integ_id: int
    esn: bool
    spi_in: int
    spi_out: int
    key_in: bytes = field(repr=False)  # encryption (+ salt) key for inbound; no key in a repr (logs)
    integ_in: bytes = field(repr=False)
    key_out: bytes = field(repr=False)
    integ_out: bytes = field(repr=False)

    def __init__(  # noqa: PLR0913, PLR0917 - the dataclass fields, positional as the generated __init__
        self, encr_id: int, key_bits: int, integ_id: int, esn: bool, spi_in: int, spi_out: int, key_in: bytes,
        integ_in: bytes, key_out: bytes, integ_out: bytes,
    ) -> None:
        _ck_encr_id(self, encr_id)
        _ck_key_bits(self, key_bits)
        _ck_integ_id(self, integ_id)
        _ck_esn(self, esn)
        _ck_spi_in(self, spi_in)
        _ck_spi_out(self, spi_out)
        _ck_key_in(self, key_in)
        _ck_integ_in(self, integ_in)
        _ck_key_out(self, key_out)
        _ck_integ_out(self, integ_out)


# ChildKeys' slot setters (member descriptors' __set__)
_ck_encr_id, _ck_key_bits, _ck_integ_id, _ck_esn, _ck_spi_in, _ck_spi_out, _ck_key_in, _ck_integ_in, _ck_key_out, \
    _ck_integ_out = (ChildKeys.__dict__[f].__set__ for f in ChildKeys.__slots__)


@dataclass(frozen=True, init=False)
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
    # RFC 7296 2.8: install only the inbound SA now; the outbound SA follows at a ChildSaOutbound event
    # naming this CHILD_SA (the rekey responder's: when the replaced CHILD_SA ends), or never (the
    # redundant SA of a rekey collision, 2.8.1, deleted at once). docs/architecture.md, "CHILD_SA rekeying".
    outbound_deferred: bool = False

    def __init__(  # noqa: PLR0913, PLR0917 - the dataclass fields, positional as the generated __init__
        self, ike_name: str, ike_unique_id: int, name: str, unique_id: int, reqid: int, local: Addr, remote: Addr,
        encap: bool, local_ts: tuple[str, ...], remote_ts: tuple[str, ...], keys: ChildKeys, proposal: str,
        rekeyed_from: int | None = None, replay_window: int = 128, outbound_deferred: bool = False,
    ) -> None:
        _set(self, "__dict__", {
            "ike_name": ike_name, "ike_unique_id": ike_unique_id, "name": name, "unique_id": unique_id,
            "reqid": reqid, "local": local, "remote": remote, "encap": encap, "local_ts": local_ts,
            "remote_ts": remote_ts, "keys": keys, "proposal": proposal, "rekeyed_from": rekeyed_from,
            "replay_window": replay_window, "outbound_deferred": outbound_deferred,
        })


@dataclass(frozen=True)
class ChildSaOutbound:
    """RFC 7296 2.8: the outbound SA of CHILD_SA `unique_id`, established with `outbound_deferred`, is to
    be installed now, before the CHILD_SA it replaces (`replaces`) is removed (make-before-break: its
    ChildSaDeleted follows). The rekey responder's new CHILD_SA until then sends on the old one, which the
    rekey initiator accepts until its DELETE exchange completes."""

    ike_name: str
    ike_unique_id: int
    name: str
    unique_id: int
    spi_out: int
    replaces: int


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
    IkeSaEstablished | IkeSaFailed | IkeSaDeleted | ChildSaEstablished | ChildSaOutbound | ChildSaFailed
    | ChildSaDeleted | PeerAddressChanged | VirtualIpAssigned
)
