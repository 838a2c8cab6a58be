"""Streaming readers for .jsonl files and .json lists; errors name the line.

Both read one record at a time (a .json list a chunk at a time), so a file of
any size is read in constant memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tunesmith.errors import UserError, where

CHUNK = 1 << 16  # characters read at a time from a .json list


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """An object's keys must be unique: json keeps the last of two silently, and a record
    that says "instruction" twice loses one of them without a word."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)  # as fast as json.loads


def _duplicate(path: Path, line: int | None, exc: _DuplicateKey) -> UserError:
    return UserError(
        f"{where(path, line)}: key '{exc.key}' appears twice in one object (JSON keeps only "
        "the last); keep one"
    )


def iter_jsonl(
    f: TextIO, path: Path, on_read: Callable[[int], None] | None = None
) -> Iterator[tuple[int, object]]:
    """(line number, value) for every non-blank line; `on_read(bytes)` reports progress."""
    for line_no, line in enumerate(f, 1):
        if on_read:
            on_read(len(line.encode("utf-8")))
        if not line.strip():
            continue
        try:
            value = _DECODER.decode(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{where(path, line_no)}: not valid JSON ({exc.msg}); fix or delete this line"
            ) from None
        except _DuplicateKey as exc:
            raise _duplicate(path, line_no, exc) from None
        except RecursionError:
            raise UserError(_too_deep(path, line_no)) from None
        check_unicode(value, path, line_no)
        yield line_no, value


def iter_json_list(
    f: TextIO, path: Path, on_read: Callable[[int], None] | None = None
) -> Iterator[tuple[int, object]]:
    """(line number, item) for the items of a JSON list (or a single top-level object)."""
    decoder = _DECODER
    buf, pos, line, eof = "", 0, 1, False

    def fill() -> bool:
        nonlocal buf, pos, line, eof
        chunk = f.read(CHUNK)
        if on_read:
            on_read(len(chunk.encode("utf-8")))
        line += buf.count("\n", 0, pos)
        buf, pos = buf[pos:] + chunk, 0
        eof = not chunk
        return bool(chunk)

    def peek() -> str:
        """The next non-blank character ("" at the end), without consuming it."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not fill():
                return buf[pos] if pos < len(buf) else ""

    def here() -> int:
        return line + buf.count("\n", 0, pos)

    def decode():
        nonlocal pos
        while True:
            try:
                start = here()
                item, pos = decoder.raw_decode(buf, pos)
                check_unicode(item, path, start)
                return item
            except json.JSONDecodeError as exc:
                if eof or not fill():
                    raise UserError(
                        f"{where(path, here())}: not valid JSON ({exc.msg}); fix this record"
                    ) from None
            except _DuplicateKey as exc:
                raise _duplicate(path, start, exc) from None
            except RecursionError:
                raise UserError(_too_deep(path, here())) from None

    def end() -> None:
        """Only blanks may follow the list (or the single record)."""
        if peek():
            raise UserError(
                f"{where(path, here())}: unexpected text after the end of the JSON "
                f"{'list' if first == '[' else 'record'}; delete it"
            )

    first = peek()
    if first == "{":  # a file holding one record
        yield here(), decode()
        end()
        return
    if first != "[":
        raise UserError(f"{where(path, here())}: a .json data file must hold a list of records")
    pos += 1
    if peek() == "]":
        pos += 1
        end()
        return
    while True:
        yield here(), decode()
        c = peek()
        if c == "]":
            pos += 1
            end()
            return
        if c != ",":
            raise UserError(f"{where(path, here())}: expected ',' or ']' after a record")
        pos += 1
        peek()  # to the next record (raw_decode does not skip blanks)


_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str, path: Path):
    """json.loads of a whole user file: bad JSON or a lone surrogate is a UserError naming the
    line (the caller handles JSONDecodeError itself when it wants a different hint)."""
    try:
        value = _DECODER.decode(text)
    except _DuplicateKey as exc:
        raise _duplicate(path, None, exc) from None
    except RecursionError:
        raise UserError(_too_deep(path, 1)) from None
    check_unicode(value, path, None, text)
    return value


def check_unicode(value: object, path: Path, line: int | None, text: str | None = None) -> None:
    """Refuse a string (or key) holding a lone UTF-16 surrogate (JSON's "\\ud800" escape):
    Python reads it, but it is not Unicode text and breaks tokenizers and writers later."""
    bad = _find_surrogate(value, "")
    if bad is None:
        return
    field, char = bad
    code = f"\\u{ord(char):04x}"
    if line is None:
        idx = text.lower().find(code) if text else -1
        line = text.count("\n", 0, idx) + 1 if idx >= 0 else None
    what = f"field '{field}'" if field else "a string"
    raise UserError(
        f"{where(path, line)}: {what} holds a lone surrogate ({code}): not valid Unicode text"
    )


def _find_surrogate(value: object, field: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return (field, m.group()) if m else None
    if isinstance(value, dict):
        for k, v in value.items():
            name = f"{field}.{k}" if field else str(k)
            m = _SURROGATE.search(k) if isinstance(k, str) else None
            if m:
                return (field or "a key", m.group())
            found = _find_surrogate(v, name)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_surrogate(v, f"{field}[{i}]")
            if found:
                return found
    return None


def _too_deep(path: Path, line: int) -> str:
    return f"{where(path, line)}: JSON nested too deeply to read; a record is a flat object"
