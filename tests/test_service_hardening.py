"""The service under a careless or hostile client (issue 18): every bad input fails alone, with a clear answer.

A real uvicorn server on 127.0.0.1 with the shipped default model; docs/security.md lists which test covers which
finding.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason='the service needs the "serve" extra')
pytest.importorskip("uvicorn", reason='the service needs the "serve" extra')

from broken_images import broken_uploads, jpeg, png  # noqa: E402
from conftest import default_model_keywords  # noqa: E402
from live_server import (  # noqa: E402
    check_problem,
    keywords,
    post_files,
    post_json,
    request,
    running_server,
    shared_default_model,
)
from phototag.serve import ServiceConfig, create_app, read_token_file  # noqa: E402
from phototag.serve.batching import MicroBatcher, QueueFullError  # noqa: E402
from phototag.serve.uploads import clean_upload_name, decode_reduced  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("feedback") / "feedback.sqlite"
    app = create_app(shared_default_model(), ServiceConfig(feedback_db=db, max_wait_ms=20))
    with running_server(app) as url:
        yield url


def no_server_paths(text: str) -> None:
    for leak in ("/tmp", "phototag-serve", "site-packages", "Traceback"):
        assert leak not in text, text


# --- finding 2: one bad upload fails only its own entry -------------------------------------------------------------
def test_each_broken_image_fails_only_its_own_entry(server):
    broken = broken_uploads()
    files = [("files", "good1.jpg", jpeg(seed=1), "image/jpeg")]
    files += [("files", name, data, kind) for name, (data, kind, _) in broken.items()]
    files += [("files", "good2.png", png((120, 90)), "image/png")]
    status, body, _ = post_files(f"{server}/v1/tag?top_k=3", files[:16])
    assert status == 200, body
    results = body["results"]
    assert [entry["image"] for entry in results] == [f[1] for f in files[:16]]
    assert len(keywords(results[0]["tags"])) == 3 and len(keywords(results[-1]["tags"])) == 3
    assert "error" not in results[0]
    codes = {415: "unsupported_media_type", 413: ("bad_image", "payload_too_large"), 422: "bad_image"}
    for entry in results[1:-1]:
        _, _, expected_status = broken[entry["image"]]
        error = entry["error"]
        assert "tags" not in entry and error["code"] in codes[expected_status], entry
        check_problem(error, expected_status)  # the status the image alone would get
        assert error["detail"].startswith(f"'{entry['image']}'") or error["detail"].startswith(entry["image"])
        no_server_paths(error["detail"])


@pytest.mark.parametrize("name", sorted(broken_uploads()))
def test_a_broken_image_alone_gets_its_status(server, name):
    data, kind, expected = broken_uploads()[name]
    status, body, _ = post_files(f"{server}/v1/tag", [("files", name, data, kind)])
    assert status == expected, body
    assert name in body["detail"] and "\n" not in body["detail"]
    no_server_paths(body["detail"])


def test_hostile_file_names_are_cleaned_and_answered(server):
    names = ["x." + "e" * 300, "../../etc/passwd.jpg", "a\x00b\nc.jpg", "C:\\Users\\me\\beach.jpg", "", "é" * 400]
    files = [("files", n, jpeg(seed=i), "image/jpeg") for i, n in enumerate(names)]
    status, body, _ = post_files(f"{server}/v1/tag?top_k=2", files)
    assert status == 200, body
    assert [b["image"] for b in body["results"]] == ["x", "passwd.jpg", "abc.jpg", "beach.jpg", "upload", "é" * 200]
    assert all(len(keywords(b["tags"])) == 2 for b in body["results"])


def test_clean_upload_name_keeps_ordinary_names():
    assert clean_upload_name("IMG_0001.JPG") == "IMG_0001.JPG"
    assert clean_upload_name("holiday photo (1).jpeg") == "holiday photo (1).jpeg"
    assert clean_upload_name("a" * 300 + ".png") == "a" * 196 + ".png"


def test_one_failing_request_does_not_fail_its_batch():
    """A batch whose scoring raises is re-scored request by request: only the bad request gets the error."""

    def score(items):
        if "bad" in items:
            raise ValueError("cannot score 'bad'")
        return np.asarray([[float(len(i))] for i in items], dtype=np.float32)

    async def scenario():
        batcher = MicroBatcher(score, max_batch=16, max_wait_ms=50)
        await batcher.start()
        results = await asyncio.gather(
            batcher.submit(["a"]), batcher.submit(["bad", "ccc"]), batcher.submit(["dd"]), return_exceptions=True
        )
        await batcher.close()
        return results

    ok1, failed, ok2 = asyncio.run(scenario())
    assert ok1.tolist() == [[1.0]] and ok2.tolist() == [[2.0]]
    assert isinstance(failed, ValueError)


# --- finding 3: memory, queue, slow clients -------------------------------------------------------------------------
def test_large_photos_are_decoded_at_reduced_size():
    from phototag.serve.uploads import draft_rule

    big = jpeg((4000, 3000), quality=80)
    image = decode_reduced(big, source="big.jpg", max_pixels=40_000_000, side=768)
    assert image.size == (1024, 768)  # no draft rule: decoded, then reduced to the shorter side
    image = decode_reduced(png((3000, 4000)), source="big.png", max_pixels=40_000_000, side=768)
    assert image.size == (768, 1024)
    # The default model's rule (as `predict` decodes): DCT-scaled to at least its backbones' input, at most 2x.
    rule = draft_rule(shared_default_model())
    image = decode_reduced(big, source="big.jpg", max_pixels=40_000_000, side=768, draft=rule)
    assert image.size == (500, 375)
    small = jpeg((640, 480))
    assert decode_reduced(small, source="small.jpg", max_pixels=40_000_000, side=768, draft=rule).size == (640, 480)


def test_a_large_jpeg_gets_the_scores_predict_gives(server, tmp_path):
    path = tmp_path / "large.jpg"
    path.write_bytes(jpeg((3000, 2000), seed=5))
    status, body, _ = post_files(f"{server}/v1/tag?top_k=5", [("files", "large.jpg", path.read_bytes(), "image/jpeg")])
    assert status == 200, body
    expected, failures = shared_default_model().predict([path], top_k=5)
    assert not failures
    assert [t["tag"] for t in body["results"][0]["tags"]] == [t["tag"] for t in expected[0]["tags"]]
    np.testing.assert_allclose(
        [t["score"] for t in body["results"][0]["tags"]], [t["score"] for t in expected[0]["tags"]], atol=1e-3
    )


def test_request_pixel_budget_and_per_image_limit(tmp_path):
    config = ServiceConfig(max_request_pixels=1_000_000, max_pixels=600_000)
    with running_server(create_app(shared_default_model(), config)) as url:
        two = [("files", f"{i}.png", png((700, 700)), "image/png") for i in range(3)]
        status, body, _ = post_files(f"{url}/v1/tag", two)
        assert status == 413 and body["code"] == "too_many_pixels" and "1,000,000" in body["detail"]
        status, body, _ = post_files(
            f"{url}/v1/tag",
            [("files", "a.png", png((500, 500)), "image/png"), ("files", "b.png", png((800, 800)), "image/png")],
        )
        first, second = body["results"]
        assert status == 200 and "tags" in first and second["error"]["code"] == "bad_image"
        assert second["error"]["status"] == 413 and "over the limit of 600,000" in second["error"]["detail"]


def test_full_queue_answers_503_with_retry_after():
    model = shared_default_model()
    app = create_app(model, ServiceConfig(max_queue=1, max_batch=1, max_wait_ms=0))
    batcher = app.state.batcher
    real_score, gate = batcher.score, threading.Event()

    def slow_score(items):  # the real model, held until the test lets it go
        gate.wait(30)
        return real_score(items)

    batcher.score = slow_score
    results: list = []
    with running_server(app) as url:
        photo = [("files", "a.jpg", jpeg(), "image/jpeg")]
        first = threading.Thread(target=lambda: results.append(post_files(f"{url}/v1/tag", photo)))
        first.start()
        deadline = time.monotonic() + 20
        while batcher.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, body, headers = post_files(f"{url}/v1/tag", photo)
        assert status == 503 and body["code"] == "busy"
        assert 1 <= int(headers["retry-after"]) <= 60
        assert request(f"{url}/healthz")[1]["refused_busy"] == 1  # health answers while the model is busy
        gate.set()
        first.join(30)
    assert results[0][0] == 200


def test_microbatcher_queue_bound():
    async def scenario():
        batcher = MicroBatcher(lambda items: np.zeros((len(items), 1)), max_batch=1, max_queue=2)
        await batcher.start()
        batcher.pending = 2
        with pytest.raises(QueueFullError):
            await batcher.submit([1])
        batcher.pending = 0
        await batcher.close()

    asyncio.run(scenario())


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_slow_clients_are_cut_off_and_others_keep_answering():
    config = ServiceConfig(header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1.0)
    with running_server(create_app(shared_default_model(), config)) as url:
        # Headers sent a little at a time and never finished: the connection is closed after ~1 s.
        slow_headers = _raw(url)
        slow_headers.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # A connection that sends nothing at all.
        silent = _raw(url)
        # A body that never arrives in full: 408.
        slow_body = _raw(url)
        slow_body.sendall(
            b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\n"
        )
        started = time.monotonic()
        status, body, _ = post_files(f"{url}/v1/tag?top_k=1", [("files", "ok.jpg", jpeg(), "image/jpeg")])
        # served while three slow clients hang on
        assert status == 200 and len(default_model_keywords(body["results"][0]["tags"])) == 1
        for sock in (slow_headers, silent):
            assert sock.recv(100) == b""  # closed by the server
        answer = b""
        while chunk := slow_body.recv(1000):
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer, answer
        assert time.monotonic() - started < 8
        for sock in (slow_headers, silent, slow_body):
            sock.close()


# --- finding 4: Host allow-list, cross-origin writes, token, feedback validation ---------------------------------
def test_foreign_host_and_cross_origin_writes_are_refused_without_a_token(server):
    photo = [("files", "a.jpg", jpeg(), "image/jpeg")]
    status, body, _ = post_files(f"{server}/v1/tag", photo, headers={"Host": "evil.example"})
    assert status == 400 and body["code"] == "invalid_host" and "evil.example" in body["detail"]
    status, _, _ = request(f"{server}/v1/tags", headers={"Host": "rebound.example:8000"})
    assert status == 400
    port = server.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert request(f"{server}/v1/tags", headers={"Host": host})[0] == 200
    status, body, _ = post_files(f"{server}/v1/tag", photo, headers={"Origin": "https://evil.example"})
    assert status == 403 and body["code"] == "cross_origin"
    status, body, _ = post_json(
        f"{server}/v1/feedback", {"image_id": "0" * 40, "tag": "x", "decision": "accept"}, {"Origin": "null"}
    )
    assert status == 403
    status, _, _ = post_files(f"{server}/v1/tag", photo, headers={"Origin": server})  # the server's own page
    assert status == 200


def test_with_a_token_other_hosts_and_listed_origins_work(tmp_path, monkeypatch):
    monkeypatch.delenv("PHOTOTAG_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret-token \n")
    config = ServiceConfig(token=read_token_file(token_file), cors_origins=("https://photos.example",))
    with running_server(create_app(shared_default_model(), config)) as url:
        auth = {"Authorization": "Bearer s3cret-token", "Host": "tagger.lan"}
        assert request(f"{url}/v1/tags", headers=auth)[0] == 200
        assert request(f"{url}/v1/tags", headers={"Host": "tagger.lan"})[0] == 401
        status, _, headers = request(
            f"{url}/v1/tag",
            method="OPTIONS",
            headers={
                "Origin": "https://photos.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert status == 200 and headers["access-control-allow-origin"] == "https://photos.example"
        status, _, headers = request(
            f"{url}/v1/tag",
            method="OPTIONS",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert status == 400 and "access-control-allow-origin" not in headers


def test_token_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"token file '.*missing' \(No such file"):
        read_token_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n \n")
    with pytest.raises(ValueError, match="token file '.*empty' is empty"):
        read_token_file(tmp_path / "empty")
    with pytest.raises(ValueError, match="--cors-origins.*needs a token"):
        create_app(shared_default_model(), ServiceConfig(cors_origins=("https://a.example",)))


def test_token_on_the_command_line_warns(tmp_path, capsys):
    from phototag.cli import main

    code = main(["serve", str(tmp_path / "no-model"), "--token", "abc", "--port", "0"])
    err = capsys.readouterr().err
    assert code != 0 and "--token is visible to other users in the process list" in err
    assert "PHOTOTAG_TOKEN" in err


@pytest.mark.parametrize(
    "payload,message",
    [
        ({"tag": "   "}, "tag: a tag must not be empty"),
        ({"tag": "a\x00b c"}, "tag: a tag must not hold the control character '\\x00'"),
        ({"tag": "sky\nsea"}, "control character '\\n'"),
        ({"tag": "x'); drop table decisions;--"}, "must not hold the character ')'"),
        ({"tag": "t" * 101}, "at most 100 characters"),
        ({"image_id": "9" * 1_000_000}, "image_id: String should have at most|image_id: String should match"),
        ({"image_id": "../../etc"}, "image_id: String should match pattern"),
        ({"score": math.inf}, "score"),
        ({"score": 1.5}, "score: Input should be less than or equal to 1"),
        ({"decision": "maybe"}, "decision: Input should be 'accept', 'reject' or 'clear'"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_feedback_fields_are_validated(server, payload, message):
    good = {"image_id": "0" * 40, "tag": "sky", "decision": "accept", "score": 0.5}
    body = json.dumps({**good, **payload}, allow_nan=True).encode()
    status, answer, _ = request(f"{server}/v1/feedback", method="POST", body=body, content_type="application/json")
    assert status == 422 and answer["code"] == "invalid_request", answer
    assert any(part in answer["detail"] for part in message.split("|")), answer["detail"]
    assert len(answer["detail"]) < 1100  # a 1 MB value is never echoed back


@pytest.mark.parametrize("query", ["threshold=nan", "threshold=inf", "threshold=-0.1", "threshold=1.5", "top_k=100001"])
def test_non_finite_or_out_of_range_query_values_are_refused(server, query):
    status, body, _ = post_files(f"{server}/v1/tag?{query}", [("files", "a.jpg", jpeg(), "image/jpeg")])
    assert status == 422 and body["code"] == "invalid_request", body


def test_bad_user_tags_are_refused(server):
    photo = [("files", "a.jpg", jpeg(), "image/jpeg")]
    status, body, _ = post_files(f"{server}/v1/tag", photo, fields=[("user_tags", "ok bad\x00tag")])
    assert status == 422 and "user_tags" in body["detail"] and "control character" in body["detail"]
    status, body, _ = post_files(
        f"{server}/v1/feedback/images", [("file", "a.jpg", jpeg(), "image/jpeg")], fields=[("user_tags", "<script>")]
    )
    assert status == 422 and "user_tags" in body["detail"]
