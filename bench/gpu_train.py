"""GPU training benchmark: tunesmith's model setup and loss contract on a random 7B.

The model has InternLM2.5-7B's dimensions (hidden 4096, intermediate 14336, 32 layers, 32 heads,
8 KV heads, vocab 92544) in the Llama layout, the same checkpoint that
`../shared/bench/baseline_hf_peft.py` trains (/tmp/rand7b, made by whichever runs first).
Batches are packed rows of documents of varied length (position_ids restart at every document,
prompt tokens carry no loss), LoRA r=64 alpha=16 dropout 0.1 on all decoder linears.

The path is tunesmith's: `make_accelerator` -> `load_model` -> `apply_lora` ->
`optimize_for_training` -> `model(**batch, use_cache=False, num_items_in_batch=N).loss`
inside `accelerator.accumulate`. Prints one `RESULT {json}` line (tokens/s over all GPUs,
peak GiB on the busiest GPU). Several GPUs: run it under torchrun, e.g.

    torchrun --nproc_per_node 2 bench/gpu_train.py qlora --deepspeed zero2

`--engine recipe` runs the recipe itself instead (`TrainRecipe` with max_steps, the data
pipeline on synthetic conversations of varied length, SmolLM2's tokenizer from .bench/tok copied
into the model dir) and reads tokens/s from its metrics.jsonl.

Usage: python bench/gpu_train.py qlora|lora [--engine loop|recipe] [--seq 2048] [--bs 4]
       [--steps 8] [--no-ckpt] [--ckpt-layers N] [--attn auto|sdpa|flex_attention]
       [--liger auto|on|off] [--deepspeed NAME] [--check-attn] [--peft-cast]
       python bench/gpu_train.py prepare     # the model dir, tokenizer and records, once
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

MODEL_DIR = Path("/tmp/rand7b")
DIMS = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=92544,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-5,
)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def make_random_7b(path: Path) -> None:
    """The baseline script's checkpoint: same config, bf16, random init, saved once."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (path / "config.json").exists():
        return
    start = time.time()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**DIMS), dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size="5GB")
    del model
    print(f"made random 7B in {time.time() - start:.0f}s", flush=True)


def packed_batches(seq: int, bs: int, vocab: int, seed: int, device):
    """Endless packed batches: documents of log-normal length (median ~400 tokens) filling each row.

    Each document: its first ~30% (the prompt) and its first token carry no loss.
    """
    gen = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(3, vocab, (bs, seq), generator=gen)
        labels = ids.clone()
        positions = torch.empty(bs, seq, dtype=torch.long)
        for row in range(bs):
            start = 0
            while start < seq:
                length = int(
                    torch.empty(1).log_normal_(mean=6.0, std=0.8, generator=gen).clamp(16, seq)
                )
                length = min(length, seq - start)
                positions[row, start : start + length] = torch.arange(length)
                labels[row, start : start + max(1, int(0.3 * length))] = -100
                start += length
        yield {
            "input_ids": ids.to(device),
            "labels": labels.to(device),
            "position_ids": positions.to(device),
        }


TOKENIZER_DIR = Path(__file__).resolve().parents[1] / ".bench" / "tok"
RECORDS = Path("/tmp/ts_bench_records.jsonl")
WORDS = (
    "the model learns to answer questions about itself and the world with short clear sentences "
    "while keeping what it knew before training started on this small data set of chats"
).split()


def prepare() -> None:
    """The random 7B, a tokenizer beside it, and synthetic chat records of varied length."""
    import random
    import shutil

    make_random_7b(MODEL_DIR)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (TOKENIZER_DIR / name).exists():
            shutil.copy(TOKENIZER_DIR / name, MODEL_DIR / name)
    rng = random.Random(0)
    with open(RECORDS, "w") as f:
        for i in range(1200):
            words = int(min(1500, max(8, rng.lognormvariate(5.5, 0.9))))
            answer = " ".join(rng.choice(WORDS) for _ in range(words))
            turn = {
                "system": "You are a helpful assistant.",
                "input": f"Question {i}?",
                "output": answer,
            }
            f.write(json.dumps({"conversation": [turn]}) + "\n")


