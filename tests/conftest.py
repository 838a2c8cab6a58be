"""Shared fixtures: a real tokenizer (SmolLM2's) and tiny random models built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _private_internlm2_cache(tmp_path_factory):
    """Converted InternLM2 checkpoints and tokenizers go to a test cache, not ~/.cache."""
    root = tmp_path_factory.mktemp("tunesmith-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tunesmith.model.internlm2.cache_root", lambda: root)
        yield


@pytest.fixture(scope="session")
def smollm_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer (chatml, pad == eos == <|im_end|>), converted from the GGUF once."""
    from tunesmith.model.embedded import embedded_dir

    return embedded_dir("smollm2-135m-instruct", with_weights=False)


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


def make_tiny_llama(out: Path, tokenizer, seed: int = 0, layers: int = 2) -> Path:
    """A random Llama (hidden 64, GQA 4/2 heads) with `tokenizer`, saved as a model dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm_tokenizer)


@pytest.fixture(scope="session")
def tiny_generator(tiny_model_dir):
    """The tiny model behind the one generation core, as chat / the server load it."""
    from tunesmith.infer.chat import load_generator

    return load_generator(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def no_template_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with its chat template removed: not a chat model."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("no-template") / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = out / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    return out


@pytest.fixture(autouse=True)
def answer_cache(tmp_path, monkeypatch) -> Path:
    """Greedy answers (eval, guard) cached per test, never in the user's cache."""
    path = tmp_path / "answers"
    monkeypatch.setenv("TUNESMITH_ANSWER_CACHE", str(path))
    return path
