"""``phototag methods``: the registered tagging methods, what each does and what it reads."""

from __future__ import annotations

import argparse

from .options import EXIT_OK


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import get_method_class, method_descriptions

    if args.presets:
        from ..presets import list_presets

        for method, presets in list_presets().items():
            for name, citation in presets.items():
                print(f"{method} --preset {name}: {citation}")
        return EXIT_OK
    descriptions = method_descriptions()
    width = max(map(len, descriptions))
    for name, text in descriptions.items():
        needs = ", ".join(get_method_class(name).data_keys)
        print(f"{name:<{width}}  {text}  [inputs: {needs}]")
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list the registered tagging methods")
    p.add_argument("--presets", action="store_true", help="list the methods' named configurations (--preset)")
    p.set_defaults(func=cmd_methods)
