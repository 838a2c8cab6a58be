"""Rendered conversations -> input_ids + labels (-100 where there is no loss).

Each conversation is rendered to one string; a whole batch of strings goes to
the fast tokenizer in one call (it uses every core), and the labels come from
the character spans of the trainable segments: a token is trainable when its
characters overlap a trainable span. Text pieces between special tokens that
repeat (system prompt, role headers) are tokenised once per batch. `tokenize_segments` is the slow, obvious
reference (tokenise segment by segment) that the tests compare against.
"""

from __future__ import annotations

import re
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
    texts = [r.text for r in batch]
    splitter = special_splitter(backend)
    if splitter is None:
        ids, offsets, lengths = encode_whole(backend, texts)
    else:
        ids, offsets, lengths = encode_pieces(backend, texts, splitter)
    labels = _labels(batch, ids, offsets, lengths)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    return [(ids[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _labels(batch: list[Rendered], ids, offsets, lengths) -> np.ndarray:
    """Token labels: the id where the token overlaps a trainable span, else IGNORE."""
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
    return np.where(trainable, ids, IGNORE).astype(np.int32)


def encode_whole(backend, texts: list[str]):
    """Flat ids, (start, end) character offsets and per-text token counts."""
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int32, count=total)
    offsets = np.fromiter(
        chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)),
        dtype=np.int64,
        count=2 * total,
    ).reshape(-1, 2)
    return ids, offsets, lengths


def special_splitter(backend) -> re.Pattern | None:
    """A regex that splits text at the tokenizer's added tokens, as the tokenizer itself does.

    None when an added token strips whitespace around it or is normalised: then
    pieces would not tokenise independently.
    """
    try:
        added = list(backend.get_added_tokens_decoder().values())
    except AttributeError:  # an older tokenizers library
        return None
    if not added or any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added):
        return None
    contents = sorted({t.content for t in added}, key=len, reverse=True)  # longest match first
    return re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")


def encode_pieces(backend, texts: list[str], splitter: re.Pattern):
    """Like encode_whole, but tokenises each distinct piece between added tokens once.

    The tokenizer splits at added tokens before anything else, so pieces tokenise
    independently; chat data repeats many pieces (system prompt, role headers).
    """
    index: dict[str, int] = {}
    occurrence: list[int] = []  # piece number of each piece occurrence, text after text
    occurrence_base: list[int] = []  # its character position in its text
    per_text: list[int] = []
    for text in texts:
        pos = count = 0
        for piece in splitter.split(text):
            if not piece:
                continue
            number = index.setdefault(piece, len(index))
            occurrence.append(number)
            occurrence_base.append(pos)
            pos += len(piece)
            count += 1
        per_text.append(count)
    piece_ids, piece_offsets, piece_lengths = encode_whole(backend, list(index))
    piece_start = np.concatenate([[0], np.cumsum(piece_lengths)[:-1]])
    occ = np.array(occurrence, dtype=np.int64)
    occ_lengths = piece_lengths[occ]
    total = int(occ_lengths.sum())
    # token k of the output is token (k - first output token of its occurrence) of its piece
    out_start = np.concatenate([[0], np.cumsum(occ_lengths)[:-1]])
    tokens = np.repeat(piece_start[occ] - out_start, occ_lengths) + np.arange(total)
    ids = piece_ids[tokens]
    offsets = piece_offsets[tokens] + np.repeat(np.array(occurrence_base), occ_lengths)[:, None]
    occ_bounds = np.concatenate([[0], np.cumsum(per_text)])
    token_bounds = np.concatenate([[0], np.cumsum(occ_lengths)])
    lengths = token_bounds[occ_bounds[1:]] - token_bounds[occ_bounds[:-1]]
    return ids, offsets, lengths.astype(np.int64)


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
