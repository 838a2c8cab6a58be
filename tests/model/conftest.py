"""Fixtures for model tests: tiny random InternLM2 checkpoints (their conversion cache is
private to the test session: tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from internlm2_helpers import (
    internlm2_config,
    internlm2_state_dict,
    internlm2_tokenizer_model,
    write_internlm2,
)


@pytest.fixture(scope="session")
def internlm2_dir(tmp_path_factory) -> Path:
    config = internlm2_config()
    return write_internlm2(
        tmp_path_factory.mktemp("tiny-internlm2"), config, internlm2_state_dict(config)
    )


@pytest.fixture(scope="session")
def internlm2_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("internlm2-tokenizer")
    (out / "config.json").write_text(json.dumps({"model_type": "internlm2"}))
    shutil.copy(internlm2_tokenizer_model(), out / "tokenizer.model")
    return out
