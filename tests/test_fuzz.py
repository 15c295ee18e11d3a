"""Property-based fuzzing (hypothesis) of what users and clients type: CSV rows, tags, query values, feedback.

The invariant everywhere: bad input gets one clear error naming the value or file, good input goes through
unchanged, nothing crashes (no 500, no traceback) and nothing invalid is stored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from phototag.feedback import MAX_TAG_LENGTH, FeedbackStore, clean_tag
from phototag.importers import RawDataError, import_csv

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text drawn from everything a user can paste: control characters, NUL, newlines, surrogates excluded by hypothesis.
any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
path_like = st.one_of(
    any_text,
    st.sampled_from(["a.jpg", "./a.jpg", "sub/c.jpg", "../a.jpg", "/etc/passwd", "sub/../a.jpg", "sub/../../x"]),
)


# --- tag strings ----------------------------------------------------------------------------------------------------
@FUZZ
@given(tag=st.one_of(any_text, st.text(min_size=90, max_size=120)))
def test_clean_tag_accepts_only_safe_tags_and_is_idempotent(tag):
    try:
        cleaned = clean_tag(tag)
    except ValueError as err:
        assert str(err).startswith("a tag must") and "\n" not in str(err)
        return
    assert cleaned == cleaned.strip() and 0 < len(cleaned) <= MAX_TAG_LENGTH
    assert not any(unicodedata.category(c)[0] in "CZ" and c != " " for c in cleaned)
    assert clean_tag(cleaned) == cleaned


# --- CSV rows -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("csv-fuzz")
    for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (0, 90, 0)).save(root / name)
    return root


row = st.fixed_dictionaries(
    {"file": path_like, "tags": any_text, "user_tags": any_text, "split": st.sampled_from(["", "train", "val", "x"])},
    optional={"id": any_text},
)


@FUZZ
@given(rows=st.lists(row, min_size=1, max_size=6))
def test_fuzzed_csv_rows_import_cleanly_or_fail_naming_the_file(csv_folder, rows):
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=["file", "tags", "user_tags", "split", "id"])
    writer.writeheader()
    writer.writerows(rows)
    src = csv_folder / "photos.csv"
    src.write_text(out.getvalue(), encoding="utf-8", newline="")
    try:
        dataset = import_csv(src)
    except RawDataError as err:
        assert str(err).startswith(str(src)) and "\n" not in str(err).split(":", 1)[1].split("(first:")[0]
        return
    files = set()
    for record in dataset.records:
        target = (csv_folder / record.file).resolve()
        assert target.is_relative_to(csv_folder.resolve()) and target.is_file()
        assert target not in files
        files.add(target)
        for tag in record.tags + record.user_tags:
            assert tag and not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c.isspace() for c in tag)


# --- query values and feedback payloads against the real service ---------------------------------------------------
pytest.importorskip("fastapi", reason='the service needs the "serve" extra')

from broken_images import jpeg  # noqa: E402
from live_server import post_files, request, running_server, shared_default_model  # noqa: E402
from phototag.serve import ServiceConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz-feedback") / "feedback.sqlite"
    app = create_app(shared_default_model(), ServiceConfig(feedback_db=db, max_wait_ms=0))
    with running_server(app) as url:
        status, body, _ = post_files(f"{url}/v1/feedback/images", [("file", "a.jpg", jpeg(), "image/jpeg")])
        assert status == 200
        yield url, db, body["image_id"]


query_value = st.one_of(
    any_text,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "", "true", "0.3", "5"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["threshold", "top_k", "balanced"]), value=query_value)
def test_fuzzed_query_values_get_200_or_a_clear_422(live, key, value):
    url, _, _ = live
    query = urllib.parse.urlencode({key: value})
    status, body, _ = post_files(f"{url}/v1/tag?{query}", [("files", "a.jpg", jpeg(), "image/jpeg")])
    assert status in (200, 422), (status, body)
    if status == 422:
        assert body["code"] == "invalid_request" and key in body["detail"]
        return
    tags = body["results"][0]["tags"]
    if key == "threshold":
        threshold = float(value)
        assert math.isfinite(threshold) and 0 <= threshold <= 1
        assert all(t["score"] >= threshold - 1e-4 for t in tags)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=5,
)


@FUZZ
@given(
    tag=st.one_of(any_text, json_value),
    decision=st.one_of(st.sampled_from(["accept", "reject", "clear"]), any_text),
    score=st.one_of(st.none(), st.floats(allow_nan=False), any_text),
    use_stored_id=st.booleans(),
    other=st.dictionaries(any_text, json_value, max_size=2),
)
def test_fuzzed_feedback_payloads_never_store_a_bad_tag(live, tag, decision, score, use_stored_id, other):
    url, db, image_id = live
    payload = {**other, "image_id": image_id if use_stored_id else "f" * 40, "tag": tag, "decision": decision}
    payload["score"] = score
    body = json.dumps(payload).encode()
    status, answer, _ = request(f"{url}/v1/feedback", method="POST", body=body, content_type="application/json")
    assert status in (200, 404, 422), (status, answer)
    if status == 200:
        assert use_stored_id and answer["tag"] == clean_tag(tag) and decision in ("accept", "reject", "clear")
    else:
        assert answer["code"] in ("invalid_request", "unknown_image") and "\n" not in answer["detail"]


def test_every_stored_fuzzed_tag_is_a_valid_tag(live):
    """Runs after the payload fuzz (file order): the database holds only tags clean_tag accepts."""
    _, db, _ = live
    with FeedbackStore(db) as store:
        tags = [row["tag"] for row in store.decisions()]
    assert all(clean_tag(tag) == tag for tag in tags)
