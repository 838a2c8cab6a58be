"""The config schema: one pydantic model per labelled part, XTuner's knob names.

A config reads in parts, user-facing knobs first:

    model:        which model, dtype, attention
    quantization: 4/8-bit loading (QLoRA); null for none
    lora:         adapter settings; null for full fine-tuning
    data:         files, template, system prompt, max_length, packing
    train:        optimizer, schedule, batch, epochs, precision
    runtime:      checkpoints, chat samples, logging, work_dir
    guard:        mixing general data into identity training (forgetting guard)
    preference:   preference tuning (DPO / IPO / ORPO / SimPO) on chosen / rejected pairs; null = SFT

Every part forbids unknown keys; `tunesmith.config.loader` turns the error into
one line naming the key and the nearest valid one.
"""

from __future__ import annotations

import difflib
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tunesmith.sizes import size_in_bytes

# The chat templates built into tunesmith.data.templates (`auto`: the tokenizer's own).
TEMPLATE_NAMES = (
    "auto",
    "chatml",
    "default",
    "internlm2_chat",
    "llama3_chat",
    "qwen_chat",
    "zephyr",
)


class _Part(BaseModel):
    # allow_inf_nan=False: an `lr: .inf` or `max_norm: .nan` is refused like any bad value
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value, info):
        """`max_steps: true` was read as 1 (pydantic's lax int takes a bool): a number
        field that does not also take a bool refuses one."""
        if isinstance(value, bool) and info.field_name:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if kinds & {int, float} and bool not in kinds:
                raise PydanticCustomError(
                    "bool_for_number",
                    "a number is needed here, not {value}",
                    {"value": str(value).lower()},
                )
        return value


def _kinds(annotation) -> set:
    """The plain types in an annotation (`int | None` -> {int, NoneType})."""
    args = get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_kinds(a) for a in args))


class ModelConfig(_Part):
    # A hub id, a local directory, a .gguf file or an embedded alias
    # (`smollm2-135m-instruct`). XTuner calls it pretrained_model_name_or_path.
    path: str = Field("smollm2-135m-instruct", alias="pretrained_model_name_or_path")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # auto: sdpa on CPU; on CUDA the fastest available for packed batches
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = (
        "auto"
    )
    trust_remote_code: bool = False
    # Fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) on CUDA.
    use_liger: bool | Literal["auto"] = "auto"
    # Tokens to add to the tokenizer as special tokens (e.g. ["<tool_call>", "</tool_call>"]):
    # the embeddings and output head are resized and trained in full (peft modules_to_save),
    # saved in the adapter, and written by merge with the new vocab_size.
    special_tokens: list[str] | None = None


class QuantizationConfig(_Part):
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = Field("nf4", alias="bnb_4bit_quant_type")
    double_quant: bool = Field(True, alias="bnb_4bit_use_double_quant")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", alias="bnb_4bit_compute_dtype"
    )


class LoraConfig(_Part):
    r: int = Field(64, ge=1)
    alpha: int = Field(16, alias="lora_alpha", ge=1)
    dropout: float = Field(0.1, alias="lora_dropout", ge=0.0, lt=1.0)
    # "all-linear" = every linear layer of the decoder blocks, never the output
    # head or embeddings, whatever the head is called.
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"


class DataFile(_Part):
    path: str
    # auto-detected per file: conversation | messages | alpaca | sharegpt
    format: Literal["auto", "conversation", "messages", "alpaca", "sharegpt"] = "auto"
    repeat: int = Field(1, ge=1)


