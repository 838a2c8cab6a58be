"""Issue 15 on one H200: `tunesmith train` itself beside the plain HF + PEFT baseline and XTuner.

Each row is one process, run one after the other on the same GPU, with a time limit; a row that
fails or runs out of time is recorded with its error and the rest go on. tunesmith rows run the
real command line on `bench/configs/gpu_qlora_7b.yaml` (random-init InternLM2.5-7B dimensions,
Llama layout, 4 x 2048 packed, QLoRA r=64) with `key=value` overrides, and read tokens/s (median
of steps 5 on, after `train.memory_budget`'s three measured steps and its first chosen one),
peak GiB and the checkpointed layers from the run's own metrics.jsonl.

    part a   (~9 min)  baseline QLoRA, XTuner 0.2.0 (tutorial config), tunesmith with XTuner's
                       peak as the budget (item 2), tunesmith with `memory_budget: auto` (item 2)
    part b   (~9 min)  tunesmith every layer checkpointed (the old default), lean bs 1 within
                       7 GiB (item 2), LoRA bf16 by the CLI and the bench loop with / without
                       peft's fp32 input copy (item 3), the InternLM2 layout (item 4), Unsloth
                       (item 5, when its wheels are carried)

From the repo root of a device machine, with .whl / .xt / .bench carried as for gpu_run.sh:

    bash bench/gpu_run.sh speed      # part a
    bash bench/gpu_run.sh speed2     # part b (same warm machine: /tmp/rand7b is reused)

Writes $OUT/speed.jsonl (one JSON object a row) and prints a table. CPU smoke test (tiny
dimensions, no baseline / XTuner / Unsloth, which need CUDA; a few minutes on 2 cores):

    PYTHONPATH=src python bench/gpu_speed.py a b --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"  # carried: baseline_hf_peft.py, xtuner/, tok/
CONFIG = ROOT / "bench" / "configs" / "gpu_qlora_7b.yaml"
OUT = Path(os.environ.get("OUT", "/tmp/gpu_out"))
INTERNLM2_DIR = Path("/tmp/rand7b_internlm2")
XTUNER_PEAK = "23843MiB"  # XTuner 0.2.0's peak on this workload (H200, 2026-11-27)


def tunesmith_row(name: str, limit: int, overrides: list[str], smoke: bool) -> dict:
    """`tunesmith train CONFIG overrides` in a fresh work dir; figures from its metrics.jsonl."""
    work = Path(f"/tmp/speed_{name}")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    steps = 6 if smoke else 12
    # smoke: the tiny Llama, short rows; the time limits are the GPU's, so they stretch
    model = ["model.path=/tmp/rand-tiny", "data.max_length=256", "train.batch_size=1"]
    model = model if smoke else []
    limit = limit * 4 if smoke else limit
    command = [
        sys.executable, "-m", "tunesmith.cli.main", "train", str(CONFIG), "--work-dir", str(work),
        f"train.max_steps={steps}", *model, *overrides,
    ]  # fmt: skip
    code, log, seconds = _run(name, command, limit)
    row = {"run": name, "kind": "tunesmith train", "overrides": overrides, "rc": code}
    row["wall_s"] = round(seconds, 1)
    metrics = work / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.open()] if metrics.is_file() else []
    steady = [r for r in rows if r["step"] >= 5]
    if steady:
        row["tok_s"] = round(statistics.median(r["tokens_per_s"] for r in steady))
        row["peak_gib"] = max((r.get("peak_gib", 0) for r in steady), default=0)
        row["checkpointed_layers"] = steady[-1].get("checkpointed_layers")
        row["losses"] = [round(r["loss"], 4) for r in rows]
        train_s = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
        row["setup_s"] = round(seconds - train_s, 1)  # load + data + saves: the cost around steps
    row["budget_lines"] = [
        line for line in log.splitlines() if "memory budget" in line or "memory_budget" in line
    ]
    return _finish(row, log)


def loop_row(name: str, limit: int, args: list[str], smoke: bool) -> dict:
    """bench/gpu_train.py (tunesmith's model path in a bare loop): its RESULT line."""
    command = [sys.executable, str(ROOT / "bench" / "gpu_train.py"), *args]
    smoke_args = ["--smoke", "--seq", "256", "--bs", "1", "--steps", "4"] if smoke else []
    code, log, seconds = _run(name, command + smoke_args, limit * 4 if smoke else limit)
    return _finish(
        {"run": name, "kind": "gpu_train.py", "args": args, "rc": code, **_result(log)}, log
    )


def baseline_row(limit: int) -> dict:
    command = [sys.executable, str(BENCH / "baseline_hf_peft.py"), "qlora", "2048", "4", "ckpt"]
    code, log, _ = _run("baseline_qlora", command, limit)
    return _finish({"run": "baseline_qlora", "kind": "HF + PEFT", "rc": code, **_result(log)}, log)


def xtuner_row(limit: int) -> dict:
    """XTuner 0.2.0 on the tutorial's config: seconds per iteration and peak MiB from its log."""
    env = {"WHEELS": ".xt", "XT_S": str(limit - 60), "NSAMP": "200", "OUT": str(OUT)}
    code, log, _ = _run("xtuner", ["bash", str(BENCH / "xtuner" / "run.sh")], limit, env)
    text = (
        (OUT / "xtuner.log").read_text(errors="replace") if (OUT / "xtuner.log").is_file() else ""
    )
    times = [float(t) for t in re.findall(r"\btime: ([0-9.]+)", text)]
    memory = [int(m) for m in re.findall(r"\bmemory: ([0-9]+)", text)]
    row = {"run": "xtuner", "kind": "XTuner 0.2.0", "rc": code}
    if len(times) > 2:
        steady = statistics.mean(times[2:])  # logged windows after the first two
        row.update(step_s=round(steady, 3), tok_s=round(4 * 2048 / steady))
    if memory:
        row["peak_gib"] = round(max(memory) / 1024, 2)
    return _finish(row, log + text[-2000:])


def unsloth_row(limit: int) -> dict:
    """Unsloth on the same workload when it imports; otherwise the reason, verbatim."""
    probe = subprocess.run(
        [sys.executable, "-c", "import unsloth; print(unsloth.__version__)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return {"run": "unsloth", "kind": "Unsloth", "rc": probe.returncode, "error": reason}
    command = [sys.executable, str(ROOT / "bench" / "gpu_unsloth.py")]
    code, log, _ = _run("unsloth", command, limit)
    return _finish({"run": "unsloth", "kind": "Unsloth", "rc": code, **_result(log)}, log)


def make_internlm2(smoke: bool) -> None:
    """A random-init checkpoint in InternLM2's own layout (fused wqkv), as identity_7b_gpu.py."""
    sys.path.insert(0, str(ROOT / "bench"))
    from identity_7b_gpu import DIMS_7B, DIMS_TINY, internlm2_config, write_random

    if (INTERNLM2_DIR / "config.json").is_file():
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    write_random(INTERNLM2_DIR, internlm2_config(DIMS_TINY if smoke else DIMS_7B), device)
    print(
        f"made the InternLM2-layout checkpoint in {time.perf_counter() - start:.0f} s", flush=True
    )


def part_a(smoke: bool) -> list[dict]:
    rows = []
    if not smoke:
        rows.append(baseline_row(200))
        rows.append(xtuner_row(270))
    rows.append(
        tunesmith_row("ts_budget_xtuner_peak", 130, [f"train.memory_budget={XTUNER_PEAK}"], smoke)
    )
    rows.append(tunesmith_row("ts_budget_auto", 110, ["train.memory_budget=auto"], smoke))
    return rows


def part_b(smoke: bool) -> list[dict]:
    rows = [
        tunesmith_row("ts_all_checkpointed", 100, ["train.memory_budget=null"], smoke),
        tunesmith_row("ts_lean_bs1_7GiB", 100, ["train.batch_size=1", "train.memory_budget=7GiB"], smoke),
        tunesmith_row("ts_lora_bf16", 100, ["quantization=null", "train.memory_budget=null"], smoke),
        loop_row("loop_lora", 80, ["lora"], smoke),
        loop_row("loop_lora_peftcast", 80, ["lora", "--peft-cast"], smoke),
    ]  # fmt: skip
    make_internlm2(smoke)
    rows.append(
        tunesmith_row(
            "ts_internlm2_layout",
            150,
            [f"model.path={INTERNLM2_DIR}", "train.memory_budget=null"],
            smoke,
        )  # fmt: skip
    )
    if not smoke:
        rows.append(unsloth_row(150))
    return rows


def _run(name: str, command: list[str], limit: int, env: dict | None = None):
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=limit, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
        code, log = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code = 124
        log = _text(err.stdout) + _text(err.stderr)
    seconds = time.perf_counter() - start
    (OUT / f"{name}.log").write_text(log)
    return code, log, seconds


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _result(log: str) -> dict:
    lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else {}


def _finish(row: dict, log: str) -> dict:
    if row["rc"] != 0:
        errors = [line for line in log.splitlines() if "Error" in line or "error:" in line]
        row["error"] = (errors or log.splitlines()[-1:] or ["no output"])[-1][:300]
    print(f"RESULT {json.dumps(row)}", flush=True)
    with (OUT / "speed.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["a", "b"])
    parser.add_argument("--smoke", action="store_true", help="tiny dimensions on the CPU")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    prepare = [sys.executable, str(ROOT / "bench" / "gpu_train.py"), "prepare"]
    if args.smoke:
        global INTERNLM2_DIR
        INTERNLM2_DIR = Path("/tmp/rand-tiny-internlm2")
    _run("prepare", prepare + (["--smoke"] if args.smoke else []), 600)
    if args.smoke and not Path("/tmp/rand-tiny/tokenizer.json").is_file():
        import shutil

        from tunesmith.model.resolve import resolve_model_path

        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            source = Path(resolve_model_path("smollm2-135m-instruct")) / name
            if source.is_file():
                shutil.copy(source, Path("/tmp/rand-tiny") / name)
    rows = []
    for part in args.parts:
        rows += part_a(args.smoke) if part == "a" else part_b(args.smoke)
    print(f"\n{'run':26} {'rc':>3} {'tok/s':>7} {'peak GiB':>8} {'ckpt':>4}  note")
    for r in rows:
        note = r.get("error") or (r.get("budget_lines") or [""])[0][:90]
        print(f"{r['run']:26} {r['rc']:>3} {r.get('tok_s', '-'):>7} {r.get('peak_gib', '-'):>8} "
              f"{str(r.get('checkpointed_layers', '-')):>4}  {note}")  # fmt: skip


if __name__ == "__main__":
    main()
