"""The fuzz targets (fuzz/targets.py, `make fuzz`) on their committed seeds and on
inputs that once were findings: each seed is accepted or refused with ml-api's own
error, so a target that rots (a renamed function, a seed that no longer parses) fails
here before a fuzzing run would silently explore nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_targets", ROOT / "fuzz" / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TARGETS = _targets()


@pytest.mark.parametrize("name", ["binary", "json", "grpc", "tar"])
def test_every_seed_runs_through_its_target(name: str) -> None:
    seeds = sorted((ROOT / "fuzz" / "corpus" / name).iterdir())
    assert seeds, f"no seed for {name}"
    for seed in seeds:
        TARGETS.TARGETS[name](seed.read_bytes())


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("binary", b"\x00\xff\xff{}"),  # a header length past the body
        ("json", b"\x00" + b"[" * 10_000),  # nesting deeper than the JSON parser takes
        ("grpc", b"\x00" + b"\x2a\x00" * 10_000),  # 10,000 empty input entries
        ("tar", b"\x00" * 1024),  # an empty archive
        ("tar", b"not a tar at all"),
    ],
)
def test_hostile_inputs_are_refused_by_ml_apis_own_errors(name: str, data: bytes) -> None:
    TARGETS.TARGETS[name](data)
