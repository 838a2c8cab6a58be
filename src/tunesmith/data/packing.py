"""Best-fit-decreasing packing of whole documents into rows of at most max_length tokens."""

from __future__ import annotations

import bisect

import numpy as np


def pack_documents(lengths: np.ndarray | list[int], max_length: int) -> list[list[int]]:
    """Group document indices into bins whose total length is <= max_length.

    Longest documents first, each into the fullest bin it still fits (best fit);
    a document is never split (callers truncate documents to max_length first).
    Deterministic: ties keep the original order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > max_length:
        raise ValueError("truncate documents to max_length before packing")
    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    # (room left, bin index), kept sorted: the first entry with room >= n is the best fit
    room: list[tuple[int, int]] = []
    for doc, n in zip(order.tolist(), lengths[order].tolist(), strict=True):
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            left, b = room.pop(at)
            bins[b].append(doc)
            left -= n
        else:
            b = len(bins)
            bins.append([doc])
            left = max_length - n
        if left > 0:
            bisect.insort(room, (left, b))
    return bins
