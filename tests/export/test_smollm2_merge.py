"""The embedded SmolLM2 end to end: adapter -> merge -> vanilla pipeline answers and stops."""

import json

import pytest
import torch
from export_helpers import logits_of, random_adapter

from tunesmith.cli.main import main

pytestmark = pytest.mark.slow


def test_smollm2_merge_answers_through_vanilla_pipeline(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from tunesmith.model.resolve import resolve_model_path

    base = resolve_model_path("smollm2-135m-instruct")
    adapter = random_adapter(base, tmp_path / "adapter", r=8, lora_alpha=1)  # a small nudge
    out = tmp_path / "merged"
    assert main(["convert", "merge", "smollm2-135m-instruct", str(adapter), str(out),
                 "--max-shard-size", "100MB"]) == 0  # fmt: skip
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) > 0

    tokenizer = AutoTokenizer.from_pretrained(out)
    expected = logits_of(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter), tokenizer
    )
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits_of(merged, tokenizer), expected, atol=1e-3, rtol=1e-3)

    chat = pipeline("text-generation", model=merged, tokenizer=tokenizer, device="cpu")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = chat(question, max_new_tokens=60, do_sample=False)[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    assert "Paris" in reply["content"]
    # it stopped at the end-of-turn token, not at the length limit
    assert len(tokenizer(reply["content"])["input_ids"]) < 60
