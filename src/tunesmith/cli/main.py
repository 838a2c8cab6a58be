"""The `tunesmith` command: argument wiring only; each group lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tunesmith import __version__
from tunesmith.errors import UserError

# Each module defines `register(subparsers)`, which adds its commands and sets
# `func(args) -> int | None` on their parsers.
COMMAND_MODULES = [
    "tunesmith.cli.env",
    "tunesmith.cli.config",
    "tunesmith.cli.data",
    "tunesmith.cli.train",
    "tunesmith.cli.convert",
    "tunesmith.cli.infer",
    "tunesmith.cli.eval",
    "tunesmith.cli.identity",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Fine-tune chat LLMs into your own assistant.",
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that command group is not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse, letting `KEY=VALUE` overrides stand after options too (`train CFG --seed 1 lr=1e-4`).

    argparse stops filling a positional list at the first option, so stray KEY=VALUE
    tokens are collected here for commands that take overrides.
    """
    args, extra = parser.parse_known_args(argv)
    stray = [tok for tok in extra if "=" in tok and not tok.startswith("-")]
    if stray and hasattr(args, "overrides"):
        args.overrides = list(args.overrides or []) + stray
        extra = [tok for tok in extra if tok not in stray]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("TUNESMITH_DEBUG") == "1"
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # the reader of stdout went away (`tunesmith list-cfg | head`): stop quietly, as cat does
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush of the dead pipe at exit)
        return 141
    except OSError as exc:
        # A file the OS refused (permissions, a full disk, a path that is not a directory)
        # that no check caught first: one line naming it, not a traceback.
        if debug or exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
