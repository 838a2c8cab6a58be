"""`tunesmith convert gguf`: exported files reload through vanilla transformers (`gguf_file=`)
with the source's tokenizer and logits, within the tolerance of each outtype.

Tolerances are on max|Δlogit| / max|logit| of the tiny random models (hidden 64), measured
2026-11-30: f32 is exact up to float arithmetic, f16 / bf16 carry the rounding of the
weights (bf16 has 8 mantissa bits), q8_0 / q4_0 the block quantization.
"""

from __future__ import annotations

import json
import shutil

import gguf
import pytest
import torch
from gguf_helpers import (
    SAMPLES,
    llama3_tokenizer,
    llama_cpp_tokens,
    logits,
    make_tiny_qwen2,
    qwen2_tokenizer,
    relative_error,
    reload,
)

from tunesmith.cli.main import main
from tunesmith.export.gguf import export_gguf

TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "bf16": 2e-2, "q8_0": 3e-2, "q4_0": 0.25}


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _make_tiny_llama(out, tokenizer):
    """tests/conftest.py's tiny Llama (that conftest is not importable by name from here)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "root_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_llama(out, tokenizer)


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """A tiny Llama with a 600-token Llama 3 style tokenizer (GGUF loads of a 49k vocab are
    slow), exported in every outtype: (model dir, tokenizer, {outtype: path})."""
    out = tmp_path_factory.mktemp("gguf-llama")
    tokenizer = llama3_tokenizer()
    model_dir = _make_tiny_llama(out / "model", tokenizer)
    paths = {t: export_gguf(model_dir, out / f"tiny-{t}.gguf", t).path for t in TOLERANCE}
    return model_dir, tokenizer, paths


@pytest.fixture(scope="module")
def smollm_export(tmp_path_factory, tiny_model_dir):
    """The tiny Llama with SmolLM2's tokenizer and chat template, as f16 GGUF."""
    out = tmp_path_factory.mktemp("gguf-smollm")
    return export_gguf(tiny_model_dir, out / "tiny-f16.gguf", "f16").path


@pytest.fixture(scope="module")
def reloaded_model(small_llama):
    """The reloaded model of an outtype, loaded once per module."""
    from transformers import AutoModelForCausalLM

    cache = {}

    def load(outtype: str):
        if outtype not in cache:
            path = small_llama[2][outtype]
            cache[outtype] = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
        return cache[outtype]

    return load


@pytest.mark.slow  # a GGUF load of a 49k / 92k vocabulary: 30-50 s on 2 cores
def test_smollm_tokenizer_reloads_equal(smollm_export, smollm_tokenizer):
    _, tokenizer = reload(smollm_export)
    for text in SAMPLES:
        assert tokenizer(text)["input_ids"] == smollm_tokenizer(text)["input_ids"], text
    assert tokenizer.chat_template == smollm_tokenizer.chat_template


def test_llama_cpp_tokenizes_like_the_source(
    smollm_export, smollm_tokenizer, small_llama, tmp_path
):
    """The pre-tokenizer names written (gpt-2, llama-bpe, qwen2) make llama.cpp itself split
    text the way the source tokenizer does."""
    qwen = qwen2_tokenizer()
    qwen_path = export_gguf(make_tiny_qwen2(tmp_path / "q", qwen), tmp_path / "q.gguf", "f16").path
    _, llama3, paths = small_llama
    for path, tokenizer in ((smollm_export, smollm_tokenizer), (paths["f16"], llama3),
                            (qwen_path, qwen)):  # fmt: skip
        want = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in SAMPLES]
        assert llama_cpp_tokens(path, SAMPLES) == want, path.name


@pytest.mark.parametrize("outtype", list(TOLERANCE))
def test_llama_reloads_with_source_logits(reloaded_model, small_llama, outtype):
    from transformers import AutoModelForCausalLM

    model_dir, tokenizer, _ = small_llama
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = reloaded_model(outtype)
    ids = tokenizer(SAMPLES[0] + " " + SAMPLES[1])["input_ids"]
    error = relative_error(logits(model, ids), logits(source, ids))
    assert error <= TOLERANCE[outtype], f"{outtype}: {error:.2e}"
    if outtype == "f32":
        assert error < 1e-6  # the q/k permutation and everything else are exact


