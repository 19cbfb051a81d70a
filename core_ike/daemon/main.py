"""`iked`: the IKEv2 daemon. Reads a TOML config, binds UDP 500/4500, drives the engine and the
data plane, serves `ikectl` on a unix socket. Logs in strongSwan's style."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LocalError
from .config import DaemonConfig, load
from .runtime import Daemon

log = logging.getLogger("core_ike.daemon")


def setup_logging(level: str, path: str | None = None) -> None:
    fmt = "%(asctime)s.%(msecs)03d %(threadName)s %(message)s"
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d [%(name)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    del fmt


def run_main(prog: str, description: str, argv: list[str] | None,
             build: Callable[[DaemonConfig, dict[str, Any]], Daemon]) -> int:
    """Shared entry point of iked and the mediation daemons: `-c config.toml [--log-level L]`.

    `build(cfg, raw_toml)` makes the daemon; configuration errors end with exit code 2 and one line.
    """
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("-c", "--config", required=True, help="TOML configuration file")
    ap.add_argument("--log-level", default=None)
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
        raw = tomllib.loads(Path(args.config).read_text())
        setup_logging(args.log_level or cfg.settings.log_level, cfg.settings.log_file)
        daemon = build(cfg, raw)
        daemon.prog, daemon.config_path = prog, args.config  # log lines, reload
    except (LocalError, OSError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(daemon.run())
    finally:
        daemon.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("iked", "IKEv2 daemon (strongSwan compatible)", argv, lambda cfg, raw: Daemon(cfg))


if __name__ == "__main__":
    sys.exit(main())
