"""ipsec.conf conns and ipsec.secrets entries -> the daemon's `IkeConfig`s and `Credentials`.

The meaning of each key is strongSwan 5's (ipsec.conf(5), as its starter hands conns to charon):
`authby` sets both rounds unless `leftauth` / `rightauth` say otherwise; `left` is the local side
unless only `right` is one of this host's addresses; lifetimes are hard lifetimes and rekeying
starts `margintime` earlier. Keys that only concern the kernel or the updown script are accepted and
have no effect here (docs/gateway.md lists them); an unknown key is an error, as with the starter.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any, cast

from cryptography import x509

from core_ike.constants import IdType
from core_ike.crypto.auth import load_private_key
from core_ike.crypto.proposals import parse_esp_proposals, parse_ike_proposals
from core_ike.daemon.confvalues import duration
from core_ike.errors import LocalError
from core_ike.ike.config import AuthConfig, AuthKind, ChildConfig, IkeConfig
from core_ike.ike.creds import Credentials
from core_ike.ike.identity import ANY, Identity

from .ipsecconf import IpsecConf, Secret, resolved, secret_value

log = logging.getLogger("gateway.ipsecconf")

SIDE_KEYS = ("", "subnet", "sourceip", "id", "cert", "auth", "auth2", "protoport", "firewall", "hostaccess",
             "updown", "sendcert", "ca", "groups", "nexthop", "allowany", "ikeport", "dns", "id2", "cert2", "ca2",
             "sigkey", "rsasigkey", "certpolicy", "subnetwithin")
CONN_KEYS = {
    "also", "auto", "type", "keyexchange", "authby", "ike", "esp", "ah", "ikelifetime", "lifetime", "keylife",
    "rekeymargin", "margintime", "rekeyfuzz", "rekey", "reauth", "keyingtries", "dpddelay", "dpdtimeout",
    "dpdaction", "closeaction", "mobike", "forceencaps", "fragmentation", "compress", "installpolicy",
    "mediation", "mediated_by", "me_peerid", "eap_identity", "aaa_identity", "xauth", "xauth_identity",
    "inactivity", "reqid", "mark", "mark_in", "mark_out", "tfc", "replay_window", "aggressive", "modeconfig",
    "lifebytes", "lifepackets", "marginbytes", "marginpackets", "ikedscp", "sha256_96", "priority",
    "interfaces", "uniqueids", "leftikeport", "rightikeport",
    *(f"{side}{k}" for side in ("left", "right") for k in SIDE_KEYS),
}
# keys that concern the kernel, the updown script, IKEv1 or plugins we do not have: accepted, no effect
NO_EFFECT = ("firewall", "hostaccess", "updown", "sendcert", "nexthop", "compress", "installpolicy", "mobike",
             "dpdtimeout", "closeaction", "mark", "priority", "interfaces")
SETUP_KEYS = {"uniqueids", "charondebug", "strictcrlpolicy", "cachecrls", "charonstart", "plutostart",
              "plutodebug", "nat_traversal", "crlcheckinterval", "keep_alive"}
CA_KEYS = {"cacert", "auto", "crluri", "crluri1", "crluri2", "ocspuri", "ocspuri1", "ocspuri2", "certuribase", "also"}
_UNIQUE = {"yes": "replace", "replace": "replace", "no": "no", "never": "no", "keep": "keep"}


def dn_identity(text: str) -> Identity:
    """`C=CH, O=strongSwan Project, CN=moon.strongswan.org`: strongSwan writes a DN's RDNs in the
    order of the encoding, RFC 4514 strings in the reverse one."""
    try:
        name = x509.Name.from_rfc4514_string(text.replace(", ", ","))
    except ValueError as e:
        raise LocalError(f"bad distinguished name {text!r}: {e}") from None
    return Identity(IdType.DER_ASN1_DN, x509.Name(list(reversed(list(name.rdns)))).public_bytes())


def identity(text: str) -> Identity:
    t = text.strip()
    if t.startswith(("C=", "CN=", "O=", "OU=", "L=", "ST=", "DC=")) or ("=" in t and "," in t and "@" not in t):
        return dn_identity(t)
    return Identity.parse(t)


def _concrete(addr: str) -> str | None:
    """An IP address for left=/right=, None for %any, %defaultroute and empty."""
    a = addr.strip()
    if a in ("", "%any", "%any4", "%any6", "%defaultroute", "%default", "%opportunistic"):
        return None
    if a.startswith("%"):
        return None  # %hostname: the peer may come from any address (the name is not resolved)
    try:
        return str(ipaddress.ip_address(a))
    except ValueError:
        raise LocalError(f"{a!r} is not an IP address (host names are not resolved)") from None


def _bool(v: str, where: str) -> bool:
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise LocalError(f"{where}: expected yes or no, got {v!r}")


def _auth(v: str, where: str) -> AuthKind:
    v = v.lower()
    if v in ("psk", "secret"):
        return "psk"
    if v in ("pubkey", "rsa", "rsasig", "ecdsa", "ecdsasig", "rsa-2048", "ed25519") or v.startswith(("rsa", "ecdsa")):
        return "pubkey"
    if v in ("eap-md5", "eap-mschapv2"):  # RFC 7296 2.16
        return cast(AuthKind, v)
    raise LocalError(f"{where}: authentication {v!r} is not supported (psk, pubkey, eap-md5 or eap-mschapv2)")


def _authby(v: str, where: str) -> AuthKind:
    v = v.lower()
    if v in ("psk", "secret"):
        return "psk"
    if v in ("pubkey", "rsasig", "ecdsasig", "rsa", "ecdsa"):
        return "pubkey"
    raise LocalError(f"{where}: authby={v} is not supported (psk, secret, pubkey, rsasig, ecdsasig)")


def _subnets(v: str, protoport: str | None, where: str) -> list[str]:
    suffix = ""
    if protoport:
        proto, _, port = protoport.partition("/")
        suffix = f"[{proto}/{port}]" if port and port != "%any" else f"[{proto}]"
    out = []
    for s in (x.strip() for x in v.split(",")):
        if not s:
            continue
        try:
            ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise LocalError(f"{where}: {s!r} is not a subnet") from None
        out.append(s + suffix)
    return out


def _proposals(v: str) -> str:
    """ike=/esp=: strongSwan proposal strings; a trailing `!` (strict) is what we always do."""
    return ",".join(p.strip().rstrip("!") for p in v.split(",") if p.strip())


def _secs(v: str, where: str) -> float:
    try:
        return duration(v)
    except LocalError as e:
        raise LocalError(f"{where}: {e}") from None


def _local_first(keys: dict[str, str], local_addresses: list[str] | None) -> bool:
    """ipsec.conf(5): left is local unless right is an address of this host and left is not."""
    if not local_addresses:
        return True
    mine = set(local_addresses)
    left, right = keys.get("left", ""), keys.get("right", "")
    return not (right in mine and left not in mine)


def _cert(name: str, base: Path, where: str) -> x509.Certificate:
    p = Path(name)
    for cand in ([p] if p.is_absolute() else [base / "ipsec.d" / "certs" / p, base / p]):
        if cand.exists():
            data = cand.read_bytes()
            try:
                return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else \
                    x509.load_der_x509_certificate(data)
            except ValueError:
                raise LocalError(f"{where}: {cand} is not a certificate") from None
    raise LocalError(f"{where}: certificate {name} not found (ipsec.d/certs/ beside ipsec.conf, or a path)")


def convert_conn(name: str, keys: dict[str, str], base: Path, setup: dict[str, str],
                 local_addresses: list[str] | None = None) -> IkeConfig | None:
    """One conn (keys after %default and also=); None for auto=ignore."""
    where = f"conn {name}"
    auto = _auto(keys, where)
    if auto == "ignore":
        return None
    me, peer = ("left", "right") if _local_first(keys, local_addresses) else ("right", "left")

    def side(k: str) -> str | None:
        return keys.get(me + k)

    def other(k: str) -> str | None:
        return keys.get(peer + k)

    cfg = IkeConfig(name)
    local_ip, remote_ip = _concrete(keys.get(me, "%any")), _concrete(keys.get(peer, "%any"))
    cfg.local_addrs = [local_ip] if local_ip else ["%any"]
    cfg.remote_addrs = [remote_ip] if remote_ip else ["%any"]
    if side("ikeport"):
        cfg.local_port = int(cast(str, side("ikeport")))
    if other("ikeport"):
        cfg.remote_port = int(cast(str, other("ikeport")))
    default_auth = _authby(keys["authby"], where) if "authby" in keys else "pubkey"
    local_auth = _auth(side("auth") or default_auth, f"{where} {me}auth")
    remote_auth = _auth(other("auth") or default_auth, f"{where} {peer}auth")
    certs = [_cert(side("cert") or "", base, f"{where} {me}cert")] if side("cert") else []
    local_id = identity(side("id") or "") if side("id") else (ANY if certs or not local_ip else identity(local_ip))
    remote_id = identity(other("id") or "") if other("id") else (identity(remote_ip) if remote_ip else ANY)
    cfg.local = AuthConfig(local_auth, local_id, certs=cast(list[Any], certs))
    cfg.remote = AuthConfig(remote_auth, remote_id)
    _eap_identity(cfg, keys.get("eap_identity"))
    if "ike" in keys:
        cfg.proposals = _proposals(keys["ike"])
        parse_ike_proposals(cfg.proposals)
    margin = _secs(keys.get("margintime", keys.get("rekeymargin", "9m")), f"{where} margintime")
    ike_life = _secs(keys.get("ikelifetime", "3h"), f"{where} ikelifetime")
    cfg.rekey_time = max(ike_life - margin, 0.0) if _bool(keys.get("rekey", "yes"), where) else 0.0
    tries = keys.get("keyingtries", "3")
    cfg.keyingtries = 0 if tries == "%forever" else int(tries)
    if keys.get("dpdaction", "none") != "none":
        cfg.dpd_delay = _secs(keys.get("dpddelay", "30s"), f"{where} dpddelay")
    cfg.encap = _bool(keys.get("forceencaps", "no"), where)
    cfg.fragmentation = keys.get("fragmentation", "yes") != "no"
    cfg.unique = cast(Any, _UNIQUE.get(setup.get("uniqueids", "yes"), "replace"))
    src = side("sourceip")
    if src:
        cfg.vips = [("::" if s == "%config6" else "0.0.0.0") if s.startswith("%config") or s == "%modeconfig"
                    else str(ipaddress.ip_address(s)) for s in (x.strip() for x in src.split(","))]
    pool = other("sourceip")
    if pool:
        cfg.pools = [p for p in (x.strip() for x in pool.split(",")) if p]
    cfg.mediation = _bool(keys.get("mediation", "no"), where)
    if keys.get("mediated_by"):
        cfg.mediated_by = keys["mediated_by"]
        cfg.mediation_peer = identity(keys["me_peerid"]) if keys.get("me_peerid") else remote_id
    cfg.children = [_child(name, keys, (me, peer), margin, auto)]
    if auto == "route" and not remote_ip:
        raise LocalError(f"{where}: auto=route needs {peer}= the peer's address (the first packet starts the "
                         f"connection to it)")
    return cfg


def _eap_identity(cfg: IkeConfig, eap_identity: str | None) -> None:
    """eap_identity=: the client answers EAP-Identity with it; on the server %identity asks the peer with
    EAP-Identity (RFC 3748 5.1), otherwise the peer's EAP identity is its IKE identity (as charon's stroke)."""
    if cfg.local.auth.startswith("eap-") and eap_identity and eap_identity != "%identity":
        cfg.local.eap_id = eap_identity
    if cfg.remote.auth.startswith("eap-"):
        if eap_identity and eap_identity != "%identity":
            cfg.remote.eap_id = eap_identity
        elif not eap_identity and not cfg.remote.id.is_any:
            cfg.remote.eap_id = str(cfg.remote.id)


def _auto(keys: dict[str, str], where: str) -> str:
    """The conn's auto= after the checks that apply to every conn: known keys, IKEv2, tunnel mode."""
    unknown = sorted(k for k in keys if k not in CONN_KEYS)
    if unknown:
        raise LocalError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    auto = keys.get("auto", "ignore")
    if auto not in ("ignore", "add", "route", "start"):
        raise LocalError(f"{where}: auto={auto} (ignore, add, route or start)")
    if auto != "ignore" and keys.get("keyexchange", "ikev2") not in ("ikev2", "ike"):
        raise LocalError(f"{where}: keyexchange={keys['keyexchange']} (only IKEv2)")
    if auto != "ignore" and keys.get("type", "tunnel") != "tunnel":
        raise LocalError(f"{where}: type={keys['type']} (only tunnel)")
    return auto


