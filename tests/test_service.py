"""The HTTP service against a real uvicorn server on 127.0.0.1, with the shipped default model."""

from __future__ import annotations

import asyncio
import io
import os
import signal
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

from live_server import keywords, post_files, post_json, request, running_server, shared_default_model  # noqa: E402
from phototag import __version__  # noqa: E402
from phototag.cli import example_images  # noqa: E402
from phototag.serve import ServiceConfig, create_app, model_identity  # noqa: E402
from phototag.serve.batching import MicroBatcher  # noqa: E402
from phototag.serve.identity import directory_fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_model():
    return shared_default_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Three real photos (scikit-image / scikit-learn samples) saved as JPEG and PNG."""
    found = [p for p in example_images() if p.suffix in (".png", ".jpg")][:3]
    if len(found) < 3:
        pytest.skip("sample photos from scikit-image / scikit-learn are not installed")
    out = tmp_path_factory.mktemp("service-photos")
    paths = []
    for i, source in enumerate(found):
        target = out / f"photo{i}{'.jpg' if i % 2 else '.png'}"
        Image.open(source).convert("RGB").save(target)
        paths.append(target)
    return paths


def upload(path: Path, field: str = "files") -> tuple[str, str, bytes, str]:
    kind = "image/png" if path.suffix == ".png" else "image/jpeg"
    return field, path.name, path.read_bytes(), kind


@pytest.fixture(scope="module")
def server(default_model, tmp_path_factory):
    db = tmp_path_factory.mktemp("feedback") / "feedback.sqlite"
    app = create_app(default_model, ServiceConfig(feedback_db=db, max_wait_ms=20))
    with running_server(app) as url:
        yield url, db


def test_tag_answers_the_model_and_results_of_predict_jsonl_shape(server, photos, default_model):
    url, _ = server
    status, body, _ = post_files(f"{url}/v1/tag?top_k=5", [upload(p) for p in photos])
    assert status == 200, body
    assert set(body) == {"model", "results"}
    fingerprint = directory_fingerprint(default_model.path)
    assert body["model"] == {
        "id": f"sha256:{fingerprint[:16]}",
        "version": f"{__version__}+{default_model.method.name}.{fingerprint[:8]}",
        "vocabulary_size": len(default_model.tags),
        "name": f"{default_model.method.name}@default_model",
        "method": default_model.method.name,
    }
    expected, failures = default_model.predict(photos, top_k=5)
    assert not failures
    results = body["results"]
    assert [b["image"] for b in results] == [p.name for p in photos]
    for got, want in zip(results, expected, strict=True):
        assert set(got) == {"image", "tags"}
        assert [t["tag"] for t in got["tags"]] == [t["tag"] for t in want["tags"]]
        np.testing.assert_allclose([t["score"] for t in got["tags"]], [t["score"] for t in want["tags"]], atol=2e-3)


def test_balanced_top_k_follows_the_model(server, photos, default_model):
    url, _ = server
    status, body, _ = post_files(f"{url}/v1/tag?top_k=4&balanced=true", [upload(p) for p in photos])
    assert status == 200, body
    expected, _ = default_model.predict(photos, top_k=4, balanced=True)
    assert [[t["tag"] for t in b["tags"]] for b in body["results"]] == [[t["tag"] for t in e["tags"]] for e in expected]


def test_threshold_and_default_rule(server, photos):
    url, _ = server
    status, body, _ = post_files(f"{url}/v1/tag?threshold=0.15", [upload(photos[0])])
    assert status == 200
    scores = [t["score"] for t in body["results"][0]["tags"]]
    ranked = [t["score"] for t in keywords(body["results"][0]["tags"])]  # the categories come after them
    assert all(s >= 0.15 for s in scores) and ranked == sorted(ranked, reverse=True)
    status, body, _ = post_files(f"{url}/v1/tag", [upload(photos[0])])
    assert status == 200
    tags = body["results"][0]["tags"]
    assert len(tags) <= 15 and all(t["score"] >= 0.3 for t in tags)


def test_vocabulary_healthz_and_docs(server, default_model):
    url, _ = server
    status, body, _ = request(f"{url}/v1/tags")
    assert status == 200 and body["tags"] == default_model.tags and body["n_tags"] == len(default_model.tags) > 1000
    assert body["model"] == model_identity(default_model).to_dict()
    status, health, _ = request(f"{url}/healthz")
    assert (
        status == 200 and health["status"] == "ok" and health["model"] == f"{default_model.method.name}@default_model"
    )
    assert health["model_id"] == model_identity(default_model).id
    status, schema, _ = request(f"{url}/openapi.json")
    assert status == 200 and {"/v1/tag", "/v1/tags", "/healthz", "/v1/feedback"} <= set(schema["paths"])
    status, page, _ = request(f"{url}/docs")
    assert status == 200 and "swagger" in page.lower()


def test_bad_requests_get_problem_details(server, photos):
    """Errors are RFC 9457 problem details (live_server.request checks the media type and members of each)."""
    url, _ = server
    status, body, headers = post_files(f"{url}/v1/tag", [("files", "notes.txt", b"hello", "text/plain")])
    assert status == 415 and body["code"] == "unsupported_media_type" and "notes.txt" in body["detail"]
    assert body["type"] == "urn:phototag:problem:unsupported_media_type"
    assert body["title"] == "Not an accepted image type" and body["status"] == 415
    assert headers["content-type"] == "application/problem+json"
    status, body, _ = post_files(f"{url}/v1/tag", [("files", "broken.jpg", b"\xff\xd8not a jpeg", "image/jpeg")])
    assert status == 422 and body["code"] == "bad_image" and "broken.jpg" in body["detail"]
    status, body, _ = post_files(f"{url}/v1/tag?top_k=0", [upload(photos[0])])
    assert status == 422 and body["code"] == "invalid_request" and "top_k" in body["detail"]
    status, body, _ = post_files(f"{url}/v1/tag", [], fields=[("user_tags", "beach")])
    assert status == 422 and "files" in body["detail"]
    status, body, _ = post_files(
        f"{url}/v1/tag",
        [upload(photos[0]), upload(photos[1])],
        fields=[("user_tags", "a"), ("user_tags", "b"), ("user_tags", "c")],
    )
    assert status == 422 and "3 user_tags values for 2 images" in body["detail"]
    status, body, _ = request(f"{url}/v1/nothing")
    assert status == 404 and body["code"] == "not_found"


def test_limits_and_token(default_model, photos, monkeypatch):
    monkeypatch.setenv("PHOTOTAG_TOKEN", "s3cret")
    config = ServiceConfig(max_file_bytes=200_000, max_pixels=300 * 300, max_files=2, max_request_bytes=1_000_000)
    app = create_app(default_model, config)
    auth = {"Authorization": "Bearer s3cret"}
    small = io.BytesIO()
    Image.new("RGB", (200, 100), (10, 120, 200)).save(small, format="PNG")
    large = io.BytesIO()
    Image.new("RGB", (400, 400), (10, 120, 200)).save(large, format="PNG")
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (290, 290, 3), dtype=np.uint8)).save(noisy, "PNG")
    assert len(noisy.getvalue()) > 200_000
    with running_server(app) as url:
        status, body, headers = post_files(f"{url}/v1/tag", [("files", "a.png", small.getvalue(), "image/png")])
        assert status == 401 and body["code"] == "unauthorized" and headers.get("www-authenticate") == "Bearer"
        status, _, _ = post_files(
            f"{url}/v1/tag", [("files", "a.png", small.getvalue(), "image/png")], headers={"Authorization": "Bearer x"}
        )
        assert status == 401
        assert request(f"{url}/healthz")[0] == 200  # no token needed
        status, body, _ = post_files(f"{url}/v1/tag", [("files", "a.png", small.getvalue(), "image/png")], headers=auth)
        assert status == 200 and body["results"][0]["image"] == "a.png"
        status, body, _ = post_files(
            f"{url}/v1/tag", [("files", "big.png", large.getvalue(), "image/png")], headers=auth
        )
        assert status == 413 and "160,000 pixels" in body["detail"]
        status, body, _ = post_files(f"{url}/v1/tag", [("files", "n.png", noisy.getvalue(), "image/png")], headers=auth)
        assert status == 413 and "200,000 bytes" in body["detail"]
        three = [("files", f"{i}.png", small.getvalue(), "image/png") for i in range(3)]
        status, body, _ = post_files(f"{url}/v1/tag", three, headers=auth)
        assert status == 413 and body["code"] == "too_many_files"
        # Refused from the declared length, before any of the body is read (a 1 MB body would race the answer).
        form = "multipart/form-data; boundary=b"
        too_long = {**auth, "Content-Length": "1000001"}
        status, body, _ = request(f"{url}/v1/tag", method="POST", body=b"--b--", content_type=form, headers=too_long)
        assert status == 413 and "1,000,000" in body["detail"]


def test_concurrent_requests_each_get_their_own_answer(server, photos, default_model):
    url, _ = server
    expected = {p.name: default_model.predict([p], top_k=3)[0][0]["tags"] for p in photos}
    results: dict[int, object] = {}

    def call(i: int) -> None:
        photo = photos[i % len(photos)]
        results[i] = post_files(f"{url}/v1/tag?top_k=3", [upload(photo)])

    before = request(f"{url}/healthz")[1]
    threads = [threading.Thread(target=call, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = request(f"{url}/healthz")[1]
    assert len(results) == 9
    for i, (status, body, _) in results.items():
        photo = photos[i % len(photos)]
        assert status == 200 and body["results"][0]["image"] == photo.name
        assert [t["tag"] for t in body["results"][0]["tags"]] == [t["tag"] for t in expected[photo.name]]
    assert after["images_scored"] - before["images_scored"] == 9
    assert after["batches"] - before["batches"] <= 9


def test_microbatcher_groups_queued_requests_and_drains_on_close():
    sizes: list[int] = []

    def score(items):
        sizes.append(len(items))
        time.sleep(0.01)
        return np.asarray(items, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)

    async def scenario():
        batcher = MicroBatcher(score, max_batch=8, max_wait_ms=50)
        await batcher.start()
        requests = [[1.0], [2.0, 3.0], [4.0], [5.0, 6.0, 7.0], [8.0, 9.0], [10.0]]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        # Submitted after close() began: still answered before the batcher stops.
        late = asyncio.ensure_future(batcher.submit([11.0]))
        await asyncio.sleep(0)
        await batcher.close()
        return requests, results, await late, batcher

    requests, results, late, batcher = asyncio.run(scenario())
    for request_items, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result[:, 0], request_items)
    np.testing.assert_array_equal(late[:, 0], [11.0])
    # 10 images queued together: one full batch of 8 requests' worth (<= max_batch unless a request is larger).
    assert sizes[:2] == [7, 3] and sum(sizes) == 11
    assert batcher.batches == len(sizes) and batcher.items == 11


def test_feedback_api_and_export(server, photos, tmp_path):
    from phototag.data import Dataset
    from phototag.feedback import FeedbackStore, feedback_to_dataset

    url, db = server
    status, body, _ = post_files(
        f"{url}/v1/feedback/images", [upload(photos[1], "file")], fields=[("user_tags", "my cat")]
    )
    assert status == 200
    image_id = body["image_id"]
    assert (
        post_json(f"{url}/v1/feedback", {"image_id": image_id, "tag": "cat", "decision": "accept", "score": 0.8})[0]
        == 200
    )
    assert post_json(f"{url}/v1/feedback", {"image_id": image_id, "tag": "tiger", "decision": "reject"})[0] == 200
    status, body, _ = post_json(f"{url}/v1/feedback", {"image_id": "0" * 40, "tag": "cat", "decision": "accept"})
    assert status == 404 and body["code"] == "unknown_image"
    status, body, _ = post_json(f"{url}/v1/feedback", {"image_id": image_id, "tag": "cat", "decision": "maybe"})
    assert status == 422 and "decision" in body["detail"]
    with FeedbackStore(db) as store:
        rows = [r for r in store.decisions() if r["image_id"] == image_id]
    assert [(r["tag"], r["decision"], r["model"]) for r in rows] == [
        ("cat", "accept", f"{shared_default_model().method.name}@default_model"),
        ("tiger", "reject", f"{shared_default_model().method.name}@default_model"),
    ]
    dataset, report = feedback_to_dataset(db, tmp_path / "fb")
    record = next(r for r in Dataset.load(tmp_path / "fb").records if r.meta["sha1"] == image_id)
    assert record.tags == ["cat"] and record.meta["rejected"] == ["tiger"] and record.user_tags == ["my", "cat"]
    assert (tmp_path / "fb" / "images" / record.file).read_bytes() == photos[1].read_bytes()
    assert report["exported"] >= 1


@pytest.mark.slow
def test_serve_command_default_model_and_graceful_stop(photos, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PHOTOTAG_FEEDBACK_DB": str(tmp_path / "fb.sqlite")}
    process = subprocess.Popen(
        [sys.executable, "-m", "phototag.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()  # printed once the socket is listening
        assert f"{shared_default_model().method.name}@default_model at http://127.0.0.1:" in line, (
            line,
            process.stderr.read() if process.poll() else "",
        )
        url = line.split(" at ")[1].split()[0]
        status, body, _ = post_files(f"{url}/v1/tag?top_k=2", [upload(photos[0])])  # waits for start-up
        assert status == 200 and len(keywords(body["results"][0]["tags"])) == 2
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status is the signal's.
        assert process.wait(30) in (0, -signal.SIGTERM)
        assert "stopped after 1 batches (1 images)" in process.stderr.read()
        assert (tmp_path / "fb.sqlite").is_file()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_failing_model_gives_a_json_500_and_the_server_keeps_serving(photos):
    """A model directory whose method expects other features: the request fails cleanly, the batcher survives."""
    from phototag.backbones import create_backbone
    from phototag.methods import create_method
    from phototag.model import TagModel
    from phototag.vocab import TagVocabulary

    rng = np.random.default_rng(0)
    method = create_method("knn").fit({"features": rng.normal(size=(6, 16)).astype(np.float32)}, np.eye(6, 2))
    vocab = TagVocabulary().fit([["a"], ["b"]])
    backbone = create_backbone("efficientnet_lite0")  # real 1280-d features, which this 16-d knn cannot score
    broken = TagModel(method, vocab, backbone_spec=backbone.spec)
    broken._backbone = backbone
    with running_server(create_app(broken)) as url:
        for _ in range(2):
            status, body, _ = post_files(f"{url}/v1/tag", [upload(photos[0])])
            assert status == 500 and body["code"] == "internal_error"
        assert request(f"{url}/healthz")[1]["status"] == "ok"


def test_model_identity_follows_the_model_files(tmp_path):
    """Same files, same id (on re-save too); another decision rule or other weights, another id and version."""
    from phototag.methods import create_method
    from phototag.model import TagModel
    from phototag.vocab import TagVocabulary

    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 8)).astype(np.float32)
    method = create_method("knn").fit({"features": features}, np.eye(6, 2))
    model = TagModel(method, TagVocabulary().fit([["a"], ["b"]]))
    in_memory = model_identity(model)
    assert in_memory.name == "knn@in-memory" and in_memory.vocabulary_size == 2
    assert in_memory == model_identity(TagModel(method, TagVocabulary().fit([["a"], ["b"]])))
    first = model_identity(TagModel.load(model.save(tmp_path / "one")))
    again = model_identity(TagModel.load(model.save(tmp_path / "two")))
    assert first.id == again.id and first.id.startswith("sha256:") and len(first.id) == len("sha256:") + 16
    assert first.version == f"{__version__}+knn.{first.id[7:15]}" and first.name == "knn@one"
    model.decision.threshold = 0.5
    assert model_identity(TagModel.load(model.save(tmp_path / "one"))).id != first.id
    other = create_method("knn").fit({"features": features + 1}, np.eye(6, 2))
    changed = model_identity(TagModel.load(TagModel(other, model.vocab).save(tmp_path / "three")))
    assert changed.id != first.id and changed.version != first.version


def test_lang_translates_answers_and_unknown_languages_are_422(server, photos, default_model):
    from phototag.languages import translate_tag

    url, _ = server
    status, english, _ = post_files(f"{url}/v1/tag?top_k=5", [upload(photos[0])])
    assert status == 200
    status, german, _ = post_files(f"{url}/v1/tag?top_k=5&lang=de", [upload(photos[0])])
    assert status == 200
    english, german = english["results"][0]["tags"], german["results"][0]["tags"]
    assert [t["tag"] for t in german] == [translate_tag(t["tag"], "de") for t in english]
    assert [t["score"] for t in german] == [t["score"] for t in english]
    status, body, _ = post_files(f"{url}/v1/tag?lang=xx", [upload(photos[0])])
    assert (
        status == 422 and body["code"] == "unknown_language" and "Supported languages: en (English)" in body["detail"]
    )
    status, body, _ = request(f"{url}/v1/languages")
    assert status == 200 and {"en", "de", "ja"} <= set(body["languages"]) and body["default"] == "en"
    status, body, _ = request(f"{url}/v1/translations?lang=ja")
    assert status == 200 and body["tags"]["sky"] == "空" and set(default_model.tags) <= set(body["tags"])


def test_a_rules_threshold_can_lower_the_models_own(default_model, photos):
    """Under the model's own rule (no top_k), a label's rule threshold replaces the model's 0.3, so a label the model
    scores below it can be shown."""
    from phototag.rules import parse_rules

    scores = default_model.score_images(photos[:1]).scores[0]
    keywords = ~default_model.decision.categories
    candidates = np.flatnonzero(keywords & (scores > 0.1) & (scores < 0.29))
    label, score = default_model.tags[candidates[0]], float(scores[candidates[0]])
    rules = parse_rules({label: {"threshold": round(score - 0.01, 4)}})
    with running_server(create_app(default_model, ServiceConfig(rules=rules))) as url:
        status, body, _ = post_files(f"{url}/v1/tag", [upload(photos[0])])
        assert status == 200 and label in [t["tag"] for t in body["results"][0]["tags"]]
    with running_server(create_app(default_model, ServiceConfig())) as url:
        status, body, _ = post_files(f"{url}/v1/tag", [upload(photos[0])])
        assert status == 200 and label not in [t["tag"] for t in body["results"][0]["tags"]]


def test_serve_with_rules_and_a_default_language(default_model, photos):
    from phototag.rules import parse_rules

    predictions, _ = default_model.predict(photos[:1], top_k=5)
    first, *rest = [t["tag"] for t in predictions[0]["tags"]]
    rules = parse_rules({"blocklist": [first], rest[0]: {"see": "renamed", "parents": ["parent"]}})
    app = create_app(default_model, ServiceConfig(rules=rules, lang="fr"))
    with running_server(app) as url:
        status, body, _ = post_files(f"{url}/v1/tag?top_k=5&lang=en", [upload(photos[0])])
        assert status == 200
        got = [t["tag"] for t in body["results"][0]["tags"]]
        assert first not in got and "renamed" in got and "parent" in got and rest[0] not in got
        status, french, _ = post_files(f"{url}/v1/tag?top_k=5", [upload(photos[0])])
        assert status == 200 and "renamed" in [t["tag"] for t in french["results"][0]["tags"]]  # not in the table: kept
        status, config, _ = request(f"{url}/config.json")
        assert config["lang"] == "fr" and "ja" in config["languages"]
