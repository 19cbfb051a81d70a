"""strongSwan SQL rows -> the daemon's connection and credential objects.

`read_rows` runs the queries (one SELECT per table, in a worker thread when the daemon calls it);
`build` is pure: it turns those rows into `IkeConfig`s and `Credentials` the way strongSwan's `sql`
plugin turns them into peer, IKE and CHILD configs (docs/gateway.md has the column-by-column table).
A row that cannot be used (an unknown algorithm, EAP, a host name) is left out with a line in
`Snapshot.problems`; the other rows still load.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from core_ike.constants import IdType
from core_ike.crypto.auth import load_private_key, load_public_key
from core_ike.crypto.proposals import parse_esp_proposals, parse_ike_proposals
from core_ike.errors import LocalError
from core_ike.ike.config import AuthConfig, AuthKind, ChildConfig, IkeConfig
from core_ike.ike.creds import Credentials
from core_ike.ike.identity import ANY, Identity

from . import models as m

log = logging.getLogger("gateway.sqlconf")

# strongSwan's enumerations as they are stored (auth_class_t, certificate_type_t, shared_key_type_t,
# unique_policy_t, action_t, ipsec_mode_t)
AUTH_ANY, AUTH_PUBKEY, AUTH_PSK, AUTH_EAP = 0, 1, 2, 3
CERT_X509, CERT_TRUSTED_PUBKEY = 1, 6
SHARED_IKE, SHARED_EAP = 1, 2
EAP_TYPES: dict[int, AuthKind] = {4: "eap-md5", 26: "eap-mschapv2"}  # RFC 3748 5.4, draft-kamath (IANA types)
UNIQUE = {0: "no", 1: "no", 2: "replace", 3: "keep"}
ACTION_TRAP, ACTION_START = 1, 2
MODE_TUNNEL = 2
TS_LOCAL, TS_REMOTE, TS_LOCAL_DYNAMIC, TS_REMOTE_DYNAMIC = 0, 1, 2, 3
TS_IPV4, TS_IPV6 = 7, 8

_TABLES: tuple[type[m.Base], ...] = (
    m.SqlIdentity, m.IkeConfigRow, m.IkeConfigProposal, m.ProposalRow, m.PeerConfigRow,
    m.PeerConfigChildConfig, m.ChildConfigRow, m.ChildConfigProposal, m.ChildConfigTrafficSelector,
    m.TrafficSelectorRow, m.SharedSecretRow, m.SharedSecretIdentity, m.CertificateRow, m.CertificateIdentity,
    m.PrivateKeyRow, m.PrivateKeyIdentity, m.CertificateAuthority, m.PoolRow,
)


@dataclass
class Rows:
    """Every row of the configuration tables, as plain tuples of column values by table name."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def of(self, model: type[m.Base]) -> list[dict[str, Any]]:
        return self.tables.get(str(model.__tablename__), [])


@dataclass
class Snapshot:
    connections: list[IkeConfig]
    creds: Credentials
    problems: list[str] = field(default_factory=list)
    eap_secrets: int = 0  # EAP secrets are read by the EAP methods, not here
    pools: dict[str, list[str]] = field(default_factory=dict)  # name -> subnets covering its range


def read_rows(session: Session) -> Rows:
    """One SELECT per table, ordered by their keys (the order strongSwan's plugin sees)."""
    rows = Rows()
    for model in _TABLES:
        table = model.__table__
        cols = [c.name for c in table.columns]
        order = list(table.primary_key.columns)  # type: ignore[attr-defined]
        result = session.execute(select(*table.columns).order_by(*order))
        rows.tables[str(model.__tablename__)] = [dict(zip(cols, r, strict=True)) for r in result]
    return rows


def load(session: Session) -> Snapshot:
    return build(read_rows(session))


# ---------------------------------------------------------------------------------------- values


