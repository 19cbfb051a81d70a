"""Turns IKE engine events into data-plane calls (install / rekey / delete CHILD_SAs and policies).

The glue is also an engine extension declaring what the data plane can install (`esp_transforms`):
CHILD_SA proposals, ours and the peer's, are restricted to those (core_ike/ike/tasks/child_create.py).
A CHILD_SA the data plane refuses anyway is deleted (DELETE to the peer, RFC 7296 1.4.1) and reported
as that CHILD_SA's failure: its ChildSaEstablished event becomes a ChildSaFailed for every other
consumer (`ikectl up` fails with the reason, the status writers see a failure).

Rekeying (RFC 7296 2.8): the new SAs are installed before the old ones go (make-before-break). A
CHILD_SA the engine reports with `outbound_deferred` (we answered the peer's rekey) gets its inbound SA
at once and its outbound SA at the engine's ChildSaOutbound, which comes right before the replaced
CHILD_SA's ChildSaDeleted: until then we send on the old SA, which the rekey initiator still accepts,
and not on one it has not installed yet. The inbound SA of a CHILD_SA replaced by a rekey stays
`REKEYED_INBOUND_LINGER` seconds after its deletion, for ESP the peer sent on it before (docs/architecture.md,
"CHILD_SA rekeying").
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..constants import EncrId, IntegId
from ..crypto.proposals import parse_esp_proposals, restrict_proposals, transform_name
from ..errors import LocalError
from ..esp.algorithms import fixed_key_bits
from ..ike import events as ev
from ..ike.config import IkeConfig
from ..ike.engine import Engine
from ..ike.extension import Extension
from ..ike.tasks.informational import ChildDelete
from ..io.dataplane import (
    DataPlane,
    Direction,
    Lifetime,
    PolicyParams,
    SaParams,
    TrafficSelector,
    declared_transforms,
)
from ..me.upgrade import PathChanged

log = logging.getLogger("core_ike.dataplane")

Addr = tuple[str, int]
_NO_LIMITS = Lifetime()  # the CHILD_SA's lifetimes are the engine's (RFC 7296 2.8 rekey timers), not the SAs'
# bound once (Python 3.11 reads an Enum member off its class, and finds one by value, through Python code)
_IN, _OUT = Direction.IN, Direction.OUT
_DEBUG = logging.DEBUG
_ENCR: dict[int, EncrId] = {int(e): e for e in EncrId}
_INTEG: dict[int, IntegId] = {int(i): i for i in IntegId}
DeleteChild = Callable[[int, int, str], None]
"""`delete_child(ike_unique_id, child_unique_id, reason)`: send a DELETE for that CHILD_SA."""
Later = Callable[[float, Callable[[], None]], object]
"""`later(seconds, fn)`: call `fn` that much later (the event loop's call_later)."""
REKEYED_INBOUND_LINGER = 2.0
"""Seconds the inbound SA of a CHILD_SA replaced by a rekey (RFC 7296 2.8) stays installed after the
CHILD_SA's deletion: ESP the peer sealed with it before the DELETE exchange may still wait in a socket's
queue, plain ESP (IP protocol 50) and IKE arriving on different sockets, read in no set order (strongSwan
keeps it too: charon.delete_rekeyed_delay)."""


def loop_later(seconds: float, fn: Callable[[], None]) -> object:
    """`later` on the running event loop (the daemon's); with none running (a test driving the glue by
    hand), at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        fn()
        return None
    return loop.call_later(seconds, fn)


@dataclass(slots=True)
class _Installed:
    """One installed CHILD_SA (its policies are kept by reqid, `DataPlaneGlue.policies`)."""

    reqid: int
    spi_in: int
    spi_out: int
    ike: int = 0  # unique id of the IKE_SA carrying it
    local: Addr = ("", 0)  # the outer addresses and ports its SAs have now (RFC 7296 §2.23 moves them)
    remote: Addr = ("", 0)
    out: SaParams | None = None  # its outbound SA while not installed (ChildSaEstablished.outbound_deferred)


class DataPlaneGlue(Extension):
    """Make-before-break: a rekeyed CHILD_SA's new SAs are installed before the old ones go (a rekey
    responder's outbound SA when the engine says, ChildSaOutbound)."""

    def __init__(self, dp: DataPlane, delete_child: DeleteChild | None = None, later: Later = loop_later) -> None:
        self.dp = dp
        self.later = later
        self.replaced: set[int] = set()  # CHILD_SAs (unique ids) a rekey replaced, installed or not
        self.esp_transforms = dp.esp_transforms  # read by the CHILD_SA proposal selection
        self.delete_child = delete_child
        self.children: dict[int, _Installed] = {}  # by CHILD_SA unique id
        self._users: dict[int, int] = {}  # reqid -> CHILD_SAs installed with it (its policies go with the last)
        self.policies: dict[int, list[PolicyParams]] = {}  # by reqid
        self.vips: dict[int, str] = {}  # our virtual IP by IKE_SA unique id (a rekeyed successor shares it)
        self.vips_added: set[str] = set()  # those the data plane added (the rest the host had already)

    def handle(self, e: object) -> object:
        """Act on one engine event; returns the event the other consumers should see (a CHILD_SA that
        could not be installed comes back as ChildSaFailed)."""
        if isinstance(e, ev.ChildSaEstablished):
            error = self.install(e)
            if error is not None:
                return self._failed(e, error)
        elif isinstance(e, ev.ChildSaDeleted):
            self.remove(e)
        elif isinstance(e, ev.ChildSaOutbound):
            self.install_outbound(e)
        elif isinstance(e, ev.PeerAddressChanged):
            self.follow(e.ike_unique_id, e.remote, e.local)
        elif isinstance(e, PathChanged) and e.local is not None:
            # a mediated IKE_SA moved to an extra socket of many-port probing (core_ike/me/upgrade.py):
            # the kernel's ESP-in-UDP must leave from that socket's port
            self.follow(e.ike_unique_id, e.remote, e.local)
        elif isinstance(e, ev.VirtualIpAssigned):
            self.add_vip(e.ike_unique_id, e.address)
        elif isinstance(e, ev.IkeSaEstablished) and e.rekeyed_from:
            self.inherit(e.rekeyed_from, e.unique_id)
        elif isinstance(e, ev.IkeSaDeleted | ev.IkeSaFailed):
            self.drop_vip(e.unique_id)
        return e

    def add_vip(self, ike: int, address: str) -> None:
        """Make the assigned virtual IP a local address before the CHILD_SA that uses it is installed
        (the CFG_REPLY comes with it, RFC 7296 §2.19); a refusal leaves the IKE_SA up, logged."""
        if self.vips.get(ike) == address:
            return
        self.drop_vip(ike)  # a different address for the same IKE_SA replaces the old one
        held = address in self.vips.values()
        self.vips[ike] = address
        if held:
            return
        try:
            if self.dp.add_vip(address):
                self.vips_added.add(address)
                log.info("virtual IP %s installed in the %s data plane", address, getattr(self.dp, "name", "?"))
        except Exception as err:  # noqa: BLE001 - the IKE_SA stays; traffic from the address cannot leave
            log.error("unable to install virtual IP %s: %s", address, err)

    def drop_vip(self, ike: int) -> None:
        address = self.vips.pop(ike, None)
        if address is None or address in self.vips.values() or address not in self.vips_added:
            return
        self.vips_added.discard(address)
        self._quietly(self.dp.del_vip, address)
        log.info("virtual IP %s removed from the %s data plane", address, getattr(self.dp, "name", "?"))

    def inherit(self, old: int, new: int) -> None:
        """RFC 7296 §2.18: the IKE_SA's successor takes over its CHILD_SAs and its virtual IP."""
        if old in self.vips:
            self.vips[new] = self.vips[old]
        for inst in self.children.values():
            if inst.ike == old:
                inst.ike = new

    def follow(self, ike: int, remote: Addr, local: Addr | None = None) -> None:
        """The IKE_SA's path changed (RFC 7296 §2.23: the peer's NAT mapping, or the local end it moved
        to): its CHILD_SAs' ESP goes to the new remote end and leaves from the new local one (ESP-in-UDP
        shares the IKE_SA's ports, RFC 3948 §2.1), and the outbound policies' templates and source routes
        name the new addresses (the kernel selects and routes by them)."""
        moved: set[int] = set()
        for inst in self.children.values():
            if inst.ike != ike:
                continue
            here = local or inst.local
            if (here, remote) == (inst.local, inst.remote):
                continue
            if inst.out is not None:  # not installed yet: installed where the SAs are then
                inst.out = replace(inst.out, src=here[0], src_port=here[1], dst=remote[0], dst_port=remote[1])
            else:
                self._quietly(self.dp.update_sa, inst.spi_out, Direction.OUT, src=here[0], src_port=here[1],
                              dst=remote[0], dst_port=remote[1])
            self._quietly(self.dp.update_sa, inst.spi_in, Direction.IN, src=remote[0], src_port=remote[1],
                          dst=here[0], dst_port=here[1])
            inst.local, inst.remote = here, remote
            moved.add(inst.reqid)
            log.info("CHILD_SA with SPIs %08x_i %08x_o now %s[%d] to %s[%d]", inst.spi_in, inst.spi_out, *here,
                     *remote)
        update = getattr(self.dp, "update_policy", None)  # the XFRM data plane's policies carry addresses
        for reqid in moved:
            inst = next(i for i in self.children.values() if i.reqid == reqid and i.ike == ike)
            pols = self.policies.get(reqid, [])
            for n, p in enumerate(pols):
                src, dst = (inst.local[0], inst.remote[0])
                if update is None or (p.tunnel_src, p.tunnel_dst) == (src, dst):
                    continue
                new = replace(p, tunnel_src=src, tunnel_dst=dst)
                try:
                    update(p, new)
                except Exception as err:  # noqa: BLE001 - logged; the SAs moved, the old template stays
                    log.warning("data plane: moving policy %s === %s %s failed: %s", p.local.subnet,
                                p.remote.subnet, p.direction.name, err)
                    continue
                pols[n] = new

    def ike_of(self, spi_in: int) -> int | None:
        """The IKE_SA (unique id) whose CHILD_SA has inbound SPI `spi_in`."""
        return next((i.ike for i in self.children.values() if i.spi_in == spi_in), None)

    def install(self, e: ev.ChildSaEstablished) -> str | None:
        """Install both SAs (the outbound one later when `e.outbound_deferred`) and, for a new reqid, the
        policies; the error text when that failed (then nothing of this CHILD_SA stays installed)."""
        k = e.keys
        encr, integ = _ENCR.get(k.encr_id), _INTEG.get(k.integ_id)
        if encr is None or integ is None:  # not a known transform: the enum's own ValueError
            encr, integ = EncrId(k.encr_id), IntegId(k.integ_id)
        bits = k.key_bits or fixed_key_bits(encr)
        (here, here_port), (there, there_port) = e.local, e.remote
        done: list[tuple[int, Direction]] = []
        new_pols: list[PolicyParams] = []
        try:
            self.dp.install_sa(SaParams(k.spi_in, _IN, there, here, encr, bits, k.key_in, integ, k.integ_in,
                                        there_port, here_port, e.encap, e.reqid, _NO_LIMITS, e.replay_window,
                                        k.esn))
            done.append((k.spi_in, _IN))
            out = SaParams(k.spi_out, _OUT, here, there, encr, bits, k.key_out, integ, k.integ_out, here_port,
                           there_port, e.encap, e.reqid, _NO_LIMITS, e.replay_window, k.esn)
            if not e.outbound_deferred:
                self.dp.install_sa(out)
                done.append((k.spi_out, _OUT))
            if e.reqid not in self.policies:
                for p in _policies(e):
                    self.dp.install_policy(p)
                    new_pols.append(p)
        except Exception as err:  # noqa: BLE001 - any refusal: undo, report, keep the daemon alive
            for p in new_pols:
                self._quietly(self.dp.delete_policy, p)
            for spi, d in done:
                self._quietly(self.dp.delete_sa, spi, d)
            return str(err) or type(err).__name__
        if e.unique_id in self.children:  # the same CHILD_SA reported again: its SAs replaced, counted once
            self._forget(e.unique_id)
        self.children[e.unique_id] = _Installed(e.reqid, k.spi_in, k.spi_out, e.ike_unique_id, e.local, e.remote,
                                                out if e.outbound_deferred else None)
        self._users[e.reqid] = self._users.get(e.reqid, 0) + 1
        if e.rekeyed_from in self.children:
            self.replaced.add(e.rekeyed_from)
        if new_pols:
            self.policies[e.reqid] = new_pols
        # debug: "CHILD_SA ... established with SPIs ... and TS ..." says it at info, a failure is an error line
        if log.isEnabledFor(_DEBUG):  # its arguments are not worked out for nothing
            log.debug("installed CHILD_SA %s{%d} in the %s data plane (%s, %s)", e.name, e.unique_id,
                      getattr(self.dp, "name", "?"), e.proposal, "UDP-encapsulated" if e.encap else "plain ESP")
        return None

    def outbound_pending(self, unique_id: int) -> bool:
        """Whether CHILD_SA `unique_id` is installed without its outbound SA (a rekey responder's new
        CHILD_SA until the replaced one ends, RFC 7296 2.8): we do not send on it yet."""
        inst = self.children.get(unique_id)
        return inst is not None and inst.out is not None

    def install_outbound(self, e: ev.ChildSaOutbound) -> None:
        """The deferred outbound SA of a rekey responder's CHILD_SA (RFC 7296 2.8), installed before the
        replaced CHILD_SA's SAs go: the data plane sends on the newest outbound SA of the reqid. One the
        data plane refuses leaves the CHILD_SA unable to send: it is deleted (DELETE to the peer)."""
        inst = self.children.get(e.unique_id)
        if inst is None or inst.out is None:
            return
        try:
            self.dp.install_sa(inst.out)
        except Exception as err:  # noqa: BLE001 - any refusal: the CHILD_SA goes, the daemon stays
            reason = (f"the {getattr(self.dp, 'name', '?')} data plane could not install its outbound SA: "
                      f"{str(err) or type(err).__name__}")
            log.error("unable to install CHILD_SA %s{%d}'s outbound SA: %s; deleting it", e.name, e.unique_id,
                      reason)
            if self.delete_child is not None:
                self.delete_child(e.ike_unique_id, e.unique_id, reason)
            return
        inst.out = None

    def _failed(self, e: ev.ChildSaEstablished, error: str) -> ev.ChildSaFailed:
        reason = f"the {getattr(self.dp, 'name', '?')} data plane could not install it ({e.proposal}): {error}"
        log.error("unable to install CHILD_SA %s{%d}: %s; deleting it", e.name, e.unique_id, reason)
        if self.delete_child is not None:
            self.delete_child(e.ike_unique_id, e.unique_id, reason)
        return ev.ChildSaFailed(e.ike_name, e.name, reason)

    def remove(self, e: ev.ChildSaDeleted) -> None:
        inst = self.children.pop(e.unique_id, None)
        if inst is None:
            return
        if inst.out is None:  # else never installed
            self._quietly(self.dp.delete_sa, inst.spi_out, _OUT)
        if e.unique_id in self.replaced:  # its successor sends; ESP the peer sent on it may be queued still
            self.replaced.discard(e.unique_id)
            self.later(REKEYED_INBOUND_LINGER, functools.partial(self._quietly, self.dp.delete_sa, inst.spi_in, _IN))
        else:
            self._quietly(self.dp.delete_sa, inst.spi_in, _IN)
        self._release(inst.reqid)

    def _forget(self, unique_id: int) -> None:
        """An installed CHILD_SA's bookkeeping gone, the data plane untouched (it is installed again)."""
        inst = self.children.pop(unique_id, None)
        if inst is not None:
            n = self._users.get(inst.reqid, 0) - 1
            if n > 0:
                self._users[inst.reqid] = n
            else:
                self._users.pop(inst.reqid, None)

    def _release(self, reqid: int) -> None:
        """One CHILD_SA of `reqid` fewer; its policies go with the last (a count: no scan of every CHILD_SA)."""
        n = self._users.get(reqid, 0) - 1
        if n > 0:
            self._users[reqid] = n
            return
        self._users.pop(reqid, None)
        for p in self.policies.pop(reqid, []):
            self._quietly(self.dp.delete_policy, p)

    @staticmethod
    def _quietly(fn: Callable[..., None], *args: object, **kwargs: object) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            log.warning("data plane: %s%r failed: %s", getattr(fn, "__name__", "call"), args, err)


def _policies(e: ev.ChildSaEstablished) -> list[PolicyParams]:
    pols: list[PolicyParams] = []
    for lts in e.local_ts:
        for rts in e.remote_ts:
            lsel, rsel = _selector(lts), _selector(rts)
            for d in (_OUT, _IN):
                pols.append(PolicyParams(lsel, rsel, d, e.reqid, e.local[0], e.remote[0]))
    return pols


def engine_child_deleter(engine: Engine) -> DeleteChild:
    """The `delete_child` callback for `engine`: queue a DELETE of the CHILD_SA (RFC 7296 1.4.1) on
    its IKE_SA; the adapter sends it with the engine's other output."""
    def delete(ike_unique_id: int, child_unique_id: int, reason: str) -> None:
        sa = engine.find_sa(ike_unique_id)
        child = sa.children.get(child_unique_id) if sa is not None else None
        if sa is None or child is None:
            return
        sa.queue_task(ChildDelete(child=child, reason=reason), engine.now)

    return delete


def check_installable(dataplane: str, connections: list[IkeConfig]) -> None:
    """At load: a CHILD_SA none of whose ESP proposals the configured data plane can install is a
    mistake (LocalError naming the algorithms and what the data plane installs). With `auto` the data
    plane is known only once it runs: such a CHILD_SA then fails at `up`, with the same words."""
    caps = declared_transforms(dataplane)
    if caps is None:
        return
    for c in connections:
        for ch in c.children:
            kept, refused = restrict_proposals(parse_esp_proposals(ch.esp_proposals), caps.accepts)
            if not kept:
                names = ", ".join(transform_name(t) for t in refused)
                raise LocalError(f"[connections.{c.name}.children.{ch.name}] esp_proposals '{ch.esp_proposals}': "
                                 f"the {dataplane} data plane cannot install {names} (it installs "
                                 f"{caps.summary()})")


@functools.lru_cache(maxsize=4096)
def _selector(text: str) -> TrafficSelector:
    """A traffic selector's display string as the data plane's selector (immutable, so shared): a
    gateway's CHILD_SAs repeat its local selectors, and a peer's come back at every rekey."""
    return TrafficSelector.parse(_net(text))


def _net(text: str) -> str:
    """Strip a `[proto/port]` suffix from a TS display string."""
    return text.split("[", 1)[0]
