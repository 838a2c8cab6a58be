"""`data check` and `data show`: what the model will be trained on, before training."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.data.formats import SUFFIXES, detect_format, iter_records, to_conversation
from tunesmith.data.preference import preference_format, to_pair
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import UserError
from tunesmith.fileio import check_readable_file

MAX_ERRORS_SHOWN = 20


@dataclass
class FileReport:
    path: str
    records: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    trainable: int = 0
    no_loss: int = 0  # records left with no token to learn after truncation


def is_data_file(target: str) -> bool:
    return Path(target).suffix.lower() in SUFFIXES


def target_is_data(target: str) -> bool:
    """Whether a `data check/show` target is a data file (True) or a config (False).

    A data suffix (.jsonl, .json, .parquet) makes it data and any other suffix a config.
    A file with no suffix is judged by its content: an empty one, or one that holds JSON
    records or Parquet (data files are read by their suffix), is a UserError saying what to
    do; anything else is read as a YAML config."""
    path = Path(target).expanduser()
    if is_data_file(target):
        return True
    if path.suffix or not path.is_file():
        return False
    path = check_readable_file(path, "data file or config")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"PAR1"):
        raise UserError(f"{target} holds Parquet data but has no suffix; name it {path}.parquet")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        raise UserError(
            f"{target}: the file is empty; give a data file ({', '.join(SUFFIXES)}) with "
            "records, or a .yaml config"
        )
    first = text.splitlines()[0]
    if text[0] == "[" or (text[0] == "{" and _is_json_record(first)):
        suffix = ".json" if text[0] == "[" else ".jsonl"
        raise UserError(
            f"{target} holds JSON records but has no suffix; data files are read by their "
            f"suffix: name it {path}{suffix}"
        )
    return False


def _is_json_record(line: str) -> bool:
    """A JSON object on one line whose keys are not config parts (a config may be written
    as JSON too: YAML reads it)."""
    from tunesmith.config.loader import FLAT_KEYS
    from tunesmith.config.schema import Config

    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and not set(value) <= set(Config.model_fields) | set(FLAT_KEYS)


def check_files(
    files, tokenizer, template, default_system, max_length, progress=True
) -> list[FileReport]:
    """Validate every record of every file (collecting all errors) and measure token lengths."""
    from tunesmith.data.dataset import tokenize_conversations

    reports = []
    for entry in files:
        report = FileReport(entry.path)
        conversations = []
        try:
            for loc, record in iter_records(entry.path):
                report.records += 1
                try:
                    fmt, found = _conversations_of(record, entry.format, loc)
                    report.formats[fmt] = report.formats.get(fmt, 0) + 1
                    for conversation in found:
                        if conversation.problem:  # training would leave it out
                            report.errors.append(conversation.problem)
                        else:
                            conversations.append(conversation)
                except UserError as exc:
                    report.errors.append(str(exc))
        except UserError as exc:  # the file itself is unreadable (missing, empty, bad JSON line)
            report.errors.append(str(exc))
        if not report.errors:
            ids, labels = tokenize_conversations(
                conversations,
                tokenizer,
                template,
                default_system,
                progress=progress,
                desc=entry.path,
            )
            report.lengths = [len(x) for x in ids]
            report.trainable = int(sum(int((lab != IGNORE).sum()) for lab in labels))
            for conversation, lab in zip(conversations, labels, strict=True):
                if not (lab[1:max_length] != IGNORE).any():
                    report.no_loss += 1
                    report.errors.append(_no_loss_message(conversation.source, lab, max_length))
        reports.append(report)
    return reports


def _no_loss_message(loc: str, labels: np.ndarray, max_length: int) -> str:
    if (labels[1:] != IGNORE).any():
        return (
            f"{loc}: no answer token is left within max_length={max_length} (the prompt takes "
            f"it all); training leaves the record out: shorten it or raise data.max_length"
        )
    return f"{loc}: no answer carries loss; training leaves the record out"


def _conversations_of(record: dict, fmt: str, loc: str) -> tuple[str, list]:
    """(format name, conversations): one for an SFT record, chosen + rejected for a pair."""
    layout = preference_format(record)
    if layout is not None:
        pair = to_pair(record, loc, fmt)
        return f"preference {layout}", [pair.chosen, pair.rejected]
    fmt = detect_format(record, loc) if fmt == "auto" else fmt
    return fmt, [to_conversation(record, fmt, loc)]


def format_report(reports: list[FileReport], max_length: int, template_name: str) -> str:
    lines = []
    for r in reports:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.formats.items())) or "-"
        lines.append(f"{r.path}: {r.records} records ({kinds})")
        for err in r.errors[:MAX_ERRORS_SHOWN]:
            lines.append(f"  error: {err}")
        if len(r.errors) > MAX_ERRORS_SHOWN:
            lines.append(f"  ... and {len(r.errors) - MAX_ERRORS_SHOWN} more errors")
    lengths = np.array([n for r in reports for n in r.lengths])
    if len(lengths):
        p50, p95 = np.percentile(lengths, [50, 95])
        truncated = int((lengths > max_length).sum())
        lines.append(
            f"tokens per record (template {template_name}): min {lengths.min()}, "
            f"median {p50:.0f}, p95 {p95:.0f}, max {lengths.max()}, total {lengths.sum():,} "
            f"({sum(r.trainable for r in reports):,} with loss)"
        )
        lines.append(f"truncated at max_length {max_length}: {truncated} of {len(lengths)} records")
        no_loss = sum(r.no_loss for r in reports)
        if no_loss:
            lines.append(f"left out (no token with loss within max_length): {no_loss} records")
    return "\n".join(lines)


def masked_text(tokenizer, ids, labels, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """The document's text with every run of tokens that carries no loss put in [[ ]]."""
    out, run, run_masked = [], [], None
    for token, label in zip(ids.tolist(), labels.tolist(), strict=True):
        masked = label == IGNORE
        if run and masked != run_masked:
            out.append(_piece(tokenizer, run, run_masked, open_mark, close_mark))
            run = []
        run.append(token)
        run_masked = masked
    if run:
        out.append(_piece(tokenizer, run, run_masked, open_mark, close_mark))
    return "".join(out)


