"""Packing of whole documents into rows of at most max_length tokens: best fit, longest
first (fullest rows), or in a seeded random order (rows that mix documents, XTuner's
`shuffle_before_pack`)."""

from __future__ import annotations

import bisect

import numpy as np


def pack_documents(
    lengths: np.ndarray | list[int], max_length: int, shuffle_seed: int | None = None
) -> list[list[int]]:
    """Group document indices into bins whose total length is <= max_length.

    Each document goes into the fullest bin it still fits (best fit); a document is never
    split (callers truncate documents to max_length first). The documents come longest
    first (best-fit decreasing: the fewest bins), or, with `shuffle_seed`, in a random
    order drawn from that seed: then a bin holds documents of every length and source, and
    copies of one document land in different bins, so a run that stops before the end of
    an epoch (`train.max_steps`) still sees most distinct documents. Best-fit decreasing
    groups equal lengths: the copies of a repeated record share a bin, and short records
    fill the last bins. Deterministic: ties keep the original order.

    Raises ValueError when a document is longer than max_length.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > max_length:
        raise ValueError("truncate documents to max_length before packing")
    if shuffle_seed is None:
        order = np.argsort(-lengths, kind="stable")
    else:
        order = np.random.default_rng(shuffle_seed).permutation(len(lengths))
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
