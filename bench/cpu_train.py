"""CPU training speed: tunesmith (packed rows) against a plain transformers + peft loop (padded).

    python bench/cpu_train.py [--samples 96] [--batch-size 8] [--max-length 512] [--threads 2]
                              [--ablate-head]

Both train `smollm2-135m-instruct` (the embedded model, fp32) with the same LoRA (r 16,
alpha 32, all decoder linears, no dropout) and AdamW, on the same identity-style samples
(short question/answer pairs from `tunesmith data identity`), one pass over `--samples`
of them. tunesmith packs them into rows of `--max-length` tokens; the baseline is the loop
written the obvious way: chat template, tokenizer padding per batch of `--batch-size`,
labels = input_ids with padding masked. Throughput counts real (non-pad) tokens only and
leaves out the first step of each (warm-up). tunesmith's side is its recipe: `setup()`, then
the loop body `_train_step` step by step. The two run step by step in turn, so a busy
shared machine slows both alike; tokens per CPU-second of this process are printed too, and
the median over step pairs of the tokens/s ratio (the steadiest figure when other jobs come
and go).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

MODEL = "smollm2-135m-instruct"


def make_samples(n: int) -> list[dict]:
    from tunesmith.data.identity import generate_identity

    records = generate_identity("Ada", "Your Lab", langs=("en", "zh"), repeat=4, seed=0)
    if len(records) < n:
        raise SystemExit(f"only {len(records)} identity samples; ask for fewer")
    return records[:n]


def tunesmith_steps(
    samples: list[dict], args, work: Path, full_head: bool = False
) -> Iterator[tuple[int, float]]:
    """tunesmith's recipe (packed rows): yields (real tokens, loss) per optimizer step.

    `full_head`: the output head over every position, as before `fast.head_inputs` (ablation)."""
    from tunesmith.config.schema import Config
    from tunesmith.data.identity import write_jsonl
    from tunesmith.train.recipe import TrainRecipe

    work.mkdir(parents=True, exist_ok=True)
    data = work / "identity.jsonl"
    write_jsonl(samples, data)
    cfg = Config.model_validate(
        {
            "model": {"path": MODEL, "dtype": "fp32"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "data": {
                "files": [str(data)],
                "max_length": args.max_length,
                "pack_to_max_length": True,
                "shuffle": False,
                "cache_dir": str(work / "cache"),
            },
            "train": {"batch_size": 1, "max_epochs": 1, "lr": 2e-4, "warmup_ratio": 0.0},
            "runtime": {"tensorboard": False},
        }
    )
    recipe = TrainRecipe(cfg, work / "run")
    recipe.setup()
    if full_head:
        recipe.plan = replace(recipe.plan, trained_logits_only=False)
    # the loop body of TrainRecipe.train, one optimizer step at a time
    batches = recipe._micro_batches(start=0)
    for _ in range(recipe.total_steps):
        stats = recipe._train_step([next(batches)])
        yield stats.tokens, stats.loss


def plain_steps(samples: list[dict], args) -> Iterator[tuple[int, float]]:
    """The baseline, as a transformers + peft loop is usually written: padded batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.model.resolve import resolve_model_path

    path = resolve_model_path(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    texts = [
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": s["conversation"][0]["input"]},
                {"role": "assistant", "content": s["conversation"][0]["output"]},
            ],
            tokenize=False,
        )  # fmt: skip
        for s in samples
    ]
    model.train()
    for i in range(0, len(texts), args.batch_size):
        batch = tokenizer(texts[i : i + args.batch_size], return_tensors="pt", padding=True,
                          truncation=True, max_length=args.max_length)  # fmt: skip
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        yield int(batch["attention_mask"].sum()), loss.item()


def run_alternating(runs: dict[str, Iterator]) -> dict[str, list]:
    """One step of each run in turn, so a shared, busy machine slows them alike."""
    timings = {name: [] for name in runs}
    live = dict(runs)
    while live:
        for name, steps in list(live.items()):
            start = _clocks()
            try:
                tokens, loss = next(steps)
            except StopIteration:
                del live[name]
                continue
            timings[name].append((*_since(start), tokens, loss))
            wall, cpu = timings[name][-1][:2]
            print(f"step {len(timings[name]):>3} {name:30} {tokens:>5} tokens {wall:6.2f} s "
                  f"{cpu:6.2f} CPU-s  load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    return timings


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def _rate(name: str, steps: list, samples: int) -> dict:
    """Throughput over every step but the first (warm-up)."""
    tokens = sum(t[2] for t in steps[1:])
    wall = sum(t[0] for t in steps[1:])
    cpu = sum(t[1] for t in steps[1:])
    return {
        "name": name,
        "steps": len(steps),
        "samples": samples,
        "tokens": sum(t[2] for t in steps),
        "seconds": wall,
        "tokens_per_s": tokens / wall if wall else math.nan,
        "tokens_per_cpu_s": tokens / cpu if cpu else math.nan,
        "final_loss": steps[-1][3],
    }


def _paired(a: list, b: list) -> float:
    """Median over the step pairs run back to back (first steps left out) of a's tokens/s over
    b's: a job that starts or stops on a shared machine moves one pair, not the whole ratio."""
    ratios = [(x[2] / x[0]) / (y[2] / y[0]) for x, y in zip(a[1:], b[1:], strict=False)]
    return statistics.median(ratios) if ratios else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8, help="baseline samples per step")
    parser.add_argument("--max-length", type=int, default=512, help="tunesmith packed row length")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--ablate-head", action="store_true",
        help="a third run: tunesmith with the output head over every position",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    samples = make_samples(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        names = ("tunesmith (packed)", "transformers + peft (padded)")
        steps = {
            names[0]: tunesmith_steps(samples, args, Path(tmp)),
            names[1]: plain_steps(samples, args),
        }
        if args.ablate_head:
            ablated = "tunesmith (packed, full head)"
            steps[ablated] = tunesmith_steps(samples, args, Path(tmp) / "ablated", full_head=True)
        timings = run_alternating(steps)
    packed, plain = (_rate(name, timings[name], len(samples)) for name in names)
    others = [_rate(name, timings[name], len(samples)) for name in timings if name not in names]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"load average {load}, torch {torch.__version__}")  # fmt: skip
    print(f"{'run':30} {'steps':>5} {'samples':>7} {'tokens':>7} {'step s':>8} "
          f"{'tokens/s':>9} {'tokens/CPU-s':>12}")  # fmt: skip
    for r in (packed, plain, *others):
        print(f"{r['name']:30} {r['steps']:>5} {r['samples']:>7} {r['tokens']:>7} "
              f"{r['seconds']:>8.1f} {r['tokens_per_s']:>9.0f} {r['tokens_per_cpu_s']:>12.0f}")  # fmt: skip
    print(
        f"packing speed-up: {packed['tokens_per_s'] / plain['tokens_per_s']:.2f}x wall-clock, "
        f"{packed['tokens_per_cpu_s'] / plain['tokens_per_cpu_s']:.2f}x per CPU-second, "
        f"{_paired(timings[names[0]], timings[names[1]]):.2f}x median of step pairs"
    )
    for r in others:
        print(
            f"{packed['name']} / {r['name']}: {packed['tokens_per_s'] / r['tokens_per_s']:.2f}x "
            f"wall-clock, {packed['tokens_per_cpu_s'] / r['tokens_per_cpu_s']:.2f}x per CPU-second"
        )


if __name__ == "__main__":
    main()
