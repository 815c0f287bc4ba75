"""model.toml parsed alone (repository/config.py): every key lands where it should,
what is absent takes its default, and every refusal names its key in these words
(a model's readiness shows them; one typo must never change nothing silently)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlapi.errors import ModelLoadError
from mlapi.repository import config
from mlapi.repository.config import (
    BatchingConfig,
    ModelConfig,
    RolloutConfig,
    VersionPolicy,
    WarmupConfig,
)
from mlapi.tensors import DATATYPES, TensorSpec

FULL: dict[str, Any] = {
    "runtime": "onnx",
    "file": "weights/model.onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "y", "datatype": "INT64", "shape": [-1]},
        {"name": "p", "datatype": "FP32", "shape": [-1, 3]},
    ],
    "labels": ["a", "b", "c"],
    "batching": {"max_batch_size": 8, "max_delay_ms": 2.5, "max_queue": 9, "enabled": False},
    "warmup": {"enabled": False, "inputs": {"x": [[1, 2, 3, 4]]}},
    "version_policy": {"latest": 2},
    "python_class": "Model",
    "trusted_types": ["sklearn.linear_model.LogisticRegression"],
    "platform": "onnxruntime_onnx",
    "memory_mb": 512,
    "rollout": {"bake_s": 10, "window_s": 5, "max_error_ratio": 0.5, "min_requests": 3},
    "text": {"task": "embedding"},
}


def test_every_key_lands_where_it_should() -> None:
    assert config.parse(FULL) == ModelConfig(
        runtime="onnx",
        file="weights/model.onnx",
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "INT64", (-1,)), TensorSpec("p", "FP32", (-1, 3))),
        labels=("a", "b", "c"),
        batching=BatchingConfig(max_batch_size=8, max_delay_ms=2.5, max_queue=9, enabled=False),
        warmup=WarmupConfig(enabled=False, inputs={"x": [[1, 2, 3, 4]]}),
        version_policy=VersionPolicy(latest=2),
        python_class="Model",
        trusted_types=("sklearn.linear_model.LogisticRegression",),
        platform="onnxruntime_onnx",
        memory_mb=512.0,
        rollout=RolloutConfig(bake_s=10, window_s=5, max_error_ratio=0.5, min_requests=3),
        text={"task": "embedding"},
    )


def test_what_is_absent_takes_its_default() -> None:
    assert config.parse({}) == ModelConfig()
    assert config.parse({"batching": {}, "warmup": {}, "rollout": {}}) == ModelConfig()
    defaults = ModelConfig()
    assert defaults.batching.enabled and defaults.warmup.enabled and defaults.trusted_types == ()
    assert config.parse({"version_policy": {"versions": [3, 1]}}).version_policy == VersionPolicy(
        latest=None, versions=(3, 1)
    )


def test_a_version_policy_chooses_the_newest_or_the_named_ones_in_order() -> None:
    assert VersionPolicy().select([1, 3, 2]) == [3]
    assert VersionPolicy(latest=2).select([1, 3, 2]) == [2, 3]
    assert VersionPolicy(latest=None).select([1, 3, 2]) == [1, 2, 3]
    assert VersionPolicy(latest=None, versions=(3, 5, 1)).select([1, 2, 3]) == [1, 3]


DATATYPE_LIST = sorted(DATATYPES)
SPEC = {"name": "x", "datatype": "FP32", "shape": [1]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"runtme": "onnx", "fil": 1}, "model.toml: unknown key(s) ['fil', 'runtme']"),
        ({"runtime": 3}, "model.toml: 'runtime' must be a string"),
        ({"file": ["a"]}, "model.toml: 'file' must be a string"),
        ({"python_class": 1}, "model.toml: 'python_class' must be a string"),
        ({"platform": True}, "model.toml: 'platform' must be a string"),
        ({"labels": "a,b"}, "model.toml: 'labels' must be a list of strings"),
        ({"labels": ["a", 2]}, "model.toml: 'labels' must be a list of strings"),
        ({"trusted_types": "x"}, "model.toml: 'trusted_types' must be a list of strings"),
        ({"text": "embedding"}, "model.toml: [text] must be a table"),
        ({"inputs": []}, "model.toml: 'inputs' must be a non-empty array of tables"),
        ({"outputs": {"name": "y"}}, "model.toml: 'outputs' must be a non-empty array of tables"),
        ({"inputs": ["x"]}, "model.toml: inputs[0] takes only name, datatype and shape"),
        (
            {"inputs": [SPEC, {**SPEC, "name": "z", "dims": [1]}]},
            "model.toml: inputs[1] takes only name, datatype and shape",
        ),
        (
            {"inputs": [{**SPEC, "name": ""}]},
            "model.toml: inputs[0]: 'name' must be a non-empty string",
        ),
        (
            {"inputs": [{**SPEC, "name": 5}]},
            "model.toml: inputs[0]: 'name' must be a non-empty string",
        ),
        (
            {"outputs": [{**SPEC, "datatype": "FLOAT"}]},
            f"model.toml: outputs[0]: 'datatype' must be one of {DATATYPE_LIST}",
        ),
        (
            {"inputs": [{**SPEC, "shape": [0]}]},
            "model.toml: inputs[0]: 'shape' must be a list of positive ints or -1",
        ),
        (
            {"inputs": [{**SPEC, "shape": [-2]}]},
            "model.toml: inputs[0]: 'shape' must be a list of positive ints or -1",
        ),
        (
            {"inputs": [{**SPEC, "shape": [True]}]},
            "model.toml: inputs[0]: 'shape' must be a list of positive ints or -1",
        ),
        (
            {"inputs": [{**SPEC, "shape": "1"}]},
            "model.toml: inputs[0]: 'shape' must be a list of positive ints or -1",
        ),
        ({"inputs": [SPEC, SPEC]}, "model.toml: 'inputs' has duplicate names"),
        ({"batching": 3}, "model.toml: [batching] must be a table"),
        ({"batching": {"size": 3}}, "model.toml: [batching] unknown key(s) ['size']"),
        (
            {"batching": {"enabled": "false"}},
            "model.toml: [batching] enabled must be true or false",
        ),
        ({"warmup": {"enabled": 0}}, "model.toml: [warmup] enabled must be true or false"),
        ({"warmup": []}, "model.toml: [warmup] must be a table"),
        ({"warmup": {"input": {}}}, "model.toml: [warmup] unknown key(s) ['input']"),
        (
            {"warmup": {"inputs": [1]}},
            "model.toml: [warmup] inputs must be a table of input name = data",
        ),
        ({"version_policy": 1}, "model.toml: [version_policy] must be a table"),
        (
            {"version_policy": {"newest": 1}},
            "model.toml: [version_policy] unknown key(s) ['newest']",
        ),
        (
            {"version_policy": {"latest": 0}},
            "model.toml: [version_policy] latest must be an int >= 1",
        ),
        (
            {"version_policy": {"latest": True}},
            "model.toml: [version_policy] latest must be an int >= 1",
        ),
        (
            {"version_policy": {"latest": 1.5}},
            "model.toml: [version_policy] latest must be an int >= 1",
        ),
        (
            {"version_policy": {"versions": 2}},
            "model.toml: [version_policy] versions must be positive ints",
        ),
        (
            {"version_policy": {"versions": [1, 0]}},
            "model.toml: [version_policy] versions must be positive ints",
        ),
        (
            {"version_policy": {"versions": [True]}},
            "model.toml: [version_policy] versions must be positive ints",
        ),
        (
            {"version_policy": {"versions": ["1"]}},
            "model.toml: [version_policy] versions must be positive ints",
        ),
        ({"rollout": {"bake": 1}}, "model.toml: [rollout] unknown key(s) ['bake']"),
        ({"rollout": []}, "model.toml: [rollout] must be a table"),
    ],
)
def test_each_refusal_names_its_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError) as refused:
        config.parse(raw)
    assert refused.value.message == message


@pytest.mark.parametrize(
    ("section", "key", "low", "high"),
    [
        ("batching", "max_batch_size", 1, 1_000_000),
        ("batching", "max_delay_ms", 0, 10_000),
        ("batching", "max_queue", 1, 1_000_000),
        ("rollout", "bake_s", 0, 604_800),
        ("rollout", "window_s", 0.1, 604_800),
        ("rollout", "max_error_ratio", 0, 1),
        ("rollout", "min_requests", 1, 1_000_000),
    ],
)
def test_numbers_are_finite_and_within_their_range_edges_included(
    section: str, key: str, low: float, high: float
) -> None:
    for edge in (low, high):
        parsed = config.parse({section: {key: edge}})
        assert getattr(getattr(parsed, section), key) == edge
    message = f"model.toml: [{section}] {key} must be a finite number from {low:g} to {high:g}"
    for bad in (low - 0.01, high + 1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ModelLoadError) as refused:
            config.parse({section: {key: bad}})
        assert refused.value.message == message


def test_memory_mb_is_over_zero_and_at_most_16_tib() -> None:
    assert config.parse({"memory_mb": float(1 << 24)}).memory_mb == float(1 << 24)
    assert config.parse({"memory_mb": 0.5}).memory_mb == 0.5
    for bad in (0, -1, float(1 << 24) + 1, float("inf"), float("nan"), True, "5"):
        with pytest.raises(ModelLoadError) as refused:
            config.parse({"memory_mb": bad})
        assert refused.value.message == (
            "model.toml: 'memory_mb' must be a finite number over 0, at most 1.67772e+07"
        )


def test_a_model_toml_that_cannot_be_read_says_why(tmp_path: Path) -> None:
    assert config.read_raw(tmp_path / "model.toml") == {}
    (tmp_path / "m" / "1").mkdir(parents=True)
    broken = tmp_path / "m" / "1" / "model.toml"
    broken.write_text("runtime = ")
    with pytest.raises(ModelLoadError, match=r"^1/model\.toml is not valid TOML: "):
        config.read_raw(broken)
    broken.write_bytes(b'runtime = "\xff"')
    with pytest.raises(ModelLoadError, match=r"^1/model\.toml is not valid TOML: 'utf-8' codec"):
        config.read_raw(broken)
    beside_a_file = tmp_path / "file"
    beside_a_file.write_text("")
    with pytest.raises(ModelLoadError) as refused:
        config.read_raw(beside_a_file / "model.toml")
    assert refused.value.message == "model.toml cannot be read (NotADirectoryError)"
    broken.write_text('runtime = "onnx"\n[batching]\nmax_queue = 3\n')
    assert config.read_raw(broken) == {"runtime": "onnx", "batching": {"max_queue": 3}}
