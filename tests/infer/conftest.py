"""Fixtures for the engine, chat, web UI and server tests: one tiny model, loaded once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from tunesmith.infer.engine import Engine

    return Engine.load(str(tiny_model_dir), device="cpu")
