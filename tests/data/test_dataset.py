import numpy as np
import pytest
import torch
from data_helpers import ALPACA, MULTI_TURN, data_config, write_jsonl

from tunesmith.data import dataset as dataset_module
from tunesmith.data.dataset import build_dataset
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import UserError

RECORDS = [
    {
        "instruction": f"Question {i}: " + "tell me something " * (i % 7),
        "output": "Answer " * (1 + i % 5),
    }
    for i in range(24)
]


@pytest.fixture
def records_file(tmp_path):
    return write_jsonl(tmp_path / "records.jsonl", RECORDS)


def test_summary_counts_records_tokens_and_rows(smollm_tokenizer, records_file, tmp_path):
    ds = build_dataset(
        data_config([records_file], tmp_path, template="chatml", max_length=256), smollm_tokenizer
    )
    s = ds.summary
    assert s["records"] == len(RECORDS) == ds.num_documents
    assert s["tokens"] == sum(len(ds.document(i)[0]) for i in range(ds.num_documents))
    assert 0 < s["trainable_tokens"] < s["tokens"]
    assert s["rows"] == len(ds) < len(RECORDS)  # packed: several documents a row
    assert s["truncated"] == 0


def test_truncation_is_counted_and_applied(smollm_tokenizer, records_file, tmp_path):
    ds = build_dataset(
        data_config([records_file], tmp_path, template="chatml", max_length=30), smollm_tokenizer
    )
    over = int((ds.raw_lengths > 30).sum())
    assert over > 0
    # truncated records whose answer was cut away entirely are dropped (and counted)
    assert ds.summary["truncated"] == over + ds.summary["dropped"]
    assert ds.summary["records"] + ds.summary["dropped"] == len(RECORDS)
    assert max(len(ds[i]["input_ids"]) for i in range(len(ds))) <= 30


def test_packed_rows_hold_whole_documents_with_restarting_positions(
    smollm_tokenizer, records_file, tmp_path
):
    ds = build_dataset(
        data_config([records_file], tmp_path, template="chatml", max_length=128), smollm_tokenizer
    )
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        docs = ds.documents_of_row(i)
        seen.extend(docs)
        lengths = [len(ds.document(d)[0]) for d in docs]
        assert len(item["input_ids"]) == sum(lengths) <= 128
        expected = np.concatenate([np.arange(n) for n in lengths])
        np.testing.assert_array_equal(item["position_ids"], expected)
    assert sorted(seen) == list(range(ds.num_documents))


def test_packed_collate_has_no_attention_mask_and_pads_as_its_own_document(
    smollm_tokenizer, records_file, tmp_path
):
    ds = build_dataset(
        data_config([records_file], tmp_path, template="chatml", max_length=128), smollm_tokenizer
    )
    items = [ds[0], ds[len(ds) - 1]]
    batch = ds.collate(items)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    short = len(items[1]["input_ids"])
    width = batch["input_ids"].shape[1]
    assert short < width
    assert (batch["labels"][1, short:] == IGNORE).all()
    assert batch["position_ids"][1, short:].tolist() == list(range(width - short))


def test_unpacked_collate_pads_with_attention_mask(smollm_tokenizer, records_file, tmp_path):
    cfg = data_config([records_file], tmp_path, template="chatml", pack_to_max_length=False)
    ds = build_dataset(cfg, smollm_tokenizer)
    assert len(ds) == len(RECORDS)
    batch = ds.collate([ds[0], ds[5]])
    assert batch["attention_mask"][0].sum() == len(ds[0]["input_ids"])
    assert batch["attention_mask"][1].sum() == len(ds[5]["input_ids"])


