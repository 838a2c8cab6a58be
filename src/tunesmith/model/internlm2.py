"""InternLM2 / InternLM2.5 without remote code: weight mapping to and from Llama, and the tokenizer.

InternLM2 is a Llama with other names and a fused `wqkv`. Its rows are `kv_heads`
consecutive blocks; each block holds the G = heads / kv_heads query heads of that
group, then its key head, then its value head: shape (kv_heads, G + 2, head_dim,
hidden). RoPE uses the same rotate-half convention as Llama, so no permutation is
needed. Loading maps the checkpoint once into a Llama-layout safetensors dir in the
cache (keyed by the source files), which transformers then loads as any Llama,
with or without 4-bit quantization.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import LlamaConfig

from tunesmith.compat import transformers as hf_compat
from tunesmith.errors import UserError
from tunesmith.fileio import atomic_dir, check_free_space
from tunesmith.model.embedded import cache_lock, cache_root, usable_copy

MODEL_TYPE = "internlm2"
CONVERTER_VERSION = "1"

# the chat models rename sentencepiece pieces [UNUSED_TOKEN_141..146] to these
CHAT_TOKENS = {
    92538: "<|plugin|>",
    92539: "<|interpreter|>",
    92540: "<|action_end|>",
    92541: "<|action_start|>",
    92542: "<|im_end|>",
    92543: "<|im_start|>",
}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# InternLM2 name (after `model.layers.{i}.`) -> Llama name; wqkv is split separately
_LAYER_NAMES = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")


# ---- config ----------------------------------------------------------------------------


def llama_config(config: dict) -> LlamaConfig:
    """The LlamaConfig equivalent of an InternLM2 config.json dict."""
    if config.get("bias", False):
        raise UserError(
            "InternLM2 config says bias: true; only the bias-free InternLM2 layout is supported"
        )
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    if heads % kv_heads:
        raise UserError(
            f"InternLM2 config: num_attention_heads {heads} is not a multiple of "
            f"num_key_value_heads {kv_heads}"
        )
    rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))}
    scaling = config.get("rope_scaling")
    if scaling:
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind not in ("dynamic", "linear"):
            raise UserError(f"InternLM2 config: rope_scaling type '{kind}' is not supported")
        rope.update(rope_type=kind, factor=float(scaling["factor"]))
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        initializer_range=config.get("initializer_range", 0.02),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_parameters=rope,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.get("tie_word_embeddings", False),
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 2),
        dtype=config.get("torch_dtype", config.get("dtype")),
    )


def internlm2_config(config: LlamaConfig, original: dict | None = None) -> dict:
    """The InternLM2 config.json dict of a Llama-layout `config`.

    `original` (the base model's InternLM2 config.json) keeps its other keys, such as
    `auto_map`, so the InternLM tooling reads the result as before.
    """
    out = dict(original or {})
    rope = dict(config.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    out.update(
        architectures=["InternLM2ForCausalLM"],
        model_type=MODEL_TYPE,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=rope.get("rope_theta", 10000.0),
        rope_scaling=None
        if rope_type == "default"
        else {"type": rope_type, "factor": rope["factor"]},
        bias=False,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        use_cache=True,
    )
    dtype = getattr(config, "dtype", None)
    if dtype is not None:
        out["torch_dtype"] = str(dtype).removeprefix("torch.")
    out.pop("dtype", None)
    return out


# ---- weights ---------------------------------------------------------------------------


def _split_wqkv(name: str, wqkv: torch.Tensor, config: LlamaConfig) -> list[torch.Tensor]:
    kv_heads, heads = config.num_key_value_heads, config.num_attention_heads
    head_dim = config.hidden_size // heads
    groups = heads // kv_heads
    expected = ((heads + 2 * kv_heads) * head_dim, config.hidden_size)
    if tuple(wqkv.shape) != expected:
        raise UserError(
            f"tensor {name} has shape {tuple(wqkv.shape)}, but the config's {heads} heads / "
            f"{kv_heads} KV heads / hidden {config.hidden_size} need {expected}: "
            f"config.json and the weights do not belong together"
        )
    blocks = wqkv.view(kv_heads, groups + 2, head_dim, config.hidden_size)
    q = blocks[:, :groups].reshape(heads * head_dim, config.hidden_size)
    k = blocks[:, groups].reshape(kv_heads * head_dim, config.hidden_size)
    v = blocks[:, groups + 1].reshape(kv_heads * head_dim, config.hidden_size)
    return [q.contiguous(), k.contiguous(), v.contiguous()]


def map_tensor(
    name: str, tensor: torch.Tensor, config: LlamaConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """The Llama tensors (name, value) of one InternLM2 tensor."""
    if name.endswith(".bias"):
        raise UserError(
            f"tensor {name}: the checkpoint has biases, which the InternLM2 layout does not"
        )
    if name in _TOP_NAMES:
        yield _TOP_NAMES[name], tensor
        return
    match = _LAYER.match(name)
    if match is None:
        raise UserError(f"tensor {name} is not part of the InternLM2 layout")
    prefix, rest = f"model.layers.{match[1]}.", match[2]
    if rest == "attention.wqkv.weight":
        for llama_name, part in zip(_QKV, _split_wqkv(name, tensor, config), strict=True):
            yield prefix + llama_name, part
    elif rest in _LAYER_NAMES:
        yield prefix + _LAYER_NAMES[rest], tensor
    else:
        raise UserError(f"tensor {name} is not part of the InternLM2 layout")


def _expected_llama_names(config: LlamaConfig) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config.tie_word_embeddings:
        names.add("lm_head.weight")
    for i in range(config.num_hidden_layers):
        names.update(f"model.layers.{i}.{n}" for n in (*_LAYER_NAMES.values(), *_QKV))
    return names


def _check_complete(names: set[str], config: LlamaConfig, source: str) -> None:
    missing = sorted(_expected_llama_names(config) - names)
    if missing:
        raise UserError(
            f"{source}: tensor {missing[0]} (Llama name) is missing from the checkpoint"
        )


def internlm2_to_llama(
    state_dict: dict[str, torch.Tensor], config_dict: dict
) -> tuple[dict[str, torch.Tensor], LlamaConfig]:
    """Map an InternLM2 state dict and config.json dict to the Llama layout (no copies of data
    except the wqkv split)."""
    config = llama_config(config_dict)
    out = {}
    for name, tensor in state_dict.items():
        out.update(map_tensor(name, tensor, config))
    _check_complete(set(out), config, "state dict")
    return out, config


def llama_to_internlm2(
    state_dict: dict[str, torch.Tensor], llama_config: LlamaConfig, original: dict | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Map a Llama-layout state dict back to InternLM2 names with a fused wqkv.

    Returns the state dict and the InternLM2 config.json dict (see `internlm2_config`).
    """
    config = llama_config
    kv_heads, heads = config.num_key_value_heads, config.num_attention_heads
    head_dim = config.hidden_size // heads
    groups = heads // kv_heads
    to_internlm2 = {v: k for k, v in _LAYER_NAMES.items()}
    top = {v: k for k, v in _TOP_NAMES.items()}
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith(".bias"):
            raise UserError(f"tensor {name}: biases have no place in the InternLM2 layout")
        if name in top:
            out[top[name]] = tensor
            continue
        match = _LAYER.match(name)
        if match is None:
            raise UserError(f"tensor {name} is not part of the Llama layout")
        prefix, rest = f"model.layers.{match[1]}.", match[2]
        if rest in _QKV:
            continue
        if rest not in to_internlm2:
            raise UserError(f"tensor {name} is not part of the Llama layout")
        out[prefix + to_internlm2[rest]] = tensor
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        try:
            q, k, v = (state_dict[prefix + n] for n in _QKV)
        except KeyError as err:
            raise UserError(f"tensor {err.args[0]} is missing from the state dict") from err
        hidden = q.shape[1]
        blocks = torch.cat(
            [
                q.view(kv_heads, groups, head_dim, hidden),
                k.view(kv_heads, 1, head_dim, hidden),
                v.view(kv_heads, 1, head_dim, hidden),
            ],
            dim=1,
        )
        out[prefix + "attention.wqkv.weight"] = blocks.reshape(-1, hidden)
    return out, internlm2_config(config, original)


# ---- checkpoint conversion (cached) ----------------------------------------------------


def read_config(path: str | Path) -> dict:
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text())
    except FileNotFoundError as err:
        raise UserError(f"{config} is missing: not a model directory") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{config}:{err.lineno}: not valid JSON ({err.msg})") from err


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"{path} holds no *.safetensors or pytorch_model*.bin weights")
    return files


