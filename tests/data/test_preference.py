"""Preference records in every layout -> the same pair; clear errors; pairs packed together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunesmith.config.schema import Config
from tunesmith.data.formats import load_conversations
from tunesmith.data.preference import build_preference_dataset, load_pairs, to_pair
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import UserError

USER, GOOD, BAD = "Who are you?", "I am Nova.", "I am SmolLM."
LAYOUTS = {
    "prompt strings (TRL, XTuner)": {"prompt": USER, "chosen": GOOD, "rejected": BAD},
    "prompt messages (TRL conversational)": {
        "prompt": [{"role": "user", "content": USER}],
        "chosen": [{"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "assistant", "content": BAD}],
    },
    "implicit prompt (TRL)": {
        "chosen": [{"role": "user", "content": USER}, {"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "user", "content": USER}, {"role": "assistant", "content": BAD}],
    },
    "alpaca (LLaMA-Factory)": {"instruction": USER, "input": "", "chosen": GOOD, "rejected": BAD},
    "sharegpt (LLaMA-Factory)": {
        "conversations": [{"from": "human", "value": USER}],
        "chosen": {"from": "gpt", "value": GOOD},
        "rejected": {"from": "gpt", "value": BAD},
    },
    "openai": {
        "input": {"messages": [{"role": "user", "content": USER}]},
        "preferred_output": [{"role": "assistant", "content": GOOD}],
        "non_preferred_output": [{"role": "assistant", "content": BAD}],
    },
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_same_pair(layout):
    pair = to_pair(LAYOUTS[layout], "f.jsonl:1")
    assert pair.chosen.messages() == [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": GOOD},
    ]
    assert pair.rejected.messages()[-1] == {"role": "assistant", "content": BAD}
    assert pair.chosen.turns[-1].trainable and not pair.chosen.turns[0].trainable


def test_system_field_opens_both_sides():
    pair = to_pair({"system": "Be brief.", "prompt": USER, "chosen": GOOD, "rejected": BAD}, "x")
    assert pair.chosen.system == pair.rejected.system == "Be brief."


def _write(tmp_path, records) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"prompt": USER, "chosen": GOOD, "rejected": GOOD},
            "'chosen' and 'rejected' are the same",
        ),
        ({"prompt": USER, "chosen": GOOD}, "missing or empty 'rejected'"),
        ({"prompt": USER, "chosen": "", "rejected": BAD}, "missing or empty 'chosen'"),
        ({"prompt": USER, "chosen": 3, "rejected": BAD}, "'chosen' must be a string"),
        (
            {
                "chosen": [
                    {"role": "user", "content": "A?"},
                    {"role": "assistant", "content": GOOD},
                ],
                "rejected": [
                    {"role": "user", "content": "B?"},
                    {"role": "assistant", "content": BAD},
                ],
            },
            "the prompt differs between 'chosen' and 'rejected'",
        ),
        ({"chosen": GOOD, "rejected": BAD}, "missing 'prompt'"),
        (
            {"prompt": USER, "chosen": [{"role": "user", "content": GOOD}], "rejected": BAD},
            "last message of 'chosen' must be the assistant's",
        ),
        (
            {
                "preferred_output": [{"role": "assistant", "content": GOOD}],
                "non_preferred_output": BAD,
            },
            "'input' must be an object with 'messages'",
        ),
    ],
)
def test_bad_pairs_name_the_file_line_and_field(tmp_path, record, message):
    path = _write(tmp_path, [{"prompt": USER, "chosen": GOOD, "rejected": BAD}, record])
    with pytest.raises(UserError, match=f"pairs.jsonl:2: .*{message}"):
        load_pairs(path)


def test_sft_config_given_pairs_says_to_add_a_preference_part(tmp_path):
    path = _write(tmp_path, [{"prompt": USER, "chosen": GOOD, "rejected": BAD}])
    with pytest.raises(UserError, match=r"pairs.jsonl:1: a preference record.*preference:"):
        load_conversations(path)


@pytest.fixture
def pair_config(tmp_path, tiny_model_dir):
    def make(records, **data) -> Config:
        files = [_write(tmp_path, records)]
        part = {"files": files, "cache_dir": str(tmp_path / "cache"), **data}
        return Config.model_validate(
            {"model": {"path": str(tiny_model_dir)}, "data": part, "preference": {}}
        )

    return make


def test_pairs_share_a_row_and_the_batch_knows_each_sequence(pair_config, smollm_tokenizer):
    records = [{"prompt": f"Q{i}?", "chosen": "yes " * (i + 1), "rejected": "no"} for i in range(5)]
    dataset = build_preference_dataset(pair_config(records, max_length=64), smollm_tokenizer)
    assert dataset.num_pairs == 5
    for row in range(len(dataset)):
        docs = dataset.documents_of_row(row)
        assert all(d ^ 1 in docs for d in docs)  # chosen 2k and rejected 2k + 1 together
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    assert "attention_mask" not in batch  # packed form: positions restart per document
    index, labels = batch["sequence_index"], batch["labels"]
    assert sorted(batch["pair_ids"].tolist()) == list(range(5))
    for p, pair in enumerate(batch["pair_ids"].tolist()):
        for side in (0, 1):
            _, doc_labels = dataset.document(2 * pair + side)
            got = labels[index == 2 * p + side]
            assert got.tolist() == doc_labels.tolist()
            assert (doc_labels != IGNORE).any()


def test_a_pair_truncated_to_no_answer_is_dropped_whole(pair_config, smollm_tokenizer):
    long_prompt = "word " * 200
    records = [
        {"prompt": USER, "chosen": GOOD, "rejected": BAD},
        {"prompt": long_prompt, "chosen": GOOD, "rejected": BAD},
    ]
    dataset = build_preference_dataset(pair_config(records, max_length=48), smollm_tokenizer)
    assert dataset.num_pairs == 1 and dataset.summary["dropped"] == 1
    assert dataset.num_documents == 2
    assert np.array_equal(dataset.documents_of_row(0), [0, 1])


def test_pairs_are_cached_memory_mapped_and_apart_from_sft(
    pair_config, smollm_tokenizer, monkeypatch
):
    from tunesmith.data import dataset as dataset_module

    records = [{"prompt": f"Q{i}?", "chosen": "yes", "rejected": "no"} for i in range(3)]
    cfg = pair_config(records, max_length=64)
    first = build_preference_dataset(cfg, smollm_tokenizer)
    assert first.num_pairs == 3 and not first.summary.get("cached")
    monkeypatch.setattr(dataset_module, "tokenize_conversations", None)  # must not tokenise
    second = build_preference_dataset(cfg, smollm_tokenizer)
    assert second.summary["cached"] and isinstance(second.ids, np.memmap)
    np.testing.assert_array_equal(second.ids, first.ids)
    template = dataset_module.get_template(cfg.data.template, smollm_tokenizer)
    sft_key = dataset_module.cache_key(cfg.data, smollm_tokenizer, template)
    caches = [p.name for p in Path(cfg.data.cache_dir).iterdir()]
    assert len(caches) == 1 and caches != [sft_key]  # an SFT build of these files: elsewhere


def test_data_check_and_show_handle_pairs(tmp_path, tiny_model_dir, capsys):
    from tunesmith.cli.main import main

    good = _write(tmp_path, [LAYOUTS[k] for k in LAYOUTS])
    model = ["--model", str(tiny_model_dir)]
    assert main(["data", "check", good, *model]) == 0
    out = capsys.readouterr().out
    assert "6 records (preference alpaca 1, preference openai 1, preference prompt 3" in out
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    assert main(["data", "show", good, cache, *model, "--index", "5", "--show", "text"]) == 0
    out = capsys.readouterr().out
    assert "pair 5 of 6" in out and out.index(GOOD) < out.index("===== rejected") < out.index(BAD)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": USER, "chosen": GOOD, "rejected": GOOD}) + "\n")
    assert main(["data", "check", str(bad), *model]) == 2
    assert "bad.jsonl:1: 'chosen' and 'rejected' are the same" in capsys.readouterr().out
