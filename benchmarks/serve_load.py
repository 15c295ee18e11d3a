"""Load test of ``phototag serve`` on this machine: requests/s and p50/p99 latency of single-image requests.

Starts ``phototag serve`` (the shipped default model unless --model) as a subprocess on 127.0.0.1 with a free port,
sends single-photo ``POST /v1/tag`` requests from client threads at each concurrency level, and stops the server.
Bounded: a fixed number of requests per level and a wall-clock cap; localhost only. The photos are the sample
images of scikit-image / scikit-learn re-encoded as 640x480 JPEG (~30-60 KB, a typical web upload).

    python benchmarks/serve_load.py                                  # concurrency 1, 4, 16; batching on and off
    python benchmarks/serve_load.py --requests 200 --concurrency 1 8 --json runs/serve.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the stdlib HTTP client the service tests use

from live_server import post_files, request  # noqa: E402
from phototag.cli import example_images  # noqa: E402
from phototag.fileio import atomic_write_text  # noqa: E402


def sample_uploads(size: tuple[int, int] = (640, 480)) -> list[tuple[str, str, bytes, str]]:
    """The bundled sample photos as JPEG uploads of ``size``."""
    uploads = []
    for path in example_images():
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize(size).save(buffer, format="JPEG", quality=88)
        uploads.append(("files", f"{path.stem}.jpg", buffer.getvalue(), "image/jpeg"))
    if not uploads:
        raise SystemExit("No sample photos: install scikit-image or scikit-learn.")
    return uploads


def start_server(model: str | None, max_batch: int, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "phototag.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--no-feedback"]
    cmd += ["--max-batch", str(max_batch)] + ([model] if model else [])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = process.stdout.readline()
    if " at http://" not in line:
        process.kill()
        raise SystemExit(f"phototag serve did not start: {line!r}")
    url = line.split(" at ")[1].split()[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if request(f"{url}/healthz", timeout=5)[0] == 200:
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("phototag serve did not answer /healthz")


def run_level(url: str, uploads, *, concurrency: int, n_requests: int, max_seconds: float) -> dict:
    """Send ``n_requests`` single-image requests from ``concurrency`` threads; latencies in ms."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n_requests))
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds

    def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            status, _, _ = post_files(f"{url}/v1/tag?top_k=5", [uploads[i % len(uploads)]])
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                errors += status != 200

    before = request(f"{url}/healthz")[1]
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    after = request(f"{url}/healthz")[1]
    batches = after["batches"] - before["batches"]
    values = np.asarray(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "mean_batch": round((after["images_scored"] - before["images_scored"]) / max(batches, 1), 2),
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Median over rounds of each (server, concurrency) measurement; request and error counts are summed."""
    table = []
    for key in sorted(dict.fromkeys((r["server"], r["concurrency"]) for r in rows), key=lambda k: (k[1], k[0])):
        group = [r for r in rows if (r["server"], r["concurrency"]) == key]
        summary = {"server": key[0], "concurrency": key[1], "rounds": len(group)}
        summary["requests"] = sum(r["requests"] for r in group)
        summary["errors"] = sum(r["errors"] for r in group)
        for field in ("requests_per_s", "p50_ms", "p99_ms", "mean_batch"):
            summary[field] = round(float(np.median([r[field] for r in group])), 2)
        table.append(summary)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the shipped default model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=80, help="requests per concurrency level and round")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="wall-clock cap per level")
    parser.add_argument("--rounds", type=int, default=2, help="repeat every measurement; the table shows medians")
    parser.add_argument("--no-unbatched", action="store_true", help="skip the --max-batch 1 comparison")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args(argv)
    uploads = sample_uploads()
    settings = [("batched (max 16)", 16)] + ([] if args.no_unbatched else [("unbatched (max 1)", 1)])
    rows = []
    # One server at a time; rounds alternate the servers, so load from elsewhere on the machine hits both alike.
    for round_no in range(args.rounds):
        for label, max_batch in settings if round_no % 2 == 0 else settings[::-1]:
            process, url = start_server(args.model, max_batch)
            try:
                run_level(url, uploads, concurrency=2, n_requests=6, max_seconds=30)  # first-call costs
                for concurrency in args.concurrency:
                    row = run_level(
                        url, uploads, concurrency=concurrency, n_requests=args.requests, max_seconds=args.max_seconds
                    )
                    rows.append({"server": label, "round": round_no, **row})
                    print(json.dumps(rows[-1]), file=sys.stderr)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    table = summarise(rows)
    header = "| server | concurrency | requests | req/s | p50 ms | p99 ms | mean batch | errors |"
    print(f"median of {args.rounds} round(s), servers alternating")
    print(header + "\n|---|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} "
            f"| {r['p99_ms']:.0f} | {r['mean_batch']:.1f} | {r['errors']} |"
        )
    meta = {
        "model": args.model or "default",
        "upload": "640x480 JPEG, top_k=5",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "note": "client threads and server share this machine's CPUs",
    }
    report = {"benchmark": "serve_load", **meta, "results": table, "runs": rows}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
