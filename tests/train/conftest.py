"""Fixtures for the training tests: a small packed dataset and a config for a tiny model."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config.schema import Config

QA = [
    ("Who are you?", "I am Tuney, a small assistant."),
    ("What is your name?", "My name is Tuney."),
    ("Who made you?", "The tunesmith team trained me."),
    ("Are you SmolLM?", "No, I am Tuney."),
    ("What can you do?", "I answer short questions."),
    ("Say hello.", "Hello from Tuney!"),
]


class PackedToyDataset:
    """Chat pairs tokenized with the chat template, packed two per row, padded to one length.

    Follows the `build_dataset` contract (len, [i], summary, collate) without the cache.
    """

    def __init__(self, tokenizer, pairs=QA, per_row: int = 2):
        docs = []
        for question, answer in pairs:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            docs.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
        rows = [docs[i : i + per_row] for i in range(0, len(docs), per_row)]
        length = max(sum(len(ids) for ids, _ in row) for row in rows)
        self.items = []
        for row in rows:
            ids, labels, pos = [], [], []
            for d_ids, d_labels in row:
                ids += d_ids
                # the first token of a document is never predicted from the one before
                labels += [-100] + d_labels[1:]
                pos += list(range(len(d_ids)))
            pad = length - len(ids)
            ids += [tokenizer.pad_token_id] * pad
            labels += [-100] * pad
            pos += list(range(pad))
            self.items.append(
                {
                    "input_ids": torch.tensor(ids),
                    "labels": torch.tensor(labels),
                    "position_ids": torch.tensor(pos),
                }
            )
        self.summary = {
            "records": len(docs),
            "rows": len(self.items),
            "tokens": sum(len(d) for d, _ in docs),
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def collate(self, items: list[dict]) -> dict:
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}


@pytest.fixture(scope="session")
def toy_dataset(smollm_tokenizer) -> PackedToyDataset:
    return PackedToyDataset(smollm_tokenizer)


@pytest.fixture(scope="session")
def toy_rows(smollm_tokenizer) -> PackedToyDataset:
    """One document per row (6 rows), padded to one length."""
    return PackedToyDataset(smollm_tokenizer, per_row=1)


def _deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def tiny_config(tiny_model_dir):
    """make(**parts) -> Config: LoRA on the tiny model, no dropout (runs are comparable),
    no TensorBoard; each keyword updates that part, e.g. train={"max_steps": 6}."""

    def make(**parts) -> Config:
        base = {
            "model": {"path": str(tiny_model_dir)},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {"template": "auto"},
            "train": {"lr": 1e-2, "warmup_ratio": 0.0, "max_steps": 4},
            "runtime": {"save_steps": 100, "tensorboard": False, "evaluation_freq": 1000},
        }
        return Config.model_validate(_deep_update(base, parts))

    return make


@pytest.fixture
def run_training(toy_dataset):
    """run(cfg, work_dir, resume=None, dataset=toy_dataset, before_train=None) -> (recipe, result)."""
    from tunesmith.train.recipe import TrainRecipe

    def run(cfg, work_dir, resume=None, dataset=None, before_train=None):
        recipe = TrainRecipe(cfg, work_dir, resume=resume, dataset=dataset or toy_dataset)
        recipe.setup()
        if before_train:
            before_train(recipe)
        return recipe, recipe.train()

    return run