def identity_of(id_type: int, data: bytes | str) -> Identity:
    """strongSwan's typed blob (identification_create_from_encoding): type 0 is %any."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if id_type == 0:
        return ANY
    return Identity(id_type, raw)


def _addrs(text: str) -> list[str]:
    """ike_configs.local/remote: comma separated addresses or subnets; 0.0.0.0, :: and %any mean any."""
    out: list[str] = []
    for a in (x.strip() for x in text.split(",")):
        if not a:
            continue
        if a in ("0.0.0.0", "0.0.0.0/0", "%any", "%any4", "%any6"):
            out.append("%any" if a in ("0.0.0.0", "0.0.0.0/0") else a)
            continue
        if a in ("::", "::/0"):
            out.append("%any6")
            continue
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            raise LocalError(f"{a!r} is not an address or subnet (host names are not resolved)") from None
        out.append(a)
    return out or ["%any"]


def _suffix(proto: int, start_port: int, end_port: int) -> str:
    if (start_port, end_port) == (0, 65535):
        return f"[{proto}]" if proto else ""
    if start_port != end_port:
        raise LocalError(f"port range {start_port}-{end_port} (only one port or all are supported)")
    return f"[{proto}/{start_port}]"


def selector_texts(kind: int, ts_type: int, proto: int, start: bytes | None, end: bytes | None,
                   start_port: int, end_port: int) -> list[str]:
    """One traffic_selectors row as our selector strings (an address range becomes the subnets that
    cover exactly it, RFC 7296 3.13.1)."""
    suffix = _suffix(proto, start_port, end_port)
    if kind in (TS_LOCAL_DYNAMIC, TS_REMOTE_DYNAMIC) or start is None or end is None:
        return ["dynamic" + suffix]
    size = {TS_IPV4: 4, TS_IPV6: 16}.get(ts_type)
    if size is None or len(start) != size or len(end) != size:
        raise LocalError(f"traffic selector type {ts_type} with {len(start)}/{len(end)}-octet addresses")
    lo, hi = ipaddress.ip_address(bytes(start)), ipaddress.ip_address(bytes(end))
    if int(lo) > int(hi):
        raise LocalError(f"traffic selector range {lo}..{hi} is empty")
    return [str(n) + suffix for n in ipaddress.summarize_address_range(lo, hi)]


def range_subnets(start: bytes, end: bytes) -> list[str]:
    lo, hi = ipaddress.ip_address(bytes(start)), ipaddress.ip_address(bytes(end))
    if lo.version != hi.version or int(lo) > int(hi):
        raise LocalError(f"address range {lo}..{hi} is empty")
    return [str(n) for n in ipaddress.summarize_address_range(lo, hi)]


def _proposals(ids: Sequence[int], texts: dict[int, str]) -> str:
    missing = [i for i in ids if i not in texts]
    if missing:
        raise LocalError(f"proposal id {missing[0]} does not exist")
    return ",".join(texts[i] for i in ids)


# ---------------------------------------------------------------------------------------- build


@dataclass
class _Index:
    """The rows by key, for the joins strongSwan's plugin makes in SQL."""

    ids: dict[int, Identity]
    proposals: dict[int, str]
    ike: dict[int, dict[str, Any]]
    ike_props: dict[int, list[int]]
    children: dict[int, dict[str, Any]]
    child_props: dict[int, list[int]]
    peer_children: dict[int, list[int]]
    child_ts: dict[int, list[tuple[int, int]]]
    ts: dict[int, dict[str, Any]]
    peers: dict[int, dict[str, Any]]


