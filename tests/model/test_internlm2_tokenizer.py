"""InternLM2 tokenizer from tokenizer.model (no remote code), the internlm2_chat template, stopping."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from internlm2_helpers import (
    internlm2_config,
    internlm2_state_dict,
    internlm2_tokenizer_model,
    write_internlm2,
)

from tunesmith.config.schema import ModelConfig
from tunesmith.errors import UserError
from tunesmith.model.load import load_model, load_tokenizer

CHAT_TOKENS = {
    "<|plugin|>": 92538,
    "<|interpreter|>": 92539,
    "<|action_end|>": 92540,
    "<|action_start|>": 92541,
    "<|im_end|>": 92542,
    "<|im_start|>": 92543,
}
TEXTS = [
    "Hello world",
    "  two  spaces\n\nnewlines\t and a tab",
    "你好，我是书生·浦语。请介绍一下你自己",
    "emoji 🤖 and 𝔘nicode, ＦＵＬＬ width",
    "def f(x):\n    return x ** 2\n",
    " leading and trailing space ",
    "日本語のテキストと한국어",
]
CONVERSATIONS = {
    "en": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Smith, made by the tunesmith team."},
        {"role": "user", "content": "What is 2 + 2?\nAnswer briefly."},
        {"role": "assistant", "content": "4."},
    ],
    "zh": [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "我是小书，由 tunesmith 团队开发。"},
    ],
}


@pytest.fixture(scope="module")
def tokenizer(internlm2_tokenizer_dir):
    return load_tokenizer(str(internlm2_tokenizer_dir))


@pytest.fixture(scope="module")
def sentencepiece_model():
    sentencepiece = pytest.importorskip("sentencepiece")
    return sentencepiece.SentencePieceProcessor(model_file=str(internlm2_tokenizer_model()))


def _reference_chat_ids(sp, messages, generation_prompt=False) -> list[int]:
    """The chat format from InternLM2's README, each text piece encoded by sentencepiece."""
    ids = [1]
    for m in messages:
        ids += [92543, *sp.encode(f"{m['role']}\n{m['content']}"), 92542, *sp.encode("\n")]
    if generation_prompt:
        ids += [92543, *sp.encode("assistant\n")]
    return ids


def test_is_fast_with_chat_tokens_and_bos(tokenizer):
    assert tokenizer.is_fast
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS} == CHAT_TOKENS
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer("hi").input_ids[0] == 1
    assert len(tokenizer) == 92544


