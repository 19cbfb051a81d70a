"""`ikectl`: control command for iked and the mediation daemons, in the spirit of swanctl."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..version import add_version_argument

DEFAULT_SOCKET = "/run/iked.ctl"
# where the installed units' daemons listen (docs/deployment.md), then the daemons' own default
KNOWN_SOCKETS = ("/run/ikeme/iked.ctl", "/run/ikeme/mediation-client.ctl", "/run/ikeme/mediation-server.ctl",
                 DEFAULT_SOCKET)


def default_socket(candidates: tuple[str, ...] = KNOWN_SOCKETS) -> str | list[str]:
    """$IKECTL_SOCKET, else the one control socket present on this host (a list when several are:
    the user must choose with -s), else the daemons' default."""
    if env := os.environ.get("IKECTL_SOCKET"):
        return env
    present = [c for c in candidates if os.path.exists(c)]
    if len(present) == 1:
        return present[0]
    return present or DEFAULT_SOCKET


class Connection:
    """A connection to a daemon's control socket: requests one after another, each a JSON line answered
    by one (core_ike/daemon/control.py serves any number on one connection). Connected once, as a
    vici client is, so that a request timed by its caller does not include setting up the connection."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def request(self, req: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(path: str, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """One request on a connection of its own."""
    with Connection(path, timeout) as c:
        return c.request(req)


def format_sas(sas: list[dict[str, Any]]) -> str:
    """swanctl --list-sas style text."""
    out: list[str] = []
    for s in sas:
        out.append(f"{s['name']}: #{s['uniqueid']}, {s['state']}, IKEv2, {s['initiator-spi']}_i"
                   f"{'*' if s['initiator'] else ''} {s['responder-spi']}_r{'' if s['initiator'] else '*'}")
        out.append(f"  local  '{s['local-id']}' @ {s['local-host']}[{s['local-port']}]"
                   f"{' [NAT]' if s['nat-local'] else ''}")
        out.append(f"  remote '{s['remote-id']}' @ {s['remote-host']}[{s['remote-port']}]"
                   f"{' [NAT]' if s['nat-remote'] else ''}")
        if s.get("proposal"):
            out.append(f"  {s['proposal']}")
        if s.get("established") is not None:
            rk = f", rekeying in {s['rekey-time']}s" if s.get("rekey-time") is not None else ""
            out.append(f"  established {s['established']}s ago{rk}")
        for c in s["child-sas"]:
            out.append(f"  {c['name']}: #{c['uniqueid']}, reqid {c['reqid']}, {c['state']}, {c['mode']}"
                       f"{'-in-UDP' if c['encap'] else ''}, {c['protocol']}:")
            out.append(f"    {c['proposal']}")
            extra = f", {c['bytes-in']} bytes_i ({c['packets-in']} pkts)" if "bytes-in" in c else ""
            if "bytes-out" in c:
                extra += f", {c['bytes-out']} bytes_o ({c['packets-out']} pkts)"
            out.append(f"    installed {c['install-time']}s ago{extra}")
            if c.get("rekey-time") is not None:
                out.append(f"    rekeying in {c['rekey-time']}s, expires in {c['life-time']}s")
            pending = f" (outbound SA {c['outbound']})" if c.get("outbound") else ""
            out.append(f"    in  {c['spi-in']}, out {c['spi-out']}{pending}")
            out.append(f"    local  {' '.join(c['local-ts'])}")
            out.append(f"    remote {' '.join(c['remote-ts'])}")
    return "\n".join(out)


def _addr(a: Any) -> str:
    return f"{a[0]}[{a[1]}]" if a else "-"


def format_status(reply: dict[str, Any]) -> str:
    """`status`: the mediation daemons' online peers (server) or mediation/check state (client), then
    the routed connections of every daemon (iked's alone when it routes nothing: "no routed
    connections")."""
    parts = []
    if "peers" in reply:
        parts.append(_server_status(reply))
    elif "status" in reply:
        parts.append(_client_status(reply["status"]) or "no mediation state")
    routed = format_routed(reply.get("routed") or [])
    if routed or not parts:
        parts.append(routed or "no routed connections")
    return "\n".join(parts)


# a routed CHILD_SA config's `state` (core_ike/daemon/traps.py TrapManager.state) in words
ROUTED_STATES = {"child-up": "CHILD_SA up", "keying-try": "keying try of the connection scheduled",
                 "connecting": "an IKE_SA of the connection is being set up", "waiting": "waiting for traffic"}


def format_routed(routed: list[dict[str, Any]]) -> str:
    """The trap policies (core_ike/daemon/traps.py), as swanctl --list-pols --trap shows them, with who
    routed each and what it is doing: waiting for traffic, an acquire's attempt under way, its CHILD_SA
    up, or a keying try or another start of the connection that acquires wait for."""
    out = [f"{len(routed)} routed CHILD_SA config(s):"] if routed else []
    for r in routed:
        state = (f"acquire under way for {r['acquire-pending']:g}s" if r.get("acquire-pending") is not None
                 else ROUTED_STATES.get(str(r.get("state")), "CHILD_SA up" if r.get("child-up")
                                        else "waiting for traffic"))
        out.append(f"  {r['name']}/{r['child']}, reqid {r['reqid']}, TRAP, routed by {r['routed-by']}: {state}")
        out.append(f"    local  {' '.join(r['local-ts'])}")
        out.append(f"    remote {' '.join(r['remote-ts'])}")
    return "\n".join(out)


def _server_status(reply: dict[str, Any]) -> str:
    out = [f"{len(reply['peers'])} peer(s) online:"]
    for p in reply["peers"]:
        out.append(f"  {p['identity']} @ {p['endpoint']}, online {p['since']}s, idle {p['idle']}s, "
                   f"IKE_SA #{p['ike']}" + (f", NAT: {p['nat']}" if p.get("nat") else ""))
    if reply.get("callbacks"):
        out.append("callbacks waiting:")
        for c in reply["callbacks"]:
            out.append(f"  {c['requester']} waits for {c['target']} (expires in {c['expires_in']}s)")
    if reply.get("relays"):
        out.append(f"{len(reply['relays'])} relay(s):")
        for r in reply["relays"]:
            out.append(f"  #{r['id']} {r['a']} {r['a_latched'] or '-'} -> {r['address']}[{r['a_port']}] | "
                       f"{r['address']}[{r['b_port']}] <- {r['b_latched'] or '-'} {r['b']}: "
                       f"{r['bytes_a_to_b']} B ->, {r['bytes_b_to_a']} B <-, idle {r['idle']}s"
                       f"{', carrying a tunnel' if r.get('in_use') else ', checks only'}")
    if reply.get("stun"):
        st = reply["stun"]
        out.append(f"STUN responder on {', '.join(st['addresses']) or 'nothing (see the log)'}: "
                   f"{st['requests']} requests, {st['changed']} answered from another address or port")
    return "\n".join(out)


def _client_status(st: dict[str, Any]) -> str:
    out: list[str] = []
    for m in st.get("mediation", []):
        out.append(f"mediation {m['name']}: #{m['unique_id']} {m['state']} {_addr(m['local'])} ... "
                   f"{_addr(m['remote'])}, public endpoint {_addr(m['srflx'])}")
    for c in st.get("connections", []):
        line = f"  {c['name']} -> {c['peer']}: {c['state']}"
        if c.get("selected"):
            line += f", pair {c['selected']}"
        if c.get("sa_id"):
            line += f", IKE_SA #{c['sa_id']}"
        if c.get("path"):  # a tunnel that came up relayed: relayed still, or moved to a direct pair
            line += f", {c['path']}"
        if c.get("probing"):  # core_ike/me/birthday.py
            line += f", many-port probing: {c['probing']}"
        if c.get("reason"):
            line += f" ({c['reason']})"
        out.append(line)
        for pair in c.get("pairs", []):
            out.append(f"      {pair}")
    for t in st.get("target_lists", []):
        out.append(f"  checks as target: {t}")
    if st.get("nat"):
        out.append(f"NAT behaviour (RFC 5780, via STUN {st['nat']['server']}): {st['nat']['summary']}")
    if st.get("port_mapping"):
        pm = st["port_mapping"]
        out.append(f"port mapping: {pm['protocol']} {pm['internal']} -> {pm['external']}, lifetime {pm['lifetime']}s"
                   if "external" in pm else f"port mapping: none ({pm['error']})")
    return "\n".join(out)


def format_conns(conns: list[dict[str, Any]]) -> str:
    """swanctl --list-conns style text."""
    out: list[str] = []
    for c in conns:
        role = ", mediation" if c.get("mediation") else \
            f", mediated by {c['mediated-by']} to {c['mediation-peer']}" if c.get("mediated-by") else ""
        out.append(f"{c['name']}: IKEv2, no reauthentication, rekeying every {c['rekey-time']:g}s"
                   f"{', dpd delay ' + format(c['dpd-delay'], 'g') + 's' if c.get('dpd-delay') else ''}{role}")
        out.append(f"  local:  {', '.join(c['local-addrs'])}")
        out.append(f"  remote: {', '.join(c['remote-addrs'])}"
                   f"{'' if c.get('remote-port') in (None, 500) else ' port ' + str(c['remote-port'])}")
        out.append(f"  proposals: {c['proposals']}")
        for side in ("local", "remote"):
            auth = c[side]
            kind = {"psk": "pre-shared key", "pubkey": "public key"}.get(auth["auth"], auth["auth"].upper())
            out.append(f"  {side} {kind} authentication:")
            out.append(f"    id: {auth['id']}")
        for ch in c["children"]:
            out.append(f"  {ch['name']}: {ch['mode']}, rekeying every {ch['rekey-time']:g}s"
                       f"{', start' if ch['start-action'] == 'start' else ''}")
            out.append(f"    esp proposals: {ch['esp-proposals']}")
            out.append(f"    local:  {' '.join(ch['local-ts'])}")
            out.append(f"    remote: {' '.join(ch['remote-ts'])}")
    return "\n".join(out) or "no connections loaded"


def format_stats(st: dict[str, Any]) -> str:
    """swanctl --stats style text."""
    up = st.get("uptime", 0)
    out = [f"{st.get('daemon', 'daemon')}: running for {int(up // 3600)}h {int(up % 3600 // 60)}m {int(up % 60)}s",
           f"IKE_SAs: {st['ike-sas-total']} total, {st['half-open']} half-open"
           + "".join(f", {n} {state}" for state, n in sorted(st.get("ike-sas", {}).items())),
           f"CHILD_SAs: {st.get('child-sas', 0)}",
           f"connections loaded: {st.get('connections', 0)}"]
    for key in ("registered-peers", "callbacks-waiting", "relays"):
        if key in st:
            out.append(f"{key.replace('-', ' ')}: {st[key]}")
    for title, d in (("since start", st.get("events", {})), ("packets", st.get("counters", {})),
                     ("data plane", st.get("dataplane", {}))):
        if d:
            out.append(f"{title}:")
            out.extend(f"  {k}: {v}" for k, v in sorted(d.items()))
    return "\n".join(out)


def format_up(r: dict[str, Any]) -> str:
    lines = [f"established IKE_SA {r['conn']}[{r['ike']}]" + (f" in {r['elapsed_ms']} ms, peer at "
                                                            f"{r['remote'][0]}[{r['remote'][1]}]"
                                                            if "elapsed_ms" in r else "")]
    for c in r.get("children", []):
        lines.append(f"established CHILD_SA {c['name']}{{{c['uniqueid']}}} with SPIs {c['spi-in']}_i "
                     f"{c['spi-out']}_o and TS {' '.join(c['local-ts'])} === {' '.join(c['remote-ts'])}")
    return "\n".join(lines)


def format_keyid(path: str) -> dict[str, Any]:
    """`ikectl keyid FILE`: the ID_KEY_ID of a public key, certificate, OpenSSH line or private key,
    in both notations and as the swanctl.conf lines that use it. Runs locally, no daemon."""
    # the portal's parser: ikectl and the server manager accept the same forms
    from med_db.keyid import keyid_colon, keyid_of, keyid_text, public_key_from_text

    data = Path(path).read_bytes()
    key = public_key_from_text(data, allow_private=True)
    kid = keyid_of(key)
    return {"ok": True, "file": path, "keyid": keyid_text(kid), "keyid-colon": keyid_colon(kid),
            "swanctl": f'id = "{keyid_text(kid)}"'}


def _request(args: argparse.Namespace) -> dict[str, Any]:
    if args.cmd == "up":
        return {"cmd": "up", "conn": args.conn, "child": args.child, "timeout": args.timeout}
    if args.cmd in ("down", "rekey"):
        return {"cmd": args.cmd, "ike": args.ike, "child": args.child, "timeout": args.timeout}
    if args.cmd == "status":
        return {"cmd": "status", "what": args.what}
    if args.cmd in ("route", "unroute"):
        return {"cmd": args.cmd, "conn": args.conn}
    if args.cmd == "loglevel":
        sub, level = (args.args if len(args.args) == 2 else ["any", *args.args])
        return {"cmd": "loglevel", "subsystem": sub, "level": level}
    return {"cmd": args.cmd}


def _reload_text(reply: dict[str, Any]) -> str:
    rs = reply.get("restart-needed") or []
    return (f"reloaded: {len(reply['added'])} added, {len(reply['removed'])} removed, "
            f"{len(reply['changed'])} changed, {len(reply['unchanged'])} unchanged"
            + "".join(f"\n  {k}: {', '.join(reply[k])}" for k in ("added", "removed", "changed") if reply[k])
            + (f"\nneeds a restart to take effect: {', '.join(rs)}" if rs else ""))


# the text of each command's reply; a command not named here prints "ok"
_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "list": lambda r: format_sas(r["sas"]) or "no IKE_SAs",
    "conns": lambda r: format_conns(r["conns"]),
    "stats": lambda r: format_stats(r["stats"]),
    "status": format_status,
    "up": format_up,
    "reload": _reload_text,
    "loglevel": lambda r: f"log level of {r['subsystem']} is now {r['level']}",
    "keyid": lambda r: f"{r['keyid']}\n{r['keyid-colon']}\nswanctl.conf: {r['swanctl']}",
    "down": lambda r: f"closed {', '.join(r.get('done', []))}",
    "rekey": lambda r: f"rekeying {', '.join(r.get('done', []))}",
    "route": lambda r: f"routed '{r['conn']}' ({', '.join(r['children'])}): trap policies installed",
    "unroute": lambda r: f"unrouted '{r['conn']}': trap policies removed",
}


