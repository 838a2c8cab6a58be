"""Load a tokenizer and a causal LM from an alias, a local dir, a cached hub id or a GGUF file.

Nothing here downloads: `resolve_model_path` turns the name into a local path first.
InternLM2 checkpoints load natively as Llama (see `internlm2.py`), without remote code.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.integrations import is_deepspeed_zero3_enabled

from tunesmith.compat.transformers import drop_gguf_quantizer
from tunesmith.config.schema import ModelConfig, QuantizationConfig
from tunesmith.errors import UserError
from tunesmith.model import internlm2
from tunesmith.model.quantize import DTYPES, bnb_config
from tunesmith.model.resolve import offline_env, resolve_model_path


def resolve_device(device: str = "auto") -> str:
    """CUDA when visible for "auto", else CPU; a bare "cuda" is this process's current GPU
    (the local rank's under torchrun / accelerate)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device '{device}' asked for, but no CUDA device is visible: use --device cpu"
        )
    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return device


def resolve_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    """For "auto": bf16 on a CUDA device that supports it, fp16 on older CUDA, fp32 on CPU.

    "bf16" on a CPU without bf16 arithmetic (`cpu_has_native_bf16`) loads fp32, with a note:
    there every bf16 matmul is emulated and slower than fp32."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"model.dtype '{name}' is not one of auto, {', '.join(DTYPES)}")
    if name == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        _note_once("model.dtype bf16: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX): fp32")
        return torch.float32
    return DTYPES[name]


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU multiplies bf16 in hardware: the `avx512_bf16` or `amx_bf16` flag of
    Linux's /proc/cpuinfo (AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and later).
    False where the file is missing (macOS, Windows): there bf16 is left to emulation.

    Measured on an AMD EPYC with avx512_bf16 (2 cores, SmolLM2-135M LoRA, 512-token rows):
    1.6 s a step with bf16 frozen weights against 2.1 s in fp32 (docs/benchmarks.md)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}")


def release_memory() -> None:
    """Free the memory of models no longer referenced, now: a finished trainer (model,
    optimizer, accelerator) forms reference cycles that only the garbage collector frees,
    and it runs on Python allocations, not tensor ones. After `tunesmith identity`'s train
    stage on an H200 (7B QLoRA), 6.7 GiB of GPU memory stayed allocated through export,
    merge and tuned_eval (tuned_eval's peak: 23.2 GiB instead of 16.5). Then hands the
    cached CUDA blocks back to the driver."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_type(path: str | Path) -> str | None:
    """The `model_type` in a model dir's config.json, or None where there is none."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise UserError(f"{config}:{err.lineno}: not valid JSON ({err.msg})") from err


def check_weights(path: str | Path, what: str = "model") -> None:
    """Every safetensors file of a model (or adapter) dir opens and is whole; reads headers
    only. A dir with config.json but no weight file at all is refused too."""
    path = Path(path)
    if not path.is_dir():
        return
    files = sorted(path.glob("*.safetensors"))
    if what == "model" and not files and not list(path.glob("*.bin")):
        raise UserError(
            f"{path} holds config.json but no weights (*.safetensors): copy the weight files "
            f"into it"
        )
    for file in files:
        check_safetensors(file)


def check_finite_tensor(tensor: torch.Tensor, name: str, where: Path) -> None:
    """A UserError naming `name` in `where` when a float tensor holds NaN or inf (a diverged
    run's weights: exporting them gives a model that answers nothing)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise UserError(
            f"{where}: {name} holds NaN or inf values: the run diverged before this checkpoint; "
            f"export an earlier one"
        )


def check_safetensors(file: str | Path) -> None:
    """A UserError naming `file` when it is not a whole, readable safetensors file."""
    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as err:
        raise UserError(
            f"{file}: not a readable safetensors file ({str(err).splitlines()[0]}); it is "
            f"damaged or cut short: copy or export it again"
        ) from None


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, special_tokens: list[str] | None = None
) -> PreTrainedTokenizerBase:
    """A fast tokenizer with a pad token (eos when the model has none) and
    `special_tokens` added (config key model.special_tokens)."""
    offline_env()
    path = resolve_model_path(name_or_path, with_weights=False)
    try:
        if model_type(path) == internlm2.MODEL_TYPE:
            tokenizer = internlm2.load_tokenizer(path)
        elif path.endswith(".gguf"):
            tokenizer = _from_gguf(AutoTokenizer, path)
        else:
            tokenizer = _from_pretrained(AutoTokenizer, path, trust_remote_code)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the `tokenizers` parser raises plain Exception
        # a damaged tokenizer.json / tokenizer_config.json: KeyError, TypeError, JSON errors
        why = str(err).splitlines()[0].strip() if str(err) else type(err).__name__
        raise UserError(
            f"{path}: no usable tokenizer ({type(err).__name__}: {why}); copy the model's "
            f"tokenizer.json and tokenizer_config.json into it"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if special_tokens:
        new = [t for t in special_tokens if t not in tokenizer.get_vocab()]
        if new:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": new}, replace_extra_special_tokens=False
            )
    return tokenizer


