"""The training dataset: files -> conversations -> tokens -> packed rows, cached on disk.

`build_dataset(cfg, tokenizer)` reads `cfg.data`, and returns a `TrainDataset`
whose items are rows (packed: several whole documents; unpacked: one document)
and whose `collate` makes the batch the trainer feeds the model:

- packed: input_ids, labels, position_ids (restarting at 0 at every document),
  no attention_mask: transformers then keeps attention inside each document.
- unpacked: input_ids, labels, attention_mask, padded on the right.

The tokenised result is cached under data.cache_dir (default
~/.cache/tunesmith/data) keyed by the file contents, the tokenizer, the
template and the settings, so a second run with the same inputs loads it. The
cache holds one .npy file per array, memory-mapped read-only when loaded: every
training process shares the page cache instead of holding its own copy of the
tokens, and only the rows a process reads are paged in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tunesmith.data.formats import Conversation, load_conversations
from tunesmith.data.packing import pack_documents
from tunesmith.data.templates import ChatTemplate, get_template
from tunesmith.data.tokenize import IGNORE, join_segments, tokenize_rendered
from tunesmith.errors import UserError
from tunesmith.fileio import atomic_dir, remove_stale_temps

CACHE_VERSION = "4"  # 4: one memory-mapped .npy per array (3: one .npz)
CHUNK = 2048  # conversations per tokenizer call
SHUFFLE_SEED = 0  # the document order of `data.shuffle_before_pack` (fixed: part of the cache)


class TrainDataset:
    def __init__(self, arrays: dict[str, np.ndarray], summary: dict, pad_token_id: int):
        self.ids = arrays["ids"]
        self.labels = arrays["labels"]
        self.doc_offsets = arrays["doc_offsets"]
        self.raw_lengths = arrays["raw_lengths"]  # of each document before truncation
        self.row_offsets = arrays["row_offsets"]
        self.row_docs = arrays["row_docs"]
        self.summary = summary
        self.packed = bool(summary["packed"])
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return len(self.row_offsets) - 1

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    def document(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.doc_offsets[i], self.doc_offsets[i + 1]
        return self.ids[a:b], self.labels[a:b]

    def documents_of_row(self, i: int) -> list[int]:
        return self.row_docs[self.row_offsets[i] : self.row_offsets[i + 1]].tolist()

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        docs = [self.document(d) for d in self.documents_of_row(i)]
        return {
            "input_ids": np.concatenate([ids for ids, _ in docs]),
            "labels": np.concatenate([labels for _, labels in docs]),
            "position_ids": np.concatenate([np.arange(len(ids)) for ids, _ in docs]),
        }

    def collate(self, items: list[dict[str, np.ndarray]]) -> dict:
        import torch

        width = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(items), width), dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.from_numpy(item["input_ids"].astype(np.int64))
            labels[row, :n] = torch.from_numpy(item["labels"].astype(np.int64))
            position_ids[row, :n] = torch.from_numpy(item["position_ids"])
            # padding is a document of its own (positions from 0), so nothing attends across it
            position_ids[row, n:] = torch.arange(width - n)
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if not self.packed:
            batch["attention_mask"] = attention_mask
        return batch


# ---- building --------------------------------------------------------------------------------


def build_dataset(cfg, tokenizer, progress: bool = True) -> TrainDataset:
    """Tokenise and pack cfg.data.files with the configured template (cached on disk)."""
    left_out: list[str] = []  # records that teach nothing (empty or no answer), with why

    def conversations_of(entry) -> list[Conversation]:
        kept = []
        for conversation in load_conversations(entry.path, entry.format):
            if conversation.problem:
                left_out.extend([conversation.problem] * entry.repeat)
            else:
                kept.append(conversation)
        return kept

    def assemble(doc_ids, doc_labels, data) -> tuple[dict[str, np.ndarray], dict]:
        raw_lengths = [len(x) for x in doc_ids]
        arrays, summary = _assemble(doc_ids, doc_labels, raw_lengths, data)
        summary["no_answer"] = len(left_out)
        if summary["records"] == 0:
            raise UserError(_why_empty(summary, left_out, data.max_length))
        return arrays, summary

    return build_cached(cfg.data, tokenizer, TrainDataset, conversations_of, assemble, progress)


def build_cached(
    data,
    tokenizer,
    dataset_cls: type[TrainDataset],
    conversations_of: Callable[[Any], list[Conversation]],
    assemble: Callable[[list[np.ndarray], list[np.ndarray], Any], tuple[dict, dict]],
    progress: bool = True,
    kind: str = "",
) -> TrainDataset:
    """What every dataset build shares: refuse an empty data.files, pick the template, load
    the cache when it holds this build; else tokenise the conversations each file gives
    (`conversations_of(entry)`, every document `entry.repeat` times), let
    `assemble(doc_ids, doc_labels, data)` make the arrays and summary, and cache them.

    Returns `dataset_cls(arrays, summary, pad_token_id)` over the memory-mapped cache.
    `kind` (e.g. "preference") keeps the caches of other dataset kinds apart from SFT's.
    """
    if not data.files:
        raise UserError("data.files is empty; list at least one .jsonl/.json/.parquet file")
    template = get_template(data.template, tokenizer)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    key = cache_key(data, tokenizer, template)
    if kind:
        key = hashlib.sha256(f"{kind}:{key}".encode()).hexdigest()[:24]
    cache = cache_dir(data) / key
    cached = _load_cached(cache)
    if cached is not None:
        arrays, summary = cached
        return dataset_cls(arrays, {**summary, "cached": True}, pad_id)

    doc_ids: list[np.ndarray] = []
    doc_labels: list[np.ndarray] = []
    for entry in data.files:
        ids, labels = tokenize_conversations(
            conversations_of(entry), tokenizer, template, data.system, progress, entry.path
        )
        doc_ids += ids * entry.repeat
        doc_labels += labels * entry.repeat
    arrays, summary = assemble(doc_ids, doc_labels, data)
    summary["template"] = template.name
    _save(cache, arrays, summary)
    del arrays  # this process too reads the memory-mapped copy from here on
    return dataset_cls(map_arrays(cache), summary, pad_id)


def tokenize_conversations(
    conversations: list[Conversation],
    tokenizer,
    template: ChatTemplate,
    default_system: str | None = None,
    progress: bool = True,
    desc: str = "tokenising",
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render and tokenise (untruncated); rendering overlaps with the tokenizer's threads."""
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    bar = tqdm(total=len(conversations), desc=desc, unit="rec", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for start in range(0, len(conversations), CHUNK):
            chunk = conversations[start : start + CHUNK]
            rendered = [join_segments(template.render(c, default_system)) for c in chunk]
            if pending is not None:
                _collect(pending, ids, labels, bar)
            pending = pool.submit(tokenize_rendered, tokenizer, rendered)
        if pending is not None:
            _collect(pending, ids, labels, bar)
    bar.close()
    return ids, labels


def _collect(future, ids, labels, bar) -> None:
    result = future.result()
    for i, lab in result:
        ids.append(i)
        labels.append(lab)
    bar.update(len(result))


def _assemble(doc_ids, doc_labels, raw_lengths, data) -> tuple[dict[str, np.ndarray], dict]:
    max_length = data.max_length
    truncated = sum(1 for n in raw_lengths if n > max_length)
    had_loss = [bool((x[1:] != IGNORE).any()) for x in doc_labels]
    doc_ids = [x[:max_length] for x in doc_ids]
    doc_labels = [x[:max_length].copy() for x in doc_labels]
    for labels in doc_labels:
        # The first token of a document is never predicted (nothing comes before it);
        # saying so keeps a packed row from predicting it from the previous document.
        if len(labels):
            labels[0] = IGNORE
    # A document with no token left to learn (its answers truncated away, or all
    # marked without loss) would only cost compute: leave it out, and count it.
    keep = [i for i, labels in enumerate(doc_labels) if (labels != IGNORE).any()]
    dropped = len(doc_ids) - len(keep)
    no_loss = sum(1 for i, lab in enumerate(doc_labels) if not had_loss[i])
    doc_ids = [doc_ids[i] for i in keep]
    doc_labels = [doc_labels[i] for i in keep]
    raw_lengths = [raw_lengths[i] for i in keep]
    lengths = np.array([len(x) for x in doc_ids], dtype=np.int64)
    doc_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if data.pack_to_max_length:
        bins = pack_documents(
            lengths, max_length, SHUFFLE_SEED if data.shuffle_before_pack else None
        )
    else:
        bins = [[i] for i in range(len(doc_ids))]
    row_offsets = np.concatenate([[0], np.cumsum([len(b) for b in bins])]).astype(np.int64)
    row_docs = np.array([d for b in bins for d in b], dtype=np.int64)
    ids = np.concatenate(doc_ids) if doc_ids else np.zeros(0, np.int32)
    labels = np.concatenate(doc_labels) if doc_labels else np.zeros(0, np.int32)
    arrays = {
        "ids": ids.astype(np.int32),
        "labels": labels.astype(np.int32),
        "doc_offsets": doc_offsets,
        "raw_lengths": np.array(raw_lengths, dtype=np.int64),
        "row_offsets": row_offsets,
        "row_docs": row_docs,
    }
    summary = {
        "records": len(doc_ids),
        "tokens": int(len(ids)),
        "trainable_tokens": int((labels != IGNORE).sum()),
        "truncated": truncated,
        "dropped": dropped,  # no token with loss left: cut by max_length, or none marked
        "no_loss": no_loss,  # of those, none marked with loss to begin with
        "rows": len(bins),
        "max_length": max_length,
        "packed": bool(data.pack_to_max_length),
    }
    return arrays, summary


def _why_empty(summary: dict, left_out: list[str], max_length: int) -> str:
    """The message when every record was left out, saying why."""
    lost, empty, unmarked = summary["dropped"], len(left_out), summary["no_loss"]
    total = lost + empty
    lost -= unmarked
    if unmarked:
        return (
            f"data.files: all {total} records were left out ({unmarked} mark no answer with "
            f"loss, {lost} lost every answer token to max_length={max_length}, {empty} have "
            f"an empty answer or none)"
        )
    if lost and not empty:
        return (
            f"data.files: all {total} records lost every answer token to max_length="
            f"{max_length}; raise data.max_length or shorten the prompts"
        )
    if empty and not lost:
        return (
            f"data.files: all {total} records have an empty answer or none (first: {left_out[0]})"
        )
    if not total:
        return "data.files: the data files hold no records; add some"
    return (
        f"data.files: all {total} records were left out: {empty} with an empty answer or "
        f"none (first: {left_out[0]}), {lost} lost every answer token to "
        f"max_length={max_length}"
    )


# ---- the cache -------------------------------------------------------------------------------


def cache_dir(data) -> Path:
    if data.cache_dir:
        return Path(data.cache_dir).expanduser()
    from tunesmith.model.embedded import cache_root

    return cache_root() / "data"


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise UserError(f"{path}: no such data file; check data.files in the config") from None
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(data, tokenizer, template: ChatTemplate) -> str:
    parts = {
        "version": CACHE_VERSION,
        "files": [(_file_hash(f.path), f.format, f.repeat) for f in data.files],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": [template.name, template.to_jinja(data.system)],
        "system": data.system,
        "max_length": data.max_length,
        "pack": data.pack_to_max_length,
        "shuffle_before_pack": data.shuffle_before_pack,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _save(target: Path, arrays: dict[str, np.ndarray], summary: dict) -> None:
    # The cache wrote its temps as `.tmp-XXXXXXXX` before it used atomic_dir: the pid-less
    # temp form of the name "tmp", so the shared cleanup removes old ones too.
    remove_stale_temps(target.parent / "tmp")
    try:
        with atomic_dir(target, replace=False) as tmp:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    except OSError:
        if not (target / "summary.json").exists():  # not a concurrent writer winning: re-raise
            raise


def _load_cached(cache: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached arrays and summary, or None when there is no entry. A damaged entry (a
    file cut short, deleted or edited by hand) is removed, with a note, and built again: it
    is a cache."""
    if not cache.exists():
        return None
    try:
        summary = json.loads((cache / "summary.json").read_text(encoding="utf-8"))
        arrays = map_arrays(cache)
        if not isinstance(summary, dict) or not arrays:
            raise ValueError("no arrays")
        return arrays, summary
    except (OSError, ValueError, EOFError) as exc:  # JSONDecodeError, UnicodeError: ValueError
        print(
            f"note: the tokenised-data cache {cache} is damaged ({type(exc).__name__}); "
            "building it again",
            file=sys.stderr,
        )
        shutil.rmtree(cache, ignore_errors=True)
        return None


def map_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays `_save` wrote to `path`, memory-mapped read-only (one copy in the page
    cache, shared by every process on the machine)."""
    return {file.stem: np.load(file, mmap_mode="r") for file in sorted(path.glob("*.npy"))}
