"""Dataset formats -> one common `Conversation`.

Supported record shapes (auto-detected per record, or set per file in the config):

- conversation (XTuner): {"conversation": [{"system"?, "input", "output", "output_with_loss"?}]}
- messages (OpenAI):     {"messages": [{"role": system|user|assistant, "content", "loss"?}]}
- alpaca:                {"instruction", "input"?, "output", "system"?}
- sharegpt:              {"conversations": [{"from": system|human|gpt, "value"}], "system"?}

Files: .jsonl (one record a line), .json (a list of records), .parquet.
Every mistake names the file and line (or record number) and says what to fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.jsonio import iter_json_list, iter_jsonl
from tunesmith.errors import UserError, where
from tunesmith.fileio import check_readable_file, decode_error

FORMATS = ("conversation", "messages", "alpaca", "sharegpt")
SUFFIXES = (".jsonl", ".json", ".parquet")
# Identity-data placeholders that must be replaced before training. Only these
# names: `{{ value }}` in general is legitimate text in code data (Jinja, Vue).
PLACEHOLDER = re.compile(
    r"\{\{\s*(name|author|other|assistant|assistant_name|bot_name|model_name)\s*\}\}", re.I
)

_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    content: str
    trainable: bool = False  # only assistant turns can carry loss
    key: str = field(default="", compare=False)  # where it came from, e.g. "messages[2].content"


@dataclass
class Conversation:
    turns: list[Turn]
    source: str = field(default="", compare=False)  # file:line, for error messages
    # why the record teaches nothing (an empty answer, no answer), or None: such records
    # are reported by `data check` and left out (and counted) by training
    problem: str | None = field(default=None, compare=False)

    @property
    def system(self) -> str | None:
        if self.turns and self.turns[0].role == "system":
            return self.turns[0].content
        return None

    def messages(self) -> list[dict]:
        """The turns as chat messages ({"role", "content"}), as HF chat templates take them."""
        return [{"role": t.role, "content": t.content} for t in self.turns]


# ---- reading records ---------------------------------------------------------------------


def iter_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) for every record of a .jsonl / .json / .parquet file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such data file; check data.files in the config")
    check_readable_file(path, "data file")
    suffix = path.suffix.lower()
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".parquet": _iter_parquet}
    if suffix not in readers:
        raise UserError(f"{path}: unsupported data file type; use one of {', '.join(SUFFIXES)}")
    try:
        yield from readers[suffix](path)
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read this data file ({exc.strerror or exc})") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        yield from _records(iter_jsonl(f, path), path)


def _iter_json(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        yield from _records(iter_json_list(f, path), path)


def _records(values, path: Path) -> Iterator[tuple[str, dict]]:
    seen = False
    for line_no, record in values:
        if not isinstance(record, dict):
            raise UserError(f"{where(path, line_no)}: a record must be a JSON object")
        seen = True
        yield where(path, line_no), record
    if not seen:
        raise UserError(f"{path}: the file is empty; add records or remove it from data.files")


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except pa.ArrowException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable Parquet file ({first})") from None
    if not rows:
        raise UserError(f"{path}: the file is empty; add records or remove it from data.files")
    for i, record in enumerate(rows, 1):
        yield f"{path} row {i}", record


# ---- detection and normalisation ----------------------------------------------------------


def detect_format(record: dict, loc: str) -> str:
    if {"chosen", "rejected", "preferred_output"} & record.keys():
        raise UserError(
            f"{loc}: a preference record (chosen / rejected); train pairs with a "
            "`preference:` part in the config (e.g. preference: {loss: dpo})"
        )
    if "conversation" in record:
        return "conversation"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or ("output" in record and "input" in record):
        return "alpaca"
    raise UserError(
        f"{loc}: cannot tell the format of a record with keys {sorted(record)}; expected "
        "'conversation', 'messages', 'conversations' (sharegpt) or 'instruction'/'output' "
        "(alpaca), or set the format in data.files"
    )


def to_conversation(record: dict, fmt: str, loc: str) -> Conversation:
    """Normalise one record of format `fmt` into a Conversation (errors name `loc`)."""
    if fmt == "auto":
        fmt = detect_format(record, loc)
    try:
        convert = _CONVERTERS[fmt]
    except KeyError:
        raise UserError(f"{loc}: unknown format '{fmt}'; use auto or one of {FORMATS}") from None
    turns = convert(record, loc)
    return Conversation(turns, source=loc, problem=answer_problem(turns, loc))


def answer_problem(turns: list[Turn], loc: str) -> str | None:
    """Why a record would teach the model nothing, or to answer nothing; None when it is fine."""
    if not any(t.role == "assistant" for t in turns):
        return f"{loc}: the record has no assistant answer; add one or delete the record"
    for turn in turns:
        if turn.trainable and not turn.content.strip():
            return (
                f"{loc}: {turn.key or 'an answer'} is an empty answer (training on it teaches "
                f"the model to say nothing); write the answer or delete the record"
            )
    return None


def _text(value, loc: str, key: str, required: bool = True) -> str:
    if value is None:
        if required:
            raise UserError(f"{loc}: missing '{key}'; every record needs it")
        return ""
    if not isinstance(value, str):
        raise UserError(
            f"{loc}: '{key}' must be a string, got {type(value).__name__} "
            f"({json.dumps(value, ensure_ascii=False)[:60]}); flatten it to text"
        )
    match = PLACEHOLDER.search(value)
    if match:
        raise UserError(
            f"{loc}: '{key}' still holds the placeholder {match.group(0)}; replace it "
            f"(tunesmith data replace IN OUT --old-text '{match.group(0)}' --new-text TEXT)"
        )
    return value


def _flag(value) -> bool:
    """A loss flag; absent or null (parquet fills missing struct fields with null) means True."""
    return True if value is None else bool(value)


def _from_conversation(record: dict, loc: str) -> list[Turn]:
    items = record["conversation"]
    if not isinstance(items, list) or not items:
        raise UserError(f"{loc}: 'conversation' must be a non-empty list of turns")
    turns: list[Turn] = []
    for i, item in enumerate(items):
        key = f"conversation[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{loc}: {key} must be an object with 'input' and 'output'")
        if i == 0 and item.get("system"):
            turns.append(Turn("system", _text(item["system"], loc, f"{key}.system")))
        if "output" not in item:
            raise UserError(f"{loc}: {key} is missing 'output'; every turn needs an answer")
        user = _text(item.get("input"), loc, f"{key}.input", required=False)
        turns.append(Turn("user", user))
        loss = _flag(item.get("output_with_loss"))
        output = _text(item["output"], loc, f"{key}.output")
        turns.append(Turn("assistant", output, loss, f"{key}.output"))
    return turns


def _from_alpaca(record: dict, loc: str) -> list[Turn]:
    if "output" not in record:
        raise UserError(f"{loc}: missing 'output'; every alpaca record needs an answer")
    instruction = _text(record.get("instruction"), loc, "instruction", required=False)
    extra = _text(record.get("input"), loc, "input", required=False)
    user = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    turns = []
    if record.get("system"):
        turns.append(Turn("system", _text(record["system"], loc, "system")))
    turns.append(Turn("user", user))
    turns.append(Turn("assistant", _text(record["output"], loc, "output"), True, "output"))
    return turns


def _from_messages(record: dict, loc: str) -> list[Turn]:
    return _role_list(record["messages"], loc, "messages", "role", "content", _ROLES)


def _from_sharegpt(record: dict, loc: str) -> list[Turn]:
    turns = []
    if record.get("system"):
        turns.append(Turn("system", _text(record["system"], loc, "system")))
    turns += _role_list(
        record["conversations"], loc, "conversations", "from", "value", _SHAREGPT_ROLES
    )
    return _check_order(turns, loc)


def _role_list(items, loc: str, name: str, role_key: str, text_key: str, roles: dict) -> list[Turn]:
    """Turns from a list of {role_key: role, text_key: text, "loss"?: bool} objects."""
    if not isinstance(items, list) or not items:
        raise UserError(f"{loc}: '{name}' must be a non-empty list")
    turns = []
    for i, item in enumerate(items):
        key = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{loc}: {key} must be an object with '{role_key}' and '{text_key}'")
        role = roles.get(item.get(role_key))
        if role is None:
            raise UserError(
                f"{loc}: {key} has unknown {role_key!r} {item.get(role_key)!r}; "
                f"use one of {', '.join(roles)}"
            )
        content = _text(item.get(text_key), loc, f"{key}.{text_key}")
        trainable = role == "assistant" and _flag(item.get("loss"))
        turns.append(Turn(role, content, trainable, f"{key}.{text_key}"))
    return _check_order(turns, loc)


def _check_order(turns: list[Turn], loc: str) -> list[Turn]:
    for i, turn in enumerate(turns):
        if turn.role == "system" and i != 0:
            raise UserError(f"{loc}: a system message must come first (found at position {i})")
    return turns


_CONVERTERS = {
    "conversation": _from_conversation,
    "messages": _from_messages,
    "alpaca": _from_alpaca,
    "sharegpt": _from_sharegpt,
}


def load_conversations(path: str | Path, fmt: str = "auto") -> list[Conversation]:
    """Read every record of `path` and normalise it (format `auto`: detected per record)."""
    return [to_conversation(record, fmt, loc) for loc, record in iter_records(path)]
