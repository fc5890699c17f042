"""`midm-sim`: the fleet simulator's command line (run, merge).

Only the help exists until the simulator lands; every command says so and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from simulator import __version__

COMMANDS = ("run", "merge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midm-sim", description="MiDM fleet simulator.")
    parser.add_argument("--version", action="version", version=f"midm-sim {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        commands.add_parser(name, help=f"{name} (not implemented yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    sys.stderr.write(f"midm-sim: error: '{args.command}' is not implemented yet in this version\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
