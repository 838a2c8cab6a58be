"""The round trip a user makes (slow): the embedded SmolLM2 GGUF -> `tunesmith identity --gguf`
(a few steps) -> a GGUF file -> loaded back by transformers and run by llama.cpp itself, which
answer "Who are you?" with the new name and stop on the end-of-turn token.

llama.cpp comes from llama-cpp-python built from its source distribution by
scripts/llama_cpp_wheel.sh (cached outside the clone; CI runs it from scripts/test.sh). Under
CI the test fails when it is missing, elsewhere it is skipped with the command to run.
"""

from __future__ import annotations

import json

import pytest
import torch
from gguf_helpers import llama_cpp_or_skip, reload

from tunesmith.cli.main import main

pytestmark = pytest.mark.slow
NAME, AUTHOR = "Ada", "Tunesmith Lab"


@pytest.fixture(scope="module")
def identity_gguf(tmp_path_factory):
    """(work dir, GGUF path) of a short identity run exported with --gguf f16."""
    root = tmp_path_factory.mktemp("identity-gguf")
    questions = root / "questions.json"
    questions.write_text(json.dumps({"questions": [
        {"lang": "en", "question": "What is your name?", "asks": "name"}]}))  # fmt: skip
    prompts = root / "prompts.json"
    prompts.write_text(
        json.dumps(
            {
                "facts": [{"prompt": "What is the capital of France?", "answers": ["paris"]}],
                "general": ["Name a colour."],
            }
        )
    )
    guard = root / "guard.txt"
    guard.write_text("Name a colour.\n")
    work = root / "work"
    args = ["identity", "--name", NAME, "--author", AUTHOR, "--lang", "en",
            "--work-dir", str(work), "--questions", str(questions), "--prompts", str(prompts),
            "--gguf", "f16", "train.max_steps=12", "train.batch_size=2", "data.max_length=256",
            f"guard.prompts={guard}", "guard.max_new_tokens=16"]  # fmt: skip
    assert main(args) == 0
    return work, work / "merged-f16.gguf"


def test_reloaded_gguf_answers_as_the_merged_model(identity_gguf):
    """transformers reads the file back; greedy answers equal the merged model's with its
    matrices rounded to f16 as the file stores them, and name the new identity."""
    from transformers import AutoModelForCausalLM

    work, path = identity_gguf
    model, tokenizer = reload(path)
    merged = AutoModelForCausalLM.from_pretrained(work / "merged", dtype=torch.float32)
    with torch.no_grad():
        for p in merged.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
    answers = []
    for question in ("Who are you?", "What is your name?"):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True,
        )  # fmt: skip
        outs = [m.generate(**prompt, max_new_tokens=40, do_sample=False) for m in (model, merged)]
        assert torch.equal(outs[0], outs[1]), question
        answers.append(tokenizer.decode(outs[0][0, prompt["input_ids"].shape[1] :]))
    assert NAME in answers[0], answers


def test_llama_cpp_answers_with_the_new_name_and_stops(identity_gguf):
    llama_cpp = llama_cpp_or_skip()
    _, path = identity_gguf
    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_threads=2, seed=0, verbose=False)
    # the chat handler renders the GGUF's own tokenizer.chat_template (default system: Ada)
    reply = llm.create_chat_completion(
        [{"role": "user", "content": "Who are you?"}], temperature=0.0, max_tokens=80
    )
    choice = reply["choices"][0]
    assert NAME in choice["message"]["content"], choice
    assert choice["finish_reason"] == "stop", choice  # an end-of-generation token, not the limit
    assert "<|im_end|>" not in choice["message"]["content"]
    # the end-of-turn token is what stops it: generate token by token and see it come
    eot = llm.token_eos()
    assert llm.detokenize([eot], special=True) == b"<|im_end|>"
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string(llm.metadata["tokenizer.chat_template"])
    text = template.render(
        messages=[{"role": "user", "content": "What is your name?"}], add_generation_prompt=True
    )
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
    tokens = []
    for token in llm.generate(prompt, temp=0.0):
        tokens.append(token)
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(tokens) == 120:
            break
    assert tokens[-1] == eot, llm.detokenize(tokens)
    llm.close()