def fit_embeddings(model: PreTrainedModel, tokenizer) -> bool:
    """Resize the embeddings (and head) to the tokenizer when it has more tokens than the
    model has rows (special tokens added); returns whether it did.

    The row count is the module's `num_embeddings`, not its weight's shape: under DeepSpeed
    ZeRO-3 the weight is this process's partition (shape [0]), and reading it resized every
    model and trained the whole embeddings and head (seen on CPU, 2 processes)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) <= rows:
        return False
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return True


def load_model(
    model_cfg: ModelConfig,
    quantization: QuantizationConfig | None = None,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
) -> PreTrainedModel:
    """The causal LM of `model_cfg`, on `device`, in `dtype` (default: model_cfg.dtype).

    With `quantization`, the linear layers of the decoder are loaded in 4 or 8 bits
    (bitsandbytes); the embeddings, norms and output head stay in `dtype`.
    """
    offline_env()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype or model_cfg.dtype, device)
    path = resolve_model_path(model_cfg.path)
    attention = model_cfg.attn_implementation
    # "auto" loads PyTorch SDPA; on CUDA, model/fast.py may switch packed batches to varlen
    kwargs = {
        "dtype": torch_dtype,
        "attn_implementation": "sdpa" if attention == "auto" else attention,
    }
    if quantization is not None:
        kwargs["quantization_config"] = bnb_config(quantization, torch_dtype)
    if (quantization is not None or device != "cpu") and not is_deepspeed_zero3_enabled():
        kwargs["device_map"] = {"": device}  # ZeRO-3 partitions the weights as they load

    if path.endswith(".gguf"):
        if quantization is not None:
            raise UserError(
                f"{path}: quantization of a GGUF file is not supported; set quantization: null"
            )
        model = _from_gguf(AutoModelForCausalLM, path, **kwargs)
        drop_gguf_quantizer(model)
        return model
    if model_type(path) != internlm2.MODEL_TYPE:
        return _from_pretrained(AutoModelForCausalLM, path, model_cfg.trust_remote_code, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(internlm2.llama_checkpoint(path), **kwargs)
    # adapters and exports name the user's checkpoint as their base, not the cache copy
    model.config.name_or_path = model.name_or_path = path
    return model


def _check_architecture(path: str, trust_remote_code: bool) -> None:
    """A clear error for a checkpoint transformers cannot build without its own code."""
    import transformers
    from transformers import CONFIG_MAPPING

    config_file = Path(path) / "config.json"
    kind = model_type(path)
    if kind in CONFIG_MAPPING:
        _check_config(path, config_file, kind, trust_remote_code)
    if kind is None or kind in CONFIG_MAPPING or trust_remote_code:
        return
    if "auto_map" in json.loads(config_file.read_text()):
        raise UserError(
            f"{config_file}: model_type '{kind}' needs custom code from the checkpoint: set "
            f"model.trust_remote_code: true if you trust its author"
        )
    raise UserError(
        f"{config_file}: model_type '{kind}' is unknown to transformers {transformers.__version__}"
    )


def _check_config(path: str, config_file: Path, kind: str, trust_remote_code: bool) -> None:
    """config.json's values as transformers checks them (types, ranges): a damaged one was
    reported as "no usable tokenizer" (the tokenizer load reads it first)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (StrictDataclassError, ValueError, TypeError, KeyError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise UserError(
            f"{config_file}: not a valid {kind} config ({' '.join(lines[:2])}); fix the value "
            f"or copy config.json from the model again"
        ) from None


def _from_gguf(auto_cls, path: str, **kwargs):
    try:
        return auto_cls.from_pretrained(Path(path).parent, gguf_file=Path(path).name, **kwargs)
    except (ValueError, KeyError, OSError, EOFError, struct.error) as err:
        raise UserError(
            f"{path}: not a readable GGUF file ({str(err).splitlines()[0]}); check the file"
        ) from None


def _from_pretrained(auto_cls, path: str, trust_remote_code: bool, **kwargs):
    _check_architecture(path, trust_remote_code)
    if auto_cls is AutoModelForCausalLM:
        check_weights(path)
    try:
        return auto_cls.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except SafetensorError as err:
        raise UserError(f"{path}: a weight file is damaged ({err})") from None
    except RuntimeError as err:
        if "mismatch" not in str(err):
            raise
        raise UserError(
            f"{path}: the shape of some weights does not match config.json (see the load "
            f"report above); the weights belong to another model or config.json was edited"
        ) from None
    except ValueError as err:
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise UserError(
                f"{path} needs custom code from the checkpoint: set model.trust_remote_code: true "
                f"if you trust its author"
            ) from err
        if auto_cls is AutoTokenizer:
            raise UserError(
                f"{path}: no usable tokenizer ({str(err).splitlines()[0].strip()}); copy the "
                f"model's tokenizer.json and tokenizer_config.json into it"
            ) from None
        raise
    except OSError as err:
        raise UserError(f"{path}: cannot load ({str(err).splitlines()[0]})") from err
