"""The README's main job: the live demo (`bash scripts/demo.sh`), run through the scenario runner: the
`medsrv-rsa` story (portals, RSA keys, mediation server and two clients behind NATs, direct tunnel, ping)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEMO = "medsrv-rsa"  # `scenarios/run ike-charon` runs the earlier demo (our iked with a real charon)


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces)", file=sys.stderr)
        return 2
    run = Path(__file__).resolve().parent / "run"
    args = sys.argv[1:] or [DEMO]
    os.execv(sys.executable, [sys.executable, str(run), *args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
