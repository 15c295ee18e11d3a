"""What the commands share on the way out: predictions as a table, JSON lines or CSV, written atomically."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any

from ..fileio import atomic_write_text
from .options import resolved_rules


def format_predictions(predictions: list[dict[str, Any]], fmt: str) -> str:
    """Render predictions as ``table``, ``jsonl`` (one object per image) or ``csv`` (image,rank,tag,score)."""
    if fmt == "jsonl":
        return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "rank", "tag", "score"])
        for p in predictions:
            for rank, t in enumerate(p["tags"], 1):
                writer.writerow([p["image"], rank, t["tag"], f"{t['score']:.4f}"])
        return buffer.getvalue()
    lines = []
    for p in predictions:
        tags = "  ".join(f"{t['tag']} ({t['score']:.2f})" for t in p["tags"]) or "(no tag above the threshold)"
        lines.append(f"{p['image']}\n    {tags}")
    return "\n".join(lines) + ("\n" if lines else "")


def finish_predictions(predictions: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rules file (``--rules``, ``$PHOTOTAG_RULES`` or the per-user file), then ``--lang``, on the predictions."""
    from ..languages import translate_predictions
    from ..rules import apply_rules

    return translate_predictions(apply_rules(predictions, resolved_rules(args)), getattr(args, "lang", None))


def write_output(text: str, output: str | None) -> None:
    """Print, or write atomically to ``output`` (temp file + rename: never a half-written file)."""
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(output, text)
