"""Generation speed on CPU: the core's single stream and answer_batch next to plain `generate`.

Embedded SmolLM2-135M-Instruct (float32, from the local cache), greedy decoding, 32 short
general prompts, at most --new tokens each; tokens counted up to and including end-of-turn.
All four measurements run in the same process, one after the other:

- plain   one prompt at a time: `model.generate(**inputs, do_sample=False)`
- stream  one prompt at a time: `Generator.stream` (worker thread, per-token text)
- plain batch   all prompts in one left-padded `model.generate`
- answer_batch  all prompts: `Generator.answer_batch(batch_size=32)`

The single-prompt rows use the first --single prompts (default 4) to keep the run short; the
four paths run in turn for --rounds rounds (default 2) and their sums are reported. Before
the rounds, the first two calls of plain generate and of the stream (8 tokens, one prompt)
are timed apart: a warm-up cost of either path shows there, not in the rounds.
Prints a table and one `RESULT {json}` line; --json writes the JSON to a file.

Usage: python bench/generate_speed.py [--threads 2] [--new 64] [--single 4] [--rounds 2]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import transformers

from tunesmith.config.schema import ModelConfig
from tunesmith.data.general import load_general_prompts
from tunesmith.data.templates import get_template
from tunesmith.model.embedded import embedded_dir
from tunesmith.model.generate import Answer, Generator, Sampling
from tunesmith.model.load import load_model, load_tokenizer

ALIAS = "smollm2-135m-instruct"


def _count_new(row: list[int], stop_ids: set[int]) -> int:
    """Generated tokens up to and including the first end-of-turn (plain generate pads after)."""
    for i, token in enumerate(row):
        if token in stop_ids:
            return i + 1
    return len(row)


def plain_single(model, tokenizer, prompts, new, stop_ids) -> tuple[int, float]:
    tokens, start = 0, time.perf_counter()
    for text in prompts:
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=new,
                do_sample=False,
                eos_token_id=list(stop_ids),
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens += _count_new(out[0, inputs["input_ids"].shape[1] :].tolist(), stop_ids)
    return tokens, time.perf_counter() - start


def plain_batch(model, tokenizer, prompts, new, stop_ids) -> tuple[int, float]:
    start = time.perf_counter()
    inputs = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=tokenizer.pad_token_id,
        )
    width = inputs["input_ids"].shape[1]
    tokens = sum(_count_new(row, stop_ids) for row in out[:, width:].tolist())
    return tokens, time.perf_counter() - start


def core_stream(generator, conversations, sampling) -> tuple[int, float]:
    tokens, start = 0, time.perf_counter()
    for conversation in conversations:
        answer = Answer()
        for _ in generator.stream(conversation, sampling, answer=answer):
            pass
        tokens += answer.completion_tokens
    return tokens, time.perf_counter() - start


def core_batch(generator, conversations, sampling) -> tuple[int, float]:
    start = time.perf_counter()
    answers = generator.answer_batch(conversations, sampling, batch_size=len(conversations))
    return sum(a.completion_tokens for a in answers), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new", type=int, default=64, help="max new tokens per answer")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--single", type=int, default=4, help="prompts for the one-by-one rows")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = [round(x, 1) for x in os.getloadavg()]

    path = str(embedded_dir(ALIAS))
    tokenizer = load_tokenizer(path)
    model = load_model_from(path)
    generator = Generator(model, tokenizer, get_template("auto", tokenizer))
    prompts = load_general_prompts()[: args.prompts]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    texts = [generator.prompt(c) for c in conversations]
    stop_ids = set(generator.eos_token_ids)
    sampling = Sampling.greedy(args.new)
    single = args.single

    # First calls, timed apart: the process's first generate, and the first stream (the
    # generator's worker thread starts then). Then each path is warm before the rounds.
    warm = Sampling.greedy(8)
    cold = {
        "plain generate, first call in the process": plain_single(
            model, tokenizer, texts[:1], 8, stop_ids
        ),
        "plain generate, second call": plain_single(model, tokenizer, texts[:1], 8, stop_ids),
        "Generator.stream, first call (new worker thread)": core_stream(
            generator, conversations[:1], warm
        ),
        "Generator.stream, second call": core_stream(generator, conversations[:1], warm),
    }
    core_batch(generator, conversations[:2], Sampling.greedy(4))  # warm-up
    paths = {
        "plain generate, one at a time": lambda: plain_single(
            model, tokenizer, texts[:single], args.new, stop_ids
        ),
        "Generator.stream, one at a time": lambda: core_stream(
            generator, conversations[:single], sampling
        ),
        f"plain generate, batch of {len(prompts)}": lambda: plain_batch(
            model, tokenizer, texts, args.new, stop_ids
        ),
        f"Generator.answer_batch, {len(prompts)}": lambda: core_batch(
            generator, conversations, sampling
        ),
    }
    # Rounds interleave the paths, so a change in the machine's load hits them all alike.
    rows = {name: (0, 0.0) for name in paths}
    for _ in range(args.rounds):
        for name, run in paths.items():
            tokens, seconds = run()
            rows[name] = (rows[name][0] + tokens, rows[name][1] + seconds)
    results = {
        name: {"tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1)}
        for name, (tokens, seconds) in rows.items()
    }
    speeds = [r["tok_s"] for r in results.values()]
    summary = {
        "stream_vs_plain": round(speeds[1] / speeds[0], 2),
        "answer_batch_vs_plain_batch": round(speeds[3] / speeds[2], 2),
        "answer_batch_vs_stream": round(speeds[3] / speeds[1], 2),
    }
    meta = {
        "model": ALIAS,
        "threads": args.threads,
        "max_new_tokens": args.new,
        "prompts": len(prompts),
        "single_prompts": single,
        "rounds": args.rounds,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 1) for x in os.getloadavg()],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print("| path | tokens | seconds | tok/s |\n| --- | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['tokens']} | {r['seconds']} | {r['tok_s']} |")
    print(summary, meta)
    first_calls = {name: {"tokens": t, "seconds": round(sec, 2)} for name, (t, sec) in cold.items()}
    for name, r in first_calls.items():
        print(f"| {name} | {r['tokens']} | {r['seconds']} | |")
    record = {"results": results, "first_calls": first_calls, "summary": summary, "meta": meta}
    print("RESULT " + json.dumps(record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


def load_model_from(path: str):
    return load_model(ModelConfig(path=path, dtype="fp32"), device="cpu").eval()


if __name__ == "__main__":
    main()