def _text(cmd: str, reply: dict[str, Any]) -> str:
    fmt = _TEXT.get(cmd)
    return "ok" if fmt is None else fmt(reply)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ikectl", description="control iked and the mediation daemons "
                                 "(in the spirit of swanctl; docs/operations.md)")
    ap.add_argument("-s", "--socket", default=None,
                    help="the daemon's control socket (default: $IKECTL_SOCKET, else the one socket of "
                         f"{', '.join(KNOWN_SOCKETS)} that exists)")
    ap.add_argument("--json", action="store_true", help="print the daemon's JSON reply")
    add_version_argument(ap)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="initiate a connection; waits for the IKE_SA and its CHILD_SAs")
    up.add_argument("conn")
    up.add_argument("--child", help="only this CHILD_SA (default: all of the connection's)")
    up.add_argument("--timeout", type=float, default=30)
    for name, what in (("down", "close (DELETE)"), ("rekey", "rekey")):
        p = sub.add_parser(name, help=f"{what} IKE_SAs or CHILD_SAs, by connection name or unique id")
        p.add_argument("ike", nargs="?", help="connection name or IKE_SA unique id")
        p.add_argument("--child", help="CHILD_SA name or unique id")
        p.add_argument("--timeout", type=float, default=10)
    sub.add_parser("list", help="list IKE_SAs and CHILD_SAs (bytes and packets in both directions)")
    sub.add_parser("conns", help="list loaded connections with their settings")
    sub.add_parser("stats", help="uptime, SAs by state, half-open, cookies, drops, failures by reason")
    sub.add_parser("reload", help="re-read the configuration (as SIGHUP does)")
    ll = sub.add_parser("loglevel", help="change a log level at run time: loglevel [SUBSYSTEM] LEVEL")
    ll.add_argument("args", nargs="+", metavar="[SUBSYSTEM] LEVEL",
                    help="subsystem: any, ike, me, dataplane, control, daemon, mediation_server, "
                         "mediation_client; level: debug, info, warning, error")
    for name, what in (("route", "install a connection's trap policies: its first packet starts it"),
                       ("unroute", "remove a connection's trap policies (SAs up stay up)")):
        sub.add_parser(name, help=what).add_argument("conn")
    st = sub.add_parser("status", help="iked: routed connections; mediation server: peers online; "
                                       "mediation client: connections, checks")
    st.add_argument("what", nargs="?", default="")
    kid = sub.add_parser("keyid", help="print the ID_KEY_ID of a key, certificate or OpenSSH key file")
    kid.add_argument("file")
    add_pool_parser(sub, "virtual IP pools in iked's [daemon] config_db (like `ipsec pool`)")
    return ap