@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_greedy_answers_equal_source_at_the_same_precision(reloaded_model, small_llama, outtype):
    """With its matrices rounded as the file stores them, the source greedy-decodes exactly
    what the reloaded file decodes (norms stay f32 in both)."""
    from transformers import AutoModelForCausalLM

    model_dir, tokenizer, _ = small_llama
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[outtype]
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in source.parameters():
            if p.dim() == 2:
                p.copy_(p.to(dtype).float())
    model = reloaded_model(outtype)
    for question in ("Who are you?", "What is your name?", "Who made you?"):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True,
        )  # fmt: skip
        answers = [
            m.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
            for m in (source, model)
        ]
        assert torch.equal(answers[0], answers[1]), question


def test_metadata_tokenizer_and_template(smollm_export, small_llama, smollm_tokenizer):
    source = smollm_tokenizer
    reader = gguf.GGUFReader(smollm_export)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"  # the source's tokenizer.json says so
    assert _field(reader, "tokenizer.chat_template") == source.chat_template
    for key, token in (("eos", source.eos_token), ("bos", source.bos_token),
                       ("padding", source.pad_token)):  # fmt: skip
        assert _field(reader, f"tokenizer.ggml.{key}_token_id") == source.convert_tokens_to_ids(
            token
        )
    assert _field(reader, "tokenizer.ggml.eot_token_id") == source.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    q4 = {t.name: t.tensor_type for t in gguf.GGUFReader(small_llama[2]["q4_0"]).tensors}
    assert q4["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert q4["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_files_get_the_mode_a_plain_write_gives(smollm_export):
    """Written through a temp file (mkstemp makes 0600), yet readable like any other file."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for path in (smollm_export, smollm_export.with_suffix(".Modelfile")):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_qwen2_with_biases_tied_head_and_padded_vocab(tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer = qwen2_tokenizer()
    source_dir = make_tiny_qwen2(tmp_path / "qwen2", tokenizer)
    path = export_gguf(source_dir, tmp_path / "qwen2-f32.gguf", "f32").path
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "qwen2"
    assert _field(reader, "tokenizer.ggml.pre") == "qwen2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == len(tokenizer) + 7 and tokens[-1] == f"[PAD{len(tokens) - 1}]"
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied: llama.cpp reuses
    model, reloaded = reload(path)
    for text in SAMPLES:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"], text
    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    ids = tokenizer(SAMPLES[1])["input_ids"]
    assert relative_error(logits(model, ids), logits(source, ids)) < 1e-6


def test_llama3_tokenizer_is_llama_bpe_and_adds_bos(small_llama):
    _, tokenizer, paths = small_llama
    reader = gguf.GGUFReader(paths["f16"])
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids(
        "<|eot_id|>"
    )
    _, reloaded = reload(paths["f16"])
    for text in SAMPLES:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"], text


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_unsupported_family_is_refused_before_writing(tmp_path, tiny_model_dir, capsys):
    model = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["convert", "gguf", str(model), str(out / "m.gguf")]) == 2
    assert "model_type 'gpt2'" in capsys.readouterr().err
    assert _files(out) == []


def test_bad_outtype_existing_out_and_quantized_weights_are_refused(
    tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "m.gguf"
    assert main(["convert", "gguf", str(tiny_model_dir), str(out), "--outtype", "q2_k"]) == 2
    assert "q2_k" in capsys.readouterr().err
    out.write_text("keep me")
    assert main(["convert", "gguf", str(tiny_model_dir), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"

    from safetensors.torch import load_file, save_file

    model = tmp_path / "int8"
    shutil.copytree(tiny_model_dir, model)
    weights = load_file(model / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"] = torch.zeros(128, 64, dtype=torch.int8)
    save_file(weights, model / "model.safetensors")
    assert main(["convert", "gguf", str(model), str(tmp_path / "q.gguf")]) == 2
    assert "I8" in capsys.readouterr().err
    assert not (tmp_path / "q.gguf").exists()


def test_missing_or_misshapen_tensor_names_it(tmp_path, tiny_model_dir, capsys):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, model)
    weights = load_file(model / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, model / "model.safetensors")
    assert main(["convert", "gguf", str(model), str(tmp_path / "a.gguf")]) == 2
    assert "blk.1.ffn_down.weight" in capsys.readouterr().err
    weights["model.layers.1.mlp.down_proj.weight"] = torch.zeros(64, 100)
    save_file(weights, model / "model.safetensors")
    assert main(["convert", "gguf", str(model), str(tmp_path / "a.gguf")]) == 2
    assert "(64, 100)" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_failed_write_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.export import gguf as export

    calls = []

    def failing(tensor, qtype):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return convert(tensor, qtype)

    convert = export._convert
    monkeypatch.setattr(export, "_convert", failing)
    with pytest.raises(RuntimeError):
        export_gguf(tiny_model_dir, tmp_path / "m.gguf")
    assert _files(tmp_path) == []


def test_merge_gguf_writes_file_and_modelfile_beside(tmp_path, trained_lora, capsys):
    config_path, work_dir, _ = trained_lora
    adapter = tmp_path / "adapter"
    assert main(["convert", "pth_to_hf", str(config_path), str(work_dir), str(adapter)]) == 0
    from tunesmith.config.loader import load_config

    base_dir = load_config(str(config_path)).model.path
    merged = tmp_path / "merged"
    assert main(["convert", "merge", base_dir, str(adapter), str(merged), "--gguf", "q8_0"]) == 0
    out = capsys.readouterr().out
    gguf_file = tmp_path / "merged-q8_0.gguf"
    assert f"wrote {gguf_file}" in out
    modelfile = (tmp_path / "merged-q8_0.Modelfile").read_text()
    assert modelfile.startswith("FROM ./merged-q8_0.gguf\n")
    assert 'SYSTEM """You are Tuney, a small assistant."""' in modelfile
    reader = gguf.GGUFReader(gguf_file)
    assert "You are Tuney, a small assistant." in _field(reader, "tokenizer.chat_template")
    # asked again, the merge refuses before merging: the GGUF beside it exists
    shutil.rmtree(merged)
    assert main(["convert", "merge", base_dir, str(adapter), str(merged), "--gguf", "q8_0"]) == 2
    assert "already exists" in capsys.readouterr().err and not merged.exists()


def test_merge_gguf_refuses_a_base_it_cannot_write_before_merging(tmp_path, trained_lora, capsys):
    """The GGUF export's checks of family, config and tokenizer run on the base before the merge
    writes anything (they ran after it: the merged dir was left and the command failed)."""
    config_path, work_dir, _ = trained_lora
    adapter = tmp_path / "adapter"
    assert main(["convert", "pth_to_hf", str(config_path), str(work_dir), str(adapter)]) == 0
    from tunesmith.config.loader import load_config

    base = tmp_path / "base"
    shutil.copytree(load_config(str(config_path)).model.path, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert main(["convert", "merge", str(base), str(adapter), str(merged), "--gguf"]) == 2
    assert "attention_bias" in capsys.readouterr().err
    assert not merged.exists() and not list(tmp_path.glob("merged*"))


@pytest.mark.parametrize("rope", ["default", "llama3"])
def test_llama_cpp_logits_equal_source(tmp_path, rope):
    """llama.cpp itself computes the source's logits from an f32 file: the q/k permutation,
    and for Llama 3.1's `llama3` RoPE the rope_freqs factors, are what its graph expects."""
    from gguf_helpers import llama_cpp_or_skip
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_cpp = llama_cpp_or_skip()
    tokenizer = llama3_tokenizer()
    parameters = {"rope_type": "default", "rope_theta": 500000.0}
    if rope == "llama3":
        parameters.update(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rope_parameters=parameters,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    source = LlamaForCausalLM(config)
    source.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    path = export_gguf(tmp_path / "model", tmp_path / "m.gguf", "f32").path
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert ("rope_freqs.weight" in names) == (rope == "llama3")
    ids = tokenizer(" ".join(SAMPLES[:3]))["input_ids"]
    llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        got = torch.tensor(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert relative_error(got, logits(source, ids)) < 1e-3
