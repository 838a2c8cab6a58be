"""Load a model (and an optional PEFT adapter on top) for generation."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import UserError


def has_tokenizer(path: str | Path) -> bool:
    return (Path(path) / "tokenizer_config.json").exists()


def check_adapter_dir(adapter: str | Path) -> Path:
    from tunesmith.model.load import check_weights

    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        raise UserError(
            f"{path} holds no adapter_config.json: pass a PEFT adapter directory "
            f"(made by `tunesmith convert pth_to_hf`)"
        )
    check_weights(path, "adapter")
    return path


def load_for_inference(
    model: str, adapter: str | None = None, bits: int | None = None, device: str = "auto"
):
    """Return (model, tokenizer) ready for `generate`.

    The tokenizer comes from the adapter dir when it has one: it carries the chat
    template used in training.
    """
    from transformers import AutoTokenizer

    from tunesmith.config.schema import ModelConfig, QuantizationConfig
    from tunesmith.model.load import load_model, load_tokenizer

    adapter_path = check_adapter_dir(adapter) if adapter else None
    if adapter_path and has_tokenizer(adapter_path):
        tokenizer = AutoTokenizer.from_pretrained(adapter_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = load_tokenizer(model)
    quantization = QuantizationConfig(bits=bits) if bits else None
    loaded = load_model(ModelConfig(path=model), quantization, device=device)
    if adapter_path:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, str(adapter_path))
    return loaded, tokenizer