def add_pool_parser(sub: Any, text: str) -> None:
    """`ikectl pool` and `ikeme-ipsec pool`: strongSwan's `ipsec pool` on the gateway's SQL pools
    (docs/gateway.md, "Pools"); it works on the database, iked loads a new pool within seconds."""
    pool = sub.add_parser("pool", help=text)
    src = pool.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", metavar="URL", help="the database (sqlite:////PATH, postgresql://..., mysql://...)")
    src.add_argument("-c", "--config", metavar="FILE", help="iked's TOML file: its [daemon] config_db")
    psub = pool.add_subparsers(dest="pool_cmd", required=True, metavar="ACTION")
    add = psub.add_parser("add", help="a pool of a subnet's hosts or of START END")
    add.add_argument("name")
    add.add_argument("range", help="a subnet (its hosts) or the first address")
    add.add_argument("end", nargs="?", help="the last address")
    add.add_argument("--timeout", default="0", help="seconds (or 30m, 1h, 1d) a released address stays bound to "
                     "its identity; 0 (default): for ever (static)")
    psub.add_parser("del", help="delete a pool and its leases").add_argument("name")
    psub.add_parser("status", help="the pools: range, timeout, size, online, offline")
    psub.add_parser("leases", help="the leases: address, identity, since, online").add_argument("name", nargs="?")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "loglevel" and len(args.args) > 2:
        print("ikectl: loglevel takes [SUBSYSTEM] LEVEL", file=sys.stderr)
        return 2
    if args.cmd == "pool":  # on the database, not the daemon
        from gateway.ipsec_cmd import pool_main

        return pool_main(args)
    if args.cmd == "keyid":
        try:
            reply = format_keyid(args.file)
        except (OSError, ValueError) as e:
            reply = {"ok": False, "error": f"{args.file}: {e.strerror if isinstance(e, OSError) else e}"}
    else:
        sock = args.socket or default_socket()
        if isinstance(sock, list):
            print(f"ikectl: several daemons run here ({', '.join(sock)}): choose one with -s", file=sys.stderr)
            return 2
        args.socket = sock
        try:
            reply = call(args.socket, _request(args), timeout=getattr(args, "timeout", 30) + 5)
        except OSError as e:
            print(f"ikectl: cannot reach the daemon at {args.socket}: {e.strerror or e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(reply, indent=2))
    elif not reply.get("ok"):
        print(f"ikectl: {reply.get('error')}", file=sys.stderr)
    else:
        print(_text(args.cmd, reply))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
