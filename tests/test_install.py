"""The core install: ``pip install phototag`` (no extras) has no torch and still tags photos with the default model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import default_model_keywords

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_install_has_no_torch_and_tags_a_photo(tmp_path):
    from PIL import Image

    if not (REPO / "src" / "phototag" / "default_model" / "backbones").is_dir():
        pytest.fail("The default model ships no backbones/ folder: run scripts/build_default_model.py --reship.")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "torch" in probe.stderr
    photo = tmp_path / "beach.jpg"
    y = [[(min(255, 120 + r // 3), min(255, 170 + r // 4), 255) for _ in range(320)] for r in range(120)]
    sand = [[(220, 200, 150) for _ in range(320)] for _ in range(120)]
    Image.frombytes("RGB", (320, 240), bytes(v for row in y + sand for px in row for v in px)).save(photo)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo.read_bytes()[:300])
    done = subprocess.run(
        [str(venv / "bin" / "phototag"), "-q", "tag", str(photo), str(broken), "--top-k", "3", "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr  # one photo unreadable
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [p["image"] for p in lines] == [str(photo)]
    assert len(default_model_keywords(lines[0]["tags"])) == 3 and all(0 <= t["score"] <= 1 for t in lines[0]["tags"])
    assert "broken.jpg" in done.stderr
    # Training a knn needs no torch on a backbone whose graph phototag ships (the default model's Lite1); a backbone
    # it does not ship (with an empty cache) says how to get one. An mlp says what to install.
    (tmp_path / "photos.csv").write_text(f"file,tags\n{photo.name},beach sand\n")
    phototag = str(venv / "bin" / "phototag")
    assert (
        subprocess.run([phototag, "-q", "import", "csv", str(tmp_path / "photos.csv"), str(tmp_path / "ds")]).returncode
        == 0
    )
    train_knn = [phototag, "-q", "train", str(tmp_path / "ds"), "--method", "knn", "--cache-dir", str(tmp_path / "c")]
    knn = subprocess.run([*train_knn, "--backbone", "efficientnet_lite1", "--out", str(tmp_path / "k")])
    assert knn.returncode == 0
    other = subprocess.run(
        [*train_knn, "--backbone", "efficientnet_lite0", "--out", str(tmp_path / "k0")], capture_output=True, text=True
    )
    assert other.returncode == 2 and "phototag[train]" in other.stderr and "efficientnet_lite1" in other.stderr
    assert "Traceback" not in other.stderr
    mlp = subprocess.run(
        [phototag, "-q", "train", str(tmp_path / "ds"), "--method", "mlp", "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert mlp.returncode == 2 and "phototag[train]" in mlp.stderr and "Traceback" not in mlp.stderr
