"""Helpers for GGUF tests: tiny Qwen2 / Llama 3 style tokenizers and models, logits, a Go
template renderer for the subset Modelfile TEMPLATEs use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

CORPUS = [
    "Who are you? I am Tuney, an assistant made by the Tunesmith Lab.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "def f(x):\n    return x ** 2  # squares\n\n\tTabs and  double  spaces.",
    "你好，我是一个助手。日本語のテキストも少し。",
    "It's, don't, we'll, they've: contractions matter.",
]
SAMPLES = [
    "Who are you?",
    "Numbers 3.14159 and 2026-11-30, 1000000!",
    "  leading spaces\nnew line\n\n  indented",
    "混合 mixed 文本 text",
    "<|im_start|>user\nhi<|im_end|>\n",
]
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def byte_level_tokenizer(split: str, specials: list[str], bos: str | None, eos: str, template: str):
    """A small byte-level BPE trained here, pre-tokenized like the family's tokenizer.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS * 4, trainer)
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )


def qwen2_tokenizer():
    from tunesmith.data.templates import get_template

    template = get_template("qwen_chat").to_jinja("You are Tuney.")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return byte_level_tokenizer(QWEN2_SPLIT, specials, None, "<|im_end|>", template)


def llama3_tokenizer():
    from tunesmith.data.templates import get_template

    template = get_template("llama3_chat").to_jinja("You are Tuney.")
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip
    return byte_level_tokenizer(LLAMA3_SPLIT, specials, "<|begin_of_text|>", "<|eot_id|>", template)


def make_tiny_qwen2(out: Path, tokenizer, seed: int = 0) -> Path:
    """A random Qwen2 (q/k/v biases, tied embeddings) whose embedding has spare rows."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer) + 7,  # real Qwen2 pads its embedding past the tokenizer too
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def logits(model, ids: list[int]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: one number per comparison, comparable across models."""
    return ((got - want).abs().max() / want.abs().max()).item()


def reload(path: Path):
    """The GGUF file at `path` through vanilla transformers: (model in fp32, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def llama_cpp_or_skip():
    """llama-cpp-python (scripts/llama_cpp_wheel.sh); required under CI, else skipped."""
    import os

    import pytest

    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("llama-cpp-python is not installed: run bash scripts/llama_cpp_wheel.sh")
    return llama_cpp


def llama_cpp_tokens(path: Path, texts: list[str]) -> list[list[int]]:
    """How llama.cpp itself tokenizes `texts` with the GGUF's vocabulary (special tokens
    parsed, no BOS), loading the vocabulary only."""
    llama_cpp = llama_cpp_or_skip()
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    finally:
        llm.close()


# ---- Go text/template, the subset a Modelfile TEMPLATE from export/modelfile.py uses ----------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go_template(template: str, messages: list[dict]) -> str:
    """Render `template` as Go's text/template would for Ollama's `.Messages`: string constants,
    `range .Messages`, `if / else if eq .Role "x"`, `end`, `.Content`, and `{{-` / `-}}` trimming.
    Anything else raises, so a TEMPLATE using more fails the test instead of passing unread."""
    tokens: list[tuple[str, str]] = []  # ("text", s) | ("action", s)
    pos = 0
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if match[1]:
            text = text.rstrip(" \t\r\n")
        if tokens and tokens[-1][0] == "trim_next":
            tokens.pop()
            text = text.lstrip(" \t\r\n")
        tokens.append(("text", text))
        tokens.append(("action", match[2]))
        if match[3]:
            tokens.append(("trim_next", ""))
        pos = match.end()
    tail = template[pos:]
    if tokens and tokens[-1][0] == "trim_next":
        tokens.pop()
        tail = tail.lstrip(" \t\r\n")
    tokens.append(("text", tail))
    tree, rest = _parse(tokens, 0)
    assert rest == len(tokens), "unbalanced {{ end }}"
    return _run(tree, {"Messages": messages}, None)


def _parse(tokens, i, stop=("end",)):
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
        elif value in stop or value.startswith("else"):
            return nodes, i
        elif value.startswith("range "):
            assert value == "range .Messages", value
            body, i = _parse(tokens, i + 1)
            assert tokens[i][1] == "end"
            nodes.append(("range", body))
            i += 1
        elif value.startswith("if "):
            branches = []
            condition = value[3:]
            while True:
                body, i = _parse(tokens, i + 1)
                branches.append((condition, body))
                ender = tokens[i][1]
                if ender == "end":
                    break
                condition = ender[len("else if ") :] if ender.startswith("else if ") else "true"
            nodes.append(("if", branches))
            i += 1
        else:
            nodes.append(("value", value))
            i += 1
    return nodes, i


def _run(nodes, top: dict, dot: dict | None) -> str:
    out = []
    for kind, value in nodes:
        if kind == "text":
            out.append(value)
        elif kind == "range":
            out.extend(_run(value, top, message) for message in top["Messages"])
        elif kind == "if":
            for condition, body in value:
                if _truth(condition, dot):
                    out.append(_run(body, top, dot))
                    break
        elif value == ".Content":
            out.append(dot["content"])
        elif value.startswith('"'):
            out.append(json.loads(value))
        else:
            raise AssertionError(f"unsupported Go template action {{{{ {value} }}}}")
    return "".join(out)


def _truth(condition: str, dot: dict | None) -> bool:
    if condition == "true":
        return True
    match = re.fullmatch(r'eq \.Role "(\w+)"', condition)
    assert match, f"unsupported condition {condition}"
    return dot["role"] == match[1]