def _read_weights(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)
    else:
        yield from torch.load(file, map_location="cpu", weights_only=True, mmap=True).items()


def _cache_key(path: Path, files: list[Path]) -> str:
    digest = hashlib.sha256(f"{CONVERTER_VERSION}\n{path.resolve()}\n".encode())
    for file in [path / "config.json", *files]:
        stat = file.stat()
        digest.update(f"{file.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def llama_checkpoint(path: str | Path) -> Path:
    """A Llama-layout safetensors dir of the InternLM2 checkpoint at `path`, made once and cached.

    One output shard per input file, so memory stays at one shard. The Llama config
    records the source in `tunesmith_source` ({"model_type", "path", "auto_map"}) so an
    export can write the original layout back. Where the disk lacks room for a new copy,
    the least recently used copies of other checkpoints are removed first (`_make_room`).

    Raises:
        UserError: the disk lacks room for the copy even with no other copy left.
    """
    path = Path(path)
    config_dict = read_config(path)
    config = llama_config(config_dict)
    files = _weight_files(path)
    target = cache_root() / "internlm2-llama" / _cache_key(path, files)
    with cache_lock(target):
        if usable_copy(target, "config.json"):
            os.utime(target)  # last use, for _make_room
        else:
            _remove_stale_copies(target.parent, path)
            needed = sum(f.stat().st_size for f in files)
            _make_room(target.parent, target, needed)
            check_free_space(target.parent, needed, f"the Llama-layout copy of {path}")
            _write_llama_copy(path, config_dict, config, files, target)
    return target


def _make_room(cache: Path, keep: Path, needed: int) -> None:
    """Remove other Llama-layout copies in `cache`, least recently used first, while its
    disk has less than `needed` bytes (+5%, as `check_free_space` asks) free.

    Each copy is as large as its checkpoint (~15 GB for a 7B) and is made again from its
    source when next loaded. `tunesmith identity` on a 7B makes two (the base's and the
    merged model's): without this, its last stage needed four times the model on disk
    (checkpoint, its copy, merged model, its copy) and stopped on a 64 GiB disk.
    """
    copies = [d for d in cache.iterdir() if d != keep and (d / "config.json").is_file()]
    for copy in sorted(copies, key=lambda d: d.stat().st_mtime):
        if shutil.disk_usage(cache).free >= needed * 1.05:
            return
        with cache_lock(copy):  # not while another process is making it
            size = sum(f.stat().st_size for f in copy.iterdir() if f.is_file())
            try:
                source = json.loads((copy / "config.json").read_text())["tunesmith_source"]["path"]
            except (OSError, ValueError, KeyError, TypeError):
                source = "an InternLM2 checkpoint"
            print(
                f"note: removing the cached Llama-layout copy of {source} ({size / 1e9:.1f} GB, "
                f"{copy}) to make room; it is made again when that model is next loaded",
                flush=True,
            )
            shutil.rmtree(copy, ignore_errors=True)


def _write_llama_copy(
    path: Path, config_dict: dict, config: LlamaConfig, files: list[Path], target: Path
) -> None:
    from safetensors.torch import save_file
    from tqdm import tqdm

    with atomic_dir(target) as tmp:
        weight_map = {}
        for index, file in enumerate(tqdm(files, desc="mapping InternLM2 -> Llama", unit="file")):
            shard_name = f"model-{index + 1:05d}-of-{len(files):05d}.safetensors"
            shard = {}
            for name, tensor in _read_weights(file):
                for llama_name, value in map_tensor(name, tensor, config):
                    shard[llama_name] = value.contiguous()
            save_file(shard, tmp / shard_name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, shard_name))
        _check_complete(set(weight_map), config, str(path))
        index_json = {"metadata": {}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
        config.tunesmith_source = {
            "model_type": MODEL_TYPE,
            "path": str(path.resolve()),
            "auto_map": config_dict.get("auto_map"),
        }
        config.save_pretrained(tmp)
        if (path / "generation_config.json").is_file():  # chat models stop at <|im_end|> too
            shutil.copy(path / "generation_config.json", tmp / "generation_config.json")


def _remove_stale_copies(cache: Path, source: Path) -> None:
    """Drop copies made from earlier versions of the same source dir (a 7B copy is ~15 GB)."""
    for config_file in cache.glob("*/config.json"):
        try:
            made_from = json.loads(config_file.read_text())["tunesmith_source"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if made_from == str(source.resolve()):
            shutil.rmtree(config_file.parent, ignore_errors=True)


# ---- tokenizer -------------------------------------------------------------------------


def load_tokenizer(path: str | Path):
    """InternLM2's sentencepiece tokenizer as a fast tokenizer, without remote code.

    The sentencepiece model is converted with transformers' own converter (reading the
    protobuf, not the sentencepiece library, so any sentencepiece version works); the
    result is cached by the file's hash.
    """
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    model_file = path / "tokenizer.model"
    if not model_file.is_file():
        if (path / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(path)
        raise UserError(
            f"{model_file} is missing: an InternLM2 checkpoint needs its sentencepiece "
            f"tokenizer.model; copy it from the original model"
        )
    tokenizer_config = _read_tokenizer_config(path)
    digest = hashlib.sha256(model_file.read_bytes())
    digest.update(json.dumps(tokenizer_config, sort_keys=True).encode())
    digest.update(CONVERTER_VERSION.encode())
    cached = cache_root() / "tokenizers" / f"internlm2-{digest.hexdigest()[:20]}"
    with cache_lock(cached):
        if not (cached / "tokenizer.json").exists():
            tokenizer = _convert_tokenizer(model_file, tokenizer_config)
            with atomic_dir(cached) as tmp:
                tokenizer.save_pretrained(tmp)
    return PreTrainedTokenizerFast.from_pretrained(cached)


def _read_tokenizer_config(path: Path) -> dict:
    file = path / "tokenizer_config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from err


def _convert_tokenizer(model_file: Path, tokenizer_config: dict):
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    # transformers' own protobuf schema: no sentencepiece library (nor its version) involved
    proto = hf_compat.sentencepiece_model_proto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as err:  # protobuf's DecodeError has no stable import path
        raise UserError(f"{model_file} is not a sentencepiece model ({err})") from err
    names = dict(CHAT_TOKENS)
    for token_id, token in tokenizer_config.get("added_tokens_decoder", {}).items():
        names[int(token_id)] = _token_name(token)
    vocab = {names.get(i, piece.piece): i for i, piece in enumerate(proto.pieces)}
    backend = hf_compat.spm_tokenizer(proto, vocab)
    unk, bos, eos = (names.get(i, proto.pieces[i].piece) for i in (0, 1, 2))
    if tokenizer_config.get("add_bos_token", True):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, 1)]
        )
    specials = [names[i] for i in sorted(names) if 2 < i < len(proto.pieces)]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=_token_name(tokenizer_config.get("pad_token")) or eos,
        additional_special_tokens=specials,
        chat_template=tokenizer_config.get("chat_template", CHAT_TEMPLATE),
        clean_up_tokenization_spaces=False,
        model_max_length=tokenizer_config.get("model_max_length", 32768),
    )


def _token_name(token) -> str | None:
    """A token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return token.get("content") if isinstance(token, dict) else token
