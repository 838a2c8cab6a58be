"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import ALPACA, MULTI_TURN, write_jsonl


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)


@pytest.fixture
def multi_turn_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "multi.jsonl", [MULTI_TURN])
