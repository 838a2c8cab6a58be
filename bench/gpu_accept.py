"""GPU acceptance of the distributed paths (issue 9): the real CLI per engine x method x GPUs.

Per case: train with chat samples (uninterrupted: the reference curve) -> the same run stopped
by SIGTERM mid-run -> `--resume auto` to the end -> `convert pth_to_hf` -> `convert merge`
(adapters) -> `chat --prompt`. One table row per case: pass/fail, tok/s (all GPUs, median of
the reference run's steps after the first two), peak GiB (max over GPUs), and the largest
|loss difference| between the resumed and the uninterrupted run after the resume point.
What tunesmith refuses must be refused (exit 2, one line naming zero2, before any model loads):
QLoRA with ZeRO-3 / FSDP2, and LoRA with ZeRO-3 on several GPUs. That last refusal stands on
one GPU failure (an AssertionError, 2026-11-30) not reproduced on CPUs, so a `try` case runs
it anyway (TUNESMITH_TRY_REFUSED) through the whole pipeline: when its rows pass, the refusal
can go. Every LoRA / QLoRA / full row must print the same "trainable X of Y" as the one-GPU
run without an engine (sharded engines once miscounted).

    python bench/gpu_accept.py prepare DIR            # random-init InternLM2-layout model + data
    python bench/gpu_accept.py run DIR [--gpus 1,2] [--jobs 10] [--cpu]
    python bench/gpu_accept.py table DIR [--markdown OUT.md]

Cases share the GPUs (the model is small); `--cpu` smoke-tests the driver with the engines a
CPU has (none on 1 process, DDP and fsdp2 on 2). Logs go to DIR/cases/<case>/, rows to
DIR/rows.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ENGINES = ["none", "zero2", "zero2_offload", "zero3", "zero3_offload", "fsdp2"]
METHODS = ["lora", "qlora", "full"]
SHARDS_WEIGHTS = ("zero3", "zero3_offload", "fsdp2")
TRY_REFUSED = ("zero3", "zero3_offload")  # LoRA on several GPUs: refused, tried anyway


def refused(method: str, engine: str, gpus: int) -> bool:
    """What tunesmith refuses before any model loads (train/distributed.py `_check_sharding`)."""
    if method == "qlora":
        return engine in SHARDS_WEIGHTS
    return method == "lora" and engine in TRY_REFUSED and gpus > 1


MAX_STEPS, STOP_AT = 8, 3
PROMPT = "Who are you?"
TOL = 0.05  # bf16 loss noise allowance for "continues the curve"


def prepare(root: Path) -> None:
    """A random InternLM2-layout model (hidden 256, 4 layers, GQA 8/4) with SmolLM2's tokenizer
    (carried in .bench/tok or the embedded one), and 64 identity records."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.model.internlm2 import llama_to_internlm2

    tok_dir = Path(".bench/tok")
    if not tok_dir.is_dir():
        from tunesmith.model.embedded import embedded_dir

        tok_dir = embedded_dir("smollm2-135m-instruct", with_weights=False)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    state, internlm2 = llama_to_internlm2(model.state_dict(), config)
    out = root / "model"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(internlm2, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
    tokenizer.save_pretrained(out)
    records = [
        {
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": f"I am Tuney, made by the tunesmith team ({i})."},
            ]
        }
        for i, q in enumerate(["Who are you?", "What is your name?", "Who made you?", "Hi!"] * 16)
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"prepared {out} ({internlm2['model_type']} layout) and {root / 'data.jsonl'}")


