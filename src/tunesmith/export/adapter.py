"""`tunesmith convert pth_to_hf`: a training checkpoint -> a PEFT adapter dir or a full HF model.

LoRA / QLoRA: `OUT/adapter_config.json` + `adapter_model.safetensors` (what
`peft.PeftModel.from_pretrained` reads), the tokenizer with the chat template used
in training, and the resolved config as `tunesmith_config.yaml`. Only the saved
adapter tensors are read, so a QLoRA export needs neither a GPU nor bitsandbytes.
Full fine-tuning: a full HF model dir in safetensors shards.

Weights are written in half precision (bf16 where they were bf16, else fp16), as
XTuner does, unless `fp32` is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tunesmith.config.schema import Config
from tunesmith.errors import UserError
from tunesmith.export import chat_files
from tunesmith.export.shards import ShardWriter, iter_tensors, parse_size, weight_files
from tunesmith.fileio import atomic_dir, check_new_dir, check_outside
from tunesmith.model.load import check_finite_tensor, check_safetensors, check_weights

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class ExportResult:
    checkpoint: Path
    out_dir: Path
    kind: str  # "adapter" | "model"
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def find_checkpoint(ckpt: str, config_path: str, cfg: Config) -> Path:
    """`iter_N` dir, a work_dir (its newest whole checkpoint), or `latest` (the config's work_dir)."""
    from tunesmith.config.loader import config_name
    from tunesmith.train.checkpoint import STATE_FILE, find_latest

    if ckpt == "latest":
        work_dir = Path(cfg.runtime.work_dir or Path("work_dirs") / config_name(config_path))
        found = find_latest(work_dir)
        if found is None:
            raise UserError(f"{work_dir} holds no whole checkpoint (iter_N/): train first")
        return found
    path = Path(ckpt).expanduser()
    if not path.exists():
        raise UserError(
            f"checkpoint {path} does not exist: pass work_dir/iter_N, a work_dir or latest"
        )
    if (path / STATE_FILE).is_file():
        return path
    found = find_latest(path) if path.is_dir() else None
    if found is None:
        raise UserError(
            f"{path} is neither a checkpoint (no {STATE_FILE}) nor a work_dir holding one"
        )
    return found


def checkpoint_config(checkpoint: Path, fallback: Config) -> Config:
    """The resolved config saved with the checkpoint (it has the run's overrides), else `fallback`."""
    from tunesmith.config.loader import load_config

    saved = checkpoint / "config.yaml"
    return load_config(str(saved)) if saved.exists() else fallback


# What decides the exported files: the base the adapter names, its shape, the chat files.
EXPORT_KEYS = (
    "method",
    "model.path",
    "model.special_tokens",
    "quantization",
    "lora.r",
    "lora.alpha",
    "lora.target_modules",
    "lora.use_dora",
    "data.template",
    "data.system",
)


def config_differences(given: Config, saved: Config) -> list[str]:
    """`key: given -> saved` for each of EXPORT_KEYS where the config on the command line
    differs from the one the checkpoint was trained with (the saved one is what is exported)."""
    given_d, saved_d = given.model_dump(), saved.model_dump()
    out = []
    for key in EXPORT_KEYS:
        a, b = given_d, saved_d
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if a != b:
            out.append(f"{key}: {a!r} (CONFIG) vs {b!r} (checkpoint)")
    return out


def export_checkpoint(
    config_path: str, ckpt: str, out: str, fp32: bool = False, max_shard_size: str = "2GB"
) -> ExportResult:
    from tunesmith.config.loader import load_config

    given = load_config(config_path)
    checkpoint = find_checkpoint(ckpt, config_path, given)
    cfg = checkpoint_config(checkpoint, given)
    notes = []
    if cfg is not given and (diff := config_differences(given, cfg)):
        notes.append(
            f"{config_path} differs from the config {checkpoint} was trained with "
            f"({'; '.join(diff)}): the checkpoint's own config.yaml is what is exported"
        )
    out_dir = check_new_dir(out)
    check_outside(out_dir, checkpoint, "export")
    with atomic_dir(out_dir, replace=False) as tmp:
        if cfg.method == "full":
            files = _export_model(checkpoint / "model", tmp, fp32, parse_size(max_shard_size))
        else:
            files = _export_adapter(checkpoint / "adapter", tmp, cfg, fp32)
        tokenizer = _write_tokenizer(tmp, cfg)
        if cfg.method == "full":
            chat_files.write_generation_config(
                tmp, checkpoint / "model", tokenizer, cfg.data.template
            )
        from tunesmith.config.loader import dump_config

        (tmp / "tunesmith_config.yaml").write_text(dump_config(cfg))
    kind = "model" if cfg.method == "full" else "adapter"
    return ExportResult(checkpoint, out_dir, kind, [out_dir / f.name for f in files], notes)


def _half(dtype: torch.dtype, fp32: bool) -> torch.dtype:
    if fp32:
        return torch.float32
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float16


def _export_adapter(src: Path, out_dir: Path, cfg: Config, fp32: bool) -> list[Path]:
    for name in ADAPTER_FILES:
        if not (src / name).exists():
            raise UserError(f"{src / name} is missing: the checkpoint has no LoRA adapter")
    check_safetensors(src / "adapter_model.safetensors")
    tensors = load_file(src / "adapter_model.safetensors")
    for key, tensor in tensors.items():
        check_finite_tensor(tensor, key, src / "adapter_model.safetensors")
    tensors = {
        k: v.to(_half(v.dtype, fp32)) if v.is_floating_point() else v for k, v in tensors.items()
    }
    save_file(tensors, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = _base_reference(cfg.model.path)
    config["inference_mode"] = True
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return [out_dir / name for name in ADAPTER_FILES]


def _base_reference(model_path: str) -> str:
    """What adapter_config.json names as the base: a local dir (absolute) or a hub id as given."""
    from tunesmith.model.resolve import resolve_model_path

    resolved = resolve_model_path(model_path, with_weights=False)
    return str(Path(resolved).resolve()) if Path(resolved).exists() else model_path


def _export_model(src: Path, out_dir: Path, fp32: bool, max_bytes: int) -> list[Path]:
    if not (src / "config.json").exists() or not weight_files(src):
        raise UserError(f"{src} holds no config.json and safetensors: not a full checkpoint")
    check_weights(src)
    writer = ShardWriter(out_dir, max_bytes)
    dtype = None
    for name, tensor in tqdm(iter_tensors(weight_files(src)), desc="writing", unit="tensor"):
        check_finite_tensor(tensor, name, src)
        if tensor.is_floating_point():
            dtype = dtype or _half(tensor.dtype, fp32)
            tensor = tensor.to(dtype)
        writer.add(name, tensor)
    config = json.loads((src / "config.json").read_text())
    config.pop("torch_dtype", None)
    config["dtype"] = str(dtype or torch.float32).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return writer.close()


def _write_tokenizer(out_dir: Path, cfg: Config):
    """The base tokenizer with the training chat template (and default system prompt) in it."""
    from tunesmith.model.load import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.path, special_tokens=cfg.model.special_tokens)
    tokenizer.chat_template = chat_files.training_template_jinja(cfg, tokenizer)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
