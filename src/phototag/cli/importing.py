"""``phototag import KIND SRC OUT``: a raw dataset layout → a phototag dataset directory."""

from __future__ import annotations

import argparse
import json

from .options import EXIT_OK, CLIError


def cmd_import(args: argparse.Namespace) -> int:
    from ..importers import run_importer

    settings = {
        "min_count": args.min_count,
        "max_size": args.max_vocab,
        "tag_limit": args.tag_limit,
        "lemmatize": args.lemmatize or None,
    }
    if args.clean == "paper-cnn":
        # The VGG16-tagger paper: no tag with a digit, no camera brand inside a tag, only tags on > 100 photos.
        settings.update(drop_with_digits=True, camera_substrings=True)
        settings["min_count"] = settings["min_count"] or 101
    options = {"targets": args.targets, "layout": args.layout, "max_images": args.max_images, "parents": args.parents}
    if args.kind != "mirflickr":
        given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
        if given:
            raise CLIError(f"{', '.join(given)} apply to 'phototag import mirflickr' only.")
    if args.kind == "mirflickr" and args.clean == "paper-cnn":
        options["clean"] = "paper-cnn"  # the raw user tags, not the refinement paper's lemmas, are cleaned
    dataset = run_importer(
        args.kind,
        args.src,
        args.out,
        vocab_settings={k: v for k, v in settings.items() if v is not None},
        options={k: v for k, v in options.items() if v is not None},
    )
    summary = dataset.summary()
    print(f"Wrote dataset '{dataset.name}' to {args.out}: {json.dumps(summary)}")
    if args.kind == "library":
        from ..library import describe_import

        print(describe_import(dataset.info))
    return EXIT_OK


def register(subparsers) -> None:
    from ..importers import PARENT_CHOICES, list_importers

    p = subparsers.add_parser("import", help="convert a raw dataset into a phototag dataset directory")
    p.add_argument("kind", choices=list_importers(), help="the layout of SRC: %(choices)s")
    p.add_argument("src", help="source folder (or CSV file for 'csv')")
    p.add_argument("out", help="dataset directory to write")
    p.add_argument("--min-count", type=int, default=None, help="keep tags on at least N training images (default 1)")
    p.add_argument("--max-vocab", type=int, default=None, help="keep the N most frequent tags")
    p.add_argument("--tag-limit", type=int, default=None, help="use only the first N tags of each image")
    p.add_argument("--lemmatize", action="store_true", help="lemmatise tags (walking -> walk; extra 'lemma')")
    p.add_argument(
        "--clean",
        choices=("default", "paper-cnn"),
        default="default",
        help="tag cleaning: default (number-only and camera tags dropped) or paper-cnn (the VGG16-tagger paper: "
        "no tag with a digit or a camera brand inside, tags on more than 100 photos)",
    )
    p.add_argument(
        "--targets",
        choices=("user-tags", "labels", "labels-r1"),
        default=None,
        help="mirflickr: what a model learns: user tags after the refinement paper's preprocessing (default), the "
        "24 potential labels, or the 14 relevant ones",
    )
    p.add_argument(
        "--layout",
        choices=("auto", "photos", "matrices"),
        default=None,
        help="mirflickr: the photo layout (imN.jpg, meta/tags, label lists) or the tag-matrix .mat files (default: "
        "photos when there)",
    )
    p.add_argument("--max-images", type=int, default=None, help="mirflickr: import only the first N photos")
    p.add_argument(
        "--parents",
        choices=PARENT_CHOICES,
        default=None,
        help="mirflickr: add the user tags' parent words from WordNet: 'labels' (default) those that name a label, so "
        "a photo tagged girl also counts as female; 'all' every parent (girl -> woman, adult, female); 'none' keeps "
        "the refinement paper's preprocessing exactly",
    )
    p.add_argument(
        "--no-parents", dest="parents", action="store_const", const="none", help="the same as --parents none"
    )
    p.set_defaults(func=cmd_import)
