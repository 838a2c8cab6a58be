"""Why the identity workflow's answers ran 2-3x slower than the same answers a second time.

On an H200 (2026-12-01, bench/gpu_run.sh identity7b with ANSWERS=1) the evals' 108 greedy
answers (6,400 tokens) of a random-init InternLM2.5-7B-layout model took 6.3 s the first time
in a process and 2.7 s the second; the workflow's stages each ran at the first-time speed.
This times the same batch twice in one process, with SDPA backends as given, on a random
Llama-layout model of the same dimensions built on the GPU (no checkpoint on disk):

    python3 bench/generate_first_run_gpu.py default
    python3 bench/generate_first_run_gpu.py no-cudnn      # torch.backends.cuda.enable_cudnn_sdp(False)
    python3 bench/generate_first_run_gpu.py profile       # run 1 under torch.profiler

Prints one JSON line per run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.eval import identity as identity_eval
from tunesmith.eval import retention
from tunesmith.model.generate import Generator
from tunesmith.model.load import load_tokenizer

TOKENIZER = Path(os.environ["TUNESMITH_INTERNLM2_TOKENIZER"])


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "default"
    if mode == "no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps({"model_type": "internlm2"}))
        shutil.copy(TOKENIZER, Path(tmp) / "tokenizer.model")
        tokenizer = load_tokenizer(tmp)
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=92544, max_position_embeddings=32768,
        rope_theta=1e6, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        attn_implementation="sdpa",
    )  # fmt: skip
    cuda = torch.cuda.is_available()
    if not cuda:  # CPU smoke test: the same code with tiny dimensions
        config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2})
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config).eval()
    lm = Generator(model, tokenizer)
    asked = identity_eval.requests(identity_eval.load_questions(None)) + retention.requests(
        retention.load_prompts(None)
    )
    rows = [lm.prompt_ids([{"role": "user", "content": p}]) for p, _ in asked]
    if mode == "profile":  # where run 1's time goes: the top operators by CPU and GPU time
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            lm.greedy_batch(rows, [n for _, n in asked], 128)
        table = prof.key_averages()
        print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
        if cuda:
            print(
                table.table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=60)
            )
        return 0
    for run in (1, 2, 3):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        answers = lm.greedy_batch(rows, [n for _, n in asked], 128)
        if cuda:
            torch.cuda.synchronize()
        tokens = sum(a.completion_tokens for a in answers)
        seconds = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "mode": mode,
                    "run": run,
                    "answers": len(answers),
                    "tokens": tokens,
                    "s": round(seconds, 2),
                    "tok_s": round(tokens / seconds),
                }
            ),  # fmt: skip
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