def test_files_mix_with_repeat_counts(smollm_tokenizer, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    b = write_jsonl(tmp_path / "b.jsonl", [MULTI_TURN])
    cfg = data_config([str(a), {"path": str(b), "repeat": 3}], tmp_path, template="chatml")
    ds = build_dataset(cfg, smollm_tokenizer)
    assert ds.summary["records"] == len(ALPACA) + 3
    first_b = ds.document(len(ALPACA))[0]
    np.testing.assert_array_equal(ds.document(len(ALPACA) + 2)[0], first_b)


def test_second_build_reuses_the_cache(smollm_tokenizer, records_file, tmp_path, monkeypatch):
    cfg = data_config([records_file], tmp_path, template="chatml")
    first = build_dataset(cfg, smollm_tokenizer)
    assert not first.summary.get("cached")

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again instead of using the cache")

    monkeypatch.setattr(dataset_module, "tokenize_conversations", no_tokenising)
    second = build_dataset(cfg, smollm_tokenizer)
    assert second.summary["cached"]
    np.testing.assert_array_equal(second.ids, first.ids)
    np.testing.assert_array_equal(second.labels, first.labels)


def test_cached_tokens_are_memory_mapped_not_copied(smollm_tokenizer, records_file, tmp_path):
    """Every training process maps the one cached copy read-only instead of loading its own."""
    cfg = data_config([records_file], tmp_path, template="chatml")
    built = build_dataset(cfg, smollm_tokenizer)
    loaded = build_dataset(cfg, smollm_tokenizer)
    for ds in (built, loaded):
        for array in (ds.ids, ds.labels, ds.doc_offsets, ds.row_offsets, ds.row_docs):
            assert isinstance(array, np.memmap) and not array.flags.writeable
    batch = loaded.collate([loaded[i] for i in range(len(loaded))])
    expected = built.collate([built[i] for i in range(len(built))])
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key


def test_cache_key_changes_with_data_template_and_settings(
    smollm_tokenizer, records_file, tmp_path
):
    from tunesmith.data.dataset import cache_key
    from tunesmith.data.templates import get_template

    def key(**data):
        cfg = data_config([records_file], tmp_path, **data)
        return cache_key(
            cfg.data, smollm_tokenizer, get_template(cfg.data.template, smollm_tokenizer)
        )

    base = key(template="chatml")
    assert key(template="chatml") == base
    assert key(template="auto") != base
    assert key(template="chatml", max_length=512) != base
    assert key(template="chatml", SYSTEM="Be brief.") != base
    write_jsonl(records_file, RECORDS[:-1])
    assert key(template="chatml") != base


def test_empty_file_list_is_a_user_error(smollm_tokenizer, tmp_path):
    with pytest.raises(UserError, match="data.files is empty"):
        build_dataset(data_config([], tmp_path), smollm_tokenizer)


def test_packed_loss_equals_unpacked_loss(smollm_tokenizer, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.eval()
    path = write_jsonl(tmp_path / "r.jsonl", RECORDS + [MULTI_TURN])
    ds = build_dataset(
        data_config([path], tmp_path, template="auto", max_length=160), smollm_tokenizer
    )
    assert any(len(ds.documents_of_row(i)) > 1 for i in range(len(ds)))

    with torch.no_grad():
        packed_sum = 0.0
        for start in range(0, len(ds), 2):  # batches of 2 rows, so padding is exercised too
            batch = ds.collate([ds[i] for i in range(start, min(start + 2, len(ds)))])
            packed_sum += model(**batch, use_cache=False, num_items_in_batch=1).loss.item()
        single_sum, count = 0.0, 0
        for d in range(ds.num_documents):
            ids, labels = ds.document(d)
            ids_t = torch.tensor(ids, dtype=torch.long)[None]
            labels_t = torch.tensor(labels, dtype=torch.long)[None]
            single_sum += model(input_ids=ids_t, labels=labels_t, num_items_in_batch=1).loss.item()
            count += int((labels_t[:, 1:] != IGNORE).sum())
    assert count == ds.summary["trainable_tokens"]
    assert packed_sum / count == pytest.approx(single_sum / count, rel=1e-5, abs=1e-6)


def test_documents_without_any_loss_are_dropped_and_counted(smollm_tokenizer, tmp_path):
    context_only = {"conversation": [{"input": "a", "output": "b", "output_with_loss": False}]}
    path = write_jsonl(tmp_path / "x.jsonl", [context_only, MULTI_TURN])
    ds = build_dataset(data_config([path], tmp_path, template="chatml"), smollm_tokenizer)
    assert ds.summary["dropped"] == 1
    assert ds.summary["records"] == ds.num_documents == 1


def test_records_with_empty_or_no_answer_are_left_out_and_counted(smollm_tokenizer, tmp_path):
    records = [
        *ALPACA,
        {"instruction": "Capital of France?", "output": ""},
        {"instruction": "Say nothing.", "output": " \n"},
        {"messages": [{"role": "user", "content": "Hello?"}]},
    ]
    path = write_jsonl(tmp_path / "x.jsonl", records)
    ds = build_dataset(data_config([path], tmp_path, template="chatml"), smollm_tokenizer)
    assert ds.summary["records"] == len(ALPACA)
    assert ds.summary["no_answer"] == 3


def test_every_record_truncated_away_says_why(smollm_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "word " * 200, "output": "Red."}] * 4)
    with pytest.raises(UserError, match="all 4 records lost every answer token to max_length=64"):
        build_dataset(
            data_config([path], tmp_path, template="chatml", max_length=64), smollm_tokenizer
        )


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: (entry / "summary.json").write_text("{"),
        lambda entry: (entry / "summary.json").unlink(),
        lambda entry: (entry / "ids.npy").write_bytes((entry / "ids.npy").read_bytes()[:100]),
    ],
    ids=["summary-torn", "summary-deleted", "ids-cut-short"],
)
def test_a_damaged_cache_entry_is_built_again(
    smollm_tokenizer, records_file, tmp_path, damage, capsys
):
    """A torn summary.json was a JSONDecodeError traceback on every later run; a deleted one
    an OSError ("Directory not empty") when the rebuilt entry was renamed over it."""
    cfg = data_config([records_file], tmp_path, template="chatml")
    expected = np.array(build_dataset(cfg, smollm_tokenizer).ids)  # a copy, not the mapped file
    (entry,) = [
        p for p in dataset_module.cache_dir(cfg.data).iterdir() if not p.name.startswith(".")
    ]
    damage(entry)
    again = build_dataset(cfg, smollm_tokenizer)
    assert not again.summary.get("cached")
    assert f"the tokenised-data cache {entry} is damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(again.ids, expected)
    assert build_dataset(cfg, smollm_tokenizer).summary["cached"]