def run_recipe(args, cfg) -> dict:
    """TrainRecipe for max_steps on the synthetic records; tokens/s from its metrics.jsonl."""
    from tunesmith.train.recipe import TrainRecipe

    raw = cfg.model_dump()
    raw["data"].update(files=[{"path": str(RECORDS)}], cache_dir="/tmp/ts_bench_cache")
    raw["runtime"].update(save_steps=10_000, save_total_limit=1, tensorboard=False)
    cfg = type(cfg).model_validate(raw)
    work_dir = Path(
        f"/tmp/ts_bench_work/{args.mode}-{os.environ.get('WORLD_SIZE', '1')}-{time.time_ns()}"
    )
    recipe = TrainRecipe(cfg, work_dir=work_dir)
    start = time.time()
    recipe.setup()
    load_s = time.time() - start
    acc = recipe.accelerator
    try:
        result = recipe.train()
        losses, error = [round(x, 4) for x in result.losses], None
    except Exception as err:  # keep the timings of the steps that ran
        losses, error = [], repr(err)[:300]
    peak = torch.tensor(_peak_gib(), device=acc.device)
    peak = acc.reduce(peak, reduction="max").item() if acc.num_processes > 1 else peak.item()
    rows = (
        [json.loads(line) for line in open(work_dir / "metrics.jsonl")]
        if acc.is_main_process
        else []
    )
    rates = sorted(r["tokens_per_s"] for r in rows if r["step"] > 3)
    steady = rates[len(rates) // 2] if rates else 0.0
    return dict(
        accelerator=acc,
        model=recipe.model,
        tok_s=round(steady * acc.num_processes),
        step_s=round(args.bs * args.seq / steady, 3) if steady else None,
        peak_gib=round(peak, 2),
        load_s=round(load_s, 1),
        losses=losses,
        dataset=recipe.dataset.summary,
        **({"train_error": error} if error else {}),
    )


def build_config(args):
    from tunesmith.config.schema import (
        Config,
        DataConfig,
        LoraConfig,
        ModelConfig,
        QuantizationConfig,
        TrainConfig,
    )

    liger = {"auto": "auto", "on": True, "off": False}[args.liger]
    return Config(
        model=ModelConfig(
            path=str(MODEL_DIR), dtype="bf16", attn_implementation=args.attn, use_liger=liger
        ),
        quantization=QuantizationConfig(compute_dtype="bf16") if args.mode == "qlora" else None,
        lora=LoraConfig(r=64, alpha=16, dropout=0.1, target_modules="all-linear"),
        data=DataConfig(max_length=args.seq, pack_to_max_length=True),
        train=TrainConfig(
            batch_size=args.bs,
            max_steps=args.steps,
            lr=2e-4,
            gradient_checkpointing=args.ckpt,
            checkpoint_layers=args.ckpt_layers,
            deepspeed=args.deepspeed,
            mixed_precision="bf16",
        ),
    )


def check_attention(model, batch) -> dict:
    """Loss of one batch under the chosen attention and under SDPA's per-document mask."""
    from tunesmith.model.fast import unwrap

    base = unwrap(model)
    chosen = base.config._attn_implementation
    model.eval()
    with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16):
        ours = model(**batch, use_cache=False).loss.float().item()
        base.set_attn_implementation("sdpa")
        sdpa = model(**batch, use_cache=False).loss.float().item()
        base.set_attn_implementation(chosen)
    model.train()
    return {"attn_check": {chosen: round(ours, 5), "sdpa": round(sdpa, 5)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["qlora", "lora", "prepare"])
    parser.add_argument("--engine", choices=["loop", "recipe"], default="loop")
    parser.add_argument(
        "--ckpt-layers", type=int, default=None, help="checkpoint only the first N layers"
    )
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--bs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-ckpt", dest="ckpt", action="store_false")
    parser.add_argument("--attn", default="auto")
    parser.add_argument("--liger", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--deepspeed", default=None)
    parser.add_argument("--check-attn", action="store_true")
    parser.add_argument(
        "--peft-cast", action="store_true", help="let peft copy LoRA inputs to fp32 (A/B check)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny model on the CPU: checks the script"
    )
    args = parser.parse_args()
    if args.smoke:
        global MODEL_DIR
        MODEL_DIR = Path("/tmp/rand-tiny")
        DIMS.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=49152,
        )

    if args.mode == "prepare":
        prepare()
        return

    import peft
    import transformers

    from tunesmith.model.fast import unwrap

    cfg = build_config(args)
    if args.engine == "recipe":
        if not RECORDS.exists():
            prepare()
        measured = run_recipe(args, cfg)
        accelerator, model = measured.pop("accelerator"), measured.pop("model")
    else:
        accelerator, model, measured = run_loop(args, cfg)
    base = unwrap(accelerator.unwrap_model(model))
    result = dict(
        engine=f"tunesmith-{args.engine}",
        mode=args.mode,
        seq=args.seq,
        bs=args.bs,
        ckpt=args.ckpt,
        ckpt_layers=args.ckpt_layers,
        attn=base.config._attn_implementation,
        liger="forward" in vars(base),  # liger binds its fused-loss forward to the instance
        deepspeed=args.deepspeed,
        world=accelerator.num_processes,
        **measured,
        torch=torch.__version__,
        transformers=transformers.__version__,
        peft=peft.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    )
    if accelerator.is_main_process:
        print("RESULT " + json.dumps(result), flush=True)
        out = os.environ.get("OUT")
        if out:
            with open(Path(out) / "results.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")


def run_loop(args, cfg):
    """tunesmith's model setup and loss contract in a bare loop (no data pipeline, no hooks)."""
    from tunesmith.model.adapters import apply_lora
    from tunesmith.model.fast import optimize_for_training
    from tunesmith.model.load import load_model
    from tunesmith.train.distributed import make_accelerator

    accelerator = make_accelerator(cfg)
    if accelerator.is_main_process:
        make_random_7b(MODEL_DIR)
    accelerator.wait_for_everyone()

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    model = load_model(cfg.model, cfg.quantization, device=str(accelerator.device))
    model = apply_lora(model, cfg.lora, gradient_checkpointing=cfg.train.gradient_checkpointing)
    model = optimize_for_training(model, cfg)
    if args.peft_cast:
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = True
    load_s = time.time() - start
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.betas)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    load_gib = _peak_gib()

    batches = packed_batches(
        args.seq,
        args.bs,
        DIMS["vocab_size"],
        seed=accelerator.process_index,
        device=accelerator.device,
    )
    extra = {}
    if args.check_attn:
        try:
            extra = check_attention(model, next(batches))
        except Exception as err:  # report it beside the timing rather than lose the run
            extra = {"attn_check_error": repr(err)[:300]}
    times, losses = [], []
    for _ in range(args.steps):
        batch = next(batches)
        items = (batch["labels"][:, 1:] != -100).sum()
        _sync()
        t = time.time()
        with accelerator.accumulate(model):
            loss = model(**batch, use_cache=False, num_items_in_batch=items).loss
            accelerator.backward(loss * accelerator.gradient_accumulation_steps)
            accelerator.clip_grad_norm_(params, cfg.train.max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.time() - t)
        losses.append(round(loss.item(), 4))

    steady = sorted(times[3:])[len(times[3:]) // 2]
    peak = torch.tensor(_peak_gib(), device=accelerator.device)
    if accelerator.num_processes > 1:
        peak = accelerator.reduce(peak, reduction="max")
    measured = dict(
        tok_s=round(args.bs * args.seq * accelerator.num_processes / steady),
        step_s=round(steady, 3),
        peak_gib=round(peak.item(), 2),
        load_gib=round(load_gib, 2),
        load_s=round(load_s, 1),
        losses=losses,
        **extra,
    )
    return accelerator, model, measured


if __name__ == "__main__":
    main()
