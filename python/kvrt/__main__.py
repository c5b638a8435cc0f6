"""`python -m kvrt <command>`: one module per command, each exposing add_parser(sub) and main(args).

Adding a command is one import and one line in COMMANDS.
"""

from __future__ import annotations

import argparse
import sys

from . import calibrate, convert, gguf_inspect
from . import eval as eval_cmd

COMMANDS = [convert, gguf_inspect, calibrate, eval_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvrt", description="kvrt model tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
