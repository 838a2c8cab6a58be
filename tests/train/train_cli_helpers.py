"""A `tunesmith train` config for the tiny model, shared by the CLI, multi-process and kill tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_cli_config(
    tmp_path: Path, model_dir: Path, pairs, train: dict, runtime: dict, dropout: float = 0.0
) -> Path:
    """A `tunesmith train` YAML for the tiny model: LoRA r=8 on `pairs` (question, answer) as
    messages records, max_length 64, TensorBoard off; `train` / `runtime` give the rest."""
    data = tmp_path / "pairs.jsonl"
    records = (
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    )
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "model": {"path": str(model_dir)},
        "lora": {"r": 8, "alpha": 16, "dropout": dropout},
        "data": {"files": [str(data)], "max_length": 64, "cache_dir": str(tmp_path / "cache")},
        "train": train,
        "runtime": {**runtime, "tensorboard": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
