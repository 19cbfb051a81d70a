"""med_db: the data layer shared by the portals and the mediation daemons.

- ``med_db.models``: SQLAlchemy 2.0 typed models matching ``schema.sql``;
- ``med_db.engine``: engine / session factory from a database URL (SQLite by default);
- ``med_db.schema``: ``schema.sql`` rendered for a dialect and loaded into a database;
- ``med_db.keyid``: key identifiers (ID_KEY_ID) of public keys;
- ``med_db.data``: data functions; each takes a ``Session`` that the caller opens and closes.
"""

from med_db.models import (
    STATUS_CONNECTING,
    STATUS_DOWN,
    STATUS_NAMES,
    STATUS_UP,
    Base,
    ClientConfig,
    Connection,
    MeCallback,
    MediationGrant,
    MediationServerConfig,
    Peer,
    User,
    WebSecret,
    WebSession,
)

__all__ = [
    "STATUS_CONNECTING",
    "STATUS_DOWN",
    "STATUS_NAMES",
    "STATUS_UP",
    "Base",
    "ClientConfig",
    "Connection",
    "MeCallback",
    "MediationGrant",
    "MediationServerConfig",
    "Peer",
    "User",
    "WebSecret",
    "WebSession",
]
