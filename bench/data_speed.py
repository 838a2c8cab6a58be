"""Data pipeline speed: format + template + tokenise + pack of 100k alpaca records.

    python bench/data_speed.py [--records 100000] [--template auto] [--max-length 2048]

Generates the records itself (no downloads), uses the embedded SmolLM2
tokenizer, and prints records/s for a cold build and the time of a cached
re-run. Both runs use a fresh temporary cache directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

WORDS = (
    "the a model data train learn answer question river mountain city music color "
    "light water energy system simple quick careful explain list describe write three "
    "reasons steps example history science people language computer health winter"
).split()


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    return [
        {
            "instruction": sentence(6, 20),
            "input": sentence(0, 12) if rng.random() < 0.4 else "",
            "output": " ".join(sentence(5, 18) for _ in range(rng.randint(1, 4))),
        }
        for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--template", default="auto")
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    from tunesmith.config.schema import Config
    from tunesmith.data.dataset import build_dataset
    from tunesmith.model.load import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "alpaca.jsonl"
        with open(path, "w") as f:
            for record in make_records(args.records):
                f.write(json.dumps(record) + "\n")
        cfg = Config.model_validate(
            {
                "data": {
                    "files": [str(path)],
                    "template": args.template,
                    "max_length": args.max_length,
                    "cache_dir": str(Path(tmp) / "cache"),
                }
            }
        )
        load_before = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        dataset = build_dataset(cfg, tokenizer)
        cold, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        load_after = os.getloadavg()[0]
        start = time.perf_counter()
        again = build_dataset(cfg, tokenizer)
        cached = time.perf_counter() - start
    assert again.summary.get("cached") and len(again) == len(dataset)
    s = dataset.summary
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"template {args.template}, max_length {args.max_length}"
    )
    print(
        f"records {s['records']:,}  tokens {s['tokens']:,}  trainable {s['trainable_tokens']:,}  "
        f"rows {s['rows']:,}  truncated {s['truncated']}"
    )
    print(
        f"cold build: {cold:.2f} s = {s['records'] / cold:,.0f} records/s "
        f"(CPU time of this process, all threads: {cpu:.2f} s; "
        f"load average before/after: {load_before:.1f}/{load_after:.1f})"
    )
    print(f"cached re-run: {cached:.2f} s")


if __name__ == "__main__":
    main()
