"""`tunesmith data replace`: replace a text in every string value of every record.

Streams the input (constant memory for .jsonl and for .json lists), writes to a
temporary file beside OUT and renames it at the end, so OUT is never left half
written, even when a bad line stops the run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from tunesmith.errors import UserError, where

_CHUNK = 1 << 16


def replace_in_value(value, old: str, new: str) -> tuple[object, int]:
    """`value` with `old` -> `new` in every string (dict values, list items); and the count."""
    if isinstance(value, str):
        return value.replace(old, new), value.count(old)
    if isinstance(value, dict):
        out, total = {}, 0
        for key, item in value.items():
            out[key], n = replace_in_value(item, old, new)
            total += n
        return out, total
    if isinstance(value, list):
        out, total = [], 0
        for item in value:
            replaced, n = replace_in_value(item, old, new)
            out.append(replaced)
            total += n
        return out, total
    return value, 0


def replace_file(
    src: str | Path, dst: str | Path, old: str, new: str, progress: bool = True
) -> dict:
    """Write `src` to `dst` with `old` replaced by `new`; returns {"records", "replacements"}."""
    src, dst = Path(src), Path(dst)
    if not old:
        raise UserError("--old-text is empty; give the text to replace")
    if not src.exists():
        raise UserError(f"{src}: no such file")
    suffix = src.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise UserError(f"{src}: data replace reads .jsonl or .json files")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    counts = {"records": 0, "replacements": 0}
    try:
        with (
            open(src, encoding="utf-8-sig") as f,
            os.fdopen(fd, "w", encoding="utf-8") as out,
            tqdm(
                total=src.stat().st_size,
                unit="B",
                unit_scale=True,
                disable=not progress,
                desc=src.name,
            ) as bar,
        ):
            records = _jsonl(f, src, bar) if suffix == ".jsonl" else _json_list(f, src, bar)
            if suffix == ".json":
                out.write("[\n")
            for record in records:
                replaced, n = replace_in_value(record, old, new)
                if suffix == ".json":
                    out.write(",\n" if counts["records"] else "")
                out.write(json.dumps(replaced, ensure_ascii=False))
                out.write("\n" if suffix == ".jsonl" else "")
                counts["records"] += 1
                counts["replacements"] += n
            if suffix == ".json":
                out.write("\n]\n")
        os.replace(tmp_name, dst)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return counts


def _jsonl(f, path: Path, bar) -> Iterator[object]:
    for line_no, line in enumerate(f, 1):
        bar.update(len(line.encode("utf-8")))
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{where(path, line_no)}: not valid JSON ({exc.msg}); fix the line and run again "
                "(the output file was not written)"
            ) from None


def _json_list(f, path: Path, bar) -> Iterator[object]:
    """The items of a JSON list, read a chunk at a time (one item in memory at once)."""
    decoder = json.JSONDecoder()
    buf, pos, line, eof = "", 0, 1, False

    def fill() -> bool:
        nonlocal buf, pos, line, eof
        chunk = f.read(_CHUNK)
        bar.update(len(chunk.encode("utf-8")))
        line += buf.count("\n", 0, pos)
        buf, pos = buf[pos:] + chunk, 0
        eof = not chunk
        return bool(chunk)

    def skip(chars: str) -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in chars:
                pos += 1
            if pos < len(buf) or not fill():
                return buf[pos] if pos < len(buf) else ""

    def fail(msg: str):
        raise UserError(
            f"{where(path, line + buf.count(chr(10), 0, pos))}: {msg} (the output file was not written)"
        )

    if skip(" \t\r\n") != "[":
        fail("a .json data file must hold a list of records")
    pos += 1
    first = True
    while True:
        c = skip(" \t\r\n")
        if c == "]":
            return
        if not first:
            if c != ",":
                fail("expected ',' or ']' between records")
            pos += 1
            skip(" \t\r\n")
        first = False
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as exc:
                if eof or not fill():
                    fail(f"not valid JSON ({exc.msg})")
        pos = end
        yield item