def _index(rows: Rows) -> _Index:
    def grouped(model: type[m.Base], key: str, val: str, order: str | None = None) -> dict[int, list[int]]:
        out: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for r in rows.of(model):
            out[int(r[key])].append((int(r[order]) if order else 0, int(r[val])))
        return {k: [v for _, v in sorted(lst, key=lambda t: t[0])] for k, lst in out.items()}

    child_ts: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in rows.of(m.ChildConfigTrafficSelector):
        child_ts[int(r["child_cfg"])].append((int(r["kind"]), int(r["traffic_selector"])))
    return _Index(
        ids={int(r["id"]): identity_of(int(r["type"]), r["data"]) for r in rows.of(m.SqlIdentity)},
        proposals={int(r["id"]): str(r["proposal"]) for r in rows.of(m.ProposalRow)},
        ike={int(r["id"]): r for r in rows.of(m.IkeConfigRow)},
        ike_props=grouped(m.IkeConfigProposal, "ike_cfg", "prop", "prio"),
        children={int(r["id"]): r for r in rows.of(m.ChildConfigRow)},
        child_props=grouped(m.ChildConfigProposal, "child_cfg", "prop", "prio"),
        peer_children=grouped(m.PeerConfigChildConfig, "peer_cfg", "child_cfg"),
        child_ts=dict(child_ts),
        ts={int(r["id"]): r for r in rows.of(m.TrafficSelectorRow)},
        peers={int(r["id"]): r for r in rows.of(m.PeerConfigRow)},
    )


def _identity_ref(ix: _Index, ref: Any, what: str) -> Identity:
    try:
        return ix.ids[int(ref)]
    except (KeyError, ValueError, TypeError):
        raise LocalError(f"{what} {ref!r} is not an identities.id") from None


def _child(ix: _Index, cid: int) -> ChildConfig:
    r = ix.children.get(cid)
    if r is None:
        raise LocalError(f"child_configs.id {cid} does not exist")
    name = str(r["name"])
    if int(r["mode"]) != MODE_TUNNEL:
        raise LocalError(f"child config '{name}': mode {r['mode']} (only tunnel mode, 2, is supported)")
    c = ChildConfig(name)
    local: list[str] = []
    remote: list[str] = []
    for kind, tsid in ix.child_ts.get(cid, []):
        t = ix.ts.get(tsid)
        if t is None or kind not in (TS_LOCAL, TS_REMOTE, TS_LOCAL_DYNAMIC, TS_REMOTE_DYNAMIC):
            continue  # strongSwan skips these too
        texts = selector_texts(kind, int(t["type"]), int(t["protocol"]), t["start_addr"], t["end_addr"],
                               int(t["start_port"]), int(t["end_port"]))
        (local if kind in (TS_LOCAL, TS_LOCAL_DYNAMIC) else remote).extend(texts)
    c.local_ts = local or ["dynamic"]
    c.remote_ts = remote or ["dynamic"]
    if cid in ix.child_props:
        c.esp_proposals = _proposals(ix.child_props[cid], ix.proposals)
        parse_esp_proposals(c.esp_proposals)
    rekey, life = int(r["rekeytime"]), int(r["lifetime"])
    c.rekey_time = float(rekey)
    c.life_time = float(life) if life > rekey else None
    start = int(r["start_action"])
    c.start_action = "start" if start & ACTION_START else "trap" if start & ACTION_TRAP else "none"
    return c