def _piece(tokenizer, tokens, masked, open_mark, close_mark) -> str:
    text = tokenizer.decode(tokens, skip_special_tokens=False)
    return f"{open_mark}{text}{close_mark}" if masked else text


def show_document(dataset, tokenizer, index: int, what: str) -> str:
    if not 0 <= index < dataset.num_documents:
        raise UserError(
            f"--index {index} is out of range: the dataset has {dataset.num_documents} records"
        )
    ids, labels = dataset.document(index)
    s = dataset.summary
    header = (
        f"record {index} of {dataset.num_documents}: {len(ids)} tokens, "
        f"{int((labels != IGNORE).sum())} with loss | dataset: {s['rows']} rows "
        f"({'packed' if s['packed'] else 'unpacked'}, max_length {s['max_length']}), "
        f"{s['truncated']} truncated"
    )
    return f"{header}\n\n{_views(tokenizer, ids, labels, what)}"


def show_pair(dataset, tokenizer, index: int, what: str) -> str:
    """Both sequences of preference pair `index`: chosen, then rejected."""
    if not 0 <= index < dataset.num_pairs:
        raise UserError(
            f"--index {index} is out of range: the dataset has {dataset.num_pairs} pairs"
        )
    s = dataset.summary
    parts = [
        f"pair {index} of {dataset.num_pairs} | dataset: {s['rows']} rows (max_length "
        f"{s['max_length']} per sequence), {s['truncated']} sequences truncated"
    ]
    for side, doc in (("chosen", 2 * index), ("rejected", 2 * index + 1)):
        ids, labels = dataset.document(doc)
        parts.append(f"===== {side}: {len(ids)} tokens, {int((labels != IGNORE).sum())} with loss")
        parts.append(_views(tokenizer, ids, labels, what))
    return "\n\n".join(parts)


def _views(tokenizer, ids, labels, what: str) -> str:
    parts = []
    if what in ("text", "all"):
        parts.append(("text", tokenizer.decode(ids.tolist(), skip_special_tokens=False)))
    if what in ("masked_text", "all"):
        parts.append(("masked_text ([[ ]] = no loss)", masked_text(tokenizer, ids, labels)))
    if what in ("input_ids", "all"):
        parts.append(("input_ids", str(ids.tolist())))
    if what in ("labels", "all"):
        parts.append(("labels", str(labels.tolist())))
    return "\n\n".join(f"--- {name} ---\n{body}" for name, body in parts)
