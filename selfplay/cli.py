"""The `selfplay` command line.

Each subcommand lives in its own module under `selfplay/commands/` and offers `register(subparsers)`;
heavy imports (torch, trl, ray) happen inside the command functions, so `selfplay --help` is instant.
Bad input ends with one line on stderr naming the field or file, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from strokes.errors import InputError

COMMANDS = ("suite", "render", "score", "data", "train", "sample", "eval", "judge_serve", "judge_eval", "inspect_eval", "run", "report", "ablate")


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser shows each option's default in `--help`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfplay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"selfplay.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"selfplay {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selfplay {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`selfplay ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
