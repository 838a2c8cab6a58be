"""`tunesmith convert gguf`: an HF model dir -> one GGUF file for llama.cpp, Ollama, LM Studio.

What goes in, in llama.cpp's key and tensor names (written with the `gguf` package):
- architecture metadata: `llama` for Llama-layout models (SmolLM2, Llama 3, and InternLM2 /
  InternLM2.5 through their Llama mapping in model/internlm2.py), `qwen2` for Qwen2 / Qwen2.5;
- the tokenizer: byte-level BPE with its merges (`gpt2`: SmolLM2, Llama 3, Qwen2) or the
  sentencepiece model (`llama`: InternLM2), special tokens, BOS / EOS / EOT / pad ids;
- `tokenizer.chat_template`: the model dir's own template, which for a tunesmith export is the
  template it was trained with, default system prompt included (see export/chat_files.py).

llama.cpp's Llama graph applies RoPE to interleaved pairs, HF's Llama to the two halves of a
head, so the q/k rows of Llama-arch models are permuted on the way out (Qwen2 runs HF's way in
llama.cpp and is written as is).

Memory: tensor shapes come from the safetensors headers, so the whole file layout is known and
checked before the first byte is written; then one tensor at a time is read, converted and
appended. Peak memory follows the largest tensor (float32 + its converted copy or the
quantizer's intermediates), never the model (measured in docs/export_and_chat.md). The file is written beside OUT and renamed into
place, so a failed export leaves nothing that looks whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from tunesmith.compat import transformers as hf_compat
from tunesmith.errors import UserError
from tunesmith.export.shards import weight_files
from tunesmith.fileio import atomic_file, atomic_write_text, check_outside
from tunesmith.model import internlm2
from tunesmith.model.load import check_weights

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
Q = gguf.GGMLQuantizationType
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
_MATRIX_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
# q4_0 keeps the embedding and output head at 8 bits, as llama-quantize keeps them above 4
_HIGH_PRECISION = {"token_embd.weight", "output.weight"}
_SOURCE_DTYPES = {"F32", "F16", "BF16"}
# model_type in config.json -> (GGUF architecture, q/k permuted for llama.cpp's RoPE)
FAMILIES = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "internlm2": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
}

# llama.cpp's pre-tokenizer names for the split regexes of the families' tokenizer.json
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_BY_SPLIT = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclass
class GGUFResult:
    path: Path
    outtype: str
    architecture: str
    tensors: int
    bytes: int
    modelfile: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Tensor:
    """One tensor of the output: its GGUF name, shape (torch order), type, and how to read it."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    read: Callable[[], torch.Tensor]


