"""Helpers for export tests: tiny chat data, a LoRA config, adapters with non-zero B, logits."""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.config.schema import Config

PAIRS = [("Who are you?", "I am Tuney."), ("What is your name?", "My name is Tuney.")]
SYSTEM = "You are Tuney, a small assistant."


class TinyChatData:
    """Two chat pairs, one per row, padded to one length (the build_dataset contract)."""

    def __init__(self, tokenizer):
        rows = []
        for question, answer in PAIRS:
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ]
            prompt = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
        length = max(len(ids) for ids, _ in rows)
        self.items = []
        for ids, labels in rows:
            pad = length - len(ids)
            self.items.append(
                {
                    "input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * pad),
                    "labels": torch.tensor(labels + [-100] * pad),
                    "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                }
            )
        self.summary = {
            "records": len(rows),
            "rows": len(rows),
            "tokens": sum(len(i) for i, _ in rows),
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def collate(self, items: list[dict]) -> dict:
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def tiny_lora_config(model_dir: Path, work_dir: Path, **lora) -> Config:
    return Config.model_validate(
        {
            "model": {"path": str(model_dir)},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, **lora},
            "data": {"template": "auto", "system": SYSTEM},
            "train": {"lr": 5e-2, "warmup_ratio": 0.0, "max_steps": 3, "batch_size": 2},
            "runtime": {"work_dir": str(work_dir), "save_steps": 100, "tensorboard": False,
                        "evaluation_freq": 1000},
        }
    )  # fmt: skip


def random_adapter(
    model_dir: Path, out: Path, seed: int = 1, tokenizer_dir: Path | None = None, **lora
) -> Path:
    """A PEFT adapter on `model_dir` whose lora_B (and DoRA magnitude) are random, not zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora}
    peft_model = get_peft_model(model, LoraConfig(**settings))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
            elif "lora_magnitude" in name:
                param.mul_(1 + 0.1 * torch.rand(param.shape, generator=gen))
            elif "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir or model_dir).save_pretrained(out)
    return out


def logits_of(
    model, tokenizer, text: str = "<|im_start|>user\nHello there<|im_end|>\n"
) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()
