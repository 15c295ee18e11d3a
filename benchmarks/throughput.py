"""Tagging throughput on this machine, measured side by side in one run.

Rows (img/s, higher is better):

1. decode only: full JPEG decode vs decode with PIL's draft (what the input layer does), small and 12 MP photos;
2. model only, per backbone, same preprocessed batch: torch eager vs ONNX Runtime fp32 (and int8 with ``--int8``);
3. end to end, cold feature cache, ``phototag tag`` as a user runs it (a new process, model loading included):
   the code before the inference engine (git revision ``--baseline``, default da7cbe2) vs this checkout, with the
   shipped default model (three backbones) and with a one-backbone ``mlp`` model; on small photos (Corel5k,
   192×128) and on 12 MP photos (Corel5k photos upscaled to 4000×3000 JPEG, q 90).

Ratios are printed; results go to ``benchmarks/results/throughput.json``. Needs torch (the ``train`` extra) for the
torch rows, git for the baseline, and ``../shared/data/corel5k``.

    .venv/bin/python benchmarks/throughput.py                 # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/throughput.py --small 100 --large 12 --no-baseline   # quicker, no baseline
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from report import write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "throughput.json"


def corel_photos(data: Path, n: int) -> list[Path]:
    paths = sorted(data.glob("*/*.jpeg"))
    if len(paths) < n:
        raise SystemExit(f"Need {n} Corel5k photos under {data}; found {len(paths)}.")
    step = len(paths) // n
    return paths[::step][:n]


def make_large(photos: list[Path], folder: Path, size: tuple[int, int] = (4000, 3000)) -> list[Path]:
    """12 MP JPEGs (q 90) made by upscaling real photos: decode cost of a camera photo, real content."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(photos):
        target = folder / f"large_{i:03d}.jpg"
        with Image.open(path) as im:
            im.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(target, quality=90)
        out.append(target)
    return out


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def decode_rows(small: list[Path], large: list[Path]) -> list[dict]:
    from phototag.backbones import resolve_spec
    from phototag.images import decode_image
    from phototag.preprocess import draft_request

    specs = [resolve_spec(f"efficientnet_lite{i}") for i in range(3)]
    rows = []
    for label, photos in (("small", small), ("12 MP", large)):
        blobs = [p.read_bytes() for p in photos]
        full = timed(lambda blobs=blobs: [decode_image(b) for b in blobs])
        draft = timed(
            lambda blobs=blobs: [decode_image(b, draft=lambda w, h: draft_request(specs, w, h)) for b in blobs]
        )
        rows.append(
            {
                "row": f"decode only, {label}",
                "full decode img/s": len(blobs) / full,
                "draft decode img/s": len(blobs) / draft,
                "ratio": full / draft,
            }
        )
    return rows


def model_rows(photos: list[Path], int8: bool) -> list[dict]:
    import torch

    from phototag.backbones import create_backbone
    from phototag.images import load_image
    from phototag.preprocess import preprocess
    from phototag.runtime import RunOptions, load_backbone

    torch.set_num_threads(os.cpu_count() or 1)
    images = [load_image(p) for p in photos[:32]]
    rows = []
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        backbone = create_backbone(name)
        batch = np.stack([preprocess(backbone.spec, im) for im in images])
        tensor = torch.from_numpy(batch)
        with torch.inference_mode():
            backbone(tensor[:4])
            eager = timed(lambda backbone=backbone, tensor=tensor: backbone(tensor), repeat=2)
        session = load_backbone(backbone.spec, RunOptions(), backbone=backbone)
        session(batch[:4])
        onnx = timed(lambda session=session, batch=batch: session(batch), repeat=2)
        row = {
            "row": f"model only, {name}",
            "torch eager img/s": len(batch) / eager,
            "onnxruntime fp32 img/s": len(batch) / onnx,
            "ratio": eager / onnx,
        }
        if int8:
            quant = load_backbone(backbone.spec, RunOptions(precision="int8"), backbone=backbone)
            quant(batch[:4])
            q = timed(lambda quant=quant, batch=batch: quant(batch), repeat=2)
            reference, approx = session(batch), quant(batch)
            cosine = (reference * approx).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(approx, axis=1)
            row.update({"onnxruntime int8 img/s": len(batch) / q, "int8 cosine to fp32 (mean)": float(cosine.mean())})
        rows.append(row)
    return rows


