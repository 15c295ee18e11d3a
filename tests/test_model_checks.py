"""Model-file checks on damaged copies of the shipped default model (a ``merged`` model whose first part is the
Corel5k ``ensemble``): each damage is one error naming the file."""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from phototag.methods import get_method_class
from phototag.model_checks import (
    ModelFormatError,
    check_header,
    check_methods,
    check_weights,
)

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "src" / "phototag" / "default_model"


@pytest.fixture(scope="module")
def header() -> dict:
    return json.loads((DEFAULT_MODEL / "phototag_model.json").read_text())


@functools.cache
def default_tensors() -> dict[str, np.ndarray]:
    return load_file(str(DEFAULT_MODEL / "weights.safetensors"))


@pytest.fixture()
def tensors() -> dict[str, np.ndarray]:
    return dict(default_tensors())


def check_all(header_raw, tensors, file="m/phototag_model.json", weights="m/weights.safetensors") -> dict:
    """What TagModel.load runs: header, method config, member configs, weights."""
    header = check_header(header_raw, file)
    check_methods(header, get_method_class, file)
    check_weights(tensors, header, weights)
    return header


def test_the_shipped_default_model_passes(header, tensors):
    checked = check_all(header, tensors)
    assert checked["decision"] == {"threshold": 0.3, "max_tags": 15, "balanced": True, "balanced_places": 5}
    assert checked["method"] == "merged"  # the Corel5k ensemble (part 0) and the ImageNet keywords (part 1)


def damaged(header: dict, edit) -> dict:
    copy_ = copy.deepcopy(header)
    edit(copy_)
    return copy_


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda h: h["decision"].update(extra=1), r"decision.extra: Extra inputs are not permitted"),
        (lambda h: h["decision"].update(threshold="0.3"), r"decision.threshold: Input should be a valid number"),
        (lambda h: h["decision"].update(threshold=math.nan), r"decision.threshold: Value error, must be a finite"),
        (lambda h: h["decision"].update(threshold=3.0), r"decision.threshold: Input should be less than or equal"),
        (lambda h: h["decision"].update(max_tags=0), r"decision.max_tags: Input should be greater than or equal"),
        (lambda h: h.pop("method_meta"), r"method_meta: Field required"),
        (lambda h: h.update(config=[1, 2]), r"config: Input should be a valid dictionary"),
        (lambda h: h.update(method=7), r"method: Input should be a valid string"),
        (lambda h: h.update(format_version="1"), r"format_version: Input should be a valid integer"),
        (lambda h: h.update(format="other"), r"is not a phototag model file \(format 'other'\)"),
    ],
)
def test_damaged_header_is_one_line_naming_the_file(header, edit, message):
    with pytest.raises(ModelFormatError, match=message) as caught:
        check_header(damaged(header, edit), "m/phototag_model.json")
    assert str(caught.value).startswith("m/phototag_model.json") and "\n" not in str(caught.value)


def test_another_format_version_is_named_before_the_schema(header):
    newer = damaged(header, lambda h: h.update(format_version=2, decision={"new": "shape"}))
    with pytest.raises(ModelFormatError, match=r"m.json has model format version 2, but this phototag reads version 1"):
        check_header(newer, "m.json", format_version=1)


@pytest.mark.parametrize("raw", [[], [1, 2], "model", 3, None])
def test_a_header_that_is_not_an_object(raw):
    with pytest.raises(ModelFormatError, match=r"m.json is not a phototag model file: it holds a JSON"):
        check_header(raw, "m.json")


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda h: h["config"]["parts"][0]["config"].update(balance="high"),
            r"setting 'ensemble.balance: Input should be a valid number",
        ),
        (
            lambda h: h["config"]["parts"][0]["config"].update(members="mlp"),
            r"setting 'ensemble.members: Input should be a valid list",
        ),
        (
            lambda h: h["config"]["parts"][0]["config"].update(speed=3),
            r"method 'ensemble' has no setting\(s\) \['speed'\]",
        ),
        (
            lambda h: h["method_meta"]["parts"][0]["meta"]["members"][1]["config"].update(hidden="big"),
            r"'mlp.hidden: Input should be",
        ),
        (
            lambda h: h["method_meta"]["parts"][0]["meta"]["members"][0].update(method="nothing"),
            r"member 0: Unknown method 'nothing'",
        ),
        (
            lambda h: h["method_meta"]["parts"][0]["meta"].update(members={"a": 1}),
            r"part 0 meta 'members' must be a list",
        ),
    ],
)
def test_wrong_config_types_are_refused(header, tensors, edit, message):
    with pytest.raises(ModelFormatError, match=message):
        check_all(damaged(header, edit), tensors)