def _peer(ix: _Index, pid: int, r: dict[str, Any], local_auth: AuthKind) -> IkeConfig:
    name = str(r["name"])
    ike = ix.ike.get(int(r["ike_cfg"]))
    if ike is None:
        raise LocalError(f"ike_cfg {r['ike_cfg']} does not exist")
    cfg = IkeConfig(name)
    cfg.local_addrs, cfg.remote_addrs = _addrs(str(ike["local"])), _addrs(str(ike["remote"]))
    cfg.send_certreq = bool(int(ike["certreq"]))
    cfg.encap = bool(int(ike["force_encap"]))
    if int(ike["id"]) in ix.ike_props:
        cfg.proposals = _proposals(ix.ike_props[int(ike["id"])], ix.proposals)
        parse_ike_proposals(cfg.proposals)
    eap_type = int(r["eap_type"])
    if eap_type and eap_type not in EAP_TYPES:
        raise LocalError(f"EAP (eap_type {eap_type}) is not supported (4 EAP-MD5, 26 EAP-MSCHAPv2)")
    cfg.local = AuthConfig(local_auth, _identity_ref(ix, r["local_id"], "local_id"))
    # strongSwan constrains only the local round's class, and with eap_type the peer's to EAP of that type
    # (sql_config.c); without it the peer authenticates the way we do
    cfg.remote = AuthConfig(EAP_TYPES[eap_type] if eap_type else local_auth,
                            _identity_ref(ix, r["remote_id"], "remote_id"))
    cfg.unique = cast(Any, UNIQUE.get(int(r["uniqueid"]), "no"))
    cfg.keyingtries = int(r["keyingtries"])
    cfg.rekey_time = float(r["rekeytime"])
    cfg.dpd_delay = float(r["dpd_delay"])
    if r["virtual"]:
        ipaddress.ip_address(str(r["virtual"]))
        cfg.vips = [str(r["virtual"])]
    cfg.mediation = bool(int(r["mediation"]))
    mediator = int(r["mediated_by"])
    if mediator:
        med = ix.peers.get(mediator)
        if med is None:
            raise LocalError(f"mediated_by {mediator} is not a peer_configs.id")
        cfg.mediated_by = str(med["name"])
        pid_ref = int(r["peer_id"])
        cfg.mediation_peer = _identity_ref(ix, pid_ref, "peer_id") if pid_ref else cfg.remote.id
    cfg.children = [_child(ix, c) for c in ix.peer_children.get(pid, [])]
    return cfg


def _local_auth(r: dict[str, Any], psk_ids: set[Identity], ix: _Index) -> AuthKind:
    method = int(r["auth_method"])
    if method == AUTH_PSK:
        return "psk"
    if method == AUTH_PUBKEY:
        return "pubkey"
    if method == AUTH_ANY:  # strongSwan picks by the credentials it finds: a PSK for our identity wins here
        return "psk" if _identity_ref(ix, r["local_id"], "local_id") in psk_ids else "pubkey"
    raise LocalError(f"auth_method {method} ({'EAP' if method == AUTH_EAP else 'unknown'}) is not supported")


def build(rows: Rows) -> Snapshot:
    ix = _index(rows)
    snap = Snapshot([], Credentials())
    psk_ids = _credentials(rows, ix, snap)
    for r in rows.of(m.SqlIdentity):
        if int(r["type"]) not in (0, *[int(t) for t in IdType]):
            snap.problems.append(f"identities.id {r['id']}: unknown ID type {r['type']}")
    local_certs = _local_certs(rows, ix)
    for pid, r in sorted(ix.peers.items()):
        if int(r["ike_version"]) != 2:
            continue  # IKEv1 rows are for another daemon
        try:
            cfg = _peer(ix, pid, r, _local_auth(r, psk_ids, ix))
        except (LocalError, ValueError) as e:
            snap.problems.append(f"peer config '{r['name']}' (peer_configs.id {pid}): {e}")
            continue
        cfg.local.certs = list(local_certs.get(cfg.local.id, []))
        if r["pool"]:  # pool names (comma or space separated): the database's pools (gateway/sqlconf/pools.py)
            cfg.pools.extend(p.strip() for p in str(r["pool"]).replace(",", " ").split())
        if any(c.name == cfg.name for c in snap.connections):
            snap.problems.append(f"peer config '{cfg.name}' (peer_configs.id {pid}): a peer config of this "
                                 "name is loaded already")
            continue
        snap.connections.append(cfg)
    for p in snap.problems:
        log.warning("sql config: %s", p)
    return snap


def _linked(rows: Rows, model: type[m.Base], key: str, ix: _Index) -> dict[int, list[Identity]]:
    out: dict[int, list[Identity]] = defaultdict(list)
    for r in rows.of(model):
        ident = ix.ids.get(int(r["identity"]))
        if ident is not None:
            out[int(r[key])].append(ident)
    return out


