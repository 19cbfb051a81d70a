"""`ikeme-ipsec`: the classic `ipsec` commands against iked's control socket.

`up NAME`, `down NAME`, `route NAME`, `unroute NAME`, `status [NAME]`, `statusall [NAME]`, `reload` (also
`rereadall`, `update`).
The output has the shape users know from strongSwan's `ipsec status` / `statusall` (docs/gateway.md):
names right-aligned in 12 columns, `NAME[N]` for IKE_SAs and `NAME{N}` for CHILD_SAs, SPIs with `_i`
/ `_o`, the initiator's IKE SPI marked `*`, selectors as `LOCAL === REMOTE`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from core_ike.daemon.ctl import add_pool_parser, call, default_socket
from core_ike.errors import LocalError
from core_ike.version import add_version_argument

AUTH_TEXT = {"psk": "pre-shared key", "pubkey": "public key", "eap-md5": "EAP_MD5", "eap-mschapv2": "EAP_MSCHAPV2"}


def _ago(seconds: Any) -> str:
    s = int(seconds or 0)
    if s >= 7200:
        return f"{s // 3600} hours"
    if s >= 120:
        return f"{s // 60} minutes"
    return f"{s} second{'s' if s != 1 else ''}"


def _in(seconds: Any) -> str:
    return _ago(seconds)


def _prefix(name: str, tag: str = "") -> str:
    return f"{name:>12}{tag}:"


def _sa_lines(sa: dict[str, Any], full: bool) -> list[str]:
    p = _prefix(sa["name"], f"[{sa['uniqueid']}]")
    state = sa["state"]
    when = f" {_ago(sa['established'])} ago" if sa.get("established") is not None else ""
    lines = [f"{p} {state}{when}, {sa['local-host']}[{sa['local-id']}]...{sa['remote-host']}[{sa['remote-id']}]"]
    if full:
        ispi, rspi = sa["initiator-spi"], sa["responder-spi"]
        star_i, star_r = ("*", "") if sa["initiator"] else ("", "*")
        rekey = f", rekeying in {_in(sa['rekey-time'])}" if sa.get("rekey-time") else ""
        lines.append(f"{p} IKEv2 SPIs: {ispi}_i{star_i} {rspi}_r{star_r}{rekey}")
        if sa.get("proposal"):
            lines.append(f"{p} IKE proposal: {sa['proposal']}")
    for c in sa.get("child-sas", []):
        cp = _prefix(c["name"], f"{{{c['uniqueid']}}}")
        encap = "ESP in UDP" if c.get("encap") else "ESP"
        lines.append(f"{cp}  {c['state']}, {c['mode']}, reqid {c['reqid']}, {encap} SPIs: {c['spi-in']}_i {c['spi-out']}_o")
        if full:
            parts = [str(c.get("proposal", ""))]
            for d in ("in", "out"):
                if f"bytes-{d}" in c:
                    n = c.get(f"packets-{d}", 0)
                    parts.append(f"{c[f'bytes-{d}']} bytes_{d[0]} ({n} pkt{'s' if n != 1 else ''})")
            if c.get("rekey-time"):
                parts.append(f"rekeying in {_in(c['rekey-time'])}")
            lines.append(f"{cp}  {', '.join(p for p in parts if p)}")
        lines.append(f"{cp}   {' '.join(c['local-ts'])} === {' '.join(c['remote-ts'])}")
    return lines


def conn_lines(c: dict[str, Any], extra: dict[str, Any]) -> list[str]:
    p = _prefix(c["name"])
    local, remote = c["local"], c["remote"]
    lines = [f"{p}  {','.join(c['local-addrs'])}...{','.join(c['remote-addrs'])}  IKEv2"
             + (f", dpddelay={int(c['dpd-delay'])}s" if c.get("dpd-delay") else "")]
    lid = f"[{local['id']}] " if local["id"] != "%any" else ""
    lines.append(f"{p}   local:  {lid}uses {AUTH_TEXT.get(local['auth'], local['auth'])} authentication")
    for cert in extra.get("certs", []):
        lines.append(f"{p}    cert:  \"{cert}\"")
    rid = f"[{remote['id']}] " if remote["id"] != "%any" else ""
    lines.append(f"{p}   remote: {rid}uses {AUTH_TEXT.get(remote['auth'], remote['auth'])} authentication")
    for ch in c.get("children", []):
        lines.append(f"{_prefix(ch['name'])}   child:  {' '.join(ch['local-ts'])} === {' '.join(ch['remote-ts'])} "
                     f"{ch['mode']}")
    return lines


def routed_lines(routed: list[dict[str, Any]], name: str | None = None) -> list[str]:
    """strongSwan's "Routed Connections" block: each trap policy's CHILD_SA config, reqid, selectors."""
    rows = [r for r in routed if name is None or r["name"] == name]
    lines = ["Routed Connections:"] if rows else []
    for i, r in enumerate(rows, 1):
        p = _prefix(r["child"], f"{{{i}}}")
        lines.append(f"{p}  ROUTED, TUNNEL, reqid {r['reqid']}")
        lines.append(f"{p}   {' '.join(r['local-ts'])} === {' '.join(r['remote-ts'])}")
    return lines


def status_text(sas: list[dict[str, Any]], full: bool, name: str | None = None,
                routed: list[dict[str, Any]] | None = None) -> str:
    if name:
        sas = [s for s in sas if s["name"] == name]
    up = sum(1 for s in sas if s["state"] == "ESTABLISHED")
    connecting = sum(1 for s in sas if s["state"] in ("CREATED", "CONNECTING"))
    lines = routed_lines(routed or [], name)
    lines.append(f"Security Associations ({up} up, {connecting} connecting):")
    for s in sas:
        lines += _sa_lines(s, full)
    if not sas:
        lines.append("  none")
    return "\n".join(lines)


def statusall_text(stats: dict[str, Any], conns: list[dict[str, Any]], sas: list[dict[str, Any]],
                   extra: dict[str, Any], name: str | None = None) -> str:
    lines = [f"Status of IKE daemon ({stats.get('daemon', 'iked')}):",
             f"  uptime: {_ago(stats.get('uptime'))}",
             f"  IKE_SAs: {stats.get('ike-sas-total', 0)} total, {stats.get('half-open', 0)} half-open",
             "Virtual IP pools (size/online/offline):"]
    for pool, n in extra.get("pools", {}).items():
        lines.append(f"  {pool}: {n['size']}/{n['online']}/{n['offline']}")
    lines.append("Listening IP addresses:")
    lines += [f"  {a}" for a in extra.get("listening", [])]
    lines.append("Connections:")
    for c in conns:
        if name is None or c["name"] == name:
            lines += conn_lines(c, extra.get("conns", {}).get(c["name"], {}))
    return "\n".join(lines) + "\n" + status_text(sas, True, name, extra.get("routed"))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ikeme-ipsec", description="the ipsec commands (up, down, status, "
                                 "statusall, reload) for iked; docs/gateway.md")
    ap.add_argument("-s", "--socket", default=None, help="iked's control socket (default as for ikectl)")
    add_version_argument(ap)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for cmd, text in (("up", "bring a connection up (waits for it)"), ("down", "close a connection's SAs"),
                      ("route", "install a connection's trap policies: its traffic starts it"),
                      ("unroute", "remove a connection's trap policies")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("name")
    for cmd, text in (("status", "the security associations"), ("statusall", "daemon, pools, connections, SAs")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("name", nargs="?")
    for cmd in ("reload", "rereadall", "update"):
        sub.add_parser(cmd, help="re-read the configuration (ipsec.conf, ipsec.secrets, the database)")
    add_pool_parser(sub, "virtual IP pools in the database (like `ipsec pool`)")
    return ap


def _pool_db(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    from core_ike.daemon.config import load

    url = getattr(load(args.config).settings, "config_db", None)
    if not url:
        raise LocalError(f"{args.config}: [daemon] config_db is not set")
    return str(url)


def pool_main(args: argparse.Namespace) -> int:
    """`ipsec pool` on the database itself (the daemon loads a new pool within seconds)."""
    import time

    from core_ike.daemon.confvalues import duration

    from .sqlconf.pools import PoolAdmin, parse_range
    from .sqlconf.source import open_config_db

    try:
        admin = PoolAdmin(open_config_db(_pool_db(args)))
        if args.pool_cmd == "add":
            timeout = int(duration(args.timeout))
            n = admin.add(args.name, *parse_range(args.range, args.end), timeout)
            print(f"added pool '{args.name}': {n} addresses, lease timeout "
                  f"{'static' if not timeout else f'{timeout} s'}")
        elif args.pool_cmd == "del":
            admin.delete(args.name)
            print(f"deleted pool '{args.name}'")
        elif args.pool_cmd == "status":
            print(f"{'name':<16} {'start':<16} {'end':<16} {'timeout':>8} {'size':>7} {'online':>7} {'offline':>7}")
            for p in admin.status():
                t = str(p["timeout"]) if p["timeout"] else "static"
                print(f"{p['name']:<16} {p['start']:<16} {p['end']:<16} {t:>8} {p['size']:>7} {p['online']:>7} "
                      f"{p['offline']:>7}")
        else:
            print(f"{'pool':<16} {'address':<16} {'status':<8} {'since':<20} identity")
            for r in admin.leases(args.name):
                when = r["acquired"] if r["online"] else r["released"]
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
                print(f"{r['pool']:<16} {r['address']:<16} {'online' if r['online'] else 'offline':<8} {since:<20} "
                      f"{r['identity']}")
    except LocalError as e:
        print(f"ikeme-ipsec: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors: one line
        print(f"ikeme-ipsec: database error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


Ask = Callable[..., dict[str, Any]]


def _up(args: argparse.Namespace, ask: Ask) -> None:
    r = ask({"cmd": "up", "conn": args.name, "timeout": 30})
    sa = next((x for x in ask({"cmd": "list"})["sas"] if x["uniqueid"] == r.get("ike")), None)
    between = (f" between {sa['local-host']}[{sa['local-id']}]...{sa['remote-host']}[{sa['remote-id']}]"
               if sa is not None else "")
    print(f"IKE_SA {r.get('conn', args.name)}[{r.get('ike')}] established{between}")
    for c in r.get("children", []):
        print(f"CHILD_SA {c['name']}{{{c['uniqueid']}}} established with SPIs {c['spi-in']}_i "
              f"{c['spi-out']}_o and TS {' '.join(c['local-ts'])} === {' '.join(c['remote-ts'])}")
    print(f"connection '{args.name}' established successfully")


def _down(args: argparse.Namespace, ask: Ask) -> None:
    r = ask({"cmd": "down", "ike": args.name, "timeout": 10})
    print(f"closed {', '.join(r.get('done', []))}" if r.get("done") else f"no SAs of '{args.name}'")


def _route(args: argparse.Namespace, ask: Ask) -> None:
    ask({"cmd": "route", "conn": args.name})
    print(f"'{args.name}' routed")


def _unroute(args: argparse.Namespace, ask: Ask) -> None:
    ask({"cmd": "unroute", "conn": args.name})
    print(f"configuration '{args.name}' unrouted")


def _extra(ask: Ask) -> dict[str, Any]:
    try:
        extra = ask({"cmd": "ipsec-status"})
    except RuntimeError:
        extra = {}  # an iked without gateway sources: no pools or certificates
    return {**extra, "routed": _routed(ask)}


def _routed(ask: Ask) -> list[dict[str, Any]]:
    """The routed connections as every daemon's `status` gives them (core_ike/daemon/traps.py): iked's
    own `start_action = "trap"` and `route` as well as ipsec.conf's auto=route."""
    routed: list[dict[str, Any]] = ask({"cmd": "status"}).get("routed") or []
    return routed


