"""``phototag``: the parser and :func:`main` (``main(argv)`` is callable from tests; returns the exit code).

Each command lives in its own module of :mod:`phototag.cli` with ``register(subparsers)``, which adds the command
and its ``cmd_*`` function; :data:`COMMANDS` lists them in the order ``phototag --help`` shows them. Shared options
and exit codes are in :mod:`phototag.cli.options`, rendering in :mod:`phototag.cli.output`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import PhototagError
from . import evaluate, features, feedback, importing, library, methods, predict, refine, serve, tag, train, update
from .options import EXIT_BUG, EXIT_ERROR, add_global_options

#: The command modules, in help order.
COMMANDS = (importing, train, predict, tag, evaluate, methods, refine, update, library, feedback, features, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phototag", description="Recommend tags for photos; train, evaluate and refine taggers."
    )
    parser.add_argument("--version", action="version", version=f"phototag {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    # Global options work after the command too (`phototag tag x.jpg -q`).
    for command_parser in sub.choices.values():
        add_global_options(command_parser, after_command=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 some images unreadable, 2 error, 3 a bug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("phototag: interrupted", file=sys.stderr)
        return 130
    except (PhototagError, ValueError, OSError, ImportError) as err:
        # Bad input, damaged files, a missing package: one line, exit 2. Anything else is a bug (below).
        if args.debug:
            raise
        print(f"phototag {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:
        import traceback

        traceback.print_exc()
        print(
            f"phototag {args.command}: internal error (a bug in phototag {__version__}); please report it with the "
            "traceback above.",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
