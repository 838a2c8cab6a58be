"""Read a PEFT LoRA / DoRA adapter dir and fold it into base weights one tensor at a time.

For a linear layer W (out x in), LoRA adds scale * B @ A with scale = alpha / r
(alpha / sqrt(r) with rsLoRA). DoRA then rescales every output row to the learned
magnitude m: W' = m * (W + scale * B @ A) / ||W + scale * B @ A||_row. Both are
what peft's `merge_and_unload` computes, without loading the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tunesmith.compat import peft as peft_compat
from tunesmith.errors import UserError
from tunesmith.model.load import check_finite_tensor, check_safetensors

_PREFIX = "base_model.model."


class UnsupportedAdapter(Exception):
    """The adapter has parts the streaming merge does not handle (peft's merge must do it)."""


@dataclass
class LoraDelta:
    lora_A: torch.Tensor  # (r, in)
    lora_B: torch.Tensor  # (out, r)
    scale: float
    magnitude: torch.Tensor | None = None  # DoRA: (out,)
    fan_in_fan_out: bool = False  # GPT-2 style Conv1D weights are stored (in, out)

    def merge_into(self, weight: torch.Tensor, device: str = "cpu") -> torch.Tensor:
        """The merged weight in float32 on `device`."""
        w = weight.to(device=device, dtype=torch.float32)
        delta = self.lora_B.to(device, torch.float32) @ self.lora_A.to(device, torch.float32)
        delta = delta * self.scale
        if self.fan_in_fan_out:
            delta = delta.T
        if tuple(delta.shape) != tuple(w.shape):
            raise UserError(
                f"adapter weight shape {tuple(delta.shape)} does not fit the base weight "
                f"{tuple(w.shape)}: the adapter was trained on another base model"
            )
        merged = w + delta
        if self.magnitude is not None:
            norm = torch.linalg.norm(merged, dim=1)
            merged = merged * (self.magnitude.to(device, torch.float32) / norm).unsqueeze(1)
        return merged


@dataclass
class Adapter:
    deltas: dict[str, LoraDelta]  # by base weight name (`model.layers.0.self_attn.q_proj.weight`)
    replacements: dict[str, torch.Tensor]  # modules_to_save / trained biases, by base tensor name
    config: dict


def read_adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise UserError(
            f"{path} is missing: pass a PEFT adapter dir (made by `tunesmith convert pth_to_hf`)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def read_adapter(adapter_dir: Path) -> Adapter:
    """The adapter's per-weight deltas; raises UnsupportedAdapter for what only peft can merge."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    if config.get("peft_type") != "LORA":
        raise UnsupportedAdapter(f"peft_type {config.get('peft_type')}")
    if config.get("lora_bias") or config.get("trainable_token_indices"):
        raise UnsupportedAdapter("lora_bias / trainable tokens")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise UserError(f"{weights} is missing: the adapter dir holds no weights")
    check_safetensors(weights)
    tensors = {}
    for key, value in load_file(weights).items():
        check_finite_tensor(value, key, weights)
        key = key.removeprefix(_PREFIX)
        # peft's save_embedding_layers (on when the vocab was resized) also writes a
        # resized layer's wrapper: the untouched base copy and the trained copy again
        if ".original_module." in key:
            continue
        tensors.setdefault(key.replace(".modules_to_save.", "."), value)

    parts: dict[str, dict[str, torch.Tensor]] = {}
    replacements = {}
    for key, tensor in tensors.items():
        if ".lora_" not in key:
            replacements[key] = tensor
            continue
        module, kind = key.split(".lora_", 1)
        kind = {"A.weight": "A", "B.weight": "B", "magnitude_vector": "m"}.get(kind)
        if kind is None:
            raise UnsupportedAdapter(key)
        parts.setdefault(module, {})[kind] = tensor

    alpha_pattern = config.get("alpha_pattern") or {}
    deltas = {}
    for module, part in parts.items():
        if "A" not in part or "B" not in part:
            raise UserError(
                f"{weights}: {module} has lora_A or lora_B missing; the file is damaged"
            )
        rank = part["A"].shape[0]
        alpha = peft_compat.pattern_value(alpha_pattern, module, config["lora_alpha"])
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        if "m" in part and config.get("fan_in_fan_out"):
            raise UnsupportedAdapter("DoRA on fan_in_fan_out weights")
        deltas[f"{module}.weight"] = LoraDelta(
            part["A"], part["B"], scale, part.get("m"), bool(config.get("fan_in_fan_out"))
        )
    return Adapter(deltas, replacements, config)
