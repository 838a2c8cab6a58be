"""`tunesmith identity` on the 7B path, with a random-init InternLM2.5-7B-layout model.

Checks that the workflow's stages (data, guard, base_eval, train, export, merge,
tuned_eval, report) run with the tutorial's recipe `internlm2_5_chat_7b_qlora_alpaca_e3`
on a GPU, and times each one. The weights are random, so the report's scores mean
nothing; what counts is that every stage completes on the GPU and how long it takes.

On a GPU machine (one card; ~50 GB of disk: the random checkpoint, its Llama-layout copy
and the merged model, 15.5 GB each):

    PYTHONPATH=src python bench/identity_7b_gpu.py /tmp/id7b

CPU smoke test with tiny dimensions (same code path, a couple of minutes on 2 cores):

    PYTHONPATH=src python bench/identity_7b_gpu.py /tmp/id7b-tiny --tiny --steps 2

The InternLM2 tokenizer.model is read from ../shared/assets/internlm2/ (or
$TUNESMITH_INTERNLM2_TOKENIZER), as the tests do. The command runs in this process (the
same `main` as the console script) so each stage's peak GPU memory, the GPU memory still
held when it returns (a model kept alive into the next stage shows here) and the free disk
can be read. OUT/timing.json is rewritten as each stage ends (a run stopped by a time
limit keeps what it measured); the last line printed is the same JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = Path(
    os.environ.get(
        "TUNESMITH_INTERNLM2_TOKENIZER",
        ROOT.parent / "shared" / "assets" / "internlm2" / "tokenizer.model",
    )
)
DIMS_7B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
DIMS_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}
OLD_NAMES = "InternLM,书生,上海人工智能实验室,Shanghai AI Laboratory"


def internlm2_config(dims: dict) -> dict:
    """config.json as InternLM2.5-7B-Chat ships it, with `dims`."""
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "bias": False,
        "vocab_size": 92544,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        **dims,
    }


def write_random(out: Path, config: dict, device: str, layers_per_shard: int = 4) -> None:
    """Random bf16 weights in InternLM2's own names (wqkv, w1/w2/w3), sharded."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    qkv_rows = (heads + 2 * kv) * (hidden // heads)

    def rand(*shape):
        return (torch.randn(*shape, device=device, dtype=torch.bfloat16) * 0.02).cpu()

    def ones(n):
        return torch.ones(n, dtype=torch.bfloat16)

    out.mkdir(parents=True, exist_ok=True)
    layers = config["num_hidden_layers"]
    for shard, first in enumerate(range(0, layers, layers_per_shard)):
        sd = {}
        for i in range(first, min(first + layers_per_shard, layers)):
            p = f"model.layers.{i}."
            sd[p + "attention.wqkv.weight"] = rand(qkv_rows, hidden)
            sd[p + "attention.wo.weight"] = rand(hidden, hidden)
            sd[p + "feed_forward.w1.weight"] = rand(inter, hidden)
            sd[p + "feed_forward.w3.weight"] = rand(inter, hidden)
            sd[p + "feed_forward.w2.weight"] = rand(hidden, inter)
            sd[p + "attention_norm.weight"] = ones(hidden)
            sd[p + "ffn_norm.weight"] = ones(hidden)
        if first == 0:
            sd["model.tok_embeddings.weight"] = rand(vocab, hidden)
            sd["model.norm.weight"] = ones(hidden)
            sd["output.weight"] = rand(vocab, hidden)
        save_file(sd, out / f"model-{shard:05d}.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(TOKENIZER, out / "tokenizer.model")


def instrument(timing: dict, out: Path, watch: list[Path]) -> None:
    """Wrap each workflow stage: its seconds, the GPU memory allocated when it starts (what
    earlier stages left), its peak, what is left allocated when it returns (before the
    workflow's `release_memory`), and the free disk under each of `watch`; timing.json
    rewritten each time."""
    from tunesmith.workflow.identity import PREFERENCE_STAGES, STAGES, IdentityWorkflow

    cuda = torch.cuda.is_available()

    def wrap(stage, method):
        @functools.wraps(method)
        def timed(self):
            row = {}
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                row["held_at_start_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
            start = time.perf_counter()
            method(self)
            row["s"] = round(time.perf_counter() - start, 1)
            if cuda:
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
                row["left_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
            row["disk_free_gb"] = {str(p): round(shutil.disk_usage(p).free / 1e9, 1) for p in watch}
            timing["stages"][stage] = row
            write_timing(timing, out)

        return timed

    for stage in STAGES + PREFERENCE_STAGES:
        name = f"stage_{stage}"
        setattr(IdentityWorkflow, name, wrap(stage, getattr(IdentityWorkflow, name)))


def write_timing(timing: dict, out: Path) -> None:
    (out / "timing.json").write_text(json.dumps(timing, indent=2, ensure_ascii=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="scratch dir: model/, work/, timing.json")
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (CPU smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (default: e3)")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="where the random model goes (OUT/model)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides"
    )
    args = parser.parse_args()
    if not TOKENIZER.is_file():
        sys.exit(f"{TOKENIZER} not found: set TUNESMITH_INTERNLM2_TOKENIZER")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir, work = args.model_dir or args.out / "model", args.out / "work"
    if work.exists():
        shutil.rmtree(work)  # a fresh run each time (the model is kept)
    args.out.mkdir(parents=True, exist_ok=True)
    timing = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
        "dims": "tiny" if args.tiny else "7b",
        "torch": torch.__version__,
        "train_steps": args.steps or "recipe (e3)",
        "overrides": args.set,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "stages": {},
    }

    start = time.perf_counter()
    if not (model_dir / "config.json").is_file():
        write_random(model_dir, internlm2_config(DIMS_TINY if args.tiny else DIMS_7B), device)
    timing["write_random_s"] = round(time.perf_counter() - start, 1)
    timing["model_gb"] = round(sum(f.stat().st_size for f in model_dir.iterdir()) / 1e9, 2)
    write_timing(timing, args.out)

    command = [
        "identity",
        "--name", "小助手", "--author", "书生实验室",
        "--model", str(model_dir),
        "--config", "internlm2_5_chat_7b_qlora_alpaca_e3",
        "--old-names", OLD_NAMES,
        "--work-dir", str(work),
    ]  # fmt: skip
    if args.steps:
        command.append(f"train.max_steps={args.steps}")
    command += args.set
    if args.tiny:  # bf16 autocast is slow or missing on small CPUs
        command += ['train.mixed_precision="no"', "model.dtype=fp32"]
    print("$ tunesmith", " ".join(command), flush=True)
    from tunesmith.cli.main import main as tunesmith_main
    from tunesmith.model.embedded import cache_root

    cache_root().mkdir(parents=True, exist_ok=True)
    watch = {os.stat(p).st_dev: p for p in (cache_root(), model_dir, args.out)}  # one a disk
    instrument(timing, args.out, list(watch.values()))
    start = time.perf_counter()
    code = tunesmith_main(command)
    timing["identity_wall_s"] = round(time.perf_counter() - start, 1)
    timing["rc"] = code
    if not code:
        report = json.loads((work / "report.json").read_text())
        timing["stages_s"] = report["seconds"]
        timing["tuned_identity_rate"] = report["identity"]["tuned"]["hit_rate"]
    timing["ended"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_timing(timing, args.out)
    print(json.dumps(timing, ensure_ascii=False))
    return code


if __name__ == "__main__":
    sys.exit(main())