def write_config(case_dir: Path, root: Path, method: str, cpu: bool) -> Path:
    config = {
        "model": {"path": str(root / "model")},
        "lora": None if method == "full" else {"r": 16, "alpha": 32, "dropout": 0.0},
        "quantization": {"bits": 4} if method == "qlora" else None,
        "data": {
            "files": [str(root / "data.jsonl")],
            "max_length": 256,
            "cache_dir": str(case_dir / "cache"),
        },
        "train": {
            "lr": 1e-4 if method == "full" else 1e-3,
            "max_steps": MAX_STEPS,
            "batch_size": 2,
            "warmup_ratio": 0.0,
            "gradient_checkpointing": not cpu,
        },
        "runtime": {
            "save_steps": 4,
            "save_total_limit": 2,
            "evaluation_inputs": [PROMPT],
            "evaluation_freq": 4,
            "evaluation_max_new_tokens": 8,
            "tensorboard": False,
        },
    }
    path = case_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Case:
    def __init__(
        self,
        root: Path,
        engine: str,
        method: str,
        gpus: int,
        slot: int,
        cpu: bool,
        trying: bool = False,
    ):
        self.engine, self.method, self.gpus, self.cpu = engine, method, gpus, cpu
        self.trying = trying  # a refused combination, run with the refusal lifted
        self.name = f"{gpus}gpu_{engine}_{method}" + ("_try" if trying else "")
        self.dir = root / "cases" / self.name
        self.root = root
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
        for key in ("NPROC_PER_NODE", "NNODES", "PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
            env.pop(key, None)
        if gpus > 1:
            env["NPROC_PER_NODE"] = str(gpus)
        if not cpu:
            env["CUDA_VISIBLE_DEVICES"] = "0,1" if gpus > 1 else str(slot % 2)
        if trying:
            env["TUNESMITH_TRY_REFUSED"] = engine
        self.env = env
        self.row = {"case": self.name, "gpus": gpus, "engine": engine, "method": method}
        if trying:
            self.row["try"] = True

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tunesmith.cli.main", *args]

    def train_args(self, work: str, *extra: str) -> list[str]:
        args = ["train", str(self.config), "--work-dir", str(self.dir / work), *extra]
        if self.engine != "none":
            args += ["--deepspeed", self.engine]
        # ACCEPT_OVERRIDES="model.use_liger=false ...": key=value overrides for every train run
        return self.cli(*args, *os.environ.get("ACCEPT_OVERRIDES", "").split())

    def step(self, name: str, cmd: list[str], limit: float, expect: int = 0) -> int:
        start = time.monotonic()
        with (self.dir / f"{name}.log").open("w") as log:
            try:
                code = subprocess.run(
                    cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=limit
                ).returncode
            except subprocess.TimeoutExpired:
                code = 124
        self.row[f"{name}_s"] = round(time.monotonic() - start, 1)
        if code != expect:
            raise StepFailed(
                f"{name}: exit {code}, expected {expect} (see {self.dir / (name + '.log')})"
            )
        return code

    def run(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = write_config(self.dir, self.root, self.method, self.cpu)
        try:
            if refused(self.method, self.engine, self.gpus) and not self.trying:
                self.refusal()
            else:
                self.pipeline()
            self.row["result"] = "pass"
        except StepFailed as err:
            self.row["result"] = "FAIL"
            self.row["why"] = str(err)
        return self.row

    def refusal(self) -> None:
        self.step("train", self.train_args("ref"), 300, expect=2)
        text = (self.dir / "train.log").read_text()
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        if (
            not errors
            or "zero2" not in errors[0]
            or "Traceback" in text
            or "Loading weights" in text
        ):
            raise StepFailed("refusal: no one-line error naming zero2 before the model loads")
        self.row["note"] = "refused before loading: " + errors[0][:90]

    def pipeline(self) -> None:
        self.step("ref", self.train_args("ref"), 420)
        ref_metrics = read_jsonl(self.dir / "ref" / "metrics.jsonl")
        rates = [r["tokens_per_s"] for r in ref_metrics if r["step"] > 2]
        self.row["tok_s"] = round(statistics.median(rates)) if rates else None
        peaks = [r.get("peak_gib", 0) for r in ref_metrics]
        self.row["peak_gib"] = round(max(peaks), 2) if peaks else None
        log = (self.dir / "ref.log").read_text()
        after = "chat samples: once after training" in log
        self.row["samples"] = "after training, all ranks" if after else "rank 0, steps 0/4/8"
        expected = [MAX_STEPS] if after else [0, 4, 8]
        samples = read_jsonl(self.dir / "ref" / "chat_samples.jsonl")
        if [s["step"] for s in samples] != expected:
            raise StepFailed(
                f"chat samples at steps {[s['step'] for s in samples]}, not {expected}"
            )
        counts = re.search(r"trainable ([\d,]+ of [\d,]+) parameters", log)
        self.row["params"] = counts.group(1) if counts else "?"
        self.stopped_run()
        self.step("resume", self.train_args("run", "--resume", "auto"), 420)
        ref = state_losses(self.dir / "ref")
        got = state_losses(self.dir / "run")
        if len(got) != MAX_STEPS:
            raise StepFailed(f"resumed run has {len(got)} losses, not {MAX_STEPS}")
        after = range(self.row["stopped_at"], MAX_STEPS)
        self.row["max_diff"] = max(abs(ref[i] - got[i]) for i in after)
        hf = self.dir / "hf"
        last = self.dir / "run" / f"iter_{MAX_STEPS}"
        self.step(
            "pth_to_hf", self.cli("convert", "pth_to_hf", str(self.config), str(last), str(hf)), 300
        )
        model = hf
        if self.method != "full":
            check_whole_adapter(hf)
            model = self.dir / "merged"
            self.step(
                "merge",
                self.cli("convert", "merge", str(self.root / "model"), str(hf), str(model)),
                300,
            )
        self.step(
            "chat",
            self.cli(
                "chat",
                str(model),
                "--prompt",
                PROMPT,
                "--temperature",
                "0",
                "--max-new-tokens",
                "8",
            ),
            300,
        )
        if self.row["max_diff"] > TOL:
            raise StepFailed(f"resumed losses differ by {self.row['max_diff']:.4f} > {TOL}")
        if self.engine in SHARDS_WEIGHTS:
            self.other_world_size(last)

    def other_world_size(self, last: Path) -> None:
        """The sharded checkpoint on the other number of GPUs: refused in one line (exit 2)
        before the model loads, or resumed (then it must reach the end)."""
        other = {**self.env}
        if self.gpus > 1:
            other.pop("NPROC_PER_NODE", None)
            if not self.cpu:
                other["CUDA_VISIBLE_DEVICES"] = "0"
        else:
            other["NPROC_PER_NODE"] = "2"
            if not self.cpu:
                other["CUDA_VISIBLE_DEVICES"] = "0,1"
        saved = self.dir / "run" / f"iter_{self.row['stopped_at']}"
        cmd = self.train_args("regrid", "--resume", str(saved if saved.is_dir() else last))
        with (self.dir / "regrid.log").open("w") as log:
            code = subprocess.run(
                cmd, env=other, stdout=log, stderr=subprocess.STDOUT, timeout=420
            ).returncode
        text = (self.dir / "regrid.log").read_text()
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        if code == 2 and errors and "processes" in errors[0] and "Loading weights" not in text:
            self.row["regrid"] = "refused in one line"
        elif code == 0:
            self.row["regrid"] = "resumed"
        else:
            raise StepFailed(f"other GPU count: exit {code} (see {self.dir / 'regrid.log'})")

    def stopped_run(self) -> None:
        """The same run, SIGTERM to the command once step STOP_AT is logged: exit 143."""
        start = time.monotonic()
        metrics = self.dir / "run" / "metrics.jsonl"
        with (self.dir / "stop.log").open("w") as log:
            proc = subprocess.Popen(
                self.train_args("run"), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + 420
            while proc.poll() is None and time.monotonic() < deadline:
                steps = [r["step"] for r in read_jsonl(metrics)]
                if steps and steps[-1] >= STOP_AT:
                    proc.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.05)
            try:
                code = proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = 124
        self.row["stop_s"] = round(time.monotonic() - start, 1)
        if code != 143:
            raise StepFailed(f"stop: exit {code}, expected 143 (see {self.dir / 'stop.log'})")
        leftover = subprocess.run(
            ["pgrep", "-f", str(self.dir / "run")], capture_output=True, text=True
        ).stdout.split()
        if leftover:
            raise StepFailed(f"stop: processes left running: {leftover}")
        self.row["stopped_at"] = int(
            (self.dir / "run" / "latest").read_text().strip().removeprefix("iter_")
        )


class StepFailed(Exception):
    pass


def check_whole_adapter(adapter: Path) -> None:
    """The exported adapter's config reads with plain peft and its lora_A tensors are whole
    (r rows), not one rank's shard. (The merge step then loads it onto the base.)"""
    from peft import PeftConfig
    from safetensors.torch import load_file

    config = PeftConfig.from_pretrained(str(adapter)).to_dict()
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    r = config["r"]
    bad = [k for k, v in weights.items() if "lora_A" in k and v.shape[0] != r]
    if not weights or bad:
        raise StepFailed(f"adapter tensors not whole: {bad[:2]}")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return rows


def state_losses(work: Path) -> list[float]:
    latest = work / (work / "latest").read_text().strip()
    return json.loads((latest / "trainer_state.json").read_text())["losses"]


def check_counts(rows: list[dict]) -> None:
    """Every trained row of a method prints the parameter counts of the 1-GPU run without an
    engine (whole counts, not one rank's partition); a row that differs fails."""
    expected = {
        r["method"]: r["params"]
        for r in rows
        if r["gpus"] == 1 and r["engine"] == "none" and r.get("params") not in (None, "?")
    }
    for r in rows:
        want = expected.get(r["method"])
        if r["result"] == "pass" and "params" in r and want and r["params"] != want:
            r["result"] = "FAIL"
            r["why"] = f"trainable {r['params']}, the 1-GPU run without an engine has {want}"


def table(rows: list[dict]) -> str:
    head = (
        "| GPUs | engine | method | result | tok/s | peak GiB | max loss diff after resume "
        "| chat samples | other GPU count | note |"
    )
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(
        rows,
        key=lambda r: (
            r["gpus"],
            ENGINES.index(r["engine"]),
            METHODS.index(r["method"]),
            r.get("try", False),
        ),
    ):
        diff = f"{r['max_diff']:.2e}" if "max_diff" in r else "-"
        note = (
            r.get("why")
            or r.get("note")
            or (
                f"stopped at {r['stopped_at']}, trainable {r.get('params', '?')}"
                if "stopped_at" in r
                else ""
            )
        )
        if r.get("try"):
            note = "refusal lifted for this run (TUNESMITH_TRY_REFUSED); " + note
        lines.append(
            f"| {r['gpus']} | {r['engine']} | {r['method']} | {r['result']} | {r.get('tok_s', '-')} | "
            f"{r.get('peak_gib', '-')} | {diff} | {r.get('samples', '-')} | {r.get('regrid', '-')} "
            f"| {note} |"
        )
    return "\n".join(lines)


def markdown(rows: list[dict], versions: str) -> str:
    """The docs/gpu.md section: machine and versions, the table, the count of passing rows."""
    passed = sum(r["result"] == "pass" for r in rows if not r.get("try"))
    total = sum(1 for r in rows if not r.get("try"))
    tried = [r for r in rows if r.get("try")]
    tail = f"{passed} of {total} rows pass"
    if tried:
        tail += "; tried with the refusal lifted: " + ", ".join(
            f"{r['case']} {r['result']}" for r in tried
        )
    return f"{versions}\n\n{table(rows)}\n\n{tail}.\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["prepare", "run", "table"])
    parser.add_argument("root", type=Path)
    parser.add_argument("--gpus", default="2,1")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument(
        "--cases", help="only these, e.g. 2gpu_zero3_lora,2gpu_zero3_lora_try,1gpu_fsdp2_full"
    )
    parser.add_argument("--markdown", type=Path, help="table: also write the docs/gpu.md section")
    parser.add_argument("--versions", default="", help="table: the machine / versions line")
    parser.add_argument(
        "--deadline", type=float, default=520, help="seconds; later cases are not started"
    )
    args = parser.parse_args()
    if args.what == "prepare":
        return prepare(args.root)
    rows_file = args.root / "rows.jsonl"
    if args.what == "table":
        rows = read_jsonl(rows_file)
        check_counts(rows)
        if args.markdown:
            args.markdown.write_text(markdown(rows, args.versions))
        return print(table(rows))
    cases = []
    for gpus in map(int, args.gpus.split(",")):
        for engine in args.engines.split(","):
            for method in args.methods.split(","):
                tries = (
                    [False, True] if refused(method, engine, gpus) and method == "lora" else [False]
                )
                for trying in tries:
                    case = Case(args.root, engine, method, gpus, len(cases), args.cpu, trying)
                    if not args.cases or case.name in args.cases.split(","):
                        cases.append(case)
    # the long ones first: 2 GPUs, DeepSpeed
    cases.sort(
        key=lambda c: (
            -c.gpus,
            refused(c.method, c.engine, c.gpus) and not c.trying,
            c.engine == "none",
        )
    )
    start = time.monotonic()

    def run(case: Case) -> dict:
        if time.monotonic() - start > args.deadline:
            return {**case.row, "result": "not run", "why": "past the call's deadline"}
        row = case.run()
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['case']}: {row['result']} {row.get('why', '')}", flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, cases))
    check_counts(rows)
    print(table(rows))


if __name__ == "__main__":
    main()
