"""The files that make an exported model chat like it was trained: tokenizer + generation config.

The tokenizer carries the chat template used in training; generation_config.json
lists every token that ends a turn as `eos_token_id`, so vanilla `generate` and
`pipeline("text-generation")` stop where tunesmith's own chat stops.
"""

from __future__ import annotations

from pathlib import Path

from transformers import GenerationConfig

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
) -> GenerationConfig:
    """generation_config.json: the base's own, with eos_token_id extended by the stop tokens."""
    base_file = Path(base_dir) / "generation_config.json" if base_dir else None
    has_base = base_file is not None and base_file.exists()
    config = GenerationConfig.from_pretrained(base_dir) if has_base else GenerationConfig()
    base_eos = config.eos_token_id
    eos = base_eos if isinstance(base_eos, list) else ([base_eos] if base_eos is not None else [])
    config.eos_token_id = list(dict.fromkeys([*eos, *stop_token_ids(tokenizer, template_name)]))
    if config.bos_token_id is None:
        config.bos_token_id = tokenizer.bos_token_id
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(out_dir)
    return config