def int8_quality_rows(data: Path, work: Path) -> list[dict]:
    """The default model's held-out Corel5k numbers with fp32 and with int8 backbones (same 500 photos, seed 0)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from corel5k import heldout_dataset
    from phototag.model import load_model
    from phototag.pipeline import evaluate
    from phototag.runtime import RunOptions

    dataset = heldout_dataset(data, REPO / "runs" / "corel5k", n_heldout=500, seed=0)
    rows = []
    for precision in ("fp32", "int8"):
        options = RunOptions(precision=precision, cache_dir=work / f"cache-{precision}")
        result = evaluate(load_model(), dataset, split="test", k=5, progress=False, options=options)
        rows.append(
            {
                "row": f"default model, held-out Corel5k, {precision} backbones",
                "F1@5": result["tag@5_f1"],
                "N+": result["tag@5_n_plus"],
                "mAP": result["map"],
            }
        )
    return rows


def run_tag(src: Path, photos: list[Path], model: Path | None, cache: Path) -> float:
    """Wall seconds of one cold-cache ``phototag tag`` in a new process with the code under ``src``."""
    argv = ["-q", "tag", *map(str, photos), "--top-k", "5", "--format", "jsonl", "-o", os.devnull]
    if model is not None:
        argv += ["--model", str(model)]
    code = f"import sys; sys.path.insert(0, {str(src)!r}); from phototag.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "PHOTOTAG_CACHE": str(cache)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"phototag tag under {src} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def single_backbone_model(photos: list[Path], folder: Path) -> Path:
    """A one-backbone mlp model (lite0) trained on a few real photos: the single-backbone row's model."""
    from phototag.data import Dataset, ImageRecord
    from phototag.pipeline import train

    records = [
        ImageRecord(id=str(i), file=str(p), tags=["a" if i % 2 else "b"], split="train") for i, p in enumerate(photos)
    ]
    dataset = Dataset(records=records, name="bench", image_root=Path("/"))
    return train(dataset, method="mlp", config={"max_epochs": 2}, out=folder / "mlp-lite0", progress=False).path


def end_to_end_rows(small: list[Path], large: list[Path], baseline: str | None, work: Path) -> list[dict]:
    from phototag.runtime import default_cache_dir

    base_src = None
    if baseline:
        base_dir = work / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(base_dir), baseline],
            check=True,
            capture_output=True,
        )
        base_src = base_dir / "src"
    mlp = single_backbone_model(small[:40], work)
    # The new code's exported graphs are kept (a one-time cost, like installing); the features are always cold.
    graphs = work / "graphs"
    graphs.mkdir(exist_ok=True)
    (graphs / "onnx").mkdir(exist_ok=True)
    for graph in (default_cache_dir() / "onnx").glob("*.onnx"):
        target = graphs / "onnx" / graph.name
        if not target.exists():
            os.symlink(graph, target)
    from phototag.inputs import feature_specs
    from phototag.model import load_model

    default = load_model()
    n_backbones = len(feature_specs(default.method, default.backbone_spec))
    default_label = f"default model ({n_backbones} backbone{'s' if n_backbones > 1 else ''})"
    rows = []
    try:
        for label, photos in (("small photos", small), ("12 MP photos", large)):
            for model_label, model in ((default_label, None), ("mlp on lite0 (1 backbone)", mlp)):
                row = {"row": f"tag end to end, {label}, {model_label}", "photos": len(photos)}
                with tempfile.TemporaryDirectory(dir=work) as cold:
                    cache = Path(cold)
                    (cache / "onnx").symlink_to(graphs / "onnx")
                    new = run_tag(REPO / "src", photos, model, cache)
                row["this checkout img/s"] = len(photos) / new
                if base_src is not None and model is None:
                    with tempfile.TemporaryDirectory(dir=work) as cold:
                        old = run_tag(base_src, photos, model, Path(cold))
                    row["before (baseline) img/s"] = len(photos) / old
                    row["ratio"] = old / new
                rows.append(row)
    finally:
        if base_src is not None:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "baseline")], capture_output=True
            )
    return rows


def print_table(rows: list[dict]) -> None:
    for row in rows:
        cells = [f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "row"]
        print(f"{row['row']:<62} " + "  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "corel5k")
    parser.add_argument("--small", type=int, default=200, help="small photos in the end-to-end rows")
    parser.add_argument(
        "--large", type=int, default=40, help="12 MP photos in the end-to-end rows (the issue measured 40)"
    )
    parser.add_argument("--baseline", default="da7cbe2", help="git revision of the code before the inference engine")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--int8", action="store_true", help="also int8 backbones: speed, and held-out F1 of the default"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    small = corel_photos(args.data, args.small)
    with tempfile.TemporaryDirectory(prefix="phototag-throughput-") as tmp:
        work = Path(tmp)
        large = make_large(corel_photos(args.data, args.large * 3)[1::3][: args.large], work / "large")
        rows = decode_rows(small[:100], large[:12])
        print_table(rows)
        rows += model_rows(small, args.int8)
        print_table(rows[-3:])
        e2e = end_to_end_rows(small, large, None if args.no_baseline else args.baseline, work)
        print_table(e2e)
        rows += e2e
        if args.int8:
            quality = int8_quality_rows(args.data, work)
            print_table(quality)
            rows += quality
    result = {"machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d"), "rows": rows}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
