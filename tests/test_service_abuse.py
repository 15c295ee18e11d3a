"""A bounded abuse run against a real ``phototag serve`` process on 127.0.0.1 (issue 18, finding 3).

Two concurrent maximal requests (the largest photos and the most pixels the default limits allow), slow clients and
bad names at the same time: the server's peak RSS stays under 2.5 GB and a normal request keeps being answered.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason='the service needs the "serve" extra')
pytest.importorskip("uvicorn", reason='the service needs the "serve" extra')

from broken_images import jpeg  # noqa: E402
from conftest import default_model_keywords  # noqa: E402
from live_server import encode_multipart, request  # noqa: E402
from phototag.serve import ServiceConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEAK_RSS_LIMIT = 2.5 * 1024**3


def post_files(url: str, files) -> tuple:
    """A multipart POST with a long client timeout: on 2 busy cores a 16-photo batch can take a minute."""
    body, content_type = encode_multipart(files)
    return request(url, method="POST", body=body, content_type=content_type, timeout=600)


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def big_png(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` PNG that compresses well (a few MB) but decodes to side*side*3 bytes."""
    gradient = Image.linear_gradient("L").resize((side, side))
    rng = np.random.default_rng(seed)
    tint = tuple(int(v) for v in rng.integers(0, 255, 3))
    image = Image.merge("RGB", [gradient, gradient.rotate(90), Image.new("L", (side, side), tint[2])])
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_two_maximal_requests_slow_clients_and_bad_names_stay_under_the_memory_limit(tmp_path):
    defaults = ServiceConfig()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PHOTOTAG_TOKEN": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "phototag.cli", "serve", "--port", "0", "--no-feedback"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()
        assert " at http://127.0.0.1:" in line, process.stderr.read() if process.poll() is not None else line
        url = line.split(" at ")[1].split()[0]
        small = [("files", "normal.jpg", jpeg(seed=3), "image/jpeg")]
        assert post_files(f"{url}/v1/tag?top_k=3", small)[0] == 200  # warm: the model is loaded and has run
        idle_rss = peak_rss(process.pid)

        # Request A: the largest photos (PNG cannot be decoded at reduced size) up to the request's pixel limit.
        side = int((defaults.max_pixels * 0.9) ** 0.5)
        n_big = int(defaults.max_request_pixels // (side * side))
        request_a = [("files", f"big{i}.png", big_png(side, i), "image/png") for i in range(n_big)]
        # Request B: the most files per request, JPEGs, together just under the pixel limit.
        jpeg_side = int((defaults.max_request_pixels / defaults.max_files * 0.95) ** 0.5)
        one = jpeg((jpeg_side, jpeg_side), quality=70)
        request_b = [("files", f"photo{i}.jpg", one, "image/jpeg") for i in range(defaults.max_files)]
        # Request C: hostile names and broken files in the same batch.
        request_c = [
            ("files", "x." + "e" * 300, jpeg(seed=4), "image/jpeg"),
            ("files", "../../etc/passwd", b"\x00" * 100, "image/jpeg"),
        ]
        answers: dict[str, tuple] = {}

        def send(name, files):
            answers[name] = post_files(f"{url}/v1/tag?top_k=3", files)

        # Slow clients hold connections open while the big requests run.
        host, port = url.removeprefix("http://").split(":")
        slow = [socket.create_connection((host, int(port)), timeout=30) for _ in range(20)]
        for sock in slow:
            sock.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow_since = time.monotonic()
        threads = [
            threading.Thread(target=send, args=(name, files))
            for name, files in (("a", request_a), ("b", request_b), ("c", request_c))
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        normal_tags: list[tuple[int, float]] = []

        def normal_user():  # an ordinary user tagging one photo at a time during the abuse
            time.sleep(1.0)
            while any(t.is_alive() for t in threads):
                sent = time.monotonic()
                status, _, _ = post_files(f"{url}/v1/tag?top_k=3", small)
                normal_tags.append((status, time.monotonic() - sent))

        user = threading.Thread(target=normal_user)
        user.start()
        # Normal requests keep being answered while the server works through the big ones.
        normal_latencies = []
        while any(t.is_alive() for t in threads) and time.monotonic() - started < 600:
            sent = time.monotonic()
            status, body, _ = request(f"{url}/healthz", timeout=30)
            assert status == 200 and body["status"] == "ok"
            normal_latencies.append(time.monotonic() - sent)
            time.sleep(0.2)
        for thread in threads:
            thread.join(600)
        user.join(600)
        status, body, _ = post_files(f"{url}/v1/tag?top_k=3", small)
        assert status == 200 and len(default_model_keywords(body["results"][0]["tags"])) == 3
        rss = peak_rss(process.pid)
        print(
            f"\nabuse run: {n_big} PNGs of {side}x{side} + {len(request_b)} JPEGs of {jpeg_side}x{jpeg_side} in "
            f"{time.monotonic() - started:.1f} s; peak RSS idle {idle_rss / 2**30:.2f} GiB, under load "
            f"{rss / 2**30:.2f} GiB; health answered in at most {max(normal_latencies):.2f} s; "
            f"{len(normal_tags)} normal tag requests during the run, slowest {max(t for _, t in normal_tags):.1f} s"
        )
        for name in ("a", "b"):
            status, body, _ = answers[name]
            assert status == 200 and all(len(entry["tags"]) == 3 for entry in body["results"]), (name, body)
        status, body, _ = answers["c"]
        first, second = body["results"]
        assert status == 200 and first["image"] == "x" and second["error"]["code"] == "bad_image"
        assert rss < PEAK_RSS_LIMIT, f"peak RSS {rss / 2**30:.2f} GiB"
        assert max(normal_latencies) < 5.0
        assert normal_tags and all(status == 200 for status, _ in normal_tags)
        # Cut off by the header deadline (10 s after they connected; a run on an idle machine can end sooner).
        for sock in slow:
            sock.settimeout(max(1.0, defaults.header_timeout_s + 2 - (time.monotonic() - slow_since)))
            assert sock.recv(10) == b""
            sock.close()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
