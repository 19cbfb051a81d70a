"""Established IKE_SAs indexed by connection and by (connection, peer identity), and the uniqueness
policy built on them (strongSwan's `unique = replace`; RFC 7296 2.4 INITIAL_CONTACT).

The indexes let the engine answer "which SAs does this connection / this peer have" without scanning
every SA (a mediation server holds 100k of them).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sa import IkeSa

log = logging.getLogger("core_ike.ike")

# two SAs with the same peer established from opposite ends within this time collided (see `established`)
COLLISION_WINDOW = 5.0


class EstablishedIndex:
    def __init__(self) -> None:
        self.by_conf: dict[str, dict[int, IkeSa]] = {}  # established SAs per config name
        self.by_peer: dict[tuple[str, str], dict[int, IkeSa]] = {}  # ... per (config, peer identity)
        self.deferred: list[IkeSa] = []  # duplicates to delete once their IKE_AUTH is done

    def of_config(self, name: str) -> list[IkeSa]:
        return list(self.by_conf.get(name, {}).values())

    def is_first_contact(self, sa: IkeSa) -> bool:
        """RFC 7296 2.4: no other IKE_SA of this connection is up, INITIAL_CONTACT may be sent."""
        return not any(s is not sa for s in self.by_conf.get(sa.config.name, {}).values())

    def established(self, sa: IkeSa, now: float) -> list[IkeSa]:
        """Index `sa`; returns the established duplicates the uniqueness policy deletes now (the new SA
        itself, when it must go, is put in `deferred`: it is deleted once its IKE_AUTH is done)."""
        cfg = sa.config
        peer = sa.peer_id.canonical() if sa.peer_id is not None else ""
        key = (cfg.name, peer)
        same = self.by_peer.get(key)  # not setdefault: its default, an empty dict, would be made every time
        if same is None:
            same = self.by_peer[key] = {}
        doomed: list[IkeSa] = []
        if cfg.unique == "replace" and sa.rekeyed_from is None:
            for other in list(same.values()):
                if other is not sa and other.config is cfg and other.established:
                    loser = _loser(sa, other, now)
                    if loser is sa:
                        self.deferred.append(sa)
                    else:
                        doomed.append(other)
        same[sa.unique_id] = sa
        mine = self.by_conf.get(cfg.name)
        if mine is None:
            mine = self.by_conf[cfg.name] = {}
        mine[sa.unique_id] = sa
        sa.indexed = key
        return doomed

    def forget(self, sa: IkeSa) -> None:
        if sa.indexed is not None:
            name, peer = sa.indexed
            _unindex(self.by_conf, name, sa.unique_id)
            _unindex(self.by_peer, (name, peer), sa.unique_id)


def _loser(sa: IkeSa, other: IkeSa, now: float) -> IkeSa:
    """Uniqueness policy "replace": the new SA replaces the old one, except for a collision (both peers
    initiated at once, e.g. a mediated connection started from both ends): there both peers must drop
    the same SA, the one created with the lowest nonce (the RFC 7296 2.8.1 rule for colliding rekeys)
    or they delete one each and lose both."""
    loser = other
    collision = other.established_at is not None and now - other.established_at < COLLISION_WINDOW \
        and other.is_original_initiator != sa.is_original_initiator
    if collision and min(sa.ni, sa.nr) < min(other.ni, other.nr):
        loser = sa
    log.info("deleting duplicate IKE_SA %s for peer '%s' due to uniqueness policy%s", loser.label,
             loser.peer_id, " (collision: lowest nonce)" if collision else "")
    return loser


def _unindex(index: dict[Any, dict[int, IkeSa]], key: object, uid: int) -> None:
    d = index.get(key)
    if d is not None:
        d.pop(uid, None)
        if not d:
            del index[key]
