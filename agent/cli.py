"""`midm-agent`: the on-device agent's command line (run, status, facts, inventory, snapshot).

Only the help exists until the agent lands (issue 4); every command says so and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__

COMMANDS = ("run", "status", "facts", "inventory", "snapshot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midm-agent", description="MiDM on-device agent.")
    parser.add_argument("--version", action="version", version=f"midm-agent {__version__}")
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
    sys.stderr.write(
        f"midm-agent: error: '{args.command}' is not implemented yet in this version\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
