"""Rendered conversations -> input_ids + labels (-100 where there is no loss).

Each conversation is rendered to one string; a whole batch of strings goes to
the fast tokenizer in one call (it uses every core), and the labels come from
the character spans of the trainable segments: a token is trainable when its
characters overlap a trainable span. `tokenize_segments` is the slow, obvious
reference (tokenise segment by segment) that the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np

from tunesmith.data.templates import Segment

IGNORE = -100


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # character ranges that carry loss


def join_segments(segments: list[Segment]) -> Rendered:
    spans, pos = [], 0
    for seg in segments:
        if seg.trainable and seg.text:
            spans.append((pos, pos + len(seg.text)))
        pos += len(seg.text)
    return Rendered("".join(s.text for s in segments), spans)


def tokenize_rendered(tokenizer, batch: list[Rendered]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) as int32 arrays for each rendered conversation, untruncated."""
    if not batch:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer has no offsets: go segment by segment
        return [_tokenize_spans(tokenizer, r) for r in batch]
    encodings = backend.encode_batch([r.text for r in batch], add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(batch))
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int32, count=total)
    offsets = np.fromiter(
        chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)),
        dtype=np.int64,
        count=2 * total,
    ).reshape(-1, 2)

    # Put every text on one global character axis, mark trainable characters, and
    # count them per token with a cumulative sum: one vectorised pass for the batch.
    text_lengths = np.fromiter((len(r.text) for r in batch), dtype=np.int64, count=len(batch))
    char_base = np.concatenate([[0], np.cumsum(text_lengths)[:-1]])
    marks = np.zeros(int(text_lengths.sum()) + 1, dtype=np.int64)
    for base, r in zip(char_base.tolist(), batch, strict=True):
        for start, end in r.spans:
            marks[base + start] += 1
            marks[base + end] -= 1
    trainable_chars = np.concatenate([[0], np.cumsum(np.cumsum(marks)[:-1] > 0)])
    token_base = np.repeat(char_base, lengths)
    starts, ends = offsets[:, 0] + token_base, offsets[:, 1] + token_base
    trainable = trainable_chars[ends] - trainable_chars[starts] > 0
    labels = np.where(trainable, ids, IGNORE).astype(np.int32)

    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [
        (ids[a:b], labels[a:b])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    ]


def _tokenize_spans(tokenizer, rendered: Rendered) -> tuple[np.ndarray, np.ndarray]:
    segments, pos = [], 0
    for start, end in rendered.spans:
        segments.append(Segment(rendered.text[pos:start]))
        segments.append(Segment(rendered.text[start:end], True))
        pos = end
    segments.append(Segment(rendered.text[pos:]))
    return tokenize_segments(tokenizer, segments)


def tokenize_segments(tokenizer, segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """The slow reference: tokenise each segment on its own and concatenate."""
    ids: list[int] = []
    labels: list[int] = []
    for seg in segments:
        if not seg.text:
            continue
        piece = tokenizer.encode(seg.text, add_special_tokens=False)
        ids.extend(piece)
        labels.extend(piece if seg.trainable else [IGNORE] * len(piece))
    return np.array(ids, dtype=np.int32), np.array(labels, dtype=np.int32)
