"""`tunesmith convert merge`: base model + LoRA adapter -> one standalone HF model dir.

The merge streams: it reads one base tensor at a time (safetensors `safe_open`),
adds the adapter's delta where it has one, and writes output shards as they fill,
so memory holds about one output shard, never the model twice. Adapters the
streaming path cannot fold (other peft types, LoRA on embeddings, lora_bias) go
through peft's own `merge_and_unload` on the loaded model instead.

An InternLM2 base is merged in its Llama form (the form it was trained in) and
written back in the original InternLM2 layout (`--format auto`) or as Llama.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from tunesmith.errors import UserError
from tunesmith.export import chat_files
from tunesmith.export.lora import Adapter, UnsupportedAdapter, read_adapter, read_adapter_config
from tunesmith.export.shards import ShardWriter, iter_tensors, parse_size, weight_files
from tunesmith.fileio import atomic_dir, check_free_space, check_new_dir, check_outside
from tunesmith.model import internlm2
from tunesmith.model.load import check_weights, model_type, resolve_device
from tunesmith.model.quantize import DTYPES
from tunesmith.model.resolve import resolve_model_path

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# InternLM2 ships its own modelling / tokenizer code and sentencepiece model: the internlm2
# layout keeps both; the llama layout keeps the sentencepiece model (GGUF export and
# sentencepiece-based tokenizers read it), not the remote code.
_INTERNLM2_EXTRA_FILES = {"internlm2": ("*.py", "tokenizer.model"), "llama": ("tokenizer.model",)}


@dataclass
class MergeResult:
    out_dir: Path
    files: list[Path]
    dtype: torch.dtype
    format: str
    method: str  # "streaming" | "peft"
    notes: list[str] = field(default_factory=list)


def merge(
    base: str,
    adapter: str,
    out: str,
    max_shard_size: str | int = "2GB",
    device: str = "auto",
    dtype: str = "auto",
    fmt: str = "auto",
) -> MergeResult:
    out_dir = Path(out).expanduser()
    check_new_dir(out_dir)
    adapter_dir = Path(adapter).expanduser()
    check_outside(out_dir, adapter_dir, "merged model")
    if Path(base).expanduser().is_dir():
        check_outside(out_dir, base, "merged model")
    adapter_config = read_adapter_config(adapter_dir)  # the adapter is checked before any work
    check_weights(adapter_dir, "adapter")
    max_bytes = parse_size(max_shard_size)
    device = resolve_device(device)
    base_dir = Path(resolve_model_path(base))
    is_internlm2 = model_type(base_dir) == internlm2.MODEL_TYPE
    fmt = _output_format(fmt, is_internlm2)
    train_cfg = _training_config(adapter_dir)
    notes = [note] if (note := _other_base_note(adapter_config, base, base_dir)) else []
    if train_cfg is not None and train_cfg.quantization is not None:
        notes.append(
            f"the adapter was trained on a {train_cfg.quantization.bits}-bit quantized base "
            f"(QLoRA); it is merged into the float weights of {base} as stored on disk "
            f"(not into de-quantised {train_cfg.quantization.bits}-bit weights)"
        )

    weights_dir = internlm2.llama_checkpoint(base_dir) if is_internlm2 else base_dir
    needed = sum(f.stat().st_size for f in weight_files(weights_dir))
    check_free_space(out_dir.parent, needed, f"the merged model {out_dir}")
    with atomic_dir(out_dir, replace=False) as tmp:
        method = "streaming"
        try:
            adapter_weights = read_adapter(adapter_dir)
            if not weight_files(weights_dir):
                raise UnsupportedAdapter("the base has no safetensors files")
        except UnsupportedAdapter as why:
            method = "peft"
            notes.append(f"merged with peft's merge_and_unload ({why}): the model is loaded whole")
            weights_dir = _peft_merge(base, adapter_dir, tmp / ".peft-merged", device)
            adapter_weights = Adapter({}, {}, {})
        out_dtype = _output_dtype(dtype, weights_dir)
        llama_config = json.loads((weights_dir / "config.json").read_text())
        files = _write_weights(
            weights_dir, adapter_weights, tmp, max_bytes, out_dtype, device, fmt, llama_config
        )
        shutil.rmtree(tmp / ".peft-merged", ignore_errors=True)
        _write_config(tmp, llama_config, base_dir, out_dtype, fmt)
        tokenizer = _write_tokenizer(tmp, adapter_dir, base)
        template = train_cfg.data.template if train_cfg is not None else "auto"
        chat_files.write_generation_config(tmp, base_dir, tokenizer, template)
        if is_internlm2:
            for pattern in _INTERNLM2_EXTRA_FILES[fmt]:
                for extra in base_dir.glob(pattern):
                    shutil.copy2(extra, tmp / extra.name)
    files = [out_dir / f.name for f in files]
    return MergeResult(out_dir, files, out_dtype, fmt, method, notes)


def _other_base_note(adapter_config: dict, base: str, base_dir: Path) -> str | None:
    """A note when the adapter names another base than BASE: one of the same shapes (a base
    model for its instruct variant, another fine-tune) merges without an error, wrongly."""
    trained_on = adapter_config.get("base_model_name_or_path")
    if not trained_on or trained_on == base:
        return None
    recorded = Path(trained_on).expanduser()
    if recorded.exists() and recorded.resolve() == base_dir.resolve():
        return None
    return (
        f"the adapter was trained on {trained_on}, not {base}: the merge is right only if "
        "both hold the same weights"
    )


def _output_format(fmt: str, is_internlm2: bool) -> str:
    if fmt == "auto":
        return "internlm2" if is_internlm2 else "llama"
    if fmt == "internlm2" and not is_internlm2:
        raise UserError("--format internlm2 needs an InternLM2 base model; use --format auto")
    return fmt


def _training_config(adapter_dir: Path):
    path = adapter_dir / "tunesmith_config.yaml"
    if not path.exists():
        return None
    from tunesmith.config.loader import load_config

    return load_config(str(path))


def _output_dtype(name: str, weights_dir: Path) -> torch.dtype:
    if name != "auto":
        if name not in DTYPES:
            raise UserError(f"--dtype {name} is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    config = json.loads((weights_dir / "config.json").read_text())
    stored = config.get("dtype") or config.get("torch_dtype")
    by_name = {v: k for k, v in DTYPE_NAMES.items()}
    if stored in by_name:
        return by_name[stored]
    for _, tensor in iter_tensors(weight_files(weights_dir)[:1]):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _write_weights(
    weights_dir: Path,
    adapter: Adapter,
    out_dir: Path,
    max_bytes: int,
    dtype: torch.dtype,
    device: str,
    fmt: str,
    config: dict,
) -> list[Path]:
    """Stream the base tensors into shards with the adapter applied. Every adapter tensor
    must land: a replaced head or embedding of a tied base is written untied (and
    `config` updated: tie_word_embeddings, vocab_size); anything else is a UserError."""
    writer = ShardWriter(out_dir, max_bytes)
    sink = _InternLM2Sink(writer, weights_dir) if fmt == "internlm2" else writer
    files = weight_files(weights_dir)
    total = sum(_count_tensors(f) for f in files)
    pending = dict(adapter.deltas)
    unused = dict(adapter.replacements)
    tied = bool(config.get("tie_word_embeddings"))
    base_embedding, head_rows = None, None
    for name, tensor in tqdm(iter_tensors(files), total=total, desc="merging", unit="tensor"):
        if name == _EMBED:
            base_embedding = tensor  # a tied head is the base's embedding
        if name in adapter.replacements:
            tensor = unused.pop(name)
        if name in pending:
            tensor = pending.pop(name).merge_into(tensor, device)
        if name == _HEAD:
            head_rows = tensor.shape[0]
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        sink.add(name, tensor)
    if pending:
        raise UserError(
            f"the adapter changes {sorted(pending)[0]}, which the base model does not have: "
            f"the adapter was trained on another base model"
        )
    if tied and (_HEAD in adapter.replacements or _EMBED in adapter.replacements):
        # peft trains copies of a tied head / embedding: they part ways, so both are stored
        if head_rows is None:
            head = unused.pop(_HEAD, None)
            head = head if head is not None else base_embedding
            head_rows = head.shape[0]
            sink.add(_HEAD, head.to(dtype) if head.is_floating_point() else head)
        config["tie_word_embeddings"] = False
    if _EMBED in adapter.replacements:
        rows = int(adapter.replacements[_EMBED].shape[0])
        if head_rows is not None and head_rows != rows:
            raise UserError(
                f"the adapter resizes {_EMBED} to {rows} rows but holds no {_HEAD} of that "
                f"size: train the head too (modules_to_save) so the merge can write it"
            )
        config["vocab_size"] = rows
    if unused:
        raise UserError(
            f"the adapter holds {sorted(unused)[0]}, which matches no tensor of the base model: "
            f"it cannot be merged (nothing was written)"
        )
    return writer.close()


_EMBED, _HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _count_tensors(file: Path) -> int:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return len(list(f.keys()))


class _InternLM2Sink:
    """Renames Llama tensors to InternLM2 ones and fuses each layer's q/k/v into wqkv."""

    _QKV = re.compile(r"^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight$")

    def __init__(self, writer: ShardWriter, llama_dir: Path):
        from transformers import LlamaConfig

        self.writer = writer
        self.config = LlamaConfig.from_pretrained(llama_dir)
        self.pending: dict[int, dict[str, torch.Tensor]] = {}

    def _mapped(self, state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
        config = self.config.__class__(**{**self.config.to_dict(), "num_hidden_layers": layers})
        return internlm2.llama_to_internlm2(state, config)[0]

    def add(self, name: str, tensor: torch.Tensor) -> None:
        match = self._QKV.match(name)
        if match is None:
            for new_name, value in self._mapped({name: tensor}, 0).items():
                self.writer.add(new_name, value)
            return
        layer = self.pending.setdefault(int(match[1]), {})
        layer[match[2]] = tensor
        if len(layer) == 3:  # fuse as layer 0, then put the layer's index back
            del self.pending[int(match[1])]
            state = {f"model.layers.0.self_attn.{p}_proj.weight": layer[p] for p in "qkv"}
            prefix = f"model.layers.{match[1]}."
            for new_name, value in self._mapped(state, 1).items():
                self.writer.add(new_name.replace("model.layers.0.", prefix, 1), value)


def _write_config(
    out_dir: Path, llama_config: dict, base_dir: Path, dtype: torch.dtype, fmt: str
) -> None:
    llama_config = {k: v for k, v in llama_config.items() if k != "tunesmith_source"}
    llama_config.pop("torch_dtype", None)
    llama_config["dtype"] = DTYPE_NAMES[dtype]
    if fmt == "internlm2":
        from transformers import LlamaConfig

        config = internlm2.internlm2_config(
            LlamaConfig(**llama_config), original=internlm2.read_config(base_dir)
        )
        config["torch_dtype"] = DTYPE_NAMES[dtype]
    else:
        config = llama_config
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_tokenizer(out_dir: Path, adapter_dir: Path, base: str):
    """The adapter's tokenizer (it carries the training chat template), else the base's."""
    from transformers import AutoTokenizer

    from tunesmith.model.load import load_tokenizer

    if (adapter_dir / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    else:
        tokenizer = load_tokenizer(base)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _peft_merge(base: str, adapter_dir: Path, scratch: Path, device: str) -> Path:
    """peft's merge_and_unload on the whole model, saved (safetensors) to `scratch`."""
    from tunesmith.config.schema import ModelConfig
    from tunesmith.model.adapters import load_adapter
    from tunesmith.model.load import load_model

    model = load_model(ModelConfig(path=base), device=device, dtype=torch.float32)
    merged = load_adapter(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(scratch)
    return scratch
