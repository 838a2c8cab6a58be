"""Unsloth on issue 15's workload, for the same table as bench/gpu_speed.py (item 5).

Random-init InternLM2.5-7B dimensions in /tmp/rand7b (Llama layout, `gpu_train.py prepare`),
QLoRA (Unsloth's 4-bit load) r=64 alpha 16 on every decoder linear, Unsloth's own gradient
checkpointing, bs 4 x 2048 random tokens (unpacked full rows: Unsloth has no packed-row
attention of its own), AdamW lr 2e-4, 8 steps, median of steps 4-8. Prints one RESULT line.
Never run yet: Unsloth needs CUDA to import, and its dependencies (xformers, torchvision, torchao,
diffusers, cut_cross_entropy, trl <= 1.15, transformers <= 5.17) have to be carried as wheels.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from unsloth import FastLanguageModel  # first: Unsloth patches transformers on import

SEQ, BATCH, STEPS = 2048, 4, 8


def main() -> None:
    start = time.time()
    model, _ = FastLanguageModel.from_pretrained(
        "/tmp/rand7b", max_seq_length=SEQ, load_in_4bit=True, dtype=torch.bfloat16
    )
    model = FastLanguageModel.get_peft_model(
        model, r=64, lora_alpha=16, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth",
    )  # fmt: skip
    load_s = time.time() - start
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator().manual_seed(0)
    times, losses = [], []
    for _ in range(STEPS):
        ids = torch.randint(3, model.config.vocab_size, (BATCH, SEQ), generator=generator).cuda()
        torch.cuda.synchronize()
        t = time.time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.time() - t)
        losses.append(round(loss.item(), 4))
    step_s = statistics.median(times[3:])
    result = dict(
        engine="unsloth", tok_s=round(BATCH * SEQ / step_s), step_s=round(step_s, 3),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), load_s=round(load_s, 1),
        losses=losses, note="lora_dropout 0 (Unsloth's fast path); unpacked rows",
    )  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
