"""The identity workflow's optional preference stage (`tunesmith identity --preference dpo`).

After identity SFT has been merged, the same identity questions are answered by the base
model (which still gives its old name: "I am SmolLM, trained by Hugging Face"). Those
answers become `rejected`, the identity answers `chosen`, and a fresh LoRA on the merged SFT
model is trained on the pairs with the preference recipe; its reference is the SFT model
itself (the adapter disabled). The result is merged again and evaluated like SFT alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config.schema import Config, DataFile, PreferenceConfig
from tunesmith.data.formats import load_conversations
from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text
from tunesmith.model.generate import Generator

PREFERENCE_RECIPE = "smollm2_135m_instruct_lora_dpo"
BASE_ANSWER_TOKENS = 64
MAX_PAIRS = 24  # a seeded sample of the identity questions: base answers cost ~1-5 s each on a CPU
EPOCHS = 1  # one row (~5 short pairs) a step: ~5 steps


def identity_pairs(identity_file: str | Path, generator: Generator) -> list[dict]:
    """{"prompt", "chosen", "rejected"} records: each single-turn identity record's answer
    against the base model's own greedy answer (no system prompt: its old identity), for at
    most MAX_PAIRS records. A question the base already answers with the identity answer
    gives no pair."""
    questions, answers = [], []
    for conv in load_conversations(identity_file):
        turns = [t for t in conv.turns if t.role != "system"]
        if len(turns) == 2 and turns[0].role == "user" and turns[1].role == "assistant":
            questions.append(turns[0].content)
            answers.append(turns[1].content)
    if len(questions) > MAX_PAIRS:
        import random

        keep = sorted(random.Random(0).sample(range(len(questions)), MAX_PAIRS))
        questions, answers = [questions[i] for i in keep], [answers[i] for i in keep]
    unique = list(dict.fromkeys(questions))
    base = generator.greedy_answers(
        unique, max_new_tokens=BASE_ANSWER_TOKENS, desc="preference: base answers"
    )
    old = {q: a.text.strip() for q, a in zip(unique, base, strict=True)}
    return [
        {"prompt": q, "chosen": a, "rejected": old[q]}
        for q, a in zip(questions, answers, strict=True)
        if old[q] and old[q] != a
    ]


def write_pairs(records: list[dict], out: Path) -> None:
    if not records:
        raise UserError("preference: the base model gave no answer to pair with the identity data")
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def preference_config(
    sft: Config, loss: str, sft_model: str | Path, pairs: Path, work_dir: Path
) -> Config:
    """The preference recipe on the merged SFT model: the SFT run's template, system prompt
    and length, the pairs as data, no forgetting guard (the reference keeps the model close)."""
    from tunesmith.config.loader import load_config

    cfg = load_config(PREFERENCE_RECIPE)
    return cfg.model_copy(
        update={
            "model": sft.model.model_copy(update={"path": str(sft_model)}),
            "data": cfg.data.model_copy(
                update={
                    "files": [DataFile(path=str(pairs))],
                    "template": sft.data.template,
                    "system": sft.data.system,
                }
            ),
            "preference": PreferenceConfig(loss=loss),
            "train": cfg.train.model_copy(update={"max_epochs": EPOCHS, "batch_size": 1}),
            "runtime": cfg.runtime.model_copy(
                update={"work_dir": str(work_dir), "evaluation_inputs": []}
            ),
        }
    )
