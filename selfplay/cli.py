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

COMMANDS = ("suite", "render", "score", "data", "train", "sample", "eval", "judge_serve", "judge_eval", "inspect_eval", "fit_inspector", "fit_judge", "run", "report", "ablate")


def has_default(action: argparse.Action) -> bool:
    """Whether an option has a default worth showing (not None, a flag's False or an empty list)."""
    d = action.default
    return bool(action.option_strings) and not (d is None or d is False or d == [] or d is argparse.SUPPRESS)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after an option's help, but not "(default: None)" or "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return super()._get_help_string(action) if has_default(action) else action.help


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser shows each option's default in `--help`, an option without help
    text included (argparse prints nothing at all for those)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.help is None and has_default(action):
            action.help = "(default: %(default)s)"
        return action


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
