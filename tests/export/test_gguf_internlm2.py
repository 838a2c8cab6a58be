"""InternLM2 -> GGUF: the Llama mapping (wqkv split, then llama.cpp's q/k permutation) and the
sentencepiece vocabulary with the chat tokens; the file reloads with the native loader's
logits and tokenization."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import pytest
import torch
from gguf_helpers import llama_cpp_tokens, logits, relative_error, reload

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from internlm2_helpers import (  # noqa: E402
    internlm2_config,
    internlm2_state_dict,
    write_internlm2,
)

from tunesmith.config.schema import ModelConfig  # noqa: E402
from tunesmith.export.gguf import export_gguf  # noqa: E402
from tunesmith.model.load import load_model, load_tokenizer  # noqa: E402

TEXTS = ["Who are you?", "你好，我是书生·浦语。", "<|im_start|>user\nhi<|im_end|>\n", " 12345  x"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("internlm2-gguf")
    config = internlm2_config()
    model_dir = write_internlm2(root / "model", config, internlm2_state_dict(config))
    return model_dir, export_gguf(model_dir, root / "internlm2-f32.gguf", "f32")


def test_written_as_llama_with_sentencepiece_vocab(exported):
    model_dir, result = exported
    reader = gguf.GGUFReader(result.path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "llama"
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    assert tokens[92542] == "<|im_end|>" and types[92542] == gguf.TokenType.CONTROL
    assert types[0] == gguf.TokenType.UNKNOWN and types[3] == gguf.TokenType.BYTE
    assert not any("\x00" in t for t in tokens)  # a NUL would end the string in llama.cpp
    assert field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.ggml.eot_token_id") == 92542
    assert any("dynamic" in note for note in result.notes)  # the tiny config has dynamic RoPE


@pytest.mark.slow  # a GGUF load of a 49k / 92k vocabulary: 30-50 s on 2 cores
def test_reloads_with_native_logits(exported):
    """transformers' GGUF tokenizer ignores add_space_prefix = false (it always prefixes "▁"),
    so the logits are compared on the native tokenizer's ids; llama.cpp's own tokenization is
    checked in the next test."""
    model_dir, result = exported
    model, _ = reload(result.path)
    native_tok = load_tokenizer(str(model_dir))
    native = load_model(ModelConfig(path=str(model_dir)), device="cpu", dtype=torch.float32)
    ids = native_tok(TEXTS[0] + TEXTS[1])["input_ids"][:32]  # within max_position_embeddings
    assert relative_error(logits(model, ids), logits(native, ids)) < 1e-6


def test_llama_cpp_tokenizes_like_the_native_tokenizer(exported):
    model_dir, result = exported
    native = load_tokenizer(str(model_dir))
    want = [native(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert llama_cpp_tokens(result.path, TEXTS) == want


def _adapter(base_dir: Path, out: Path) -> Path:
    """A random (non-zero) LoRA on every projection (InternLM2 loads in the Llama layout, so
    its adapters name the Llama modules), saved as a PEFT adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = load_model(ModelConfig(path=str(base_dir)), device="cpu", dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    return out


@pytest.mark.slow  # a merge, a GGUF and a llama.cpp load of a 92k vocabulary: ~45 s a case
@pytest.mark.parametrize("fmt", ["llama", "internlm2"])
def test_merge_of_internlm2_writes_a_gguf_in_either_layout(exported, tmp_path, fmt, capsys):
    """`convert merge --format llama --gguf` wrote the merged dir, then refused the GGUF: the
    Llama-layout dir lacked the sentencepiece model. Both layouts now carry it, and the GGUF
    tokenizes like the base."""
    from tunesmith.cli.main import main

    model_dir, _ = exported
    adapter = _adapter(model_dir, tmp_path / "adapter")
    merged = tmp_path / "merged"
    args = ["convert", "merge", str(model_dir), str(adapter), str(merged), "--format", fmt]
    assert main([*args, "--gguf", "f32"]) == 0, capsys.readouterr().err
    assert (merged / "tokenizer.model").is_file()
    gguf_file = tmp_path / "merged-f32.gguf"
    assert gguf.GGUFReader(gguf_file).fields["tokenizer.ggml.model"].contents() == "llama"
    native = load_tokenizer(str(model_dir))
    want = [native(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert llama_cpp_tokens(gguf_file, TEXTS) == want
