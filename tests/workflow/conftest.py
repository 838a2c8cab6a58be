"""Workflow fixtures: a tiny model without a chat template (not a chat model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def no_template_model(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("plain-lm") / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = out / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    return out


@pytest.fixture(autouse=True)
def answer_cache(tmp_path, monkeypatch) -> Path:
    """Greedy answers cached per test, never in the user's cache."""
    path = tmp_path / "answers"
    monkeypatch.setenv("TUNESMITH_ANSWER_CACHE", str(path))
    return path
