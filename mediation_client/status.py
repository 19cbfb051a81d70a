"""The client manager's database as the client daemon sees it: configuration in, status out.

In (like strongSwan's medcli plugin): the own RSA key pair, the mediation server (address, port, key)
and every active connection (peer key, subnets) become a mediation connection `medsrv` and one
mediated connection per alias, all authenticated with raw public keys under their ID_KEY_IDs.
Out: each connection's status (1 DOWN, 2 CONNECTING, 3 UP), when it changed and the last error.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from core_ike.daemon.config import MEDIATION_DPD_DELAY, DaemonConfig
from core_ike.errors import LocalError
from core_ike.ike import events as ev
from core_ike.ike.config import AuthConfig, ChildConfig, IkeConfig
from core_ike.ike.creds import load_private_key, load_public_key
from core_ike.ike.identity import Identity
from core_ike.me import events as mev
from med_db import data
from med_db.engine import DatabaseError, make_session_factory, open_database, safe_url
from med_db.models import STATUS_CONNECTING, STATUS_DOWN, STATUS_UP

log = logging.getLogger("mediation_client.db")

MEDIATION_NAME = "medsrv"


class DbStatus:
    def __init__(self, sessions: sessionmaker[Session], ids: dict[str, int]) -> None:
        self.sessions = sessions
        self.ids = ids  # connection alias -> row id
        # IKE_SAs carrying a CHILD_SA per alias: both peers may initiate at once (own ME_CONNECT and a
        # callback crossing), and the uniqueness policy then deletes one of two healthy SAs
        self.live: dict[str, set[int]] = {}

    def close(self) -> None:
        """Release the database connections (a reload reads the database with a DbStatus of its own)."""
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    def reset(self) -> None:
        with self.sessions.begin() as s:
            data.reset_connection_status(s)

    def set_nat(self, text: str | None) -> None:
        """The NAT behaviour this client measured, for the client manager (client_config.nat)."""
        try:
            with self.sessions.begin() as s:
                data.set_client_nat(s, text)
        except Exception as e:  # noqa: BLE001 - status is informative; never take the daemon down
            log.warning("cannot write the NAT behaviour: %s", e)

    def set(self, alias: str, status: int, error: str | None = None) -> None:
        cid = self.ids.get(alias)
        if cid is None:
            return
        try:
            with self.sessions.begin() as s:
                data.set_connection_status(s, cid, status, error)
        except Exception as e:  # noqa: BLE001 - status is informative; never take the daemon down
            log.warning("cannot write status of '%s': %s", alias, e)

    def on_event(self, e: object) -> None:
        if isinstance(e, ev.ChildSaEstablished) and e.ike_name in self.ids:
            self.live.setdefault(e.ike_name, set()).add(e.ike_unique_id)
            self.set(e.ike_name, STATUS_UP)
        elif isinstance(e, ev.IkeSaDeleted) and e.name in self.ids:
            live = self.live.get(e.name, set())
            live.discard(e.unique_id)
            if not live:
                self.set(e.name, STATUS_DOWN, e.reason)
        else:
            change = self._while_down(e)
            if change is not None and not self.live.get(change[0]):
                self.set(*change)

    def _while_down(self, e: object) -> tuple[str, int, str | None] | None:
        """(alias, status, reason) an attempt's progress or failure means for a connection that has no
        tunnel up; one that has keeps showing up."""
        if isinstance(e, mev.MediatedConnecting):
            return e.name, STATUS_CONNECTING, None
        if isinstance(e, mev.PeerNotOnline):
            return e.name, STATUS_CONNECTING, f"peer offline: waiting for '{e.peer}' to come online"
        if isinstance(e, mev.MediationFailed):
            return e.name, STATUS_DOWN, e.reason
        if isinstance(e, ev.ChildSaFailed) and e.ike_name in self.ids:
            # the mediated IKE_SA may stand, but without its CHILD_SA there is no tunnel
            return e.ike_name, STATUS_DOWN, f"CHILD_SA '{e.name}' failed: {e.reason}"
        if isinstance(e, ev.IkeSaFailed) and e.name in self.ids:
            return e.name, STATUS_DOWN, f"IKE_SA failed: {e.reason}"
        return None


def load_db_connections(url: str, cfg: DaemonConfig) -> DbStatus:
    """Add the database's mediation and mediated connections and keys to `cfg`."""
    try:  # missing tables are created as the portal creates them; an unusable database stops the start
        sessions = make_session_factory(open_database(url))
    except DatabaseError as e:
        raise LocalError(f"[client] database: {e}") from None
    ids: dict[str, int] = {}
    with sessions() as s:
        me = data.get_client_config(s)
        server = data.get_server_config(s)
        conns = [c for c in data.list_connections(s) if c.active]
        if me is None or server is None:
            log.warning("client database %s has no key pair or no mediation server yet", safe_url(url))
            return DbStatus(sessions, ids)
        my_id = Identity.key_id(me.keyid)
        server_id = Identity.key_id(server.keyid)
        cfg.creds.private_keys.append(load_private_key(me.private_key))
        cfg.creds.add_public_key(load_public_key(server.public_key))
        cfg.connections.append(IkeConfig(
            MEDIATION_NAME, remote_addrs=[server.address], remote_port=server.port,
            local=AuthConfig("pubkey", my_id), remote=AuthConfig("pubkey", server_id),
            mediation=True, dpd_delay=MEDIATION_DPD_DELAY))
        for c in conns:
            peer = Identity.key_id(c.keyid)
            cfg.creds.add_public_key(load_public_key(c.public_key))
            child = ChildConfig(c.alias, local_ts=[c.local_subnet or "dynamic"],
                                remote_ts=[c.remote_subnet or "dynamic"], start_action="start")
            cfg.connections.append(IkeConfig(
                c.alias, remote_addrs=["%any"], local=AuthConfig("pubkey", my_id),
                remote=AuthConfig("pubkey", peer), children=[child], mediated_by=MEDIATION_NAME,
                mediation_peer=peer))
            ids[c.alias] = c.id
    log.info("loaded %d active connection(s) from the client database", len(ids))
    return DbStatus(sessions, ids)
