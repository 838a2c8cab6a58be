"""The files that make an exported model chat like it was trained: tokenizer + generation config.

The tokenizer carries the chat template used in training; generation_config.json
lists every token that ends a turn as `eos_token_id`, so vanilla `generate` and
`pipeline("text-generation")` stop where tunesmith's own chat stops.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.model.generate import stop_token_ids as turn_end_ids


def training_template_jinja(cfg: Config, tokenizer) -> str:
    """The HF chat_template of the template and default system prompt of a training config."""
    from tunesmith.data.templates import get_template

    return get_template(cfg.data.template, tokenizer).to_jinja(cfg.data.system)


def stop_token_ids(tokenizer, template_name: str = "auto") -> list[int]:
    """The tokenizer's EOS plus every stop word of the template that is a single token."""
    from tunesmith.data.templates import get_template

    return turn_end_ids(tokenizer, get_template(template_name, tokenizer).stop_words)


def write_generation_config(
    out_dir: Path, base_dir: Path | None, tokenizer, template_name: str = "auto"
) -> dict:
    """generation_config.json: the base's own, with eos_token_id extended by the stop tokens."""
    config: dict = {}
    base_file = Path(base_dir) / "generation_config.json" if base_dir else None
    if base_file and base_file.exists():
        config = json.loads(base_file.read_text())
    base_eos = config.get("eos_token_id")
    eos = base_eos if isinstance(base_eos, list) else ([base_eos] if base_eos is not None else [])
    config["eos_token_id"] = list(dict.fromkeys([*eos, *stop_token_ids(tokenizer, template_name)]))
    if tokenizer.bos_token_id is not None:
        config.setdefault("bos_token_id", tokenizer.bos_token_id)
    if tokenizer.pad_token_id is not None:
        config.setdefault("pad_token_id", tokenizer.pad_token_id)
    (Path(out_dir) / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config
