"""Load a model (and an optional PEFT adapter on top) for generation."""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.errors import UserError
from tunesmith.model.resolve import resolve_model_path


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for but no CUDA device is visible: use --device cpu"
        )
    return device


def has_tokenizer(path: str | Path) -> bool:
    return (Path(path) / "tokenizer_config.json").exists()


def check_adapter_dir(adapter: str | Path) -> Path:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        raise UserError(
            f"{path} holds no adapter_config.json: pass a PEFT adapter directory "
            f"(made by `tunesmith convert pth_to_hf`)"
        )
    return path


def load_for_inference(
    model: str, adapter: str | None = None, bits: int | None = None, device: str = "auto"
):
    """Return (model, tokenizer) ready for `generate`; the adapter's tokenizer wins if it has one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    base_path = resolve_model_path(model)
    adapter_path = check_adapter_dir(adapter) if adapter else None
    tokenizer_path = adapter_path if adapter_path and has_tokenizer(adapter_path) else base_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    kwargs: dict = {"dtype": torch.bfloat16 if device == "cuda" else torch.float32}
    if bits:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"]
            )
            if bits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = device
    loaded = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    if not bits:
        loaded.to(device)
    if adapter_path:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, str(adapter_path))
    return loaded, tokenizer
