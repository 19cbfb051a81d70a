"""SQLAlchemy 2.0 typed models of med_db; they match ``schema.sql`` (a test compares them)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    VARBINARY,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

# Connection.status values, as strongSwan's medcli listener writes them.
STATUS_DOWN = 1
STATUS_CONNECTING = 2
STATUS_UP = 3
STATUS_NAMES: dict[int, str] = {STATUS_DOWN: "DOWN", STATUS_CONNECTING: "CONNECTING", STATUS_UP: "UP"}

KEYID_LEN = 20


def _varbinary(n: int) -> TypeEngine[bytes]:
    """VARBINARY(n) in SQLite/MySQL, BYTEA in PostgreSQL (see the dialect notes in schema.sql)."""
    return VARBINARY(n).with_variant(postgresql.BYTEA(), "postgresql")


def _datetime() -> TypeEngine[dt.datetime]:
    """DATETIME; DATETIME(6) in MySQL/MariaDB, which otherwise drop the microseconds (see schema.sql)."""
    return DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


# MySQL/MariaDB table options, as at the end of each CREATE TABLE in schema.sql: InnoDB (foreign keys),
# utf8mb4, binary collation (case-sensitive UNIQUE and comparisons, as in SQLite and PostgreSQL).
MYSQL_TABLE_OPTIONS: dict[str, str] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def utcnow() -> dt.datetime:
    """Naive UTC timestamp, the form every DATETIME column holds."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


# ------------------------------------------------------------------ server side


class User(Base):
    __tablename__ = "user"
    __table_args__ = (UniqueConstraint("login", name="uq_user_login"), MYSQL_TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64))
    password: Mapped[str] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    peers: Mapped[list[Peer]] = relationship(
        back_populates="owner", cascade="all, delete-orphan", passive_deletes=True
    )


class Peer(Base):
    __tablename__ = "peer"
    __table_args__ = (
        UniqueConstraint("user", "alias", name="uq_peer_user_alias"),
        UniqueConstraint("keyid", name="uq_peer_keyid"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        "user", Integer, ForeignKey("user.id", ondelete="CASCADE", name="fk_peer_user")
    )
    alias: Mapped[str] = mapped_column(String(64))
    keyid: Mapped[bytes] = mapped_column(_varbinary(KEYID_LEN))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow, onupdate=utcnow)

    owner: Mapped[User] = relationship(back_populates="peers")


class MeCallback(Base):
    """Persistent callback registration of the mediation server (requester waits for target)."""

    __tablename__ = "me_callback"
    __table_args__ = (
        UniqueConstraint(
            "requester_id_type", "requester_id", "target_id_type", "target_id", name="uq_me_callback"
        ),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requester_id_type: Mapped[int] = mapped_column(SmallInteger)
    requester_id: Mapped[bytes] = mapped_column(_varbinary(255))
    target_id_type: Mapped[int] = mapped_column(SmallInteger)
    target_id: Mapped[bytes] = mapped_column(_varbinary(255))
    created: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)
    expires: Mapped[dt.datetime] = mapped_column(_datetime())


class MediationGrant(Base):
    """Optional authorization: ``peer`` may mediate with ``target`` (see schema.sql for the policy)."""

    __tablename__ = "mediation_grant"
    __table_args__ = (PrimaryKeyConstraint("peer", "target", name="pk_mediation_grant"), MYSQL_TABLE_OPTIONS)

    peer_id: Mapped[int] = mapped_column(
        "peer", Integer, ForeignKey("peer.id", ondelete="CASCADE", name="fk_grant_peer")
    )
    target_id: Mapped[int] = mapped_column(
        "target", Integer, ForeignKey("peer.id", ondelete="CASCADE", name="fk_grant_target")
    )
    created: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)


class PeerPresence(Base):
    """A peer's presence as the mediation server last wrote it (see schema.sql)."""

    __tablename__ = "peer_presence"
    __table_args__ = (PrimaryKeyConstraint("peer", name="pk_peer_presence"), MYSQL_TABLE_OPTIONS)

    peer_id: Mapped[int] = mapped_column(
        "peer", Integer, ForeignKey("peer.id", ondelete="CASCADE", name="fk_presence_peer"), autoincrement=False
    )
    online: Mapped[bool] = mapped_column(Boolean)
    server: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(64))
    nat: Mapped[str | None] = mapped_column(String(255))
    since: Mapped[dt.datetime | None] = mapped_column(_datetime())
    last_seen: Mapped[dt.datetime] = mapped_column(_datetime())
    connections: Mapped[str] = mapped_column(Text)


