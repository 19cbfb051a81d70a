"""`iked`: the IKEv2 daemon. Reads a TOML config, binds UDP 500/4500, drives the engine and the
data plane, serves `ikectl` on a unix socket. Logs in strongSwan's style."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ..errors import LocalError
from ..version import add_version_argument
from . import workers as workers_mod
from .config import LOG_LEVELS, DaemonConfig, check_host, load, log_target
from .logrecords import cheap_records
from .runtime import Daemon
from .startup import (
    EXIT_STATUS,
    STARTUP_FAILED,
    OneLineArgumentParser,
    log_handler,
    one_line,
    report_failure,
    run_daemon,
)
from .workers import check_workers, resolve_workers, run_supervisor

log = logging.getLogger("core_ike.daemon")


def setup_logging(level: str, target: str = "stderr", prog: str = "iked") -> None:
    """Root logger to `target` (stderr, stdout, syslog[:FACILITY], file:PATH; docs/configuration.md)."""
    handler = log_handler(target, prog)
    cheap_records()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run_main(prog: str, description: str, argv: list[str] | None,
             build: Callable[[DaemonConfig, dict[str, Any]], Daemon], multi_worker: bool = False) -> int:
    """Shared entry point of iked and the mediation daemons: `-c config.toml [--log-level L]`.

    `build(cfg, raw_toml)` makes the daemon. Every start-up failure (command line, configuration, host,
    database, binding the sockets) ends with exit status 2 and one line on stderr, no traceback.
    With `multi_worker` (iked), `[daemon] workers` > 1 runs the workers' supervisor instead
    (core_ike/daemon/workers.py); the other daemons refuse it.
    """
    ap = OneLineArgumentParser(prog=prog, description=description, epilog=EXIT_STATUS)
    ap.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML configuration file")
    ap.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, help="overrides [daemon] log_level")
    add_version_argument(ap)
    args = ap.parse_args(argv)
    worker = workers_mod.CURRENT  # in a worker process: its spec from the supervisor
    if worker is not None:
        prog = f"{prog}-w{worker.index}"
    try:
        cfg = load(args.config)
        workers = resolve_workers(cfg.settings.workers)
        check_workers(prog, workers, cfg.settings.dataplane, multi_worker)
        if worker is None:  # the supervisor checked the host (and serves the control socket)
            check_host(cfg)
        setup_logging(args.log_level or cfg.settings.log_level, log_target(cfg.settings), prog)
        for w in cfg.warnings if worker is None else []:  # certificates soon to expire (certcheck.py)
            log.warning("%s", w)
        if workers > 1 and worker is None:
            return run_supervisor(prog, args.config, cfg, workers, args.log_level)
        daemon = build(cfg, cfg.raw)
    except (LocalError, OSError, ValueError, TypeError) as e:  # ValueError, TypeError: int("x"), float([1])
        report_failure(prog, one_line(e))
        return STARTUP_FAILED
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        return 130
    daemon.prog, daemon.config_path = prog, args.config  # log lines, reload
    # run() binds the sockets and the control socket first
    return run_daemon(prog, daemon.run, daemon.close, event_loop=cfg.settings.event_loop)


def main(argv: list[str] | None = None) -> int:
    from gateway.launch import build  # [daemon] config_db / ipsec_conf (docs/gateway.md)

    return run_main("iked", "IKEv2 daemon (strongSwan compatible)", argv, build, multi_worker=True)


if __name__ == "__main__":
    sys.exit(main())
