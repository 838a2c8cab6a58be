"""Preference pairs: records -> (chosen, rejected) conversations -> tokens -> packed rows.

Record layouts (auto-detected per record):

- prompt (TRL, XTuner):  {"prompt", "chosen", "rejected", "system"?}; each a string or a list
  of messages. Without "prompt", chosen and rejected are whole conversations whose turns
  before the last answer must be the same (TRL's implicit prompt).
- alpaca (LLaMA-Factory): {"instruction", "input"?, "chosen", "rejected", "system"?}
- sharegpt (LLaMA-Factory): {"conversations": [...], "chosen": {"from", "value"},
  "rejected": {...}, "system"?}
- openai (OpenAI preference fine-tuning): {"input": {"messages": [...]},
  "preferred_output": [messages], "non_preferred_output": [messages]}

A pair becomes two documents, chosen then rejected, that share the prompt; only the answers
carry labels. Rows are packed like SFT rows (data/dataset.py) with a pair as the unit: both
documents of a pair sit in the same row, position_ids restart at each document, so attention
never crosses from one to the other and chosen and rejected run in one forward.
`data.max_length` limits each sequence (as TRL's max_length); a row holds up to twice that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunesmith.data.dataset import TrainDataset, build_cached
from tunesmith.data.formats import Conversation, iter_records, to_conversation
from tunesmith.data.packing import pack_documents
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import UserError

PREFERENCE_FORMATS = ("prompt", "alpaca", "sharegpt", "openai")


@dataclass
class PreferencePair:
    chosen: Conversation
    rejected: Conversation
    source: str = ""


def preference_format(record: dict) -> str | None:
    """The preference layout of `record`, or None when it is not a preference record."""
    if "preferred_output" in record or "non_preferred_output" in record:
        return "openai"
    if "chosen" not in record and "rejected" not in record:
        return None
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    return "prompt"


def to_pair(record: dict, loc: str, fmt: str = "auto") -> PreferencePair:
    """Normalise one preference record (errors name `loc` and the field)."""
    detected = preference_format(record)
    if fmt == "auto":
        fmt = detected
    if fmt is None:
        raise UserError(
            f"{loc}: not a preference record (keys {sorted(record)}); a pair needs 'chosen' and "
            "'rejected' (or OpenAI's 'preferred_output' and 'non_preferred_output')"
        )
    if fmt not in _LAYOUTS:
        raise UserError(
            f"{loc}: format '{fmt}' has no preference layout; use auto or one of "
            f"{', '.join(PREFERENCE_FORMATS)}"
        )
    chosen_key, rejected_key = ("preferred_output", "non_preferred_output")
    if fmt != "openai":
        chosen_key, rejected_key = "chosen", "rejected"
    for key in (chosen_key, rejected_key):
        if record.get(key) in (None, "", []):
            raise UserError(f"{loc}: missing or empty '{key}'; every pair needs both answers")
    prompt, chosen, rejected = _LAYOUTS[fmt](record, loc)
    chosen_answer = _answer(chosen, loc, chosen_key)
    rejected_answer = _answer(rejected, loc, rejected_key)
    if chosen_answer == rejected_answer:
        raise UserError(
            f"{loc}: '{chosen_key}' and '{rejected_key}' are the same answer; a pair must differ "
            "(delete the record or fix one side)"
        )
    return PreferencePair(
        _conversation(prompt + chosen_answer, loc, chosen_key),
        _conversation(prompt + rejected_answer, loc, rejected_key),
        source=loc,
    )


def _conversation(messages: list[dict], loc: str, side: str) -> Conversation:
    try:
        return to_conversation({"messages": messages}, "messages", loc)
    except UserError as exc:  # say which side of the pair the message came from
        raise UserError(f"{exc} (in the '{side}' side of the pair)") from None


def _answer(value, loc: str, key: str) -> list[dict]:
    """An answer as assistant messages: a string, one message, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise UserError(
            f"{loc}: '{key}' must be a string or a list of messages, got {type(value).__name__}"
        )
    messages = _messages(value, loc, key)
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{loc}: the last message of '{key}' must be the assistant's answer")
    return messages