def test_wrong_weight_shapes_and_missing_arrays(header, tensors):
    cut = dict(tensors)
    cut["method/part0/member1/net.0.weight"] = tensors["method/part0/member1/net.0.weight"][:, :1000]
    with pytest.raises(
        ModelFormatError, match=r"'method/part0/member1/net.0.weight' has shape 512x1000.*declares 512x1280"
    ):
        check_all(header, cut)
    wrong_tags = dict(tensors, **{"method/part0/offsets/vote": np.zeros(259, np.float32)})
    with pytest.raises(ModelFormatError, match=r"'method/part0/offsets/vote' has shape \(259,\), expected \(260,\)"):
        check_all(header, wrong_tags)
    missing = {k: v for k, v in tensors.items() if k != "method/part0/member5/net.3.bias"}
    with pytest.raises(
        ModelFormatError,
        match=r"m/weights.safetensors is damaged: the array 'method/part0/member5/net.3.bias' is missing",
    ):
        check_all(header, missing)
    # The shipped ensemble was trained without its stacker (stacker=false); a header that says it has one needs it.
    assert not [name for name in tensors if "stacker" in name]

    def with_stacker(h):
        h["method_meta"]["parts"][0]["config"]["stacker"] = True

    with pytest.raises(ModelFormatError, match=r"the array 'method/part0/stacker/net.0.weight' is missing"):
        check_all(damaged(header, with_stacker), tensors)
    threshold = dict(tensors, **{"decision/per_tag_threshold": np.full(12, 0.3, np.float32)})
    with pytest.raises(ModelFormatError, match=r"per_tag_threshold' has shape 12"):
        check_all(header, threshold)
    # A meta that lies about the feature width is caught the same way.
    with pytest.raises(ModelFormatError, match=r"member1/mean' has shape 1280, but the model declares 1000"):
        check_all(
            damaged(
                header, lambda h: h["method_meta"]["parts"][0]["meta"]["members"][1]["meta"].update(n_features=1000)
            ),
            tensors,
        )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(header, tensors, bad):
    poisoned = dict(tensors)
    array = tensors["method/part0/member0/net.3.weight"].copy()
    array[5, 7] = bad
    poisoned["method/part0/member0/net.3.weight"] = array
    with pytest.raises(ModelFormatError, match=r"'method/part0/member0/net.3.weight' holds 1 NaN or infinite value"):
        check_all(header, poisoned)


def test_damaged_copy_on_disk_round_trip(header, tmp_path):
    """The same checks on files read back from a damaged copy of the model directory."""
    copy_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, copy_dir)
    tensors = load_file(str(copy_dir / "weights.safetensors"))
    tensors["method/part0/member4/net.0.bias"] = np.full_like(tensors["method/part0/member4/net.0.bias"], np.nan)
    save_file(tensors, str(copy_dir / "weights.safetensors"))
    header_file = copy_dir / "phototag_model.json"
    raw = json.loads(header_file.read_text())
    n_bad = tensors["method/part0/member4/net.0.bias"].size  # every value: the hidden layer's width
    message = rf"model/weights.safetensors is damaged: .*member4/net.0.bias.* {n_bad} NaN"
    with pytest.raises(ModelFormatError, match=message):
        check_all(raw, load_file(str(copy_dir / "weights.safetensors")), header_file, copy_dir / "weights.safetensors")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=6,
    ),
    where=st.sampled_from(["decision", "config", "method_meta", "backbone", "n_tags", "method", "info"]),
)
def test_fuzzed_header_values_give_a_model_error_or_pass(header, value, where):
    """Any JSON value in any header field: either the checks pass or one ModelFormatError; never another error."""
    raw = damaged(header, lambda h: h.__setitem__(where, value))
    try:
        check_all(raw, default_tensors())
    except ModelFormatError as err:
        assert "\n" not in str(err) and ("phototag_model.json" in str(err) or "weights.safetensors" in str(err))


DAMAGES = {
    "header is a list": lambda d: (d / "phototag_model.json").write_text("[1, 2]"),
    "extra key in decision": lambda d: _edit_header(d, lambda h: h["decision"].update(extra=1)),
    "config value of the wrong type": lambda d: _edit_header(
        d, lambda h: h["config"]["parts"][0]["config"].update(balance_k="two")
    ),
    "member config of the wrong type": lambda d: _edit_header(
        d, lambda h: h["method_meta"]["parts"][0]["meta"]["members"][0]["config"].update(hidden=[512])
    ),
    "wrong weight shape": lambda d: _edit_weights(d, "method/part0/member0/net.0.weight", lambda a: a[:, :100]),
    "NaN weights": lambda d: _edit_weights(d, "method/part0/member1/net.3.bias", lambda a: a * np.nan),
}


def _edit_header(model_dir: Path, edit) -> None:
    header = json.loads((model_dir / "phototag_model.json").read_text())
    edit(header)
    (model_dir / "phototag_model.json").write_text(json.dumps(header))


def _edit_weights(model_dir: Path, name: str, edit) -> None:
    tensors = load_file(str(model_dir / "weights.safetensors"))
    tensors[name] = np.ascontiguousarray(edit(tensors[name]))
    save_file(tensors, str(model_dir / "weights.safetensors"))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_loading_a_damaged_model_is_one_model_error(tmp_path, damage):
    from phototag.model import ModelFormatError as LoadError
    from phototag.model import load_model

    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    DAMAGES[damage](model_dir)
    with pytest.raises(LoadError) as caught:
        load_model(model_dir)
    message = str(caught.value)
    assert str(model_dir) in message and "\n" not in message
