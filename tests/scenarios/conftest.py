"""Make the repository's ``scenarios`` package (the lab library) importable under plain ``pytest``."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