def _status(args: argparse.Namespace, ask: Ask) -> None:
    print(status_text(ask({"cmd": "list"})["sas"], False, args.name, _routed(ask)))


def _statusall(args: argparse.Namespace, ask: Ask) -> None:
    extra = _extra(ask)
    print(statusall_text(ask({"cmd": "stats"})["stats"], ask({"cmd": "conns"})["conns"],
                         ask({"cmd": "list"})["sas"], extra, args.name))


def _reload(args: argparse.Namespace, ask: Ask) -> None:
    r = ask({"cmd": "reload"})
    print(f"reloaded: {len(r['added'])} added, {len(r['removed'])} removed, {len(r['changed'])} changed")


COMMANDS: dict[str, Callable[[argparse.Namespace, Ask], None]] = {
    "up": _up, "down": _down, "route": _route, "unroute": _unroute, "status": _status, "statusall": _statusall}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "pool":
        return pool_main(args)
    sock = args.socket or default_socket()
    if isinstance(sock, list):
        print(f"ikeme-ipsec: several daemons run here ({', '.join(sock)}): choose one with -s", file=sys.stderr)
        return 2

    def ask(req: dict[str, Any], timeout: float = 35.0) -> dict[str, Any]:
        reply = call(sock, req, timeout=timeout)
        if not reply.get("ok"):
            raise RuntimeError(str(reply.get("error")))
        return reply

    try:
        COMMANDS.get(args.cmd, _reload)(args, ask)
    except OSError as e:
        print(f"ikeme-ipsec: cannot reach iked at {sock}: {e.strerror or e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"ikeme-ipsec: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
