"""The text runtime's settings: from model.toml's [text], else the files
sentence-transformers writes, else defaults; bad values are load errors that say
which key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlapi.errors import ModelLoadError
from mlapi.runtimes import text_config


def _folder(tmp_path: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return tmp_path


def test_defaults_without_any_config(tmp_path: Path) -> None:
    settings = text_config.read(tmp_path, None, None)
    assert (settings.task, settings.pooling, settings.normalize) == ("embedding", "mean", False)
    assert settings.max_length == text_config.DEFAULT_MAX_LENGTH and settings.truncate
    assert settings.dimensions == ()


def test_sentence_transformers_files_are_read(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        {
            "1_Pooling/config.json": {
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False,
            },
            "modules.json": [{"type": "sentence_transformers.models.Normalize"}],
            "sentence_bert_config.json": {"max_seq_length": 128},
            "config.json": {"max_position_embeddings": 512},
        },
    )
    settings = text_config.read(folder, None, None)
    assert (settings.pooling, settings.normalize, settings.max_length) == ("cls", True, 128)


def test_model_toml_wins_and_a_classifier_takes_its_labels(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        {
            "config.json": {
                "architectures": ["BertForSequenceClassification"],
                "id2label": {"1": "yes", "0": "no"},
            }
        },
    )
    settings = text_config.read(folder, {"max_length": 64, "dimensions": [32, 16]}, None)
    assert settings.task == "classification" and settings.labels == ("no", "yes")
    assert settings.max_length == 64 and settings.dimensions == (16, 32)
    named = text_config.read(folder, None, ("a", "b"))
    assert named.labels == ("a", "b")


@pytest.mark.parametrize(
    ("table", "word"),
    [
        ({"poolin": "mean"}, "unknown key"),
        ({"pooling": "max"}, "pooling"),
        ({"task": "generation"}, "task"),
        ({"max_length": 0}, "max_length"),
        ({"token_budget": "big"}, "token_budget"),
        ({"max_padding": 0.9}, "max_padding"),
        ({"max_padding": "tight"}, "max_padding"),
        ({"max_padding": True}, "max_padding"),
        ({"normalize": "yes"}, "normalize"),
        ({"dimensions": [0]}, "dimensions"),
        ({"dimensions": 128}, "dimensions"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, table: dict[str, Any], word: str) -> None:
    with pytest.raises(ModelLoadError, match=word):
        text_config.read(tmp_path, table, None)


def test_a_broken_json_file_is_a_load_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"config.json": "{not json"})
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        text_config.read(folder, None, None)
