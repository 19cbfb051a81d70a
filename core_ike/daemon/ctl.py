"""`ikectl`: control command for iked and the mediation daemons, in the spirit of swanctl."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any


def call(path: str, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


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
            out.append(f"    installed {c['install-time']}s ago{extra}")
            if c.get("rekey-time") is not None:
                out.append(f"    rekeying in {c['rekey-time']}s, expires in {c['life-time']}s")
            out.append(f"    in  {c['spi-in']}, out {c['spi-out']}")
            out.append(f"    local  {' '.join(c['local-ts'])}")
            out.append(f"    remote {' '.join(c['remote-ts'])}")
    return "\n".join(out)


def _addr(a: Any) -> str:
    return f"{a[0]}[{a[1]}]" if a else "-"


def format_status(reply: dict[str, Any]) -> str:
    """The mediation daemons' `status`: online peers (server) or mediation/check state (client)."""
    out: list[str] = []
    if "peers" in reply:
        out.append(f"{len(reply['peers'])} peer(s) online:")
        for p in reply["peers"]:
            out.append(f"  {p['identity']} @ {p['endpoint']}, online {p['since']}s, idle {p['idle']}s, "
                       f"IKE_SA #{p['ike']}")
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
        return "\n".join(out)
    st = reply.get("status", {})
    for m in st.get("mediation", []):
        out.append(f"mediation {m['name']}: #{m['unique_id']} {m['state']} {_addr(m['local'])} ... "
                   f"{_addr(m['remote'])}, public endpoint {_addr(m['srflx'])}")
    for c in st.get("connections", []):
        line = f"  {c['name']} -> {c['peer']}: {c['state']}"
        if c.get("selected"):
            line += f", pair {c['selected']}"
        if c.get("sa_id"):
            line += f", IKE_SA #{c['sa_id']}"
        if c.get("reason"):
            line += f" ({c['reason']})"
        out.append(line)
        for pair in c.get("pairs", []):
            out.append(f"      {pair}")
    for t in st.get("target_lists", []):
        out.append(f"  checks as target: {t}")
    return "\n".join(out) or "no mediation state"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ikectl", description="control iked")
    ap.add_argument("-s", "--socket", default="/run/iked.ctl")
    ap.add_argument("--json", action="store_true", help="print raw JSON replies")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="initiate a connection")
    up.add_argument("conn")
    up.add_argument("--child")
    up.add_argument("--timeout", type=float, default=30)
    down = sub.add_parser("down", help="delete an IKE_SA (or one CHILD_SA)")
    down.add_argument("ike", type=int)
    down.add_argument("--child", type=int)
    rk = sub.add_parser("rekey", help="rekey an IKE_SA (or one CHILD_SA)")
    rk.add_argument("ike", type=int)
    rk.add_argument("--child", type=int)
    sub.add_parser("list", help="list SAs")
    sub.add_parser("conns", help="list loaded connections")
    st = sub.add_parser("status", help="daemon-specific status (mediation)")
    st.add_argument("what", nargs="?", default="")
    args = ap.parse_args(argv)
    req: dict[str, Any]
    if args.cmd == "up":
        req = {"cmd": "up", "conn": args.conn, "child": args.child, "timeout": args.timeout}
    elif args.cmd in ("down", "rekey"):
        base = "down" if args.cmd == "down" else "rekey"
        req = {"cmd": base + ("-child" if args.child else ""), "ike": args.ike, "child": args.child}
    elif args.cmd == "status":
        req = {"cmd": "status", "what": args.what}
    else:
        req = {"cmd": args.cmd}
    try:
        reply = call(args.socket, req, timeout=getattr(args, "timeout", 30) + 5)
    except OSError as e:
        print(f"ikectl: cannot reach {args.socket}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reply, indent=2))
    elif not reply.get("ok"):
        print(f"failed: {reply.get('error')}", file=sys.stderr)
    elif args.cmd == "list":
        print(format_sas(reply["sas"]))
    elif args.cmd == "status":
        print(format_status(reply))
    elif args.cmd == "up":
        print(f"established CHILD_SA {reply.get('child')}{{{reply.get('uniqueid')}}} with SPIs "
              f"{reply.get('spi-in')}_i {reply.get('spi-out')}_o" if "child" in reply else "established")
    else:
        print(json.dumps({k: v for k, v in reply.items() if k != "ok"}, indent=2) if len(reply) > 1 else "ok")
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