def _child(name: str, keys: dict[str, str], sides: tuple[str, str], margin: float, auto: str) -> ChildConfig:
    """The conn's one CHILD_SA; `sides` = (our side, the peer's): ("left", "right") or the reverse."""
    where = f"conn {name}"
    me, peer = sides

    def side(k: str) -> str | None:
        return keys.get(me + k)

    def other(k: str) -> str | None:
        return keys.get(peer + k)

    child = ChildConfig(name)
    child.local_ts = _subnets(side("subnet") or "", side("protoport"), where) or \
        ["dynamic" + (f"[{side('protoport')}]" if side("protoport") else "")]
    child.remote_ts = _subnets(other("subnet") or "", other("protoport"), where) or \
        ["dynamic" + (f"[{other('protoport')}]" if other("protoport") else "")]
    if "esp" in keys:
        child.esp_proposals = _proposals(keys["esp"])
        parse_esp_proposals(child.esp_proposals)
    life = _secs(keys.get("lifetime", keys.get("keylife", "1h")), f"{where} lifetime")
    child.rekey_time = max(life - margin, 1.0)
    child.life_time = life if life > child.rekey_time else None
    # auto=route: trap policies, the first packet they catch starts the CHILD_SA (core_ike/daemon/traps.py)
    child.start_action = "start" if auto == "start" else "trap" if auto == "route" else "none"
    if "replay_window" in keys:
        child.replay_window = int(keys["replay_window"])
    return child


