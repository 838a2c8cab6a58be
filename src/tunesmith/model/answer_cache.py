"""Greedy answers already computed for given weights, kept across runs.

Greedy decoding is deterministic for fixed weights, prompt and settings, so a base
model is asked each question once (its answers feed the identity and retention
evals and the forgetting guard of every run).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tunesmith.fileio import atomic_write_text
from tunesmith.model.embedded import cache_root


def weights_key(*paths: str | Path) -> str | None:
    """A key that changes whenever a weight or tokenizer file changes (path, size, mtime)."""
    parts = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            return None
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in (".safetensors", ".json", ".jinja", ".bin"):
                stat = f.stat()
                parts.append(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20] if parts else None


class AnswerCache:
    """(answer, finished) per (prompt, system, max_new_tokens), in ~/.cache/tunesmith/answers/.

    TUNESMITH_ANSWER_CACHE names another directory, or 0 to turn the cache off."""

    def __init__(self, key: str | None):
        where = os.environ.get("TUNESMITH_ANSWER_CACHE") or str(cache_root() / "answers")
        self.path = Path(where) / f"{key}.json" if key and where != "0" else None
        self.entries: dict = {}
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self.entries = {}

    @staticmethod
    def entry(prompt: str, system: str | None, max_new_tokens: int) -> str:
        return json.dumps([prompt, system, max_new_tokens], ensure_ascii=False)

    def get(self, entry: str) -> tuple[str, bool] | None:
        found = self.entries.get(entry)
        return (found[0], found[1]) if found else None

    def save(self, new: dict[str, tuple[str, bool]]) -> None:
        if not self.path or not new:
            return
        self.entries.update({k: list(v) for k, v in new.items()})
        atomic_write_text(self.path, json.dumps(self.entries, ensure_ascii=False))
