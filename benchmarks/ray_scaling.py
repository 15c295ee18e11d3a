"""Throughput of ``--engine ray`` with 1 and 2 worker processes per backbone, beside the local engine and the cost
of each stage, on this machine; the inputs of the 100M-photo estimate in ``docs/cluster.md``.

Rows (img/s, higher is better), the shipped default model (three backbones), real Corel5k photos, no feature cache:

1. stages on one thread: read + decode + preprocess for the three backbones; each backbone alone (ONNX Runtime,
   batch 32, one intra-op thread); the numpy heads;
2. the local engine (``TagModel.predict``, as ``phototag tag`` runs it);
3. the ray engine on a Ray instance started here with 2 CPUs: 1 and then 2 actors per backbone (each actor one
   thread), wall time of the whole run (actor start-up included) and of a 2-photo run (about the start-up alone).

Results go to ``benchmarks/results/ray_scaling.json``. Needs ``phototag[ray]`` and ``../shared/data/corel5k``.
The machine this ran on is one shared 2-core VM: the numbers say how the engine scales, not what a server does.

    nice -n 10 .venv/bin/python benchmarks/ray_scaling.py --photos 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from throughput import corel_photos  # noqa: E402  (benchmarks/ is the script's folder)

RESULTS = REPO / "benchmarks" / "results" / "ray_scaling.json"


def stage_rates(model, photos: list[str]) -> dict[str, float]:
    """img/s of each stage on one thread."""
    from phototag.features import ImageItem, _read
    from phototag.images import decode_image
    from phototag.preprocess import draft_request, preprocess
    from phototag.runtime import OnnxBackbone, RunOptions, backbone_graph

    stores = model.stores(RunOptions(cache_dir=False), memory=False)
    specs = {key: store.spec for key, store in stores.items()}
    start = time.perf_counter()
    arrays: dict[str, list[np.ndarray]] = {key: [] for key in specs}
    for path in photos:
        image = decode_image(
            _read(ImageItem.of(path)), source=path, draft=lambda w, h: draft_request(list(specs.values()), w, h)
        )
        for key, spec in specs.items():
            arrays[key].append(preprocess(spec, image))
    rates = {"decode_preprocess": len(photos) / (time.perf_counter() - start)}
    features = {}
    for key, spec in specs.items():
        net = OnnxBackbone(spec, backbone_graph(spec, RunOptions()), RunOptions(threads=1))
        batch = np.stack(arrays[key])
        net(batch[:2])  # warm-up
        start = time.perf_counter()
        features[key] = np.concatenate([net(batch[i : i + 32]) for i in range(0, len(batch), 32)])
        rates[f"backbone_{spec.name}"] = len(photos) / (time.perf_counter() - start)
    inputs = {"backbone_features": features} if "backbone_features" in model.data_keys else features
    start = time.perf_counter()
    model.score_inputs(inputs)
    rates["heads"] = len(photos) / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "corel5k"))
    args = parser.parse_args()

    import ray

    from phototag.distributed import ClusterOptions, predict_on_ray
    from phototag.model import load_model
    from phototag.runtime import RunOptions

    photos = [str(p) for p in corel_photos(Path(args.data), args.photos)]
    model = load_model()
    rows: dict[str, dict] = {}
    print(f"{len(photos)} Corel5k photos, default model ({', '.join(model.method.feature_backbones())})")

    rates = stage_rates(model, photos)
    for name, rate in rates.items():
        print(f"  stage {name:<34} {rate:8.1f} img/s (one thread)")
    rows["stages_one_thread"] = rates

    start = time.perf_counter()
    local, _ = model.predict(photos, top_k=5, cache_dir=False, options=RunOptions(threads=2, workers=2))
    seconds = time.perf_counter() - start
    rows["local_engine"] = {"seconds": seconds, "img_per_s": len(photos) / seconds}
    print(f"  local engine (2 threads)                  {len(photos) / seconds:8.1f} img/s")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The Ray workers import phototag from this checkout too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        options = RunOptions(progress=False)
        for actors in (1, 2):
            # Each task and actor reserves a quarter CPU, so the 2-CPU instance holds 2 actors per backbone, the
            # scoring actor and a decode task.
            cluster = ClusterOptions(actors=actors, cpus=0.25)
            start = time.perf_counter()
            predict_on_ray(model, photos[:2], top_k=5, options=options, cluster=cluster)
            startup = time.perf_counter() - start
            start = time.perf_counter()
            ours, _ = predict_on_ray(model, photos, top_k=5, options=options, cluster=cluster)
            seconds = time.perf_counter() - start
            same = [p["tags"][0]["tag"] for p in ours] == [p["tags"][0]["tag"] for p in local]
            rows[f"ray_{actors}_actor"] = {
                "seconds": seconds,
                "two_photo_run_seconds": startup,
                "img_per_s": len(photos) / seconds,
                "same_top_tag_as_local": same,
            }
            print(
                f"  ray engine, {actors} actor(s) per backbone        {len(photos) / seconds:8.1f} img/s "
                f"(run {seconds:.1f} s; a 2-photo run {startup:.1f} s; same tags as local: {same})"
            )
    finally:
        ray.shutdown()
    result = {
        "photos": len(photos),
        "model": "default (ensemble of mlp on efficientnet_lite0/1/2)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end)",
        "ray": ray.__version__,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
