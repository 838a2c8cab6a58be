"""Training speed on CUDA: fused kernels, padding-free attention, no fp32 copies of frozen weights.

`optimize_for_training(model, cfg)` is called by the recipe once the model is loaded (before or
after LoRA is applied). On a CPU it only runs packed attention over the documents as a batch of
documents, padded to the longest of similar-length groups (SDPA has no varlen kernel there, and
a masked row-wide attention computes every cross-document pair only to throw it away), runs the
output head only where a label is trained, and applies `train.checkpoint_layers`. On CUDA it

- casts frozen fp32 float weights (the 92k-vocab head, embeddings, norms that peft's
  `prepare_model_for_kbit_training` upcasts) back to the compute dtype;
- applies Liger kernels (RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy, which
  never materialises batch x seq x vocab logits) when liger-kernel is installed and
  `model.use_liger` allows;
- for packed batches, switches attention to PyTorch's varlen flash attention
  (`torch.nn.attention.varlen`), one kernel call over all documents of the batch, with
  document boundaries taken from position_ids; SDPA with a per-document mask otherwise;
- keeps LoRA layer inputs in bf16 under autocast (peft would copy them to fp32 first): the
  recipe runs each step inside `lora_inputs_uncast`.

Gradient checkpointing is the recipe's choice (`train.gradient_checkpointing`); with
`train.checkpoint_layers: N` only the first N decoder layers stay checkpointed, on any device
(faster, for the memory of the layers left out).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, replace

import torch
from peft.helpers import disable_input_dtype_casting
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # as in HF's docs

from tunesmith.compat import liger as liger_compat
from tunesmith.compat import transformers as hf_compat

log = logging.getLogger(__name__)

VARLEN = "tunesmith_varlen"


@dataclass(frozen=True)
class Plan:
    """What `optimize_for_training` does to a model; every field off means nothing."""

    cast_frozen_to: torch.dtype | None = None
    liger: bool = False
    attention: str | None = None  # a new attn_implementation, None keeps the loaded one
    lora_inputs_in_autocast: bool = False  # no fp32 copy of LoRA inputs under autocast
    trained_logits_only: bool = False  # the output head runs only where a label is trained


def plan_for(
    cfg,
    device_type: str,
    liger_available: bool,
    varlen_available: bool,
    sharded_weights: bool = False,
) -> Plan:
    """Decide the optimisations for a model on `device_type` under `cfg` (a Config).

    `sharded_weights` (ZeRO-3, FSDP2) keeps Liger off: see `optimize_for_training`."""
    packed_auto = cfg.model.attn_implementation == "auto" and cfg.data.pack_to_max_length
    if device_type != "cuda":
        return Plan(attention=VARLEN if packed_auto else None, trained_logits_only=True)
    dtype = _compute_dtype(cfg)
    use_liger = cfg.model.use_liger
    if use_liger is True and not liger_available:
        log.warning(
            "model.use_liger is true but liger-kernel is not installed: pip install liger-kernel"
        )
    attention = None
    if packed_auto and varlen_available:
        attention = VARLEN
    liger = bool(use_liger) and liger_available and not sharded_weights
    return Plan(
        cast_frozen_to=dtype if dtype != torch.float32 else None,
        liger=liger,
        attention=attention,
        lora_inputs_in_autocast=(
            cfg.lora is not None and not cfg.lora.use_dora and cfg.train.mixed_precision != "no"
        ),
        trained_logits_only=not liger,  # Liger's fused loss never builds the logits at all
    )


def training_plan(model: nn.Module, cfg, sharded_weights: bool = False) -> Plan:
    """`plan_for` the device `model` sits on and the kernels installed here."""
    device_type = next(model.parameters()).device.type
    plan = plan_for(cfg, device_type, liger_available(), varlen_available(), sharded_weights)
    if plan.trained_logits_only and not hf_compat.takes_logits_mask(unwrap(model)):
        plan = replace(plan, trained_logits_only=False)
    return plan


def optimize_for_training(
    model: nn.Module, cfg, plan: Plan | None = None, sharded_weights: bool = False
) -> nn.Module:
    """Apply the plan's optimisations (default: `training_plan`) to `model` (a PreTrainedModel
    or a PeftModel) in place. `plan.lora_inputs_in_autocast` is applied per training step, by
    `lora_inputs_uncast`.

    `sharded_weights=True` (ZeRO-3, FSDP2) keeps Liger off. Its fused linear cross-entropy reads
    the output head's weight outside the head's forward, where those engines hand it a shard
    (`aten.mm.out got mixed torch.Tensor and DTensor`); with its other kernels, 2-GPU ZeRO-3 and
    FSDP2 full fine-tuning failed in the first step (a Triton pointer error on rank 1), and FSDP2
    full fine-tuning without Liger passed (H200 x2, 2026-11-30, docs/gpu.md)."""
    plan = plan or training_plan(model, cfg, sharded_weights)
    base = unwrap(model)
    if cfg.train.checkpoint_layers is not None:
        limit_checkpointing(base, cfg.train.checkpoint_layers)
    if plan.cast_frozen_to is not None:
        cast_frozen_float32(base, plan.cast_frozen_to)
    if plan.liger:
        apply_liger(base)
    if plan.attention is not None:
        register_varlen_attention()
        base.set_attn_implementation(plan.attention)
    log.info("training optimisations: %s", plan)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def limit_checkpointing(model: nn.Module, layers: int) -> int:
    """Keep gradient checkpointing on the first `layers` decoder layers only.

    Returns how many layers stay checkpointed.
    """
    kept = 0
    for i, block in enumerate(hf_compat.checkpointed_layers(model)):
        if i >= layers:
            hf_compat.set_layer_checkpointing(block, False)
        kept += hf_compat.layer_checkpointing(block)
    return kept


def lora_inputs_uncast(model: nn.Module, plan: Plan):
    """The context of a training step (forward and backward, so checkpointed recomputes match):
    peft's plain LoRA layers stop copying their input to fp32 (the adapter dtype) when
    `plan.lora_inputs_in_autocast`; otherwise it does nothing.

    Under autocast that copy is cast straight back to bf16 for the matmul; peft's bitsandbytes
    LoRA layers already skip it. Outside the step (sampling in eval) the cast stays.
    """
    return disable_input_dtype_casting(model, active=plan.lora_inputs_in_autocast)


def head_inputs(batch: dict, plan: Plan) -> dict:
    """Forward kwargs that run the output head and the loss only where a label is trained.

    With `plan.trained_logits_only`, positions whose next token carries no loss (prompts, system
    prompts, padding: 63% of the identity data's positions) get no logits: transformers' boolean
    `logits_to_keep` (batch, length) picks the hidden states, `shift_labels` the matching targets.
    The loss (sum over trained tokens / num_items_in_batch) is the same; the head's matmul and
    the (n, vocab) fp32 log-softmax shrink with the positions left out. {} otherwise.
    """
    if not plan.trained_logits_only or "labels" not in batch:
        return {}
    labels = batch["labels"]
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    keep = shifted != -100
    return {"logits_to_keep": keep, "shift_labels": shifted[keep]}


def cast_frozen_float32(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast frozen fp32 parameters to `dtype`; trainable ones keep fp32 for the optimizer.

    Returns the number of parameters cast. Quantized weights (integer storage) and buffers
    (rotary frequencies) are left alone.
    """
    cast = 0
    for param in model.parameters():
        if param.dtype == torch.float32 and not param.requires_grad:
            param.data = param.data.to(dtype)
            cast += 1
    return cast


def _compute_dtype(cfg) -> torch.dtype:
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if cfg.model.dtype in names:
        return names[cfg.model.dtype]
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


# ---- Liger kernels ----------------------------------------------------------------------------


def liger_available() -> bool:
    return liger_compat.available()


def apply_liger(model: nn.Module) -> None:
    """Liger's RMSNorm, RoPE, SwiGLU and fused linear cross-entropy on this model instance.

    Liger swaps the forward of this instance and of its norm / MLP modules; its RoPE replaces
    the function in the model's transformers module (the same maths, for every model of that
    type in the process); models built later keep transformers' own norm and MLP classes
    (compat/liger.py). Liger logs and does nothing for a model type it has no kernels for.
    """
    liger_compat.apply_to_instance(model)


# ---- padding-free attention for packed batches ------------------------------------------------


def varlen_available() -> bool:
    """True where PyTorch ships varlen flash attention and a CUDA device can run it."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def cu_seqlens(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative document lengths over the flattened batch, from position_ids restarting at 0.

    Every row starts a document, so row boundaries are document boundaries too.
    Returns (int32 offsets of shape (docs + 1,), length of the longest document).
    """
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    ends = torch.tensor([flat.numel()], device=flat.device, dtype=starts.dtype)
    offsets = torch.cat([starts, ends]).to(torch.int32)
    return offsets, int((offsets[1:] - offsets[:-1]).max())


class _SeqlensCache:
    """cu_seqlens of the batch now in flight: computed once, reused by every layer (one host sync)."""

    position_ids: torch.Tensor | None = None
    value: tuple[torch.Tensor, int] | None = None
    batches: DocumentBatches | None = None

    @classmethod
    def get(cls, position_ids: torch.Tensor, batch: int) -> tuple[torch.Tensor, int]:
        if cls.position_ids is not position_ids:
            # transformers passes (1, L) position_ids for a whole batch when the caller gave none
            cls.position_ids = position_ids
            cls.value = cu_seqlens(position_ids.expand(batch, -1))
            cls.batches = None
        return cls.value

    @classmethod
    def documents(cls, position_ids: torch.Tensor, batch: int) -> DocumentBatches:
        offsets = cls.get(position_ids, batch)[0]
        if cls.batches is None:
            cls.batches = document_batches(offsets.tolist(), offsets.device)
        return cls.batches


def varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: causal attention within each packed document.

    query (B, Hq, L, D), key / value (B, Hkv, S, D) -> (B, L, Hq, D). Batches that are not a
    packed training batch (padding masks, a KV cache while sampling) go through SDPA.
    """
    batch, heads, length, dim = query.shape
    packed = attention_mask is None and position_ids is not None and key.shape[2] == length
    if not packed:
        return _sdpa_fallback(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if not query.is_cuda:
        return _documents_as_batch_sdpa(query, key, value, position_ids, scaling, dropout), None
    from torch.nn.attention.varlen import varlen_attn

    offsets, longest = _SeqlensCache.get(position_ids, batch)
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    if kv_heads != heads and not _VARLEN_GQA:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    extra = {"enable_gqa": kv_heads != heads} if _VARLEN_GQA else {}
    if "window_size" in _VARLEN_PARAMS:
        extra["window_size"] = (-1, 0)  # causal
    else:
        extra["is_causal"] = True
    out = varlen_attn(q, k, v, offsets, offsets, longest, longest, scale=scaling, **extra)
    return out.view(batch, length, heads, dim), None


def _documents_as_batch_sdpa(query, key, value, position_ids, scaling, dropout) -> torch.Tensor:
    """Causal SDPA over the packed documents as a batch of documents (the CPU path).

    (B, Hq, L, D) -> (B, L, Hq, D). Each group of `document_groups` is gathered into one
    (documents, H, longest, D) batch, right-padded with zero rows, and run in one SDPA call
    (PyTorch's flash kernel for CPU): causal masking keeps every real query off the padding
    after it, and the padded queries' outputs are dropped. One call per group instead of one
    per document: each SDPA call and its backward are several OpenMP regions, which cost more
    than their FLOPs when two threads share a busy machine.
    """
    batch, heads, length, dim = query.shape
    plan = _SeqlensCache.documents(position_ids, batch)

    def rows(t: torch.Tensor) -> torch.Tensor:  # (B, H, L, D) -> (B * L + 1, H, D), last row 0
        t = t.transpose(1, 2).reshape(batch * length, t.shape[1], dim)
        return torch.nn.functional.pad(t, (0, 0, 0, 0, 0, 1))

    q, k, v = rows(query), rows(key), rows(value)
    outs = []
    for index, documents, longest in plan.gathers:
        # (documents * longest, H, D) -> (documents, H, longest, D)
        qd, kd, vd = (
            t.index_select(0, index).view(documents, longest, -1, dim).transpose(1, 2)
            for t in (q, k, v)
        )
        out = torch.nn.functional.scaled_dot_product_attention(
            qd,
            kd,
            vd,
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=key.shape[1] != heads,
        )
        outs.append(out.transpose(1, 2).reshape(documents * longest, heads, dim))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.index_select(0, plan.scatter).view(batch, length, heads, dim)


def document_groups(lengths: list[int], max_waste: float = 2.0) -> list[list[int]]:
    """Documents (indices into `lengths`) grouped for one padded attention call per group.

    Longest first; a group, padded to its first (longest) document, takes the next one while
    its padded causal work (documents x longest^2) stays within `max_waste` times the work of
    its documents alone (sum of length^2). Documents of similar length share a call; a row of
    one long and many short documents does not pad every short one to the long one.
    """
    groups: list[list[int]] = []
    work = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups:
            group, longest = groups[-1], lengths[groups[-1][0]]
            if (len(group) + 1) * longest**2 <= max_waste * (work + lengths[i] ** 2):
                group.append(i)
                work += lengths[i] ** 2
                continue
        groups.append([i])
        work = lengths[i] ** 2
    return groups


@dataclass(frozen=True)
class DocumentBatches:
    """How `_documents_as_batch_sdpa` gathers the packed tokens (B * L of them, then one zero row
    at index B * L) into padded document batches, and scatters the outputs back.

    gathers: per group, (flat token index of shape (documents * longest,), documents, longest);
    scatter: for each packed token, its position in the groups' concatenated outputs.
    """

    gathers: list[tuple[torch.Tensor, int, int]]
    scatter: torch.Tensor


def document_batches(offsets: list[int], device: torch.device | None = None) -> DocumentBatches:
    """The `DocumentBatches` of documents at `offsets` (cumulative lengths, as `cu_seqlens`)."""
    starts, total = offsets[:-1], offsets[-1]
    lengths = [end - start for start, end in zip(starts, offsets[1:], strict=True)]
    gathers = []
    scatter = torch.empty(total, dtype=torch.long)
    base = 0
    for group in document_groups(lengths):
        longest = lengths[group[0]]
        index = torch.full((len(group), longest), total, dtype=torch.long)
        for row, doc in enumerate(group):
            start, n = starts[doc], lengths[doc]
            index[row, :n] = torch.arange(start, start + n)
            scatter[start : start + n] = torch.arange(n) + base + row * longest
        gathers.append((index.flatten().to(device), len(group), longest))
        base += len(group) * longest
    return DocumentBatches(gathers, scatter.to(device))


def _sdpa_fallback(module, query, key, value, attention_mask, scaling, dropout, **kwargs):
    if attention_mask is not None and attention_mask.dim() == 2:
        # flash-style 2D key padding mask -> 4D boolean mask, causal with the cache offset
        q_len, kv_len = query.shape[2], key.shape[2]
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device)
        causal = causal.tril(diagonal=kv_len - q_len)
        attention_mask = causal[None, None] & attention_mask[:, None, None, -kv_len:].bool()
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _varlen_params() -> set[str]:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return set()
    return set(inspect.signature(varlen_attn).parameters)


_VARLEN_PARAMS = _varlen_params()
_VARLEN_GQA = "enable_gqa" in _VARLEN_PARAMS


def register_varlen_attention() -> None:
    """Make `attn_implementation="tunesmith_varlen"` known to transformers."""
    AttentionInterface.register(VARLEN, varlen_attention)
    # like flash attention: no 4D mask is built; None for packed batches, 2D where padded
    AttentionMaskInterface.register(VARLEN, hf_compat.flash_attention_mask())
