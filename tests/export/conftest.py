"""Fixtures for export tests: a tiny LoRA training run (3 steps on the tiny model)."""

from __future__ import annotations

import pytest
from export_helpers import TinyChatData, tiny_lora_config


@pytest.fixture(scope="session")
def trained_lora(tmp_path_factory, tiny_model_dir, smollm_tokenizer):
    """(config_path, work_dir, recipe) after 3 LoRA steps on the tiny model."""
    from tunesmith.config.loader import dump_config
    from tunesmith.train.recipe import TrainRecipe

    root = tmp_path_factory.mktemp("lora-run")
    cfg = tiny_lora_config(tiny_model_dir, root / "work")
    config_path = root / "tiny_lora.yaml"
    config_path.write_text(dump_config(cfg))
    recipe = TrainRecipe(cfg, root / "work", dataset=TinyChatData(smollm_tokenizer))
    recipe.setup()
    recipe.train()
    return config_path, root / "work", recipe
