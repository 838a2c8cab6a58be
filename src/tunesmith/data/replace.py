"""`tunesmith data replace`: replace a text in every string value of every record.

Streams the input (constant memory for .jsonl and for .json lists), writes to a
temporary file beside OUT and renames it at the end, so OUT is never left half
written, even when a bad line stops the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from tunesmith.data.jsonio import iter_json_list, iter_jsonl
from tunesmith.errors import UserError
from tunesmith.fileio import atomic_file, check_new_output, check_readable_file, decode_error


class _NothingToReplace(Exception):
    """No record holds the text: the copy is discarded (an unchanged copy helps no one)."""


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
    src: str | Path,
    dst: str | Path,
    old: str,
    new: str,
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write `src` to `dst` with `old` replaced by `new`; returns {"records", "replacements"}.

    An existing `dst` is refused unless `force` (it may be `src` itself). A text that occurs
    nowhere is a UserError, and nothing is written."""
    if not old:
        raise UserError("--old-text is empty; give the text to replace")
    src = check_readable_file(src, "data file")
    suffix = src.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise UserError(f"{src}: data replace reads .jsonl or .json files")
    dst = check_new_output(dst, force=force)
    counts = {"records": 0, "replacements": 0}
    try:
        with (
            atomic_file(dst) as tmp,
            open(src, encoding="utf-8-sig") as f,
            open(tmp, "w", encoding="utf-8") as out,
            tqdm(
                total=src.stat().st_size,
                unit="B",
                unit_scale=True,
                disable=not progress,
                desc=src.name,
            ) as bar,
        ):
            read = iter_jsonl if suffix == ".jsonl" else iter_json_list
            records = (record for _, record in read(f, src, bar.update))
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
            if not counts["replacements"]:  # leaving the block unfinished discards the copy
                raise _NothingToReplace
    except _NothingToReplace:
        raise UserError(
            f"{old!r} occurs nowhere in {src}: nothing to replace (check --old-text)"
        ) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{decode_error(src, exc)} ({dst} was not written)") from None
    except UserError as exc:
        raise UserError(f"{exc} ({dst} was not written)") from None
    return counts
