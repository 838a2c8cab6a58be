"""GPU DPO benchmark: tunesmith's preference objective vs TRL's DPOTrainer, same workload.

Workload (issue 13): QLoRA (NF4 + double quant, bf16 compute, LoRA r=64 alpha=16 dropout 0 on
all decoder linears) on the random 7B with InternLM2.5's dimensions that bench/gpu_train.py
makes (/tmp/rand7b), DPO sigmoid loss beta 0.1, pairs of 2 x 1024 tokens (prompt 256 + answer
768 each side), batch 4 pairs, gradient checkpointing, AdamW lr 5e-5; reference log-probs
from the same model with the adapter disabled on both sides.

    python bench/gpu_dpo.py tunesmith [--steps 8]   # make_accelerator -> load_model ->
        # apply_lora -> optimize_for_training -> PreferenceObjective: one forward per pair row
        # (chosen and rejected packed, attention per document), reference forward under
        # disable_adapter, as TrainRecipe._train_step does
    python bench/gpu_dpo.py trl [--steps 8]         # DPOTrainer(model path, quantization_config,
        # peft_config), its own data pipeline on text that tokenises to >= 1024 tokens a side,
        # max_length 1024, timed per optimizer step by a callback
    python bench/gpu_dpo.py tunesmith --smoke       # tiny dimensions on the CPU: checks the script

Each prints one `RESULT {json}` line (median tokens/s of steps after the 3rd, counting
2 x 1024 tokens a pair; peak GiB allocated) and appends it to $OUT/results.jsonl when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_train  # noqa: E402  (the random 7B and its dimensions, shared with the SFT benchmark)

SEQ, PROMPT, PAIRS, BETA, LR = 1024, 256, 4, 0.1, 5e-5


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def _median_after_warmup(times: list[float]) -> float:
    steady = sorted(times[3:] or times)
    return steady[len(steady) // 2]


def pair_batches(vocab: int, seed: int, device):
    """Endless packed batches of PAIRS rows, one pair a row: chosen (SEQ) then rejected (SEQ),
    sharing a PROMPT-token prompt, labels on the answers only (data/preference.py's layout)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        prompt = torch.randint(3, vocab, (PAIRS, PROMPT), generator=gen)
        answers = torch.randint(3, vocab, (PAIRS, 2, SEQ - PROMPT), generator=gen)
        ids = torch.cat([prompt, answers[:, 0], prompt, answers[:, 1]], dim=1)
        labels = ids.clone()
        labels[:, :PROMPT] = -100
        labels[:, SEQ : SEQ + PROMPT] = -100
        positions = torch.arange(SEQ).repeat(PAIRS, 2)
        sequence_index = torch.arange(2 * PAIRS).view(PAIRS, 2).repeat_interleave(SEQ, dim=1)
        yield {
            "input_ids": ids.to(device),
            "labels": labels.to(device),
            "position_ids": positions.to(device),
            "sequence_index": sequence_index.to(device),
            "pair_ids": torch.arange(PAIRS, device=device),
        }


def build_config(args):
    from tunesmith.config.schema import Config

    return Config.model_validate(
        {
            "model": {"path": str(gpu_train.MODEL_DIR), "dtype": "bf16", "use_liger": args.liger},
            "quantization": {"bits": 4, "compute_dtype": "bf16"},
            "lora": {"r": 64, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
            "data": {"max_length": SEQ, "pack_to_max_length": True},
            "train": {
                "batch_size": PAIRS,
                "max_steps": args.steps,
                "lr": LR,
                "gradient_checkpointing": True,
                "mixed_precision": "bf16" if torch.cuda.is_available() else "no",
            },
            "preference": {"loss": "dpo", "beta": BETA},
        }
    )


def run_tunesmith(args) -> dict:
    from tunesmith.model.adapters import apply_lora
    from tunesmith.model.fast import optimize_for_training
    from tunesmith.model.load import load_model
    from tunesmith.train.distributed import make_accelerator
    from tunesmith.train.preference import AdapterDisabledReference, PreferenceObjective

    cfg = build_config(args)
    accelerator = make_accelerator(cfg)
    gpu_train.make_random_7b(gpu_train.MODEL_DIR)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    quantization = cfg.quantization if torch.cuda.is_available() else None
    model = load_model(cfg.model, quantization, device=str(accelerator.device))
    model = apply_lora(model, cfg.lora, gradient_checkpointing=True)
    model = optimize_for_training(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    objective = PreferenceObjective(
        cfg.preference, AdapterDisabledReference(accelerator.unwrap_model(model))
    )
    batches = pair_batches(gpu_train.DIMS["vocab_size"], seed=0, device=accelerator.device)
    times, losses = [], []
    for _ in range(args.steps):
        batch = next(batches)
        _sync()
        start = time.time()
        with accelerator.accumulate(model):
            loss, _ = objective(model, batch, objective.denominators([batch]))
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.time() - start)
        losses.append(round(loss.item(), 4))
    step = _median_after_warmup(times)
    return {"step_s": round(step, 3), "losses": losses, "attn": model.config._attn_implementation}


def trl_dataset(tokenizer, n: int):
    """Text pairs that tokenise to more than SEQ tokens a side (DPOConfig.max_length cuts them)."""
    import random

    from datasets import Dataset

    words = gpu_train.WORDS
    rng = random.Random(0)

    def text(count: int) -> str:
        return " ".join(rng.choice(words) for _ in range(count))

    rows = []
    for _ in range(n):
        prompt = text(PROMPT)
        while len(tokenizer(prompt)["input_ids"]) > PROMPT:
            prompt = prompt.rsplit(" ", 1)[0]
        rows.append({"prompt": prompt, "chosen": " " + text(SEQ), "rejected": " " + text(SEQ)})
    return Dataset.from_list(rows)


def run_trl(args) -> dict:
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    gpu_train.make_random_7b(gpu_train.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(gpu_train.MODEL_DIR)
    cuda = torch.cuda.is_available()
    quantization = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        if cuda
        else None
    )
    config = DPOConfig(
        output_dir="/tmp/trl_dpo_bench",
        per_device_train_batch_size=PAIRS,
        max_length=SEQ,
        max_steps=args.steps,
        learning_rate=LR,
        beta=BETA,
        loss_type=["sigmoid"],
        gradient_checkpointing=True,
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        model_init_kwargs={"dtype": torch.bfloat16 if cuda else torch.float32},
    )
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            _sync()
            self.start = time.time()

        def on_step_end(self, *_, **__):
            _sync()
            times.append(time.time() - self.start)

    trainer = DPOTrainer(
        model=str(gpu_train.MODEL_DIR),
        args=config,
        train_dataset=trl_dataset(tokenizer, PAIRS * (args.steps + 1)),
        processing_class=tokenizer,
        peft_config=lora,
        quantization_config=quantization,
        callbacks=[StepTimer()],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [round(r["loss"], 4) for r in trainer.state.log_history if "loss" in r]
    lengths = trainer.train_dataset[0]
    return {
        "step_s": round(_median_after_warmup(times), 3),
        "losses": losses,
        "first_pair_tokens_before_max_length": [
            len(lengths["prompt_ids"]) + len(lengths[k]) for k in ("chosen_ids", "rejected_ids")
        ],
    }


def main() -> None:
    global SEQ, PROMPT
    parser = argparse.ArgumentParser()
    parser.add_argument("engine", choices=["tunesmith", "trl"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--liger", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--smoke", action="store_true", help="tiny dimensions on the CPU")
    args = parser.parse_args()
    args.liger = {"auto": "auto", "true": True, "false": False}[args.liger]
    if args.smoke:
        gpu_train.MODEL_DIR = Path("/tmp/rand-tiny-dpo")
        gpu_train.DIMS.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=49152,
        )
        SEQ, PROMPT = 128, 32
        if not (gpu_train.MODEL_DIR / "tokenizer.json").exists():
            from transformers import AutoTokenizer

            from tunesmith.model.embedded import embedded_dir

            gpu_train.make_random_7b(gpu_train.MODEL_DIR)
            tok = AutoTokenizer.from_pretrained(embedded_dir("smollm2-135m-instruct", False))
            tok.save_pretrained(gpu_train.MODEL_DIR)
    elif not (gpu_train.MODEL_DIR / "tokenizer.json").exists():
        gpu_train.prepare()  # the random 7B with the SmolLM2 tokenizer from .bench/tok
        if not (gpu_train.MODEL_DIR / "tokenizer.json").exists():
            raise SystemExit(f"no tokenizer in {gpu_train.TOKENIZER_DIR}: carry .bench/tok")
    measured = run_tunesmith(args) if args.engine == "tunesmith" else run_trl(args)
    import peft
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    versions["peft"] = peft.__version__
    if args.engine == "trl":
        import trl

        versions["trl"] = trl.__version__
    result = {
        "engine": args.engine,
        "workload": f"dpo qlora r64, {PAIRS} pairs x 2 x {SEQ}, ckpt",
        "tok_s": round(PAIRS * 2 * SEQ / measured["step_s"]),
        "peak_gib": round(_peak_gib(), 2),
        **measured,
        **versions,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    print("RESULT " + json.dumps(result), flush=True)
    if os.environ.get("OUT"):
        with open(Path(os.environ["OUT"]) / "results.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