def export_gguf(
    model: str | Path,
    out: str | Path,
    outtype: str = "f16",
    modelfile: bool = True,
    overwrite: bool = False,
) -> GGUFResult:
    """Write the model dir `model` as the GGUF file `out` (+ an Ollama Modelfile beside it).

    Args:
        model: an HF model dir (safetensors), or an embedded model alias.
        out: the .gguf file to create; it must not exist unless `overwrite`.
        outtype: f32 | f16 | bf16 (matrices in that type), q8_0 | q4_0 (matrices quantized in
            blocks of 32; q4_0 keeps token_embd / output at q8_0). Norms, biases: always f32.
    Raises:
        UserError: an unsupported family, tokenizer, RoPE scaling or weight dtype, a missing or
            misshapen tensor, or an existing OUT; raised before anything is written.
    """
    from tunesmith.export.modelfile import modelfile_text

    out = Path(out).expanduser()
    check_target(out, outtype, overwrite)
    model_dir, kind, config, tokenizer, vocab = _source(model)
    check_outside(out, model_dir, "GGUF file")
    arch, permute = FAMILIES[kind]
    notes: list[str] = []
    tensors = _plan(model_dir, config, kind, arch, permute, outtype, notes)
    rope_freqs = _rope_metadata(config, notes)
    if rope_freqs is not None:
        tensors.append(
            _Tensor("rope_freqs.weight", tuple(rope_freqs.shape), Q.F32, lambda: rope_freqs)
        )
    text = modelfile_text(tokenizer, out.name) if modelfile else None

    writer_arch = gguf.MODEL_ARCH_NAMES[arch]
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, writer_arch)
        try:
            _add_model_metadata(writer, config, model_dir, outtype)
            _add_tokenizer_metadata(writer, vocab, tokenizer)
            for t in tensors:
                nbytes = _nbytes(t)
                writer.add_tensor_info(t.name, t.shape, np.float32, nbytes, raw_dtype=t.qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in tqdm(tensors, desc=f"writing GGUF ({outtype})", unit="tensor"):
                writer.write_tensor_data(_convert(t.read(), t.qtype))
        finally:
            writer.close()
    modelfile_path = None
    if text is not None:
        modelfile_path = out.with_suffix(".Modelfile")
        atomic_write_text(modelfile_path, text)
    return GGUFResult(
        out, outtype, writer_arch, len(tensors), out.stat().st_size, modelfile_path, notes
    )


def check_source(model: str | Path) -> None:
    """Raise the UserError `export_gguf(model, ...)` would raise for the model's family, config
    or tokenizer, without writing anything (`convert merge --gguf` checks its base first)."""
    _source(model)


def _source(model: str | Path):
    """(model dir, model_type, transformers config, tokenizer, vocabulary) of an exportable
    model dir; UserError for a GGUF file, a non-directory, an unsupported family or tokenizer."""
    from tunesmith.model.load import load_tokenizer
    from tunesmith.model.resolve import resolve_model_path

    model_dir = Path(resolve_model_path(str(model)))
    if model_dir.suffix == ".gguf" or not model_dir.is_dir():
        raise UserError(f"{model_dir} is not an HF model directory (config.json + safetensors)")
    config_dict = internlm2.read_config(model_dir)
    check_weights(model_dir)
    kind = config_dict.get("model_type")
    if kind not in FAMILIES:
        raise UserError(
            f"{model_dir / 'config.json'}: model_type '{kind}' cannot be written as GGUF by "
            f"tunesmith; supported: {', '.join(FAMILIES)}"
        )
    config = _hf_config(model_dir, config_dict)
    tokenizer = load_tokenizer(str(model_dir))
    return model_dir, kind, config, tokenizer, _vocab(model_dir, tokenizer, config.vocab_size)


def gguf_sibling(model_dir: str | Path, outtype: str) -> Path:
    """Where `--gguf` puts the file of a merged model dir: `DIR-OUTTYPE.gguf` beside it."""
    model_dir = Path(model_dir).expanduser()
    return model_dir.parent / f"{model_dir.name}-{outtype}.gguf"


def check_target(out: Path, outtype: str, overwrite: bool = False) -> None:
    """A UserError unless `outtype` is known and `out` (+ its Modelfile) may be written."""
    if outtype not in OUTTYPES:
        raise UserError(f"GGUF outtype '{outtype}' is not one of {', '.join(OUTTYPES)}")
    if out.suffix != ".gguf":
        raise UserError(f"{out}: name the output file *.gguf")
    for path in (out, out.with_suffix(".Modelfile")):
        if path.exists() and not overwrite:
            raise UserError(f"{path} already exists: pick another OUT or delete it")
        if path.is_dir():
            raise UserError(f"{path} is a directory: pick another OUT")


# ---- config ----------------------------------------------------------------------------


def _hf_config(model_dir: Path, config_dict: dict):
    """The transformers config (Llama form for InternLM2), with rope parameters normalised."""
    from transformers import AutoConfig

    if config_dict.get("model_type") == internlm2.MODEL_TYPE:
        return internlm2.llama_config(config_dict)
    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError(
            f"{model_dir / 'config.json'}: attention_bias / mlp_bias Llama models are not "
            "supported by the GGUF export"
        )
    return config


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope_metadata(config, notes: list[str]) -> torch.Tensor | None:
    """Check the RoPE scaling; for Llama 3.1's `llama3` type, the per-frequency factors that
    llama.cpp reads from the `rope_freqs` tensor (transformers' own computation, divided out)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    kind = rope.get("rope_type", "default")
    if kind in ("default", "linear"):
        return None
    if kind == "dynamic":
        notes.append(
            "dynamic NTK RoPE scaling is not stored (llama.cpp has none): the model is exact up "
            f"to its max_position_embeddings ({config.max_position_embeddings}), as in llama.cpp's "
            "own converter"
        )
        return None
    if kind == "llama3":
        scaled = hf_compat.rope_inv_freq(config, "llama3")
        dim = _head_dim(config)
        base = rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
        return (1.0 / base) / scaled.float()
    raise UserError(
        f"config.json: rope_scaling type '{kind}' is not supported by the GGUF export "
        "(supported: none, linear, dynamic, llama3)"
    )


def _add_model_metadata(writer: gguf.GGUFWriter, config, model_dir: Path, outtype: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_dir.resolve().name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_file_type(_FILE_TYPES[outtype])
    if outtype in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---- tensors ---------------------------------------------------------------------------


_ITEM_SIZE = {Q.F32: 4, Q.F16: 2, Q.BF16: 2}


def _quantized(qtype: gguf.GGMLQuantizationType) -> bool:
    return qtype not in _ITEM_SIZE


def _nbytes(t: _Tensor) -> int:
    if not _quantized(t.qtype):
        return int(np.prod(t.shape)) * _ITEM_SIZE[t.qtype]
    return int(np.prod(gguf.quant_shape_to_byte_shape(t.shape, t.qtype)))


class _Source:
    """The safetensors tensors of a model dir, in Llama / Qwen2 names, read one at a time.

    Each read opens and closes its file, so no mapping of a whole shard stays resident.
    InternLM2 tensors are renamed, and each layer's wqkv split into q / k / v, through
    model/internlm2.py; the shapes come from the same mapping run on meta tensors.
    """

    def __init__(self, model_dir: Path, config, kind: str):
        self.config, self.kind = config, kind
        files = weight_files(model_dir)
        if not files:
            raise UserError(
                f"{model_dir} holds no *.safetensors weights (pytorch .bin is not read)"
            )
        self.where: dict[str, tuple[Path, str]] = {}  # hf name -> (file, stored name)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            with safe_open(file, framework="pt") as f:
                for stored in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    piece = f.get_slice(stored)
                    dtype, shape = piece.get_dtype(), tuple(piece.get_shape())
                    if dtype not in _SOURCE_DTYPES:
                        raise UserError(
                            f"{file}: tensor {stored} is {dtype}; the GGUF export reads float "
                            f"weights only ({', '.join(sorted(_SOURCE_DTYPES))}): export a "
                            "merged, non-quantized model"
                        )
                    for name, meta in self._mapped(stored, torch.empty(shape, device="meta")):
                        self.where[name] = (file, stored)
                        self.shapes[name] = tuple(meta.shape)
        self._pending: dict[str, torch.Tensor] = {}

    def _mapped(self, stored: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        if self.kind == internlm2.MODEL_TYPE:
            yield from internlm2.map_tensor(stored, tensor, self.config)
        else:
            yield stored, tensor

    def read(self, name: str) -> torch.Tensor:
        if name in self._pending:
            return self._pending.pop(name)
        file, stored = self.where[name]
        with safe_open(file, framework="pt") as f:
            tensor = f.get_tensor(stored)
        wanted = None
        for mapped, value in self._mapped(stored, tensor):
            if mapped == name:
                wanted = value
            else:  # the q / v of a split wqkv: read soon after
                self._pending[mapped] = value
        return wanted


def _plan(
    model_dir: Path, config, kind: str, arch, permute: bool, outtype: str, notes: list[str]
) -> list[_Tensor]:
    """Every output tensor, in file order, checked against the checkpoint's names and shapes."""
    source = _Source(model_dir, config, kind)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    heads, kv_heads = (
        config.num_attention_heads,
        config.num_key_value_heads or config.num_attention_heads,
    )
    expected = _expected_shapes(config, arch)
    plan, seen = [], set()
    for hf_name in sorted(source.where, key=_layer_order):
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads a missing output.weight as tied to token_embd
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name not in expected:
            raise UserError(
                f"{model_dir}: tensor {hf_name} has no place in a GGUF "
                f"'{gguf.MODEL_ARCH_NAMES[arch]}' model of this config: not a plain "
                f"{'Qwen2' if arch == gguf.MODEL_ARCH.QWEN2 else 'Llama'} checkpoint"
            )
        shape = source.shapes[hf_name]
        want = expected[gguf_name]
        if want != shape:
            raise UserError(
                f"{model_dir}: tensor {hf_name} has shape {shape}, the config needs {want}: "
                "config.json and the weights do not belong together"
            )
        seen.add(gguf_name)
        read = _reader(source, hf_name)
        if permute and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            n = heads if hf_name.endswith("q_proj.weight") else kv_heads
            read = _permuted(read, n)
        plan.append(_Tensor(gguf_name, shape, _out_type(gguf_name, shape, outtype, notes), read))
    missing = sorted(set(expected) - seen)
    if missing:
        raise UserError(f"{model_dir}: the checkpoint lacks {missing[0]} (GGUF name)")
    return plan


def _expected_shapes(config, arch) -> dict[str, tuple[int, ...]]:
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = _head_dim(config)
    q = config.num_attention_heads * head_dim
    kv = (config.num_key_value_heads or config.num_attention_heads) * head_dim
    shapes = {
        "token_embd.weight": (config.vocab_size, hidden),
        "output_norm.weight": (hidden,),
    }
    if not config.tie_word_embeddings:
        shapes["output.weight"] = (config.vocab_size, hidden)
    for i in range(config.num_hidden_layers):
        layer = {
            "attn_norm.weight": (hidden,),
            "attn_q.weight": (q, hidden),
            "attn_k.weight": (kv, hidden),
            "attn_v.weight": (kv, hidden),
            "attn_output.weight": (hidden, q),
            "ffn_norm.weight": (hidden,),
            "ffn_gate.weight": (inter, hidden),
            "ffn_up.weight": (inter, hidden),
            "ffn_down.weight": (hidden, inter),
        }
        if arch == gguf.MODEL_ARCH.QWEN2:
            layer.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
        shapes.update({f"blk.{i}.{k}": v for k, v in layer.items()})
    return shapes


def _layer_order(name: str) -> tuple:
    """Embedding first, then layer by layer (q, k, v together), then the final norm and head."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
        return (1, int(parts[2]), ".".join(parts[3:]))
    return (0 if "embed" in name else 2, 0, name)


def _reader(source: _Source, name: str) -> Callable[[], torch.Tensor]:
    return lambda: source.read(name)


def _permuted(read: Callable[[], torch.Tensor], n_head: int) -> Callable[[], torch.Tensor]:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs (per head: [x0..x63] ->
    [x0, x32, x1, x33, ...]), as llama.cpp's convert_hf_to_gguf.py permutes them."""

    def permute() -> torch.Tensor:
        w = read()
        return (
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    return permute


def _out_type(name: str, shape: tuple[int, ...], outtype: str, notes: list[str]):
    if len(shape) == 1 or outtype == "f32":
        return Q.F32
    qtype = _MATRIX_TYPES[outtype]
    if outtype == "q4_0" and name in _HIGH_PRECISION:
        qtype = Q.Q8_0
    if _quantized(qtype) and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        notes.append(f"{name}: rows of {shape[-1]} do not split into blocks of 32; written as f16")
        return Q.F16
    return qtype


def _convert(tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F16:
        return tensor.to(torch.float16).numpy()
    if qtype == Q.BF16:
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    data = tensor.to(torch.float32).numpy()
    return data if qtype == Q.F32 else gguf.quants.quantize(data, qtype)


# ---- tokenizer -------------------------------------------------------------------------


@dataclass
class _Vocab:
    model: str  # llama.cpp's tokenizer.ggml.model: "gpt2" (byte-level BPE) | "llama" (spm)
    tokens: list[str]
    types: list[int]
    pre: str | None = None
    merges: list[str] | None = None
    scores: list[float] | None = None
    add_space_prefix: bool | None = None


def _vocab(model_dir: Path, tokenizer, vocab_size: int) -> _Vocab:
    """The tokenizer in llama.cpp's terms, padded to the embedding's rows with [PAD<id>] tokens."""
    if len(tokenizer) > vocab_size:
        raise UserError(
            f"{model_dir}: the tokenizer has {len(tokenizer)} tokens, the embedding only "
            f"{vocab_size} rows: the tokenizer does not belong to this model"
        )
    if (model_dir / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocab(model_dir / "tokenizer.model", tokenizer)
    else:
        vocab = _bpe_vocab(model_dir, tokenizer)
    T = gguf.TokenType
    for token_id, token in tokenizer.added_tokens_decoder.items():
        if token_id < len(vocab.tokens):  # renamed (InternLM2's chat tokens) or added tokens
            vocab.tokens[token_id] = token.content
            if vocab.types[token_id] not in (T.UNKNOWN, T.BYTE):
                vocab.types[token_id] = T.CONTROL if token.special else T.USER_DEFINED
    for token_id in range(len(vocab.tokens), vocab_size):
        vocab.tokens.append(f"[PAD{token_id}]")
        vocab.types.append(T.UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)
    return vocab


def _bpe_vocab(model_dir: Path, tokenizer) -> _Vocab:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise UserError(
            f"{model_dir}: the tokenizer is not byte-level BPE (tokenizer.json), and there is "
            "no sentencepiece tokenizer.model beside it: copy the base model's tokenizer.model "
            "into the directory, or use a family the GGUF export writes"
        )
    size = max(model["vocab"].values(), default=-1) + 1
    size = max(size, *(i + 1 for i in tokenizer.added_tokens_decoder), len(tokenizer))
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, token_id in model["vocab"].items():
        tokens[token_id], types[token_id] = token, gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return _Vocab("gpt2", tokens, types, pre=_pre_tokenizer(model_dir, spec), merges=merges)


def _pre_tokenizer(model_dir: Path, spec: dict) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"  # SmolLM / StarCoder: digits one by one, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in _PRE_BY_SPLIT:
            return _PRE_BY_SPLIT[regex]
    raise UserError(
        f"{model_dir / 'tokenizer.json'}: its pre-tokenizer ({' + '.join(map(str, kinds))}) is not "
        "one llama.cpp is known to share (GPT-2, SmolLM, Llama 3, Qwen2): the GGUF would "
        "tokenize differently, so it is not written"
    )


def _sentencepiece_vocab(model_file: Path, tokenizer) -> _Vocab:
    proto = hf_compat.sentencepiece_model_proto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as err:  # protobuf's DecodeError has no stable import path
        raise UserError(f"{model_file} is not a sentencepiece model ({err})") from err
    if proto.trainer_spec.model_type != 2:  # BPE; llama.cpp's spm vocab is BPE by score
        raise UserError(f"{model_file}: only sentencepiece BPE models can be written as GGUF")
    tokens, types, scores = [], [], []
    for i, piece in enumerate(proto.pieces):
        text, kind = piece.piece, piece.type  # sentencepiece's type numbers are GGUF's
        if "\x00" in text:  # a NUL ends a C string in llama.cpp (InternLM2 has "\x00")
            text, kind = f"[PAD{i}]", gguf.TokenType.UNUSED
        tokens.append(text)
        types.append(kind)
        scores.append(piece.score)
    return _Vocab(
        "llama",
        tokens,
        types,
        scores=scores,
        add_space_prefix=proto.normalizer_spec.add_dummy_prefix,
    )


def _adds(tokenizer, token_id: int | None, at_start: bool) -> bool:
    """Whether encoding a text puts `token_id` at its start (BOS) or end (EOS)."""
    if token_id is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return len(ids) > len(plain) and ids[0 if at_start else -1] == token_id


def end_of_turn_id(tokenizer) -> int | None:
    """The single token that ends an assistant turn in the tokenizer's chat template."""
    from tunesmith.data.templates import get_template

    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        marker = get_template("auto", tokenizer).stop_words[0]
    except UserError:  # a template that is not a growing prefix: no single end marker
        return None
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _add_tokenizer_metadata(writer: gguf.GGUFWriter, vocab: _Vocab, tokenizer) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    eot = end_of_turn_id(tokenizer)
    if eot is not None:
        writer.add_eot_token_id(eot)
    writer.add_add_bos_token(_adds(tokenizer, tokenizer.bos_token_id, at_start=True))
    writer.add_add_eos_token(_adds(tokenizer, tokenizer.eos_token_id, at_start=False))
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    if template:
        writer.add_chat_template(template)
