"""Byte sizes written by people ("2GB", "500MB", "24GiB"), read one way everywhere.

transformers' own `convert_file_size_to_int` (the `max_shard_size` of save_pretrained) does
the reading: GB = 10^9 bytes, GiB = 2^30, Gb = 10^9 bits; plain digits are bytes. Used by
`--max-shard-size` (export) and `train.memory_budget` (config).
"""

from __future__ import annotations

from transformers.utils.hub import convert_file_size_to_int

GIB = 2**30


def size_in_bytes(text: str | int) -> int:
    """'2GB' -> 2_000_000_000, '1GiB' -> 1_073_741_824, 512 -> 512.

    Raises ValueError (with what would be accepted) for anything else, or a size under 1 byte.
    """
    value = text.strip().replace(" ", "") if isinstance(text, str) else text
    try:
        size = int(value) if isinstance(value, str) and value.isdigit() else None
        if size is None and not isinstance(value, bool):
            size = convert_file_size_to_int(value)
    except ValueError:
        size = None
    if size is None:
        raise ValueError(
            f"{text!r} is not a size: write a whole number and a unit, e.g. 24GB, 500MB or 22GiB"
        )
    if size < 1:
        raise ValueError(f"{text!r} must be at least 1 byte")
    return size


def gib(size: float) -> str:
    """Bytes as GiB with two decimals: 11_649_728_512 -> '10.85 GiB'."""
    return f"{size / GIB:.2f} GiB"
