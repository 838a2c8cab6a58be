"""LoRA / DoRA adapters through peft (`all-linear`: peft's, every linear layer but the head)."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch.nn import Linear
from transformers import PreTrainedModel

from tunesmith.compat import transformers as hf_compat
from tunesmith.config.schema import LoraConfig
from tunesmith.errors import UserError


def embedding_modules(model: PreTrainedModel) -> list[str]:
    """Names of the input embeddings and the output head (`embed_tokens`, `lm_head`), as
    peft's modules_to_save matches them: what must be trained when the vocabulary grows."""
    wanted = [model.get_input_embeddings(), model.get_output_embeddings()]
    names = []
    for module in wanted:
        for name, candidate in model.named_modules():
            if candidate is module and name:
                names.append(name.rsplit(".", 1)[-1])
                break
    return list(dict.fromkeys(names))


def apply_lora(
    model: PreTrainedModel,
    lora_cfg: LoraConfig,
    gradient_checkpointing: bool = False,
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap `model` with a trainable LoRA (or DoRA) adapter; the base weights are frozen.

    Unlike peft's prepare_model_for_kbit_training, nothing is upcast to fp32: the
    norms and the (large-vocabulary) head stay in the model's dtype.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        hf_compat.enable_activation_checkpointing(model)
        # with frozen embeddings, a reentrant checkpoint (if a caller switches to one) would
        # see no input that requires grad and skip the backward of its block
        model.enable_input_require_grads()
        model.config.use_cache = False
    config = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        use_dora=lora_cfg.use_dora,
        bias=lora_cfg.bias,
        task_type="CAUSAL_LM",
        modules_to_save=modules_to_save,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft's NoMatchingPeftModuleError is a ValueError
        if "not found in the base model" not in str(err):
            raise
        linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, Linear)}
        raise UserError(
            f"lora.target_modules: {str(err).splitlines()[0].rstrip('.')}; the model's linear "
            f"layers are {', '.join(sorted(linear))} (or use all-linear)"
        ) from None


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path) -> PeftModel:
    """`model` with the PEFT adapter in `adapter_dir` on top (peft's own loading).

    An adapter that does not fit the model (made for another base: other layer names or
    shapes; a damaged adapter_config.json) is a UserError naming the dir and peft's reason."""
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except (ValueError, RuntimeError, TypeError, KeyError, AttributeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].endswith(":"):  # "Error(s) in loading state_dict for X:"
            lines = lines[1:]
        reason = lines[0] if lines else ""
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise UserError(
            f"{adapter_dir}: this adapter does not load on this base model ({type(err).__name__}"
            f"{': ' + reason if reason else ''}); pass the base it was trained on, or the "
            "adapter is damaged"
        ) from err
