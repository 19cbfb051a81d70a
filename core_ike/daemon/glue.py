"""Turns IKE engine events into data-plane calls (install / rekey / delete CHILD_SAs and policies)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..constants import EncrId, IntegId
from ..ike import events as ev
from ..io.dataplane import DataPlane, Direction, Lifetime, PolicyParams, SaParams, TrafficSelector

log = logging.getLogger("core_ike.dataplane")


@dataclass
class _Installed:
    reqid: int
    spi_in: int
    spi_out: int
    policies: list[PolicyParams] = field(default_factory=list)


class DataPlaneGlue:
    """Make-before-break: a rekeyed CHILD_SA's new SAs are installed before the old ones go."""

    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp
        self.children: dict[int, _Installed] = {}  # by CHILD_SA unique id
        self.policies: dict[int, list[PolicyParams]] = {}  # by reqid

    def handle(self, e: object) -> None:
        if isinstance(e, ev.ChildSaEstablished):
            self.install(e)
        elif isinstance(e, ev.ChildSaDeleted):
            self.remove(e)

    def install(self, e: ev.ChildSaEstablished) -> None:
        k = e.keys
        common = dict(encr_id=EncrId(k.encr_id), encr_key_bits=k.key_bits or 128,
                      integ_id=IntegId(k.integ_id), encap=e.encap, reqid=e.reqid,
                      replay_window=e.replay_window, esn=k.esn, lifetime=Lifetime())
        try:
            self.dp.install_sa(SaParams(k.spi_in, Direction.IN, e.remote[0], e.local[0], encr_key=k.key_in,
                                        integ_key=k.integ_in, src_port=e.remote[1], dst_port=e.local[1],
                                        **common))  # type: ignore[arg-type]
            self.dp.install_sa(SaParams(k.spi_out, Direction.OUT, e.local[0], e.remote[0], encr_key=k.key_out,
                                        integ_key=k.integ_out, src_port=e.local[1], dst_port=e.remote[1],
                                        **common))  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001 - report and keep the daemon alive
            log.error("unable to install CHILD_SA %s{%d} in the data plane: %s", e.name, e.unique_id, err)
            return
        inst = _Installed(e.reqid, k.spi_in, k.spi_out)
        self.children[e.unique_id] = inst
        if e.reqid not in self.policies:
            pols: list[PolicyParams] = []
            for lts in e.local_ts:
                for rts in e.remote_ts:
                    lsel, rsel = TrafficSelector.parse(_net(lts)), TrafficSelector.parse(_net(rts))
                    for d in (Direction.OUT, Direction.IN):
                        pols.append(PolicyParams(lsel, rsel, d, e.reqid, e.local[0], e.remote[0]))
            for p in pols:
                self.dp.install_policy(p)
            self.policies[e.reqid] = pols
        log.info("installed CHILD_SA %s{%d} in the %s data plane (%s, %s)", e.name, e.unique_id,
                 getattr(self.dp, "name", "?"), e.proposal, "UDP-encapsulated" if e.encap else "plain ESP")

    def remove(self, e: ev.ChildSaDeleted) -> None:
        inst = self.children.pop(e.unique_id, None)
        if inst is None:
            return
        for spi, d in ((inst.spi_in, Direction.IN), (inst.spi_out, Direction.OUT)):
            try:
                self.dp.delete_sa(spi, d)
            except Exception as err:  # noqa: BLE001
                log.warning("deleting SA %08x failed: %s", spi, err)
        if not any(c.reqid == inst.reqid for c in self.children.values()):
            for p in self.policies.pop(inst.reqid, []):
                try:
                    self.dp.delete_policy(p)
                except Exception as err:  # noqa: BLE001
                    log.warning("deleting policy failed: %s", err)


def _net(text: str) -> str:
    """Strip a `[proto/port]` suffix from a TS display string."""
    return text.split("[", 1)[0]