class ServerState(Base):
    """A mediation server's totals (one row per server; see schema.sql)."""

    __tablename__ = "server_state"
    __table_args__ = (PrimaryKeyConstraint("server", name="pk_server_state"), MYSQL_TABLE_OPTIONS)

    server: Mapped[str] = mapped_column(String(64))
    started: Mapped[dt.datetime] = mapped_column(_datetime())
    updated: Mapped[dt.datetime] = mapped_column(_datetime())
    peers_online: Mapped[int] = mapped_column(Integer)
    mediations: Mapped[int] = mapped_column(Integer)
    relays_active: Mapped[int] = mapped_column(Integer)
    relays_total: Mapped[int] = mapped_column(Integer)


# ------------------------------------------------------------------ client side


class ClientConfig(Base):
    """This client's own key pair (single row, id 1). private_key: DER PKCS#8."""

    __tablename__ = "client_config"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_client_config"),
        CheckConstraint('"id" = 1', name="ck_client_config_single"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(Integer, autoincrement=False, default=1)
    keyid: Mapped[bytes] = mapped_column(_varbinary(KEYID_LEN))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)
    nat: Mapped[str | None] = mapped_column(String(255), default=None)


class MediationServerConfig(Base):
    """The mediation server this client registers with (single row, id 1)."""

    __tablename__ = "mediation_server_config"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_mediation_server_config"),
        CheckConstraint('"id" = 1', name="ck_mediation_server_config_single"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(Integer, autoincrement=False, default=1)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=500)
    keyid: Mapped[bytes] = mapped_column(_varbinary(KEYID_LEN))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    updated: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow, onupdate=utcnow)


class Connection(Base):
    """A mediated connection to another peer, with the status the client daemon writes."""

    __tablename__ = "connection"
    __table_args__ = (
        UniqueConstraint("alias", name="uq_connection_alias"),
        UniqueConstraint("keyid", name="uq_connection_keyid"),
        CheckConstraint('"status" IN (1, 2, 3)', name="ck_connection_status"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean)
    keyid: Mapped[bytes] = mapped_column(_varbinary(KEYID_LEN))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    local_subnet: Mapped[str | None] = mapped_column(String(64))
    remote_subnet: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(SmallInteger, default=STATUS_DOWN)
    status_changed: Mapped[dt.datetime | None] = mapped_column(_datetime())
    last_error: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, str(self.status))


# ------------------------------------------------------------------ portals


class WebSession(Base):
    """A portal login (server-side session): the cookie holds a random id, this row its SHA-256, so
    the database never holds a usable cookie.  Rows exist for logged-in users only."""

    __tablename__ = "web_session"
    __table_args__ = (
        PrimaryKeyConstraint("id", name="pk_web_session"),
        Index("ix_web_session_last_seen", "portal", "last_seen"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(String(64))
    portal: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(Integer)
    data: Mapped[str] = mapped_column(Text)
    created: Mapped[dt.datetime] = mapped_column(_datetime())
    last_seen: Mapped[dt.datetime] = mapped_column(_datetime())


class WebLoginFailure(Base):
    """A login attempt counted by the portals' throttling (``medmgr_web/throttle.py``, see schema.sql)."""

    __tablename__ = "web_login_failure"
    __table_args__ = (
        CheckConstraint("\"kind\" IN ('address', 'account')", name="ck_web_login_failure_kind"),
        Index("ix_web_login_failure_subject", "portal", "kind", "subject", "started"),
        Index("ix_web_login_failure_started", "portal", "started"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    portal: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(128))
    started: Mapped[dt.datetime] = mapped_column(_datetime())


class WebLoginLock(Base):
    """The lock row of a client address's login attempts (``medmgr_web/throttle.py``, see schema.sql)."""

    __tablename__ = "web_login_lock"
    __table_args__ = (
        PrimaryKeyConstraint("portal", "subject", name="pk_web_login_lock"),
        Index("ix_web_login_lock_used", "portal", "used"),
        MYSQL_TABLE_OPTIONS,
    )

    portal: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(128))
    used: Mapped[dt.datetime] = mapped_column(_datetime())


class WebSecret(Base):
    """A portal's signing key (one row per portal), shared by all its processes: the CSRF tokens of
    the anonymous forms are signed with it, so any process accepts what another one issued."""

    __tablename__ = "web_secret"
    __table_args__ = (PrimaryKeyConstraint("portal", name="pk_web_secret"), MYSQL_TABLE_OPTIONS)

    portal: Mapped[str] = mapped_column(String(16))
    secret: Mapped[bytes] = mapped_column(_varbinary(64))
    created: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)


class WebSetting(Base):
    """A portal setting an operator changed (see schema.sql)."""

    __tablename__ = "web_setting"
    __table_args__ = (PrimaryKeyConstraint("name", name="pk_web_setting"), MYSQL_TABLE_OPTIONS)

    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(255))
    updated: Mapped[dt.datetime] = mapped_column(_datetime(), default=utcnow)
