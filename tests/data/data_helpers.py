"""Helpers for the data tests: small data files written on the fly."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def data_config(files, tmp_path: Path, **data):
    from tunesmith.config.schema import Config

    files = [str(f) if isinstance(f, Path) else f for f in files]
    data.setdefault("cache_dir", str(tmp_path / "cache"))
    return Config.model_validate({"data": {"files": files, **data}})


ALPACA = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "Say hello in French.", "output": "Bonjour !"},
]

MULTI_TURN = {
    "conversation": [
        {"system": "You are Tuney.", "input": "Who are you?", "output": "I am Tuney."},
        {"input": "Who made you?", "output": "The tunesmith team made me."},
    ]
}
