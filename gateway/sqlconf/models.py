"""SQLAlchemy models of strongSwan's SQL configuration schema (its `sql` plugin and `ipsec pool`).

Table and column names, types and defaults are strongSwan's (src/pool/sqlite.sql, mysql.sql), so a
database strongSwan uses works unchanged and `create_all` makes one strongSwan can use. Identities are
typed blobs (the IKE ID type of RFC 7296 3.5, 0 for %any, and the ID's encoding), traffic selectors carry
binary addresses, proposals are strongSwan proposal strings. docs/gateway.md describes every column
this project reads.
"""

from __future__ import annotations

from sqlalchemy import Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _key() -> Mapped[int]:
    """A column of a link table's composite primary key (strongSwan's link tables have no id of their own)."""
    return mapped_column(Integer, primary_key=True, autoincrement=False)


def _int(default: int | None = None, *, pk: bool = False) -> Mapped[int]:
    if pk:
        return mapped_column(Integer, primary_key=True, autoincrement=True)
    if default is None:
        return mapped_column(Integer, nullable=False)
    return mapped_column(Integer, nullable=False, server_default=str(default), default=default)


class SqlIdentity(Base):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("type", "data"),)
    id: Mapped[int] = _int(pk=True)
    type: Mapped[int] = _int()
    data: Mapped[bytes] = mapped_column(LargeBinary(64), nullable=False)


class ChildConfigRow(Base):
    __tablename__ = "child_configs"
    __table_args__ = (Index("child_configs_name", "name"),)
    id: Mapped[int] = _int(pk=True)
    name: Mapped[str] = mapped_column(String(32), nullable=False)
    lifetime: Mapped[int] = _int(1500)
    rekeytime: Mapped[int] = _int(1200)
    jitter: Mapped[int] = _int(60)
    updown: Mapped[str | None] = mapped_column(String(128), nullable=True)
    hostaccess: Mapped[int] = _int(0)
    mode: Mapped[int] = _int(2)
    start_action: Mapped[int] = _int(0)
    dpd_action: Mapped[int] = _int(0)
    close_action: Mapped[int] = _int(0)
    ipcomp: Mapped[int] = _int(0)
    reqid: Mapped[int] = _int(0)


class ChildConfigTrafficSelector(Base):
    """kind: 0 local, 1 remote, 2 local dynamic, 3 remote dynamic (strongSwan's sql plugin)."""

    __tablename__ = "child_config_traffic_selector"
    __table_args__ = (Index("child_config_traffic_selector_all", "child_cfg", "traffic_selector"),)
    # strongSwan's table has no key; SQLAlchemy's mapper needs one, the three columns together are it
    child_cfg: Mapped[int] = _key()
    traffic_selector: Mapped[int] = _key()
    kind: Mapped[int] = _key()


class ProposalRow(Base):
    __tablename__ = "proposals"
    id: Mapped[int] = _int(pk=True)
    proposal: Mapped[str] = mapped_column(String(128), nullable=False)


class ChildConfigProposal(Base):
    __tablename__ = "child_config_proposal"
    child_cfg: Mapped[int] = _key()
    prio: Mapped[int] = _key()
    prop: Mapped[int] = _key()


class IkeConfigRow(Base):
    __tablename__ = "ike_configs"
    id: Mapped[int] = _int(pk=True)
    certreq: Mapped[int] = _int(1)
    force_encap: Mapped[int] = _int(0)
    local: Mapped[str] = mapped_column(String(128), nullable=False)
    remote: Mapped[str] = mapped_column(String(128), nullable=False)


class IkeConfigProposal(Base):
    __tablename__ = "ike_config_proposal"
    ike_cfg: Mapped[int] = _key()
    prio: Mapped[int] = _key()
    prop: Mapped[int] = _key()


class PeerConfigRow(Base):
    """local_id, remote_id, peer_id: identities.id; auth_method: 0 any, 1 pubkey, 2 psk, 3 eap;
    mediated_by: peer_configs.id of the mediation connection (0: none)."""

    __tablename__ = "peer_configs"
    __table_args__ = (Index("peer_configs_name", "name"),)
    id: Mapped[int] = _int(pk=True)
    name: Mapped[str] = mapped_column(String(32), nullable=False)
    ike_version: Mapped[int] = _int(2)
    ike_cfg: Mapped[int] = _int()
    local_id: Mapped[str] = mapped_column(String(64), nullable=False)
    remote_id: Mapped[str] = mapped_column(String(64), nullable=False)
    cert_policy: Mapped[int] = _int(1)
    uniqueid: Mapped[int] = _int(0)
    auth_method: Mapped[int] = _int(1)
    eap_type: Mapped[int] = _int(0)
    eap_vendor: Mapped[int] = _int(0)
    keyingtries: Mapped[int] = _int(3)
    rekeytime: Mapped[int] = _int(7200)
    reauthtime: Mapped[int] = _int(0)
    jitter: Mapped[int] = _int(180)
    overtime: Mapped[int] = _int(300)
    mobike: Mapped[int] = _int(1)
    dpd_delay: Mapped[int] = _int(120)
    virtual: Mapped[str | None] = mapped_column(String(40), nullable=True)
    pool: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mediation: Mapped[int] = _int(0)
    mediated_by: Mapped[int] = _int(0)
    peer_id: Mapped[int] = _int(0)


