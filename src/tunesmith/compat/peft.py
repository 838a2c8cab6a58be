"""peft internals tunesmith relies on (written against peft 0.21; CI runs the declared lower
bound 0.18.0 and 0.21.2).

- `peft.utils.other.get_pattern_key`: which `alpha_pattern` / `rank_pattern` key a module
  name matches, the rule peft applies when it builds LoRA layers. tunesmith's own merge
  (export/lora.py) reads adapters without building a model, so it needs the same rule;
  peft exposes it only through this helper.
"""

from __future__ import annotations

from peft.utils.other import get_pattern_key


def pattern_value(patterns: dict, module: str, default):
    """The value `patterns` (an adapter's alpha_pattern or rank_pattern) gives `module`, else
    `default`; `module` is a full module name, e.g. `model.layers.0.self_attn.q_proj`."""
    if not patterns:
        return default
    return patterns.get(get_pattern_key(list(patterns), module), default)