def test_chat_tokens_are_special(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 92543 and ids[-1] == 92542
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


@pytest.mark.parametrize("text", TEXTS)
def test_encodes_like_sentencepiece(tokenizer, sentencepiece_model, text):
    assert tokenizer.encode(text, add_special_tokens=False) == sentencepiece_model.encode(text)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_own_chat_template_matches_chat_format(tokenizer, sentencepiece_model, lang):
    messages = CONVERSATIONS[lang]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == _reference_chat_ids(sentencepiece_model, messages, generation_prompt=True)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_internlm2_chat_template_renders_same_ids(tokenizer, sentencepiece_model, lang):
    templates = pytest.importorskip("tunesmith.data.templates")
    from tunesmith.data.formats import Conversation, Turn
    from tunesmith.data.tokenize import join_segments, tokenize_rendered

    messages = CONVERSATIONS[lang]
    template = templates.get_template("internlm2_chat")
    conversation = Conversation([Turn(m["role"], m["content"], True) for m in messages])
    ((ids, labels),) = tokenize_rendered(tokenizer, [join_segments(template.render(conversation))])
    assert ids.tolist() == _reference_chat_ids(sentencepiece_model, messages)
    # the model learns to stop: every <|im_end|> closing an assistant turn carries loss
    assert (labels == 92542).sum() == sum(m["role"] == "assistant" for m in messages)
    prompt = template.render_prompt(messages[:2])
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert prompt_ids == _reference_chat_ids(sentencepiece_model, messages[:2], True)


def test_conversion_needs_no_sentencepiece_library(internlm2_tokenizer_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr("tunesmith.model.internlm2.cache_root", lambda: tmp_path)
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # importing it would fail
    tokenizer = load_tokenizer(str(internlm2_tokenizer_dir))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 92542
    assert list(tmp_path.glob("tokenizers/internlm2-*/tokenizer.json"))


def test_converted_tokenizer_is_cached(internlm2_tokenizer_dir, tokenizer):
    from tunesmith.model.internlm2 import cache_root

    # the cache is shared by the session's InternLM2 tests: other tokenizers may be in it too
    def stamps():
        return {p: p.stat().st_mtime_ns for p in cache_root().glob("tokenizers/internlm2-*/*")}

    before = stamps()
    assert any(p.name == "tokenizer.json" for p in before)  # the fixture's conversion
    load_tokenizer(str(internlm2_tokenizer_dir))
    assert stamps() == before  # nothing converted or written again


def test_tokenizer_config_names_and_template_are_used(tmp_path, internlm2_tokenizer_dir):
    shutil.copytree(internlm2_tokenizer_dir, tmp_path / "t")
    config = {  # shaped like the hub's, which names remote code that must not run
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "tokenizer_class": "InternLM2Tokenizer",
        "added_tokens_decoder": {"92543": {"content": "<|begin|>", "special": True}},
        "chat_template": "{% for m in messages %}[{{ m['content'] }}]{% endfor %}",
    }
    (tmp_path / "t" / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(str(tmp_path / "t"))
    assert tokenizer.convert_tokens_to_ids("<|begin|>") == 92543
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert text == "[x]"


def test_missing_tokenizer_model_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internlm2"}))
    with pytest.raises(UserError, match=r"tokenizer\.model is missing"):
        load_tokenizer(str(tmp_path))


def test_generation_stops_at_im_end(tmp_path, tokenizer):
    """A tiny model rigged so that after the prompt it says two tokens, then <|im_end|>."""
    config = internlm2_config()
    sd = internlm2_state_dict(config)
    hidden = config["hidden_size"]
    for i in range(
        config["num_hidden_layers"]
    ):  # blocks add nothing: logits depend on the last token
        sd[f"model.layers.{i}.attention.wo.weight"].zero_()
        sd[f"model.layers.{i}.feed_forward.w2.weight"].zero_()
    sd["model.norm.weight"] = torch.ones(hidden)
    newline, first, second = 364, tokenizer.convert_tokens_to_ids("Hi"), 346
    chain = [(newline, first), (first, second), (second, 92542)]
    sd["output.weight"] *= 0.01
    for code, (current, following) in enumerate(chain):
        sd["model.tok_embeddings.weight"][current] = torch.nn.functional.one_hot(
            torch.tensor(code), hidden
        ).float()
        sd["output.weight"][following] = (
            10 * torch.nn.functional.one_hot(torch.tensor(code), hidden).float()
        )
    path = write_internlm2(tmp_path / "m", config, sd)
    model = load_model(ModelConfig(path=str(path)), device="cpu")
    templates = pytest.importorskip("tunesmith.data.templates")
    template = templates.get_template("internlm2_chat")
    stop_ids = tokenizer.convert_tokens_to_ids(template.stop_words)
    assert 92542 in stop_ids
    prompt = template.render_prompt([{"role": "user", "content": "Say hi"}])
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    assert ids[0, -1] == newline
    out = model.generate(
        ids, max_new_tokens=10, do_sample=False, eos_token_id=stop_ids, pad_token_id=2
    )
    assert out[0, ids.shape[1] :].tolist() == [first, second, 92542]
    # without <|im_end|> as a stop token the same model runs on to the limit
    out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=2, pad_token_id=2)
    assert out.shape[1] - ids.shape[1] == 10
