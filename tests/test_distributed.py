"""The ray engine's checks that need no cluster: a missing Ray names its extra, bad settings and a foreign --out
folder are refused before any work (the cluster itself is tested in test_ray.py)."""

from __future__ import annotations

import json
import sys

import pytest

from phototag.cli import main
from phototag.distributed import ClusterOptions, predict_on_ray
from phototag.model import load_model


def test_a_missing_ray_names_the_extra_to_install(monkeypatch, capsys, tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"not read: the engine stops before")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["tag", str(photo), "--engine", "ray", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'phototag tag: error: The ray engine needs Ray Data: pip install "phototag[ray]"'


def test_parquet_parts_need_the_ray_engine(capsys, tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    assert main(["tag", str(photo), "--out", str(tmp_path / "parts"), "-q"]) == 2
    assert "--out DIR (Parquet parts) goes with --engine ray" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"actors": 0}, "actors must be an int >= 1"), ({"cpus": 0}, "cpus must be > 0"), ({"part_size": 0}, "part_size")],
)
def test_cluster_options_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        ClusterOptions(**settings)


def test_an_out_folder_of_another_run_is_refused_before_any_work(tmp_path):
    out = tmp_path / "parts"
    out.mkdir()
    (out / "_run.json").write_text(json.dumps({"model": "someone-else"}))
    with pytest.raises(ValueError, match="holds the parts of a different run"):
        predict_on_ray(load_model(), [str(tmp_path / "a.jpg")], top_k=5, out=out)
    (out / "_run.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no phototag run"):
        predict_on_ray(load_model(), [str(tmp_path / "a.jpg")], top_k=5, out=out)


@pytest.mark.slow
def test_features_command_fills_the_store_locally(synthetic_dataset, tmp_path, capsys):
    from phototag.features import FeatureStore

    cache = tmp_path / "cache"
    assert main(["features", str(synthetic_dataset), "--split", "test", "--cache-dir", str(cache), "-q"]) == 0
    assert "Features of 12 of 12 photos (efficientnet_lite0)" in capsys.readouterr().out
    assert len(FeatureStore("efficientnet_lite0", cache).cache) == 12
