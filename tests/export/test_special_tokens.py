"""Special tokens added in training (model.special_tokens): trained, exported, merged, loadable."""

import json

import pytest
import torch
from export_helpers import logits_of

from tunesmith.cli.main import main

TOKENS = ["<tool_call>", "</tool_call>"]


@pytest.mark.slow  # ~25 s a case on 2 busy cores: trains, exports, merges, chats
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_added_special_tokens_train_export_and_merge_to_a_vanilla_model(
    tiny_model_dir, tmp_path, tied
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.config.loader import dump_config
    from tunesmith.config.schema import Config
    from tunesmith.model.load import fit_embeddings
    from tunesmith.train.recipe import TrainRecipe

    base_dir = tiny_model_dir
    if tied:  # SmolLM2's layout: the head is the embedding matrix
        base_dir = tmp_path / "tied"
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=True)
        model.save_pretrained(base_dir)
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base_dir)
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"Call tool {i}.", "output": f"<tool_call>t{i}</tool_call>"})
            + "\n"
            for i in range(4)
        )
    )
    cfg = Config.model_validate(
        {
            "model": {"path": str(base_dir), "special_tokens": TOKENS},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"files": [str(data)], "cache_dir": str(tmp_path / "cache"), "max_length": 64},
            "train": {"lr": 1e-2, "max_steps": 2, "warmup_ratio": 0.0},
            "runtime": {"tensorboard": False, "evaluation_freq": 1000},
        }
    )
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_config(cfg))
    recipe = TrainRecipe(cfg, tmp_path / "work")
    recipe.setup()
    recipe.train()

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert (
        main(["convert", "pth_to_hf", str(config), str(tmp_path / "work"), str(adapter), "--fp32"])
        == 0
    )
    assert (
        main(["convert", "merge", str(base_dir), str(adapter), str(merged), "--dtype", "fp32"]) == 0
    )

    tokenizer = AutoTokenizer.from_pretrained(merged)
    vocab = len(tokenizer)
    assert vocab == 49152 + len(TOKENS)
    assert len(tokenizer("<tool_call>", add_special_tokens=False)["input_ids"]) == 1
    assert json.loads((merged / "config.json").read_text())["vocab_size"] == vocab
    vanilla = AutoModelForCausalLM.from_pretrained(merged)
    assert vanilla.get_output_embeddings().weight.shape[0] == vocab

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    fit_embeddings(base, tokenizer)
    expected = PeftModel.from_pretrained(base, adapter)
    text = "<|im_start|>user\nCall tool 1.<|im_end|>\n<|im_start|>assistant\n<tool_call>"
    torch.testing.assert_close(
        logits_of(vanilla, tokenizer, text),
        logits_of(expected, tokenizer, text),
        atol=1e-4,
        rtol=1e-4,
    )
    # the adapter also runs on the (smaller) base directly: chat resizes the base first
    assert main(["chat", str(base_dir), "--adapter", str(adapter), "--prompt", "hi",
                 "--max-new-tokens", "2", "--temperature", "0", "--no-streamer"]) == 0  # fmt: skip
