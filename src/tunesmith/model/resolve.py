"""Turn what the user wrote as a model (alias, local dir, hub id) into a loadable path."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.model.embedded import EMBEDDED, embedded_dir

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(name_or_path: str, with_weights: bool = True) -> str:
    """Return a local directory (or a hub id found in the local HF cache).

    Never starts a hub download: a hub id not in the local cache is a UserError.
    """
    if name_or_path in EMBEDDED:
        return str(embedded_dir(name_or_path, with_weights=with_weights))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists() and not list(path.glob("*.gguf")):
            raise UserError(
                f"{path} is a directory but holds no config.json: not a model directory"
            )
        return str(path)
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith(("./", "../", "/")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if isinstance(cached, str):
            return str(Path(cached).parent)
        raise UserError(
            f"model '{name_or_path}' is not a local directory and not in the local Hugging Face "
            f"cache; tunesmith never downloads at run time: download it first "
            f"(e.g. `huggingface-cli download {name_or_path} --local-dir DIR`) and pass DIR"
        )
    known = ", ".join(EMBEDDED)
    raise UserError(f"model path '{name_or_path}' does not exist (embedded models: {known})")


def offline_env() -> None:
    """Make sure no library tries the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
