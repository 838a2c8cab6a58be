"""load_tokenizer / load_model: aliases, local dirs, dtypes, missing paths, 4-bit on CPU."""

from __future__ import annotations

import json
import socket

import pytest
import torch

import tunesmith.model.load as load_module
from tunesmith.config.schema import ModelConfig, QuantizationConfig
from tunesmith.errors import UserError
from tunesmith.model.load import load_model, load_tokenizer, resolve_dtype


def test_tokenizer_gets_pad_token_from_eos(tmp_path, smollm_tokenizer):
    smollm_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token", None)
    config_file.write_text(json.dumps(config))
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token is not None
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_embedded_alias_loads_tokenizer():
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )


@pytest.mark.slow
def test_embedded_alias_loads_model():
    model = load_model(ModelConfig(path="smollm2-135m-instruct"), device="cpu")
    assert model.config.model_type == "llama"
    assert model.dtype == torch.float32
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_missing_path_is_user_error_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(UserError, match="does not exist"):
        load_model(ModelConfig(path=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_tokenizer("some-org/some-model-that-is-not-cached")


def test_tiny_model_loads_in_fp32_on_cpu_with_sdpa(tiny_model_dir):
    model = load_model(ModelConfig(path=str(tiny_model_dir)), device="cpu")
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert model.device.type == "cpu"


def test_dtype_setting_is_honoured(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(load_module, "cpu_has_native_bf16", lambda: True)
    model = load_model(ModelConfig(path=str(tiny_model_dir), dtype="bf16"), device="cpu")
    assert model.dtype == torch.bfloat16


def test_bf16_on_a_cpu_without_bf16_arithmetic_loads_fp32_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(load_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(load_module, "_NOTED", set())
    assert resolve_dtype("bf16", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.float32
    assert capsys.readouterr().out.count("no bf16 arithmetic") == 1  # one note per process
    assert resolve_dtype("bf16", "cuda:0") == torch.bfloat16  # GPUs are not second-guessed


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert load_module.cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")  # a Zen 3 / Alder Lake
    assert not load_module.cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile\n")  # Sapphire Rapids
    assert load_module.cpu_has_native_bf16(info)
    assert not load_module.cpu_has_native_bf16(tmp_path / "missing")  # macOS, Windows


def test_auto_dtype_is_fp32_on_cpu():
    assert resolve_dtype("auto", "cpu") == torch.float32


def test_remote_code_model_is_refused_unless_trusted(tmp_path, tiny_model_dir):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(model_type="custom-thing", auto_map={"AutoModelForCausalLM": "modeling.X"})
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="trust_remote_code"):
        load_model(ModelConfig(path=str(tmp_path / "m")), device="cpu")


def test_qlora_4bit_load_quantizes_decoder_linears_not_head(tiny_model_dir):
    import bitsandbytes as bnb

    model = load_model(
        ModelConfig(path=str(tiny_model_dir)), quantization=QuantizationConfig(), device="cpu"
    )
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_type == "nf4"
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)
    assert model.lm_head.weight.dtype == torch.float32


@pytest.mark.slow
def test_gguf_file_loads_and_can_be_saved(tmp_path):
    from tunesmith.model.embedded import gguf_path

    path = str(gguf_path("smollm2-135m-instruct"))
    model = load_model(ModelConfig(path=path), device="cpu")
    tokenizer = load_tokenizer(path)
    assert model.config.vocab_size == len(tokenizer)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_gpu_is_user_error(tiny_model_dir):
    with pytest.raises(UserError, match="no CUDA device"):
        load_model(ModelConfig(path=str(tiny_model_dir)), device="cuda")


def test_fit_embeddings_counts_rows_of_a_partitioned_weight(tiny_model_dir, smollm_tokenizer):
    # DeepSpeed ZeRO-3 leaves each process an empty partition (shape [0]) of every weight; the
    # rows must come from the module, or every model is resized and its embeddings trained
    from tunesmith.model.load import fit_embeddings

    model = load_model(ModelConfig(path=str(tiny_model_dir)))
    embeddings = model.get_input_embeddings()
    embeddings.weight.data = torch.empty(0)
    assert not fit_embeddings(model, smollm_tokenizer)
    assert model.get_input_embeddings() is embeddings


def test_a_damaged_converted_copy_of_the_embedded_model_is_converted_again(
    tmp_path, monkeypatch, capsys
):
    """A cached model.safetensors cut short (a full disk, a copy stopped midway) was an error
    on every later load that told the user to "copy or export it again"."""
    from safetensors.torch import save_file

    from tunesmith.model import embedded

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "tokenizer.json").write_text("{}")
    save_file({"w": torch.zeros(64)}, target / "model.safetensors")
    converted = []
    monkeypatch.setattr(embedded, "_convert", lambda *args: converted.append(args))
    assert embedded.embedded_dir("smollm2-135m-instruct") == target
    assert converted == []  # a whole copy is used as it is
    whole = (target / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    embedded.embedded_dir("smollm2-135m-instruct")
    assert converted == [("smollm2-135m-instruct", target, True)]
    assert f"note: the cached copy {target} is damaged" in capsys.readouterr().out