class DataConfig(_Part):
    files: list[DataFile] = Field(default_factory=list)
    # a named template (internlm2_chat, qwen_chat, llama3_chat, chatml, default, ...)
    # or auto: the tokenizer's own chat_template
    template: str = Field("auto", alias="prompt_template")
    # default system prompt for records that have none, for chat samples and export
    system: str | None = Field(None, alias="SYSTEM")
    max_length: int = Field(2048, ge=8)
    pack_to_max_length: bool = True
    # pack documents in a seeded random order (rows mix lengths and sources, repeated
    # records land in different rows) instead of longest first (a few % fuller rows);
    # for runs shorter than an epoch (data/packing.py)
    shuffle_before_pack: bool = False
    shuffle: bool = True
    cache_dir: str | None = None  # default: ~/.cache/tunesmith/data

    @field_validator("template")
    @classmethod
    def _known_template(cls, name: str) -> str:
        """Checked with the config (its file:line), not when the tokenizer has loaded."""
        if name in TEMPLATE_NAMES:
            return name
        close = difflib.get_close_matches(name, TEMPLATE_NAMES, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(
            f"unknown template '{name}'; {hint}use auto (the tokenizer's own) or one of "
            f"{', '.join(TEMPLATE_NAMES[1:])}"
        )

    @field_validator("files", mode="before")
    @classmethod
    def _files_from_strings(cls, value):
        if value is None:
            return []
        if isinstance(value, str | dict):
            value = [value]
        if not isinstance(value, list | tuple):
            return value  # pydantic reports the wrong type, naming data.files
        return [{"path": v} if isinstance(v, str) else v for v in value]


class TrainConfig(_Part):
    batch_size: int = Field(1, ge=1)  # packed rows per device per step
    accumulative_counts: int = Field(1, ge=1)
    max_epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides max_epochs when set
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    max_norm: float = Field(1.0, gt=0)  # gradient clipping
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    # True trades ~30% speed for much less activation memory
    gradient_checkpointing: bool = False
    # with gradient_checkpointing: checkpoint only the first N decoder layers (null = all);
    # each layer left out skips its recomputation and keeps its activations (~1.6 GiB at 7B, 4 x 2048)
    checkpoint_layers: int | None = Field(None, ge=0)
    # with gradient_checkpointing, on CUDA: instead of checkpoint_layers, the GPU memory the run
    # may use ("24GB", "22GiB", or auto = the card's memory less a margin); the first steps are
    # measured and as few layers checkpointed as fit (optimizer state offloaded if even all do
    # not). null: checkpoint_layers decides. Ignored, with a message, where there is no CUDA.
    memory_budget: str | None = None
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's and accelerate's seed range
    deepspeed: str | None = None  # zero2 | zero3 | deepspeed_zero2 | ... | path.json

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_a_word(cls, value):
        """YAML reads a bare `no` (as in `train.mixed_precision=no`) as false: it means "no"."""
        return "no" if value is False else value

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _memory_budget_is_a_size(cls, value):
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return value if value is None else "auto"
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("write a size such as 24GB or 22GiB, or auto")
        size_in_bytes(value)  # ValueError says what a size looks like
        return str(value).strip()

    @model_validator(mode="after")
    def _one_way_to_limit_checkpointing(self):
        if self.memory_budget is None:
            return self
        if self.checkpoint_layers is not None:
            raise ValueError(
                "train.memory_budget and train.checkpoint_layers both choose how many layers to "
                "checkpoint: set one of them to null"
            )
        if not self.gradient_checkpointing:
            raise ValueError(
                "train.memory_budget chooses how many layers to checkpoint: it needs "
                "train.gradient_checkpointing: true (or set memory_budget: null)"
            )
        return self

    @property
    def memory_budget_bytes(self) -> int | None:
        """The budget in bytes; None when unset or `auto` (the card decides, train/memory.py)."""
        if self.memory_budget in (None, "auto"):
            return None
        return size_in_bytes(self.memory_budget)


class RuntimeConfig(_Part):
    work_dir: str | None = None  # default: work_dirs/<config name>
    save_steps: int = Field(500, ge=1)
    save_total_limit: int = Field(2, ge=-1)  # -1 keeps all
    evaluation_freq: int = Field(500, ge=1)
    evaluation_inputs: list[str] = Field(default_factory=list)
    evaluation_max_new_tokens: int = Field(128, ge=1)
    logging_steps: int = Field(1, ge=1)
    tensorboard: bool = True
    # seconds a process may wait on the others (a collective, a step, a save) before the run
    # stops with an error naming the rank and the step; several processes only
    collective_timeout: int = Field(1800, ge=1)


class GuardConfig(_Part):
    """Forgetting guard: mix the base model's own answers to general prompts into training."""

    enabled: bool = False
    # ratio: `ratio` general samples per training sample (`ratio_by_lang` per language),
    # cycling through the distilled answers; each: every distilled answer once per epoch
    # (setting ratio or ratio_by_lang too is refused), so a one-epoch run sees each once
    mix: Literal["ratio", "each"] = "ratio"
    # general samples per identity sample
    ratio: float = Field(1.0, ge=0)
    # the same per language of the samples ("zh", "en"), where it differs from `ratio`: the
    # general samples of a language anchor the answers in that language
    ratio_by_lang: dict[str, float] = Field(default_factory=dict)
    prompts: str | None = None  # a file of prompts; default: the shipped set
    max_new_tokens: int = Field(96, ge=1)

    @model_validator(mode="after")
    def _ratio_only_with_mix_ratio(self):
        # the values, not whether they were written: a saved config (train/config.yaml) holds
        # every field, the defaults included, and must load again
        given = [
            f"guard.{name}"
            for name, value in (("ratio", self.ratio), ("ratio_by_lang", self.ratio_by_lang))
            if value != GuardConfig.model_fields[name].get_default(call_default_factory=True)
        ]
        if self.mix == "each" and given:
            raise ValueError(
                f"{' and '.join(given)} set with guard.mix: each, which takes every general "
                "answer once and no ratio: remove them, or set guard.mix: ratio"
            )
        return self


class PreferenceConfig(_Part):
    """Preference tuning on {prompt, chosen, rejected} pairs (train/preference.py has the maths)."""

    # dpo: sigmoid loss on the reference-relative log-ratio margin (Rafailov et al. 2023);
    # ipo: squared loss on the length-normalised margin (Azar et al. 2023), as TRL's loss_type ipo;
    # orpo: odds-ratio term + NLL on chosen, no reference model (Hong et al. 2024);
    # simpo: length-normalised log-probs with a target margin gamma, no reference (Meng et al. 2024)
    loss: Literal["dpo", "ipo", "orpo", "simpo"] = "dpo"
    beta: float = Field(0.1, gt=0)  # dpo/ipo: KL strength; orpo: lambda; simpo: reward scale
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # dpo, simpo: share of flipped labels
    gamma: float = Field(0.5, ge=0)  # simpo: target reward margin
    # Reference log-probs (dpo, ipo). auto: LoRA/QLoRA run the model with its adapter
    # disabled (no second copy), full fine-tuning keeps a frozen copy. precomputed: one pass
    # over the data before training, kept in work_dir (no copy, no second forward per step).
    reference: Literal["auto", "copy", "precomputed"] = "auto"


class Config(_Part):
    model: ModelConfig = Field(default_factory=ModelConfig)
    quantization: QuantizationConfig | None = None
    lora: LoraConfig | None = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    preference: PreferenceConfig | None = None

    @property
    def method(self) -> Literal["full", "lora", "qlora"]:
        if self.lora is None:
            return "full"
        return "qlora" if self.quantization is not None else "lora"
