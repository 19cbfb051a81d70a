"""The SA manager's editing pages: connections, identities, PSKs and pools as rows of strongSwan's
SQL schema (gateway/sqlconf/models.py), the rows iked reads with ``[daemon] config_db`` and re-reads
every 2 s (docs/gateway.md, "Live changes"): a change is used from the next connection attempt on,
without a restart; SAs up now keep the config they were made with.

Each page validates what it writes the way iked's loader will read it (identities with
``Identity.parse``, proposals with the proposal parser, selectors as subnets), so a saved row is never
one iked skips.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

from flask import abort, current_app, flash, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine, delete, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core_ike.constants import ProtocolId
from core_ike.crypto.proposals import parse_proposals
from core_ike.daemon.confvalues import duration
from core_ike.errors import LocalError
from core_ike.ike.identity import Identity
from gateway.sqlconf import models as m
from gateway.sqlconf.loader import identity_of
from gateway.sqlconf.pools import PoolAdmin, parse_range
from medmgr_web import portal as web
from medmgr_web import validation as v

AUTH = {"psk": 2, "pubkey": 1}
AUTH_NAMES = {0: "any", 1: "pubkey", 2: "psk", 3: "eap"}
TS_LOCAL, TS_REMOTE, TS_LOCAL_DYNAMIC, TS_REMOTE_DYNAMIC = 0, 1, 2, 3
ROW_NAME_MAX = 32   # peer_configs.name, child_configs.name, pools.name: VARCHAR(32)
SECRET_MAX = 256    # shared_secrets.data
FIELD_MAX = 1000
CONN_FIELDS = ("name", "local_addrs", "remote_addrs", "local_id", "remote_id", "auth", "pool", "local_ts",
               "remote_ts", "ike_proposal", "esp_proposal", "rekeytime", "dpd_delay")
CONN_DEFAULTS = {"local_addrs": "%any", "remote_addrs": "%any", "auth": "psk", "local_ts": "0.0.0.0/0",
                 "remote_ts": "dynamic", "rekeytime": "4h", "dpd_delay": "30s"}


_Row = TypeVar("_Row", m.PeerConfigRow, m.SqlIdentity, m.SharedSecretRow)


def _db() -> Engine:
    db = current_app.extensions["iksa"].config_db
    if db is None:
        abort(404, "No configuration database is set (medmgr-sa --config-db).")
    return db  # type: ignore[no-any-return]


def _form(*keys: str) -> dict[str, str]:
    """The posted fields, stripped and cut at FIELD_MAX; a missing one is empty."""
    return {k: request.form.get(k, "").strip()[:FIELD_MAX] for k in keys}


def _row_or_404(s: Session, model: type[_Row], ident: str | int | None, what: str) -> _Row:
    """The row of the id in the URL (a positive decimal number), or the 404 page "<what> not found."."""
    rid = v.parse_id(ident) if isinstance(ident, str) else ident
    row = s.get(model, rid) if rid is not None else None
    if row is None:
        abort(404, f"{what} not found.")
    return row


def _name_error(name: str) -> str | None:
    """A row name (peer_configs, child_configs, pools): a portal name of at most ROW_NAME_MAX characters."""
    if (err := v.check_name(name, "Name")) is not None or len(name) > ROW_NAME_MAX:
        return err or f"Name: at most {ROW_NAME_MAX} characters."
    return None


# -- values ---------------------------------------------------------------------------------------


def identity_text(row: m.SqlIdentity) -> str:
    return identity_of(int(row.type), bytes(row.data)).canonical()


def _identity(text: str, what: str) -> tuple[Identity | None, str | None]:
    if not text or len(text) > 255:
        return None, f"{what} is missing." if not text else f"{what} is too long."
    try:
        ident = Identity.parse(text)
    except LocalError as e:
        return None, f"{what}: {e}."
    if len(ident.data) > 64:
        return None, f"{what} is longer than 64 octets."
    return ident, None


def _addrs(text: str, what: str) -> tuple[str, str | None]:
    """ike_configs.local / remote: addresses or subnets, comma separated; %any for any."""
    out = []
    for a in (x.strip() for x in text.split(",")):
        if not a:
            continue
        if a in ("%any", "%any4", "%any6"):
            out.append("0.0.0.0" if a != "%any6" else "::")
            continue
        try:
            out.append(str(ipaddress.ip_network(a, strict=False)) if "/" in a else str(ipaddress.ip_address(a)))
        except ValueError:
            return "", f"{what}: {a!r} is not an address or subnet (e.g. 192.0.2.1, %any)."
    joined = ",".join(out) or "0.0.0.0"
    if len(joined) > 128:
        return "", f"{what}: too many addresses."
    return joined, None


def _selectors(text: str, what: str) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None, str | None]:
    """Subnets, comma separated; ``dynamic`` (the peer's address or virtual IP): None."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts or parts == ["dynamic"]:
        return None, None
    nets = []
    for p in parts:
        net, err = v.parse_subnet(p, what)
        if err or net is None:
            return None, err or f"{what} is missing."
        nets.append(ipaddress.ip_network(net))
    if len(nets) > 16:
        return None, f"{what}: at most 16 subnets."
    return nets, None


def _proposal(text: str, protocol: ProtocolId, what: str) -> str | None:
    if not text:
        return None  # our defaults
    if len(text) > 128:
        return f"{what} is too long."
    try:
        parse_proposals(text, protocol)
    except LocalError as e:
        return f"{what}: {e}."
    return None


def _seconds(text: str, what: str) -> tuple[int, str | None]:
    try:
        s = duration(text or "0")
    except LocalError:
        return 0, f"{what}: a number of seconds, or with s, m, h or d (e.g. 4h)."
    if s > 2**31 - 1:
        return 0, f"{what} is too long."
    return int(s), None


def _find_identity(s: Session, ident: Identity) -> m.SqlIdentity:
    row = s.scalars(select(m.SqlIdentity).where(m.SqlIdentity.type == ident.id_type,
                                                m.SqlIdentity.data == ident.data)).first()
    if row is None:
        row = m.SqlIdentity(type=ident.id_type, data=ident.data)
        s.add(row)
        s.flush()
    return row


def _proposal_id(s: Session, text: str) -> int:
    pid = s.scalar(select(m.ProposalRow.id).where(m.ProposalRow.proposal == text))
    if pid is None:
        row = m.ProposalRow(proposal=text)
        s.add(row)
        s.flush()
        pid = row.id
    return int(pid)


# -- connections ----------------------------------------------------------------------------------


def stored_connections() -> list[dict[str, Any]]:
    with Session(_db()) as s:
        ids = {r.id: identity_text(r) for r in s.scalars(select(m.SqlIdentity))}
        out = []
        for p in s.scalars(select(m.PeerConfigRow).order_by(m.PeerConfigRow.name)):
            ike = s.get(m.IkeConfigRow, p.ike_cfg)

            def ident(ref: str) -> str:
                return ids.get(int(ref), f"#{ref}") if str(ref).isdigit() else str(ref)

            out.append({"id": p.id, "name": p.name, "local_id": ident(p.local_id), "remote_id": ident(p.remote_id),
                        "auth": AUTH_NAMES.get(p.auth_method, str(p.auth_method)), "pool": p.pool or "",
                        "local_addrs": _shown_addrs(ike.local) if ike else "?",
                        "remote_addrs": _shown_addrs(ike.remote) if ike else "?"})
        return out


def validate_connection(f: dict[str, str], s: Session, pid: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The values to write and the errors per field."""
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    if (err := _name_error(f["name"])) is not None:
        errors["name"] = err
    elif s.scalar(select(m.PeerConfigRow.id).where(m.PeerConfigRow.name == f["name"],
                                                   m.PeerConfigRow.id != (pid or 0))) is not None:
        errors["name"] = "A connection of this name exists already."
    for key, what in (("local_addrs", "Local addresses"), ("remote_addrs", "Remote addresses")):
        out[key], err = _addrs(f[key], what)
        if err:
            errors[key] = err
    for key, what in (("local_id", "Local identity"), ("remote_id", "Remote identity")):
        out[key], err = _identity(f[key], what)
        if err:
            errors[key] = err
    if f["auth"] not in AUTH:
        errors["auth"] = "Choose pre-shared key or public key."
    _validate_child(f, s, out, errors)
    return out, errors


def _validate_child(f: dict[str, str], s: Session, out: dict[str, Any], errors: dict[str, str]) -> None:
    """The pools, selectors, proposals and times of the connection form."""
    pools = [p.strip() for p in f["pool"].split(",") if p.strip()]
    known = set(s.scalars(select(m.PoolRow.name)))
    missing = [p for p in pools if p not in known]
    if missing:
        errors["pool"] = f"No pool named {missing[0]!r} (add it on the Pools page first)."
    elif len(",".join(pools)) > ROW_NAME_MAX:
        errors["pool"] = f"Pools: at most {ROW_NAME_MAX} characters in all."
    out["pool"] = ",".join(pools) or None
    for key, what in (("local_ts", "Local subnets"), ("remote_ts", "Remote subnets")):
        out[key], err = _selectors(f[key], what)
        if err:
            errors[key] = err
    for key, proto, what in (("ike_proposal", ProtocolId.IKE, "IKE proposals"),
                             ("esp_proposal", ProtocolId.ESP, "ESP proposals")):
        if (err := _proposal(f[key], proto, what)) is not None:
            errors[key] = err
    for key, what in (("rekeytime", "IKE rekey time"), ("dpd_delay", "DPD delay")):
        out[key], err = _seconds(f[key], what)
        if err:
            errors[key] = err


def _ts_rows(s: Session, cid: int, nets: list[Any] | None, kind: int, dynamic: int) -> None:
    if nets is None:
        row = m.TrafficSelectorRow(type=7, start_addr=None, end_addr=None)
        s.add(row)
        s.flush()
        s.add(m.ChildConfigTrafficSelector(child_cfg=cid, traffic_selector=row.id, kind=dynamic))
        return
    for net in nets:
        row = m.TrafficSelectorRow(type=7 if net.version == 4 else 8, start_addr=net.network_address.packed,
                                   end_addr=net.broadcast_address.packed)
        s.add(row)
        s.flush()
        s.add(m.ChildConfigTrafficSelector(child_cfg=cid, traffic_selector=row.id, kind=kind))


def _drop_child(s: Session, cid: int) -> None:
    ts = list(s.scalars(select(m.ChildConfigTrafficSelector.traffic_selector)
                        .where(m.ChildConfigTrafficSelector.child_cfg == cid)))
    s.execute(delete(m.ChildConfigTrafficSelector).where(m.ChildConfigTrafficSelector.child_cfg == cid))
    shared = set(s.scalars(select(m.ChildConfigTrafficSelector.traffic_selector)
                           .where(m.ChildConfigTrafficSelector.traffic_selector.in_(ts))))
    s.execute(delete(m.TrafficSelectorRow).where(m.TrafficSelectorRow.id.in_(set(ts) - shared)))
    s.execute(delete(m.ChildConfigProposal).where(m.ChildConfigProposal.child_cfg == cid))
    s.execute(delete(m.ChildConfigRow).where(m.ChildConfigRow.id == cid))


def save_connection(s: Session, f: dict[str, str], val: dict[str, Any], pid: int | None) -> m.PeerConfigRow:
    """Write one connection: its peer_configs row, an ike_configs row of its own, one child config
    (named as the connection) with its selectors and proposals."""
    peer = s.get(m.PeerConfigRow, pid) if pid is not None else None
    if peer is not None:
        _unlink_peer(s, peer)
    ike = m.IkeConfigRow(local=val["local_addrs"], remote=val["remote_addrs"])
    s.add(ike)
    s.flush()
    if f["ike_proposal"]:
        s.add(m.IkeConfigProposal(ike_cfg=ike.id, prio=0, prop=_proposal_id(s, f["ike_proposal"])))
    local, remote = _find_identity(s, val["local_id"]), _find_identity(s, val["remote_id"])
    if peer is None:
        peer = m.PeerConfigRow(name=f["name"], ike_cfg=ike.id, local_id=str(local.id), remote_id=str(remote.id))
        s.add(peer)
    peer.name, peer.ike_cfg, peer.local_id, peer.remote_id = f["name"], ike.id, str(local.id), str(remote.id)
    peer.auth_method, peer.pool = AUTH[f["auth"]], val["pool"]
    peer.rekeytime, peer.dpd_delay, peer.keyingtries, peer.uniqueid = val["rekeytime"], val["dpd_delay"], 1, 2
    s.flush()
    child = m.ChildConfigRow(name=f["name"][:ROW_NAME_MAX], rekeytime=3600, lifetime=3900)
    s.add(child)
    s.flush()
    s.add(m.PeerConfigChildConfig(peer_cfg=peer.id, child_cfg=child.id))
    if f["esp_proposal"]:
        s.add(m.ChildConfigProposal(child_cfg=child.id, prio=0, prop=_proposal_id(s, f["esp_proposal"])))
    _ts_rows(s, child.id, val["local_ts"], TS_LOCAL, TS_LOCAL_DYNAMIC)
    _ts_rows(s, child.id, val["remote_ts"], TS_REMOTE, TS_REMOTE_DYNAMIC)
    return peer


def _unlink_peer(s: Session, peer: m.PeerConfigRow) -> None:
    """Remove what belongs to this peer config alone: its child configs and an ike config no other
    peer config uses."""
    for cid in list(s.scalars(select(m.PeerConfigChildConfig.child_cfg).where(m.PeerConfigChildConfig.peer_cfg == peer.id))):
        s.execute(delete(m.PeerConfigChildConfig).where(m.PeerConfigChildConfig.peer_cfg == peer.id,
                                                        m.PeerConfigChildConfig.child_cfg == cid))
        if s.scalar(select(func.count()).where(m.PeerConfigChildConfig.child_cfg == cid)) == 0:
            _drop_child(s, cid)
    others = s.scalar(select(func.count()).where(m.PeerConfigRow.ike_cfg == peer.ike_cfg, m.PeerConfigRow.id != peer.id))
    if others == 0:
        s.execute(delete(m.IkeConfigProposal).where(m.IkeConfigProposal.ike_cfg == peer.ike_cfg))
        s.execute(delete(m.IkeConfigRow).where(m.IkeConfigRow.id == peer.ike_cfg))


def _shown_addrs(text: str) -> str:
    """ike_configs.local / remote as the form takes them: %any for any."""
    return ", ".join({"0.0.0.0": "%any", "0.0.0.0/0": "%any", "::": "%any6", "::/0": "%any6"}.get(a.strip(), a.strip())
                     for a in text.split(","))


def _conn_form(peer: m.PeerConfigRow | None, s: Session) -> dict[str, str]:
    if peer is None:
        return {k: CONN_DEFAULTS.get(k, "") for k in CONN_FIELDS}
    ike = s.get(m.IkeConfigRow, peer.ike_cfg)

    def ident(ref: str) -> str:
        row = s.get(m.SqlIdentity, int(ref)) if str(ref).isdigit() else None
        return identity_text(row) if row is not None else ""

    f = {"name": peer.name, "local_addrs": _shown_addrs(ike.local) if ike else "",
         "remote_addrs": _shown_addrs(ike.remote) if ike else "",
         "local_id": ident(peer.local_id), "remote_id": ident(peer.remote_id),
         "auth": {1: "pubkey"}.get(peer.auth_method, "psk"), "pool": peer.pool or "",
         "rekeytime": str(peer.rekeytime), "dpd_delay": str(peer.dpd_delay), "ike_proposal": "", "esp_proposal": "",
         "local_ts": "dynamic", "remote_ts": "dynamic"}
    f["ike_proposal"] = ",".join(s.scalars(select(m.ProposalRow.proposal).join(
        m.IkeConfigProposal, m.IkeConfigProposal.prop == m.ProposalRow.id)
        .where(m.IkeConfigProposal.ike_cfg == peer.ike_cfg).order_by(m.IkeConfigProposal.prio)))
    cid = s.scalar(select(m.PeerConfigChildConfig.child_cfg).where(m.PeerConfigChildConfig.peer_cfg == peer.id))
    if cid is not None:
        f["esp_proposal"] = ",".join(s.scalars(select(m.ProposalRow.proposal).join(
            m.ChildConfigProposal, m.ChildConfigProposal.prop == m.ProposalRow.id)
            .where(m.ChildConfigProposal.child_cfg == cid).order_by(m.ChildConfigProposal.prio)))
        sel: dict[int, list[str]] = {TS_LOCAL: [], TS_REMOTE: []}
        for kind, t in s.execute(select(m.ChildConfigTrafficSelector.kind, m.TrafficSelectorRow).join(
                m.TrafficSelectorRow, m.TrafficSelectorRow.id == m.ChildConfigTrafficSelector.traffic_selector)
                .where(m.ChildConfigTrafficSelector.child_cfg == cid)):
            if kind in (TS_LOCAL, TS_REMOTE) and t.start_addr is not None and t.end_addr is not None:
                lo, hi = ipaddress.ip_address(bytes(t.start_addr)), ipaddress.ip_address(bytes(t.end_addr))
                sel[kind] += [str(n) for n in ipaddress.summarize_address_range(lo, hi)]
        f["local_ts"] = ", ".join(sel[TS_LOCAL]) or "dynamic"
        f["remote_ts"] = ", ".join(sel[TS_REMOTE]) or "dynamic"
    return f


def _edit_connection(pid: int | None) -> ResponseReturnValue:
    with Session(_db()) as s:
        peer = _row_or_404(s, m.PeerConfigRow, pid, "Connection") if pid is not None else None
        if peer is not None and (s.scalar(select(func.count()).where(m.PeerConfigChildConfig.peer_cfg == peer.id)) or 0) > 1:
            # the form writes one child config; saving would drop the others
            abort(409, f"Connection {peer.name} has several CHILD_SA configs; edit it in the database "
                       "(this page writes one per connection).")
        if request.method == "GET":
            return web.render("conn/edit.html", f=_conn_form(peer, s), ferr={}, pid=pid)
        f = _form(*CONN_FIELDS)
        val, ferr = validate_connection(f, s, pid)
        if ferr:
            return web.render("conn/edit.html", status=400, f=f, ferr=ferr, pid=pid, errors=list(ferr.values()))
        try:
            save_connection(s, f, val, pid)
            s.commit()
        except SQLAlchemyError as e:
            s.rollback()
            return web.render("conn/edit.html", status=503, f=f, ferr={}, pid=pid,
                              errors=[f"Not saved, the database refused: {str(e).splitlines()[0]}"])
    flash(f"Connection {f['name']} saved; iked uses it from its next read of the database (within 2 s).")
    return web.redirect("conn_list")


def conn_add() -> ResponseReturnValue:
    return _edit_connection(None)


def conn_edit(ident: str) -> ResponseReturnValue:
    pid = v.parse_id(ident)
    if pid is None:
        abort(404, "Connection not found.")
    return _edit_connection(pid)


def conn_delete(ident: str) -> ResponseReturnValue:
    with Session(_db()) as s, s.begin():
        peer = _row_or_404(s, m.PeerConfigRow, ident, "Connection")
        name = peer.name
        _unlink_peer(s, peer)
        s.delete(peer)
    flash(f"Connection {name} deleted; its SAs up now stay until they end (terminate them on the SAs page).")
    return web.redirect("conn_list")


# -- identities and secrets ----------------------------------------------------------------------


def _identity_uses(s: Session, iid: int) -> int:
    ref = str(iid)
    n = s.scalar(select(func.count()).where(or_(m.PeerConfigRow.local_id == ref, m.PeerConfigRow.remote_id == ref,
                                                m.PeerConfigRow.peer_id == iid))) or 0
    for model in (m.SharedSecretIdentity, m.CertificateIdentity, m.PrivateKeyIdentity):
        n += s.scalar(select(func.count()).where(model.identity == iid)) or 0
    n += s.scalar(select(func.count()).where(m.AddressRow.identity == iid)) or 0
    return n


def _identity_rows(s: Session) -> list[dict[str, Any]]:
    return [{"id": r.id, "text": identity_text(r), "type": int(r.type), "uses": _identity_uses(s, r.id)}
            for r in s.scalars(select(m.SqlIdentity).order_by(m.SqlIdentity.id))]


def identity_list() -> ResponseReturnValue:
    with Session(_db()) as s:
        return web.render("identity/list.html", identities=_identity_rows(s), f={"identity": ""}, ferr={})


def identity_add() -> ResponseReturnValue:
    text = _form("identity")["identity"]
    ident, err = _identity(text, "Identity")
    with Session(_db()) as s, s.begin():
        if ident is not None and s.scalar(select(m.SqlIdentity.id).where(
                m.SqlIdentity.type == ident.id_type, m.SqlIdentity.data == ident.data)) is not None:
            err = "This identity exists already."
        if err is None and ident is not None:
            _find_identity(s, ident)
    if err is not None:
        with Session(_db()) as s:
            return web.render("identity/list.html", status=400, identities=_identity_rows(s), f={"identity": text},
                              ferr={"identity": err}, errors=[err])
    flash(f"Identity {text} added.")
    return web.redirect("identity_list")


def identity_delete(ident: str) -> ResponseReturnValue:
    with Session(_db()) as s, s.begin():
        row = _row_or_404(s, m.SqlIdentity, ident, "Identity")
        text = identity_text(row)
        if _identity_uses(s, row.id):
            flash(f"Identity {text} is used (by a connection, secret, certificate, key or lease): not deleted.")
            return web.redirect("identity_list")
        s.delete(row)
    flash(f"Identity {text} deleted.")
    return web.redirect("identity_list")


def _secret_rows(s: Session) -> list[dict[str, Any]]:
    ids = {r.id: identity_text(r) for r in s.scalars(select(m.SqlIdentity))}
    out = []
    for r in s.scalars(select(m.SharedSecretRow).order_by(m.SharedSecretRow.id)):
        linked = [ids.get(i, f"#{i}") for i in s.scalars(select(m.SharedSecretIdentity.identity)
                                                            .where(m.SharedSecretIdentity.shared_secret == r.id))]
        out.append({"id": r.id, "type": {1: "IKE (PSK)", 2: "EAP", 3: "passphrase", 4: "PIN"}.get(r.type, str(r.type)),
                    "identities": linked or ["%any"], "length": len(bytes(r.data))})
    return out


def secret_list() -> ResponseReturnValue:
    with Session(_db()) as s:
        return web.render("secret/list.html", secrets=_secret_rows(s), f={"id1": "", "id2": "", "kind": "1"},
                          ferr={})


def secret_add() -> ResponseReturnValue:
    f = _form("id1", "id2", "kind")
    secret = request.form.get("secret", "")
    ferr: dict[str, str] = {}
    idents = []
    for key, what in (("id1", "First identity"), ("id2", "Second identity")):
        if f[key] or key == "id1":
            ident, err = _identity(f[key], what)
            if err:
                ferr[key] = err
            elif ident is not None:
                idents.append(ident)
    if f["kind"] not in ("1", "2"):
        ferr["kind"] = "Choose IKE (PSK) or EAP."
    raw = secret.encode()
    if len(secret) < 8 and f["kind"] == "1":
        ferr["secret"] = "A pre-shared key needs at least 8 characters (use a long random one)."
    elif not raw or len(raw) > SECRET_MAX:
        ferr["secret"] = f"The secret is missing or longer than {SECRET_MAX} octets."
    with Session(_db()) as s, s.begin():
        if ferr:
            return web.render("secret/list.html", status=400, secrets=_secret_rows(s), f=f, ferr=ferr,
                              errors=list(ferr.values()))
        row = m.SharedSecretRow(type=int(f["kind"]), data=raw)
        s.add(row)
        s.flush()
        for ident in idents:
            s.add(m.SharedSecretIdentity(shared_secret=row.id, identity=_find_identity(s, ident).id))
    flash(f"Secret for {' and '.join(str(i) for i in idents)} added.")
    return web.redirect("secret_list")


def secret_delete(ident: str) -> ResponseReturnValue:
    with Session(_db()) as s, s.begin():
        row = _row_or_404(s, m.SharedSecretRow, ident, "Secret")
        s.execute(delete(m.SharedSecretIdentity).where(m.SharedSecretIdentity.shared_secret == row.id))
        s.delete(row)
    flash("Secret deleted.")
    return web.redirect("secret_list")


# -- pools ----------------------------------------------------------------------------------------


def pool_rows(db: Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    admin = PoolAdmin(db)
    return admin.status(), admin.leases()


def pool_add() -> ResponseReturnValue:
    f = _form("name", "range", "end", "timeout")
    ferr: dict[str, str] = {}
    if (err := _name_error(f["name"])) is not None:
        ferr["name"] = err
    try:
        start, end = parse_range(f["range"], f["end"] or None)
    except LocalError as e:
        ferr["range"] = f"{e}."
    timeout, err = _seconds(f["timeout"], "Lease timeout")
    if err:
        ferr["timeout"] = err
    n = 0
    if not ferr:
        try:
            n = PoolAdmin(_db()).add(f["name"], start, end, timeout)
        except LocalError as e:
            ferr["name" if "exists" in str(e) else "range"] = f"{e}."
    if ferr:
        from medmgr_web.sa_manager import pool_page  # the page of both modules

        return pool_page(f, ferr)
    flash(f"Pool {f['name']} added: {n} addresses; iked loads it within seconds.")
    return web.redirect("pool_list")


def pool_delete(name: str) -> ResponseReturnValue:
    if v.check_name(name, "Pool") is not None:
        abort(404, "Pool not found.")
    try:
        PoolAdmin(_db()).delete(name)
    except LocalError:
        abort(404, "Pool not found.")
    flash(f"Pool {name} deleted with its leases.")
    return web.redirect("pool_list")


_GET_POST = ["GET", "POST"]
ROUTES: list[tuple[str, Callable[..., ResponseReturnValue], list[str]]] = [
    ("/conn/add", conn_add, _GET_POST),
    ("/conn/edit/<ident>", conn_edit, _GET_POST),
    ("/conn/delete/<ident>", conn_delete, ["POST"]),
    ("/identity/list", identity_list, ["GET"]),
    ("/identity/add", identity_add, ["POST"]),
    ("/identity/delete/<ident>", identity_delete, ["POST"]),
    ("/secret/list", secret_list, ["GET"]),
    ("/secret/add", secret_add, ["POST"]),
    ("/secret/delete/<ident>", secret_delete, ["POST"]),
    ("/pool/add", pool_add, ["POST"]),
    ("/pool/delete/<name>", pool_delete, ["POST"]),
]