def convert_conf(conf: IpsecConf, base: Path, local_addresses: list[str] | None = None) -> list[IkeConfig]:
    unknown = sorted(k for k in conf.setup if k not in SETUP_KEYS)
    if unknown:
        raise LocalError(f"config setup: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    out: list[IkeConfig] = []
    for name in conf.conns:
        if name == "%default":
            continue
        try:
            cfg = convert_conn(name, resolved(conf, name), base, conf.setup, local_addresses)
        except ValueError as e:
            raise LocalError(f"conn {name}: {e}") from None
        if cfg is not None:
            out.append(cfg)
    names = {c.name for c in out}
    for c in out:
        if c.mediated_by and c.mediated_by not in names:
            raise LocalError(f"conn {c.name}: mediated_by={c.mediated_by}: no such conn loaded")
    return out


def convert_cas(conf: IpsecConf, base: Path) -> list[x509.Certificate]:
    """`ca NAME` sections with `cacert=` and `auto=add`: trusted CA certificates."""
    out: list[x509.Certificate] = []
    for name, sec in conf.cas.items():
        where = f"ca {name}"
        unknown = sorted(k for k in sec.keys if k not in CA_KEYS)
        if unknown:
            raise LocalError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
        if sec.keys.get("auto", "ignore") == "ignore" or "cacert" not in sec.keys:
            continue
        p = Path(sec.keys["cacert"])
        out.append(_cert(str(p if p.is_absolute() else Path("..") / "cacerts" / p), base, f"{where} cacert"))
    return out


def _key_file(name: str, base: Path, where: str) -> bytes:
    p = Path(name)
    for cand in ([p] if p.is_absolute() else [base / "ipsec.d" / "private" / p, base / p]):
        if cand.exists():
            return cand.read_bytes()
    raise LocalError(f"{where}: key {name} not found (ipsec.d/private/ beside ipsec.secrets, or a path)")


def convert_secrets(secrets: list[Secret], base: Path) -> Credentials:
    creds = Credentials()
    for s in secrets:
        ids = [identity(i) for i in s.ids if i != "%any"]
        if s.kind == "PSK":
            creds.add_psk(secret_value(s.value, s.where), *ids)
        elif s.kind in ("RSA", "ECDSA", "PKCS8"):
            data = _key_file(s.value, base, s.where)
            try:
                creds.private_keys.append(load_private_key(data, s.passphrase.encode() if s.passphrase else None))
            except LocalError as e:
                raise LocalError(f"{s.where}: {s.value}: {e}") from None
        elif s.kind == "EAP":  # EAP-MD5 / EAP-MSCHAPv2 passwords by EAP identity (RFC 7296 2.16)
            creds.add_eap_secret(secret_value(s.value, s.where), *ids)
        elif s.kind in ("XAUTH", "NTLM"):
            secret_value(s.value, s.where)  # checked; IKEv1 XAUTH and NTLM are not used (docs/gateway.md)
        else:
            log.warning("%s: %s secrets are not used", s.where, s.kind)
    return creds
