"""The CLI contract, end to end on synthetic photos with the real backbone."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from conftest import default_model_keywords
from phototag.cli import main


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory, feature_cache):
    out = tmp_path_factory.mktemp("models") / "mlp"
    assert (
        main(
            [
                "-q",
                "train",
                str(synthetic_dataset),
                "--method",
                "mlp",
                "--set",
                "max_epochs=80",
                "--cache-dir",
                str(feature_cache),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_methods_lists_registered_methods(capsys):
    code, out, _ = run(capsys, ["methods"])
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and {"knn", "mlp"} <= set(names) and names == sorted(names)


def test_predict_jsonl_exact_shape(trained, synthetic_photos, capsys):
    code, out, _ = run(
        capsys,
        ["-q", "predict", str(trained), str(synthetic_photos / "img" / "test"), "--format", "jsonl", "--top-k", "2"],
    )
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 12
    for line in lines:
        assert list(line) == ["image", "tags"] and len(line["tags"]) == 2
        assert all(list(t) == ["tag", "score"] for t in line["tags"])
        scores = [t["score"] for t in line["tags"]]
        assert scores == sorted(scores, reverse=True)
    # the model learned colour and shape: the 2 best tags are the true ones for most test photos
    truth = {
        row["file"]: set(row["tags"].split())
        for row in csv.DictReader(io.StringIO((synthetic_photos / "photos.csv").read_text()))
    }
    hits = sum(
        {t["tag"] for t in line["tags"]} == truth[line["image"].split("synthetic-photos0/")[-1]]
        for line in lines
        if "synthetic-photos0/" in line["image"]
    )
    assert hits >= 10


def test_predict_decision_rules(trained, synthetic_photos, capsys):
    image = str(sorted((synthetic_photos / "img" / "test").iterdir())[0])
    _, out, _ = run(capsys, ["-q", "predict", str(trained), image, "--format", "jsonl"])
    default = json.loads(out)["tags"]
    assert all(t["score"] >= 0.3 for t in default) and len(default) <= 15
    _, out, _ = run(capsys, ["-q", "predict", str(trained), image, "--format", "jsonl", "--top-k", "5"])
    assert len(json.loads(out)["tags"]) == 5
    _, out, _ = run(
        capsys, ["-q", "predict", str(trained), image, "--format", "jsonl", "--top-k", "5", "--threshold", "0.99"]
    )
    assert all(t["score"] >= 0.99 for t in json.loads(out)["tags"])


def test_predict_csv_and_table(trained, synthetic_photos, capsys, tmp_path):
    image = str(sorted((synthetic_photos / "img" / "test").iterdir())[0])
    out_file = tmp_path / "out.csv"
    code, _, _ = run(
        capsys, ["-q", "predict", str(trained), image, "--format", "csv", "--top-k", "3", "-o", str(out_file)]
    )
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert code == 0 and [r["rank"] for r in rows] == ["1", "2", "3"] and rows[0]["image"] == image
    _, out, _ = run(capsys, ["-q", "predict", str(trained), image, "--top-k", "1"])
    assert out.splitlines()[0] == image


def test_evaluate_scores_only_the_words_the_dataset_knows(trained, synthetic_photos, capsys, tmp_path, feature_cache):
    """A dataset whose vocabulary is the colours only: the model's shape words are left out of the ranking (they
    would take places the dataset cannot judge), unless --all-words asks for every word."""
    from phototag.importers import run_importer
    from phototag.metrics import evaluate_scores
    from phototag.model import TagModel

    with open(synthetic_photos / "photos.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["tags"] = row["tags"].split()[0]  # "red circle" -> "red"
    colours_csv = synthetic_photos / "colours.csv"
    with open(colours_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    colours = tmp_path / "colours"
    run_importer("csv", colours_csv, colours)

    def metrics(*extra):
        out = tmp_path / f"m{len(extra)}.json"
        argv = ["-q", "evaluate", str(trained), str(colours), "--k", "1", "--cache-dir", str(feature_cache)]
        assert main([*argv, "--json", str(out), *extra]) == 0
        return json.loads(out.read_text())

    capsys.readouterr()
    restricted, every = metrics(), metrics("--all-words")
    model = TagModel.load(trained)
    shapes = np.isin(model.vocab.tags_, ["circle", "square"])
    assert restricted["model_words_left_out"] == 2 and every["model_words_left_out"] == 0
    assert restricted["n_tags"] == len(model.vocab) - 2 and every["n_tags"] == len(model.vocab)
    # The same numbers as scoring the colour columns alone.
    test = [r for r in rows if r["split"] == "test"]
    scores = model.score_images([str(synthetic_photos / r["file"]) for r in test], cache_dir=feature_cache).scores
    truth = model.vocab.transform([[r["tags"]] for r in test])
    by_hand = evaluate_scores(truth[:, ~shapes], scores[:, ~shapes], k=1)
    for key in ("tag@1_f1", "tag@1_n_plus", "map", "image_f1_mean"):
        assert restricted[key] == pytest.approx(by_hand[key]), key
    # Ranked among the shapes, the colours lose places they win when only they compete.
    assert restricted["tag@1_mean_recall"] > every["tag@1_mean_recall"]


def test_unreadable_image_is_reported_with_exit_1(trained, synthetic_photos, capsys, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = str(sorted((synthetic_photos / "img" / "test").iterdir())[0])
    code, out, err = run(capsys, ["-q", "predict", str(trained), good, str(bad), "--format", "jsonl"])
    assert code == 1
    assert len(out.splitlines()) == 1 and "broken.jpg" in err and "1 image(s) could not be read" in err


def test_evaluate_reports_all_metrics(trained, synthetic_dataset, capsys, tmp_path, feature_cache):
    code, out, _ = run(
        capsys,
        [
            "-q",
            "evaluate",
            str(trained),
            str(synthetic_dataset),
            "--split",
            "test",
            "--cache-dir",
            str(feature_cache),
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in (
        "map",
        "miap",
        "micro_auc",
        "macro_auc",
        "tag@5_f1",
        "tag@5_n_plus",
        "image_f1_mean",
        "image_f1_median",
        "image_f1_std",
    ):
        assert key in metrics and key in out
    assert metrics["map"] > 0.85


def test_default_method_is_chosen(synthetic_dataset, tmp_path, feature_cache, capsys):
    from phototag.data import Dataset
    from phototag.model import load_model
    from phototag.pipeline import default_method_for

    argv = ["-q", "train", str(synthetic_dataset), "--out", str(tmp_path / "m"), "--cache-dir", str(feature_cache)]
    code, out, _ = run(capsys, argv)
    assert code == 0 and "Saved" in out
    expected = default_method_for(Dataset.load(synthetic_dataset))
    assert load_model(tmp_path / "m").method.name == expected == "knn"  # 48 training photos: too few for mlp


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "/no/such/model", "x.jpg"], "does not exist"),
        (["train", "/no/such/dataset", "--out", "/tmp/x"], "/no/such/dataset"),
        (["evaluate", "/no/such/model", "/no/such/dataset"], "does not exist"),
    ],
)
def test_errors_are_one_line_with_exit_2(argv, message, capsys):
    code, _, err = run(capsys, argv)
    assert code == 2
    assert err.startswith("phototag ") and message in err and "Traceback" not in err


def test_bad_set_option(synthetic_dataset, capsys, tmp_path):
    code, _, err = run(
        capsys, ["train", str(synthetic_dataset), "--method", "knn", "--set", "kk=3", "--out", str(tmp_path / "m")]
    )
    assert code == 2 and "Unknown setting" in err and not (tmp_path / "m").exists()
    # A value of the wrong type is refused before training, in one line.
    argv = ["train", str(synthetic_dataset), "--method", "mlp", "--set", "hidden=abc", "--out", str(tmp_path / "m")]
    code, _, err = run(capsys, argv)
    assert code == 2 and "Setting 'hidden' of MLPConfig must be int. Got 'abc'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_a_bug_shows_its_traceback_and_exit_code_3(capsys, monkeypatch):
    import phototag.cli.methods as methods_command

    monkeypatch.setattr(methods_command, "cmd_methods", lambda args: {}["no such key"])
    code, _, err = run(capsys, ["methods"])
    assert code == 3 and "Traceback" in err and "KeyError" in err and "please report it" in err


def test_global_options_after_the_command(capsys):
    code, out, _ = run(capsys, ["methods", "-q"])
    assert code == 0 and "mlp" in out


def test_tag_with_examples_uses_default_model(capsys):
    pytest.importorskip("skimage")
    from phototag.model import load_model

    model = load_model()
    broad = {t for t, c in zip(model.tags, model.decision.categories, strict=True) if c}

    def split(line):  # the k keywords, then the broad categories the default model adds after them
        keywords = [t for t in line["tags"] if t["tag"] not in broad]
        return keywords, line["tags"][len(keywords) :]

    code, out, _ = run(capsys, ["-q", "tag", "--examples", "--format", "jsonl", "--top-k", "3", "--no-balanced"])
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) >= 4
    for line in lines:
        keywords, categories = split(line)
        assert len(keywords) == 3 and line["tags"][:3] == keywords  # keywords first, categories after
        assert all(t["tag"] in broad and t["score"] >= 0.3 for t in categories)
        # Plain top-k lists the most likely keywords, best first.
        assert [t["score"] for t in keywords] == sorted((t["score"] for t in keywords), reverse=True)
    assert any(split(line)[1] for line in lines)  # some photo gets a category (the cat: animal, mammal, pet)
    # The default model's top k is balanced unless asked otherwise.
    code, out, _ = run(capsys, ["-q", "tag", "--examples", "--format", "jsonl", "--top-k", "3"])
    assert code == 0
    balanced = [json.loads(line) for line in out.splitlines()]
    assert [b["image"] for b in balanced] == [p["image"] for p in lines]
    for b, p in zip(balanced, lines, strict=True):
        keywords = split(b)[0]
        assert len(keywords) == 3 and keywords[0] == split(p)[0][0]  # the photo's best keyword stays first
        assert [t["score"] for t in keywords] == sorted((t["score"] for t in keywords), reverse=True)
    # The offsets favour rare words: some photo's balanced top 3 differs from its plain top 3.
    assert any(
        {t["tag"] for t in split(b)[0]} != {t["tag"] for t in split(p)[0]} for b, p in zip(balanced, lines, strict=True)
    )


def test_balanced_needs_a_model_with_offsets(trained, synthetic_photos, capsys):
    image = str(sorted((synthetic_photos / "img" / "test").iterdir())[0])
    code, _, err = run(capsys, ["predict", str(trained), image, "--top-k", "2", "--balanced"])
    assert code == 2 and "no balancing offsets" in err


def test_default_model_never_tags_an_unreadable_photo(tmp_path, capsys):
    """A truncated JPEG among good photos: exit 1, named on stderr, no tags in any format, no keywords written."""
    from PIL import Image

    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)).save(good, quality=90)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:400])
    for fmt in ("table", "jsonl", "csv"):
        assert main(["tag", str(good), str(broken), "--top-k", "3", "--format", fmt, "-q"]) == 1
        out, err = capsys.readouterr()
        assert str(good) in out and "broken.jpg" not in out
        assert "broken.jpg" in err and "1 image(s) could not be read" in err
    assert main(["-q", "tag", str(good), str(broken), "--top-k", "3", "--write", "xmp"]) == 1
    assert (tmp_path / "good.jpg.xmp").is_file()
    assert not (tmp_path / "broken.jpg.xmp").exists()


def test_tag_one_photo_quiet_after_the_command(tmp_path, capsys):
    """`phototag tag photo.jpg -q --top-k 3`: global options after the command, three tags, nothing on stderr."""
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, size=(120, 160, 3), dtype=np.uint8)).save(photo)
    code, out, err = run(capsys, ["tag", str(photo), "-q", "--top-k", "3", "--format", "jsonl"])
    assert code == 0 and err == ""
    (line,) = [json.loads(row) for row in out.splitlines()]
    assert line["image"] == str(photo) and len(default_model_keywords(line["tags"])) == 3


def test_choices_come_from_the_registries(capsys):
    from phototag.cli import build_parser
    from phototag.importers import list_importers
    from phototag.methods import list_methods, method_names

    commands = build_parser()._subparsers._group_actions[0].choices
    kinds = next(a for a in commands["import"]._actions if a.dest == "kind")
    assert list(kinds.choices) == list_importers() and "library" in kinds.choices
    methods = next(a for a in commands["train"]._actions if a.dest == "method")
    assert list(methods.choices) == method_names() == list_methods()
    with pytest.raises(SystemExit) as usage_error:  # argparse: usage on stderr, exit 2
        main(["train", "/nowhere", "--method", "no_such_method", "--out", "/tmp/x"])
    err = capsys.readouterr().err
    assert usage_error.value.code == 2 and "invalid choice: 'no_such_method'" in err and "'knn'" in err


def test_methods_speak_plain_words(capsys):
    code, out, _ = run(capsys, ["methods"])
    assert code == 0
    for jargon in ("seed 0", "seeds ", "spine", "system 1", "system 5", "et al", "DR-EL", "WSABIE:"):
        assert jargon not in out, jargon


def test_backbone_is_honoured_by_cnn(synthetic_dataset, tmp_path, capsys):
    """`train --method cnn --backbone NAME` fine-tunes that backbone (it used to train efficientnet_lite0)."""
    pytest.importorskip("torch")
    from phototag.model import load_model

    out = tmp_path / "cnn"
    tiny = ["input_size=64", "transfer_epochs=1", "finetune_epochs=0", "batch_size=16"]
    argv = ["-q", "train", str(synthetic_dataset), "--method", "cnn", "--backbone", "efficientnet_lite1", "--out"]
    code, _, err = run(capsys, [*argv, str(out), *[x for pair in tiny for x in ("--set", pair)]])
    assert code == 0, err
    model = load_model(out)
    assert model.method.config.backbone == "efficientnet_lite1"
    assert json.loads((out / "phototag_model.json").read_text())["config"]["backbone"] == "efficientnet_lite1"


def test_backbone_is_refused_where_members_name_theirs(synthetic_dataset, tmp_path, capsys):
    argv = ["train", str(synthetic_dataset), "--method", "ensemble", "--backbone", "efficientnet_lite1"]
    code, _, err = run(capsys, [*argv, "--out", str(tmp_path / "m")])
    assert code == 2 and "--backbone applies to methods on one backbone's features" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_cache_dir_is_honoured_by_ensemble(synthetic_dataset, tmp_path, capsys):
    """`train --method ensemble --cache-dir X` keeps its members' features in X (it used to write nothing there)."""
    cache = tmp_path / "cache"
    settings = ["members=[knn@efficientnet_lite0]", "combiner=average", "stack_folds=0"]
    argv = ["-q", "train", str(synthetic_dataset), "--method", "ensemble", "--cache-dir", str(cache)]
    code, _, err = run(capsys, [*argv, "--out", str(tmp_path / "m"), *[x for s in settings for x in ("--set", s)]])
    assert code == 0, err
    stored = [p for p in cache.rglob("*") if p.is_file()]
    assert stored and any("efficientnet_lite0" in str(p) for p in stored)


def test_combiner_is_refused_for_other_methods(trained, synthetic_photos, capsys):
    image = str(sorted((synthetic_photos / "img" / "test").iterdir())[0])
    code, _, err = run(capsys, ["predict", str(trained), image, "--combiner", "vote"])
    assert code == 2 and "--combiner applies to ensemble models; this model's method is 'mlp'" in err