def _credentials(rows: Rows, ix: _Index, snap: Snapshot) -> set[Identity]:
    """Shared secrets, private keys, CA and trusted certificates, raw keys; returns the identities a
    PSK is stored for. Pools are read here too: they are credentials of the configuration payloads."""
    psk_ids = _shared_secrets(rows, ix, snap)
    _private_keys(rows, ix, snap)
    _certificates(rows, ix, snap)
    for r in rows.of(m.PoolRow):
        try:
            snap.pools[str(r["name"])] = range_subnets(r["start"], r["end"])
        except (LocalError, ValueError) as e:
            snap.problems.append(f"pool '{r['name']}': {e}")
    return psk_ids


def _shared_secrets(rows: Rows, ix: _Index, snap: Snapshot) -> set[Identity]:
    creds = snap.creds
    psk_ids: set[Identity] = set()
    secret_ids = _linked(rows, m.SharedSecretIdentity, "shared_secret", ix)
    for r in rows.of(m.SharedSecretRow):
        kind = int(r["type"])
        ids = secret_ids.get(int(r["id"]), [])
        if kind == SHARED_EAP:  # EAP passwords by EAP identity (RFC 7296 2.16)
            snap.eap_secrets += 1
            creds.add_eap_secret(bytes(r["data"]), *ids)
        if kind != SHARED_IKE:
            continue
        creds.add_psk(bytes(r["data"]), *ids)
        psk_ids.update(ids)
    return psk_ids


def _private_keys(rows: Rows, ix: _Index, snap: Snapshot) -> None:
    creds = snap.creds
    key_ids = _linked(rows, m.PrivateKeyIdentity, "private_key", ix)
    for r in rows.of(m.PrivateKeyRow):
        try:
            creds.private_keys.append(load_private_key(bytes(r["data"])))
        except LocalError as e:
            snap.problems.append(f"private_keys.id {r['id']}: {e}")
    # a key linked to an identity comes first: Credentials.private_key_for falls back to the first key
    order = {id(k): (0 if key_ids.get(int(r["id"])) else 1)
             for k, r in zip(creds.private_keys, rows.of(m.PrivateKeyRow), strict=False)}
    creds.private_keys.sort(key=lambda k: order.get(id(k), 1))


def _certificates(rows: Rows, ix: _Index, snap: Snapshot) -> None:
    """CA certificates, end-entity certificates (their keys, for the linked identities) and raw public
    keys (CERT_TRUSTED_PUBKEY)."""
    creds = snap.creds
    cert_ids = _linked(rows, m.CertificateIdentity, "certificate", ix)
    for r in rows.of(m.CertificateRow):
        where = f"certificates.id {r['id']}"
        try:
            if int(r["type"]) == CERT_TRUSTED_PUBKEY:
                key = load_public_key(bytes(r["data"]))
                linked: list[Identity | None] = list(cert_ids.get(int(r["id"]), []))
                for ident in linked or [None]:
                    creds.add_public_key(key, ident)
                continue
            if int(r["type"]) != CERT_X509:
                snap.problems.append(f"{where}: certificate type {r['type']} is not used")
                continue
            cert = x509.load_der_x509_certificate(bytes(r["data"]))
        except (LocalError, ValueError) as e:
            snap.problems.append(f"{where}: {e}")
            continue
        if _is_ca(cert):
            creds.cas.append(cert)
        else:
            for ident in cert_ids.get(int(r["id"]), []):
                creds.add_public_key(cast(Any, cert.public_key()), ident)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _local_certs(rows: Rows, ix: _Index) -> dict[Identity, list[x509.Certificate]]:
    """End-entity X.509 certificates by the identities they are linked to (sent as our CERT)."""
    cert_ids = _linked(rows, m.CertificateIdentity, "certificate", ix)
    out: dict[Identity, list[x509.Certificate]] = defaultdict(list)
    for r in rows.of(m.CertificateRow):
        if int(r["type"]) != CERT_X509:
            continue
        try:
            cert = x509.load_der_x509_certificate(bytes(r["data"]))
        except ValueError:
            continue
        if _is_ca(cert):
            continue
        for ident in cert_ids.get(int(r["id"]), []):
            out[ident].append(cert)
    return out
