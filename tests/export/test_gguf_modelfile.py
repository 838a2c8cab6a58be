"""The Ollama Modelfile beside a GGUF: its TEMPLATE, rendered as Go's text/template renders it
for Ollama (with the Modelfile's SYSTEM first when a chat has no system message), gives exactly
the prompt of the template tunesmith trained with (data/templates.py)."""

from __future__ import annotations

import copy
import json

import pytest
from gguf_helpers import llama3_tokenizer, qwen2_tokenizer, render_go_template

from tunesmith.data.templates import get_template
from tunesmith.errors import UserError
from tunesmith.export.modelfile import modelfile_text, read_wrappers

SYSTEM = "You are Tuney, an AI assistant developed by Tunesmith Lab."
CHATS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Who made you?"},
        {"role": "assistant", "content": "Tunesmith Lab."},
        {"role": "user", "content": "Thanks!\nBye."},
    ],
]


def _parse(text: str) -> dict:
    """FROM / SYSTEM / TEMPLATE / stop values of a Modelfile."""
    out: dict = {"stop": []}
    for block in text.split('"""')[1::2]:
        before = text[: text.index(f'"""{block}"""')].rstrip().split("\n")[-1]
        out[before.strip().split()[0]] = block
    for line in text.splitlines():
        if line.startswith("FROM "):
            out["FROM"] = line[5:]
        if line.startswith("PARAMETER stop "):
            out["stop"].append(json.loads(line[len("PARAMETER stop ") :]))
    return out


def _ollama_prompt(modelfile: dict, messages: list[dict]) -> str:
    if "SYSTEM" in modelfile and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": modelfile["SYSTEM"]}, *messages]
    return render_go_template(modelfile["TEMPLATE"], messages)


def _with_template(tokenizer, name: str):
    tokenizer = copy.deepcopy(tokenizer)  # the session's tokenizer stays as it was
    tokenizer.chat_template = get_template(name, tokenizer).to_jinja(SYSTEM)
    return tokenizer


@pytest.mark.parametrize(
    ("name", "make_tokenizer", "bos_added_by_runtime"),
    [
        ("chatml", "smollm", False),
        ("qwen_chat", "qwen2", False),
        ("llama3_chat", "llama3", True),
        ("internlm2_chat", "smollm", False),
        ("zephyr", "smollm", False),
    ],
)
def test_template_renders_what_training_rendered(
    name, make_tokenizer, bos_added_by_runtime, smollm_tokenizer
):
    base = {"smollm": lambda: smollm_tokenizer, "qwen2": qwen2_tokenizer,
            "llama3": llama3_tokenizer}[make_tokenizer]()  # fmt: skip
    tokenizer = _with_template(base, name)
    trained = get_template(name, tokenizer)
    modelfile = _parse(modelfile_text(tokenizer, "tuney.gguf"))
    assert modelfile["FROM"] == "./tuney.gguf"
    assert modelfile["SYSTEM"] == SYSTEM
    assert modelfile["stop"][0] == trained.end_of_turn
    for chat in CHATS:
        want = trained.render_prompt(chat, system=SYSTEM)
        if bos_added_by_runtime:  # llama.cpp puts BOS in front itself (add_bos_token)
            want = want.removeprefix(tokenizer.bos_token)
        assert _ollama_prompt(modelfile, chat) == want, chat


def test_stop_words_are_the_end_of_turn_and_eos(smollm_tokenizer):
    tokenizer = _with_template(llama3_tokenizer(), "llama3_chat")
    stops = _parse(modelfile_text(tokenizer, "m.gguf"))["stop"]
    assert stops[0] == "<|eot_id|>" and set(stops) <= {"<|eot_id|>", "<|end_of_text|>"}


def test_embedded_template_with_its_own_default_system(smollm_tokenizer):
    """SmolLM2's own template injects 'You are a helpful AI assistant named SmolLM...'; the
    Modelfile carries it as SYSTEM and renders the template's own text."""
    modelfile = _parse(modelfile_text(smollm_tokenizer, "smol.gguf"))
    assert modelfile["SYSTEM"].startswith("You are a helpful AI assistant named SmolLM")
    for chat in CHATS:
        want = smollm_tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        assert _ollama_prompt(modelfile, chat) == want


def test_template_that_is_not_role_wrappers_is_refused(smollm_tokenizer):
    tokenizer = copy.deepcopy(smollm_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(UserError, match="--no-modelfile"):
        read_wrappers(tokenizer)
