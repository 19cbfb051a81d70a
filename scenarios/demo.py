"""The README's main job: the live demo (`bash scripts/demo.sh`), run through the scenario runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEMO = "ike-charon"


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
