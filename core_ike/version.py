"""The installed release of the ikeme distribution, and the `--version` option every command shares.

The version is read from the installed package metadata (importlib.metadata), so pyproject.toml stays
the one place it is written; `pip install -e .` refreshes the metadata of a development checkout.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "ikeme"


def package_version() -> str:
    """The installed version of the ikeme distribution, or "unknown" when it is not installed
    (the sources run from a checkout without `pip install`)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def version_line(prog: str) -> str:
    """What `PROG --version` prints, e.g. ``iked (ikeme) 0.2.0``."""
    return f"{prog} ({DISTRIBUTION}) {package_version()}"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """`--version`: print :func:`version_line` for the parser's prog and exit 0."""
    parser.add_argument("--version", action="version", version=version_line(parser.prog),
                        help="print the program's name and the ikeme release, then exit")