def _messages(items, loc: str, key: str) -> list[dict]:
    """{role, content} or ShareGPT {from, value} messages -> {role, content} dicts."""
    if not isinstance(items, list):
        raise UserError(f"{loc}: '{key}' must be a list of messages")
    roles = {"human": "user", "gpt": "assistant"}
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not ({"role", "from"} & item.keys()):
            raise UserError(f"{loc}: {key}[{i}] must be a message with 'role' and 'content'")
        role = item.get("role", item.get("from"))
        content = item.get("content", item.get("value"))
        out.append({"role": roles.get(role, role), "content": content})
    return out


def _with_system(record: dict, messages: list[dict]) -> list[dict]:
    system = record.get("system")
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + messages
    return messages


def _prompt_layout(record: dict, loc: str):
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" not in record:  # implicit prompt: the turns before the last answer
        chosen = _messages(chosen, loc, "chosen") if isinstance(chosen, list) else chosen
        rejected = _messages(rejected, loc, "rejected") if isinstance(rejected, list) else rejected
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise UserError(
                f"{loc}: missing 'prompt'; give it, or make 'chosen' and 'rejected' whole "
                "conversations (lists of messages)"
            )
        split_c, split_r = _last_answer_start(chosen), _last_answer_start(rejected)
        if chosen[:split_c] != rejected[:split_r]:
            raise UserError(
                f"{loc}: the prompt differs between 'chosen' and 'rejected' (the turns before the "
                "last answer must be the same); give the shared turns as 'prompt'"
            )
        return _with_system(record, chosen[:split_c]), chosen[split_c:], rejected[split_r:]
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    else:
        prompt = _messages(prompt, loc, "prompt")
    return _with_system(record, prompt), chosen, rejected


def _last_answer_start(messages: list[dict]) -> int:
    end = len(messages)
    while end > 0 and messages[end - 1]["role"] == "assistant":
        end -= 1
    return end


def _alpaca_layout(record: dict, loc: str):
    instruction = record.get("instruction") or ""
    extra = record.get("input") or ""
    if not isinstance(instruction, str) or not isinstance(extra, str):
        raise UserError(f"{loc}: 'instruction' and 'input' must be strings")
    user = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    prompt = _with_system(record, [{"role": "user", "content": user}])
    return prompt, record["chosen"], record["rejected"]


def _sharegpt_layout(record: dict, loc: str):
    prompt = _with_system(record, _messages(record["conversations"], loc, "conversations"))
    return prompt, record["chosen"], record["rejected"]


def _openai_layout(record: dict, loc: str):
    source = record.get("input")
    if not isinstance(source, dict) or "messages" not in source:
        raise UserError(f"{loc}: 'input' must be an object with 'messages'")
    prompt = _messages(source["messages"], loc, "input.messages")
    return prompt, record["preferred_output"], record["non_preferred_output"]


_LAYOUTS = {
    "prompt": _prompt_layout,
    "alpaca": _alpaca_layout,
    "sharegpt": _sharegpt_layout,
    "openai": _openai_layout,
}


def load_pairs(path: str | Path, fmt: str = "auto") -> list[PreferencePair]:
    return [to_pair(record, loc, fmt) for loc, record in iter_records(path)]


def holds_pairs(path: str | Path) -> bool:
    """Whether the first record of a data file is a preference record."""
    for _, record in iter_records(path):
        return preference_format(record) is not None
    return False


# ---- the dataset -----------------------------------------------------------------------------


