"""Extra CLI subcommands, one module each.

Every module here defines ``register(subparsers) -> None``, which adds its subcommand(s) with
``parser.set_defaults(func=...)``; the function takes the parsed ``argparse.Namespace`` and returns an exit code.
:func:`phototag.cli.build_parser` discovers them, so a new system adds commands without editing ``cli.py``.
"""
