"""The identity workflow's eval answers: `Generator.greedy_batch` against the plain path.

Embedded SmolLM2-135M-Instruct (float32), greedy, the shipped eval sets: 48 identity
questions (at most 80 new tokens), 40 factual prompts (32) and 20 general prompts (64), no
system prompt given (the model's template adds its default). Both paths run in one process:

- greedy_batch  all 108 prompts in one batch, one limit per prompt, the shared prompt prefix
                computed once, finished rows dropped (what `tunesmith identity` runs now);
- plain         three `answer_batch` calls (one per eval set) of batch_size 16, each batch
                running to its longest row (what it ran before 2026-12-01).

Prints both times and how many answers differ (greedy decoding can flip on a near-tie when
the batch's shape changes the float rounding).

Usage: python bench/greedy_batch_speed.py [--threads 1] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import time

import torch

from tunesmith.eval.identity import load_questions
from tunesmith.eval.identity import requests as identity_requests
from tunesmith.eval.retention import load_prompts
from tunesmith.eval.retention import requests as retention_requests
from tunesmith.model.generate import Generator, Sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = Generator.load(args.model)
    asked = identity_requests(load_questions()) + retention_requests(load_prompts())
    rows = [lm.prompt_ids([{"role": "user", "content": p}]) for p, _ in asked]
    limits = [n for _, n in asked]

    start = time.perf_counter()
    fast = lm.greedy_batch(rows, limits, batch_size=128)
    fast_s = time.perf_counter() - start

    start = time.perf_counter()
    plain = []
    for limit in dict.fromkeys(limits):  # one call per eval set, as before
        part = [[{"role": "user", "content": p}] for p, n in asked if n == limit]
        plain += lm.answer_batch(part, Sampling.greedy(limit), batch_size=16)
    plain_s = time.perf_counter() - start

    differ = sum(
        (a.text, a.finish_reason) != (b.text, b.finish_reason)
        for a, b in zip(fast, plain, strict=True)
    )
    tokens = sum(a.completion_tokens for a in fast)
    print(f"{len(rows)} prompts, {tokens} new tokens, {args.threads} thread(s)")
    print(f"greedy_batch: {fast_s:.1f} s; plain answer_batch x3: {plain_s:.1f} s")
    print(f"answers that differ: {differ} of {len(rows)}")


if __name__ == "__main__":
    main()