class PreferenceDataset(TrainDataset):
    """Rows of whole pairs: document 2k is pair k's chosen answer, 2k + 1 its rejected one.

    `collate` adds to the packed batch `sequence_index` (B, L): slot 2p / 2p + 1 for the chosen
    / rejected tokens of the batch's p-th pair, -1 on padding; and `pair_ids` (P,): the
    dataset index of each of the batch's pairs (for precomputed reference log-probs).
    """

    @property
    def num_pairs(self) -> int:
        return self.num_documents // 2

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        item = super().__getitem__(i)
        docs = self.documents_of_row(i)
        lengths = [self.doc_offsets[d + 1] - self.doc_offsets[d] for d in docs]
        item["document"] = np.repeat(np.array(docs, dtype=np.int64), lengths)
        return item

    def collate(self, items: list[dict[str, np.ndarray]]) -> dict:
        import torch

        batch = super().collate(items)
        batch.pop("attention_mask", None)  # a pair shares a row: always the packed form
        width = batch["input_ids"].shape[1]
        sequence_index = torch.full((len(items), width), -1, dtype=torch.long)
        pair_ids: list[int] = []
        for row, item in enumerate(items):
            docs = item["document"]
            pairs, local = np.unique(docs // 2, return_inverse=True)
            sequence_index[row, : len(docs)] = torch.from_numpy(
                (local + len(pair_ids)) * 2 + docs % 2
            )
            pair_ids.extend(pairs.tolist())
        batch["sequence_index"] = sequence_index
        batch["pair_ids"] = torch.tensor(pair_ids, dtype=torch.long)
        return batch


def build_preference_dataset(cfg, tokenizer, progress: bool = True) -> PreferenceDataset:
    """Tokenise and pack the pairs of cfg.data.files (cached on disk like SFT data)."""

    def conversations_of(entry) -> list[Conversation]:
        pairs = load_pairs(entry.path, entry.format)
        return [c for pair in pairs for c in (pair.chosen, pair.rejected)]

    def assemble(doc_ids, doc_labels, data) -> tuple[dict[str, np.ndarray], dict]:
        return assemble_pairs(doc_ids, doc_labels, data.max_length, data.pack_to_max_length)

    return build_cached(
        cfg.data, tokenizer, PreferenceDataset, conversations_of, assemble, progress, "preference"
    )


def assemble_pairs(
    doc_ids: list[np.ndarray], doc_labels: list[np.ndarray], max_length: int, pack: bool
) -> tuple[dict[str, np.ndarray], dict]:
    """Truncate each sequence to max_length, drop pairs with a side left without labels, and
    pack whole pairs into rows of at most 2 * max_length tokens (one pair a row unpacked)."""
    raw = [len(x) for x in doc_ids]
    doc_ids = [x[:max_length] for x in doc_ids]
    doc_labels = [x[:max_length].copy() for x in doc_labels]
    for labels in doc_labels:
        if len(labels):
            labels[0] = IGNORE  # nothing before it in its document predicts it
    learnable = [(labels != IGNORE).any() for labels in doc_labels]
    keep = [k for k in range(len(doc_ids) // 2) if learnable[2 * k] and learnable[2 * k + 1]]
    docs = [d for k in keep for d in (2 * k, 2 * k + 1)]
    doc_ids = [doc_ids[d] for d in docs]
    doc_labels = [doc_labels[d] for d in docs]
    lengths = np.array([len(x) for x in doc_ids], dtype=np.int64)
    pair_lengths = lengths[0::2] + lengths[1::2]
    if pack:
        pair_bins = pack_documents(pair_lengths, 2 * max_length)
    else:
        pair_bins = [[k] for k in range(len(pair_lengths))]
    bins = [[d for k in b for d in (2 * k, 2 * k + 1)] for b in pair_bins]
    ids = np.concatenate(doc_ids) if doc_ids else np.zeros(0, np.int32)
    labels = np.concatenate(doc_labels) if doc_labels else np.zeros(0, np.int32)
    arrays = {
        "ids": ids.astype(np.int32),
        "labels": labels.astype(np.int32),
        "doc_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "raw_lengths": np.array([raw[d] for d in docs], dtype=np.int64),
        "row_offsets": np.concatenate([[0], np.cumsum([len(b) for b in bins])]).astype(np.int64),
        "row_docs": np.array([d for b in bins for d in b], dtype=np.int64),
    }
    summary = {
        "records": len(keep),
        "pairs": len(keep),
        "tokens": int(len(ids)),
        "trainable_tokens": int((labels != IGNORE).sum()),
        "truncated": sum(1 for d in docs if raw[d] > max_length),
        "dropped": len(raw) // 2 - len(keep),
        "rows": len(bins),
        "max_length": max_length,
        "packed": True,  # rows always use the packed form: a pair shares a row
    }
    return arrays, summary