class PeerConfigChildConfig(Base):
    __tablename__ = "peer_config_child_config"
    peer_cfg: Mapped[int] = _key()
    child_cfg: Mapped[int] = _key()


class TrafficSelectorRow(Base):
    """type 7: IPv4 range, 8: IPv6 range (RFC 7296 3.13.1); addresses in network byte order, NULL for
    a dynamic selector."""

    __tablename__ = "traffic_selectors"
    id: Mapped[int] = _int(pk=True)
    type: Mapped[int] = _int(7)
    protocol: Mapped[int] = _int(0)
    start_addr: Mapped[bytes | None] = mapped_column(LargeBinary(16), nullable=True)
    end_addr: Mapped[bytes | None] = mapped_column(LargeBinary(16), nullable=True)
    start_port: Mapped[int] = _int(0)
    end_port: Mapped[int] = _int(65535)


class CertificateRow(Base):
    """type 1: X.509 (DER), 6: trusted raw public key (DER); keytype 1 RSA, 2 ECDSA, 4 Ed25519, 5 Ed448."""

    __tablename__ = "certificates"
    id: Mapped[int] = _int(pk=True)
    type: Mapped[int] = _int()
    keytype: Mapped[int] = _int()
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class CertificateIdentity(Base):
    __tablename__ = "certificate_identity"
    certificate: Mapped[int] = _key()
    identity: Mapped[int] = _key()


class PrivateKeyRow(Base):
    """type: 1 RSA, 2 ECDSA, 4 Ed25519, 5 Ed448; data: DER."""

    __tablename__ = "private_keys"
    id: Mapped[int] = _int(pk=True)
    type: Mapped[int] = _int()
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class PrivateKeyIdentity(Base):
    __tablename__ = "private_key_identity"
    private_key: Mapped[int] = _key()
    identity: Mapped[int] = _key()


class SharedSecretRow(Base):
    """type: 1 IKE (PSK), 2 EAP, 3 private key passphrase, 4 PIN."""

    __tablename__ = "shared_secrets"
    id: Mapped[int] = _int(pk=True)
    type: Mapped[int] = _int()
    data: Mapped[bytes] = mapped_column(LargeBinary(256), nullable=False)


class SharedSecretIdentity(Base):
    __tablename__ = "shared_secret_identity"
    shared_secret: Mapped[int] = _key()
    identity: Mapped[int] = _key()


class CertificateAuthority(Base):
    __tablename__ = "certificate_authorities"
    id: Mapped[int] = _int(pk=True)
    certificate: Mapped[int] = _int()


class CertificateDistributionPoint(Base):
    __tablename__ = "certificate_distribution_points"
    id: Mapped[int] = _int(pk=True)
    ca: Mapped[int] = _int()
    type: Mapped[int] = _int()
    uri: Mapped[str] = mapped_column(Text, nullable=False)


class PoolRow(Base):
    """An address range `ipsec pool --add` made; timeout: seconds a released lease stays bound to its
    identity (0: forever)."""

    __tablename__ = "pools"
    id: Mapped[int] = _int(pk=True)
    name: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    start: Mapped[bytes] = mapped_column(LargeBinary(16), nullable=False)
    end: Mapped[bytes] = mapped_column(LargeBinary(16), nullable=False)
    timeout: Mapped[int] = _int()


class AddressRow(Base):
    """One address of a pool: who holds (or last held) it; released 0 while in use."""

    __tablename__ = "addresses"
    __table_args__ = (Index("addresses_pool", "pool"), Index("addresses_address", "address"),
                      Index("addresses_identity", "identity"))
    id: Mapped[int] = _int(pk=True)
    pool: Mapped[int] = _int()
    address: Mapped[bytes] = mapped_column(LargeBinary(16), nullable=False)
    identity: Mapped[int] = _int(0)
    acquired: Mapped[int] = _int(0)
    released: Mapped[int] = _int(1)


class LeaseRow(Base):
    """The history of leases (strongSwan's attr-sql plugin writes one row per lease)."""

    __tablename__ = "leases"
    id: Mapped[int] = _int(pk=True)
    address: Mapped[int] = _int()
    identity: Mapped[int] = _int()
    acquired: Mapped[int] = _int()
    released: Mapped[int] = _int()


class AttributePool(Base):
    __tablename__ = "attribute_pools"
    id: Mapped[int] = _int(pk=True)
    name: Mapped[str] = mapped_column(String(32), nullable=False)


class AttributeRow(Base):
    __tablename__ = "attributes"
    __table_args__ = (Index("attributes_identity", "identity"), Index("attributes_pool", "pool"))
    id: Mapped[int] = _int(pk=True)
    identity: Mapped[int] = _int(0)
    pool: Mapped[int] = _int(0)
    type: Mapped[int] = _int()
    value: Mapped[bytes] = mapped_column(LargeBinary(16), nullable=False)
