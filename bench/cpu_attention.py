"""Packed attention on CPU: tunesmith's path against the per-document loop and the block mask.

    python bench/cpu_attention.py [--lengths 52,61,70,75,80,88,62] [--threads 1,2] [--repeats 5]

One packed row of documents of `--lengths` tokens (default: a 488-token row of the identity
data's sizes) with SmolLM2-135M's attention shapes (9 query heads, 3 key/value heads, head
dim 64), forward + backward of 30 layers' attention, the paths one after another within each
repeat (a busy shared machine slows them alike); median wall-clock per path:

- `tunesmith`: `model/fast.py` (documents as padded batches, one SDPA call per group);
- `per-document loop`: one causal SDPA call per document on slices of the row (tunesmith's
  CPU path from 2026-11-28 to 2026-12-01);
- `block mask`: one SDPA call over the row with a block-diagonal causal mask (transformers'
  `sdpa` with packed position_ids).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from tunesmith.model import fast

HEADS, KV_HEADS, DIM, LAYERS = 9, 3, 64, 30


def per_document_loop(q, k, v, lengths):
    """(L, H, D) rows -> (L, H, D): one causal SDPA call per document slice."""
    outs, start = [], 0
    for n in lengths:
        piece = [t[start : start + n].transpose(0, 1) for t in (q, k, v)]
        outs.append(F.scaled_dot_product_attention(*piece, is_causal=True, enable_gqa=True))
        outs[-1] = outs[-1].transpose(0, 1)
        start += n
    return torch.cat(outs)


def block_mask(q, k, v, lengths):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    causal = torch.ones(len(doc), len(doc), dtype=torch.bool).tril()
    mask = (doc[:, None] == doc[None, :]) & causal
    out = F.scaled_dot_product_attention(
        *(t.transpose(0, 1) for t in (q, k, v)), attn_mask=mask, enable_gqa=True
    )
    return out.transpose(0, 1)


def tunesmith(q, k, v, lengths):
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    out, _ = fast.varlen_attention(
        None, *(t.transpose(0, 1)[None] for t in (q, k, v)), None, position_ids=position_ids
    )
    return out[0]


PATHS = {"tunesmith": tunesmith, "per-document loop": per_document_loop, "block mask": block_mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="52,61,70,75,80,88,62")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    torch.manual_seed(0)
    rows = sum(lengths)
    inputs = [torch.randn(rows, h, DIM) for h in (HEADS, KV_HEADS, KV_HEADS)]
    grads = {}
    for threads in (int(n) for n in args.threads.split(",")):
        torch.set_num_threads(threads)
        times = {name: [] for name in PATHS}
        for _ in range(args.repeats):
            for name, path in PATHS.items():
                q, k, v = (t.clone().requires_grad_() for t in inputs)
                start = time.perf_counter()
                for _ in range(LAYERS):
                    path(q, k, v, lengths).square().sum().backward()
                times[name].append(time.perf_counter() - start)
                grads[name] = [t.grad for t in (q, k, v)]
        for name in PATHS:  # every path computes the same attention
            for a, b in zip(grads[name], grads["block mask"], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{threads} threads, {len(lengths)} documents, {rows} tokens, load {load}:")
        base = statistics.median(times["tunesmith"])
        for name, t in times.items():
            median = statistics.median(t)
            print(f"  {name:20} {median * 1000:8.0f} ms  ({median / base:.2f}x tunesmith's)")


if __name__ == "__main__":
    main()
