"""The bad-input corpus: a table of broken inputs, each run through the CLI as a user would.

Every case must end with exit code 2, one `error:` line that names the file / line / key /
argument at fault, no traceback, and the disk as it was: every file under the case's
directory keeps its bytes and no file appears or disappears (no stray temp file, no half
work dir). Cases that need the permission bits to bite are skipped when run as root.

Each case builds its inputs under `d` (a fresh tmp dir) and returns the argv; `{d}`, `{model}`
in the expected substrings are filled in. The tiny model is shared (session fixture) and is
copied into `d` when a case breaks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tunesmith.cli.main import main

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
GOOD = {"instruction": "Name a colour.", "output": "Red."}


@dataclass
class Env:
    d: Path  # the case's own directory
    model: Path  # the shared tiny model (never written)

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def jsonl(self, name: str, records: list) -> Path:
        return self.file(name, "".join(json.dumps(r) + "\n" for r in records))

    def config(self, name: str = "cfg.yaml", data_file: Path | None = None, **parts) -> Path:
        data_file = data_file or self.jsonl("data.jsonl", [GOOD])
        cfg = {
            "model": {"path": str(self.model)},
            "lora": {"r": 4, "alpha": 8},
            "data": {"files": [str(data_file)], "max_length": 128},
            "train": {"max_steps": 1},
            "runtime": {"tensorboard": False},
        }
        for part, values in parts.items():
            if values is None:
                cfg[part] = None
            else:
                cfg.setdefault(part, {}).update(values)
        return self.file(name, yaml.safe_dump(cfg))

    def model_copy(self) -> Path:
        out = self.d / "model"
        shutil.copytree(self.model, out)
        return out

    def check(self, path: Path) -> list[str]:
        return ["data", "check", str(path), "--model", str(self.model)]

    def train(self, config: Path, *extra: str) -> list[str]:
        return ["train", str(config), "--work-dir", str(self.d / "work"), *extra]

    def chat(self, model: Path, *extra: str) -> list[str]:
        return ["chat", str(model), "--prompt", "hi", "--max-new-tokens", "2", *extra]


@dataclass
class Case:
    id: str
    make: Callable[[Env], list[str]]
    expect: tuple[str, ...]  # substrings of stderr; `{d}` and `{model}` are filled in
    needs_non_root: bool = False


def _nested(depth: int) -> str:
    return '{"messages": ' + "[" * depth + "]" * depth + "}"


def _checkpoint(e: Env) -> Path:
    """A minimal LoRA checkpoint dir (enough to be found as one)."""
    ckpt = e.d / "work" / "iter_1"
    e.file("work/iter_1/trainer_state.json", json.dumps({"step": 1, "losses": [1.0]}))
    e.file("work/iter_1/adapter/adapter_config.json", json.dumps({"peft_type": "LORA"}))
    e.file("work/iter_1/adapter/adapter_model.safetensors", b"\0" * 16)
    return ckpt


def _readonly(path: Path) -> Path:
    path.chmod(0o500 if path.is_dir() else 0o400)
    return path


def _unreadable(path: Path) -> Path:
    path.chmod(0)
    return path


def _set_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def _adapter(e: Env, **config) -> Path:
    out = e.d / "adapter"
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    cfg.update(config)
    e.file("adapter/adapter_config.json", json.dumps(cfg))
    e.file("adapter/adapter_model.safetensors", b"not safetensors at all")
    return out


CASES = [
    # ---- data files (data check FILE) ------------------------------------------------------
    Case("data-random-bytes", lambda e: e.check(e.file("x.jsonl", bytes(range(128, 256)) * 4)),
         ("{d}/x.jsonl", "not UTF-8")),
    Case("data-utf16", lambda e: e.check(e.file("x.jsonl", (json.dumps(GOOD) + "\n").encode("utf-16"))),
         ("{d}/x.jsonl", "UTF-16")),
    Case("data-latin1", lambda e: e.check(e.file("x.jsonl", '{"instruction": "Café?", "output": "Oui."}\n'.encode("latin-1"))),
         ("{d}/x.jsonl", "not UTF-8")),
    Case("data-latin1-json", lambda e: e.check(e.file("x.json", '[{"instruction": "Café?", "output": "Oui."}]'.encode("latin-1"))),
         ("{d}/x.json", "not UTF-8")),
    Case("data-directory", lambda e: e.check(e.d / "dir.jsonl") if (e.d / "dir.jsonl").mkdir() is None else [],
         ("{d}/dir.jsonl", "is a directory")),
    Case("data-unreadable", lambda e: e.check(_unreadable(e.jsonl("x.jsonl", [GOOD]))),
         ("{d}/x.jsonl", "permission denied"), needs_non_root=True),
    Case("data-fake-parquet", lambda e: e.check(e.file("x.parquet", "not parquet\n")),
         ("{d}/x.parquet", "Parquet")),
    Case("data-empty-parquet-bytes", lambda e: e.check(e.file("x.parquet", b"")),
         ("{d}/x.parquet",)),
    Case("data-nested-jsonl", lambda e: e.check(e.file("x.jsonl", _nested(100_000) + "\n")),
         ("{d}/x.jsonl:1", "nested too deeply")),
    Case("data-nested-json", lambda e: e.check(e.file("x.json", "[" + _nested(100_000) + "]")),
         ("{d}/x.json:1", "nested too deeply")),
    Case("data-trailing-text-json", lambda e: e.check(e.file("x.json", json.dumps([GOOD]) + "\ntrailing words\n")),
         ("{d}/x.json:2", "after the end")),
    Case("data-second-list-json", lambda e: e.check(e.file("x.json", json.dumps([GOOD]) + json.dumps([GOOD]))),
         ("{d}/x.json:1", "after the end")),
    Case("data-trailing-after-object-json", lambda e: e.check(e.file("x.json", json.dumps(GOOD) + " x")),
         ("{d}/x.json:1", "after the end")),
    Case("data-bad-json-line", lambda e: e.check(e.file("x.jsonl", json.dumps(GOOD) + "\n{oops\n")),
         ("{d}/x.jsonl:2", "not valid JSON")),
    Case("data-json-trailing-comma", lambda e: e.check(e.file("x.json", "[" + json.dumps(GOOD) + ",]")),
         ("{d}/x.json:1", "not valid JSON")),
    Case("data-json-scalar", lambda e: e.check(e.file("x.json", "42")),
         ("{d}/x.json:1", "list of records")),
    Case("data-record-not-object", lambda e: e.check(e.file("x.jsonl", "[1, 2]\n")),
         ("{d}/x.jsonl:1", "JSON object")),
    Case("data-empty-file", lambda e: e.check(e.file("x.jsonl", "\n\n")),
         ("{d}/x.jsonl", "empty")),
    Case("data-unknown-format", lambda e: e.check(e.jsonl("x.jsonl", [{"question": "q", "answer": "a"}])),
         ("{d}/x.jsonl:1", "cannot tell the format")),
    Case("data-placeholder", lambda e: e.check(e.jsonl("x.jsonl", [GOOD, {"instruction": "Who?", "output": "I am {{name}}."}])),
         ("{d}/x.jsonl:2", "placeholder")),
    Case("data-output-number", lambda e: e.check(e.jsonl("x.jsonl", [{"instruction": "2+2?", "output": 4}])),
         ("{d}/x.jsonl:1", "'output' must be a string")),
    Case("data-unknown-role", lambda e: e.check(e.jsonl("x.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}])),
         ("{d}/x.jsonl:1", "unknown 'role'")),
    Case("data-system-not-first", lambda e: e.check(e.jsonl("x.jsonl", [{"messages": [
        {"role": "user", "content": "q"}, {"role": "system", "content": "s"},
        {"role": "assistant", "content": "a"}]}])),
         ("{d}/x.jsonl:1", "system message must come first")),
    Case("data-conversation-not-list", lambda e: e.check(e.jsonl("x.jsonl", [{"conversation": "hi"}])),
         ("{d}/x.jsonl:1", "'conversation' must be a non-empty list")),
    Case("data-txt-file", lambda e: e.check(e.file("notes.txt", "quantisation: 4\n")),
         ("{d}/notes.txt", "unsupported data file type")),
    Case("data-missing-file", lambda e: e.check(e.d / "nope.jsonl"),
         ("{d}/nope.jsonl", "no such")),
    Case("data-empty-answer", lambda e: e.check(e.jsonl("x.jsonl", [GOOD, {"instruction": "Capital of France?", "output": ""}])),
         ("{d}/x.jsonl:2", "empty answer")),
    Case("data-whitespace-answer", lambda e: e.check(e.jsonl("x.jsonl", [{"instruction": "Hi?", "output": " \n\t"}])),
         ("{d}/x.jsonl:1", "empty answer")),
    Case("data-empty-turn-in-conversation", lambda e: e.check(e.jsonl("x.jsonl", [{"conversation": [
        {"input": "a", "output": "b"}, {"input": "c", "output": "  "}]}])),
         ("{d}/x.jsonl:1", "conversation[1].output", "empty answer")),
    Case("data-no-assistant-turn", lambda e: e.check(e.jsonl("x.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])),
         ("{d}/x.jsonl:1", "no assistant answer")),
    Case("data-no-trainable-token-after-truncation", lambda e: e.check(e.jsonl("x.jsonl", [
        {"instruction": "word " * 200, "output": "Red."}])) + ["--max-length", "64"],
         ("{d}/x.jsonl:1", "max_length=64")),
    Case("data-check-override-bad", lambda e: e.check(e.jsonl("x.jsonl", [GOOD])) + ["data.max_length=2"],
         ("data.max_length",)),
    # ---- configs (train CONFIG) ------------------------------------------------------------
    Case("cfg-unknown-key", lambda e: e.train(e.file("c.yaml", "model:\n  path: x\ntrain:\n  lrr: 1\n")),
         ("{d}/c.yaml:4", "train.lrr", "did you mean 'lr'")),
    Case("cfg-misspelled-template", lambda e: e.train(e.config(data={"template": "chatmll"})),
         ("{d}/cfg.yaml", "data.template", "chatmll", "did you mean 'chatml'")),
    Case("cfg-empty-file", lambda e: e.train(e.file("empty.yaml", "")),
         ("{d}/empty.yaml", "data.files is empty")),
    Case("chat-misspelled-template", lambda e: e.chat(e.model, "--prompt-template", "chatmll"),
         ("--prompt-template", "chatmll")),
    Case("cfg-bad-value", lambda e: e.train(e.config(train={"lr": -1})),
         ("{d}/cfg.yaml", "train.lr")),
    Case("cfg-lr-infinite", lambda e: e.train(e.config(train={"lr": float("inf")})),
         ("{d}/cfg.yaml", "train.lr", "finite")),
    Case("cfg-override-lr-overflows", lambda e: e.train(e.config(), "train.lr=1e999"),
         ("train.lr", "finite")),
    Case("train-seed-negative", lambda e: e.train(e.config(), "--seed", "-1"),
         ("train.seed",)),
    Case("train-target-modules-typo", lambda e: e.train(e.config(lora={"target_modules": ["nonexistent_proj"]})),
         ("lora.target_modules", "nonexistent_proj", "q_proj")),
    Case("cfg-bad-type", lambda e: e.train(e.config(train={"batch_size": "two"})),
         ("{d}/cfg.yaml", "train.batch_size")),
    Case("cfg-yaml-syntax", lambda e: e.train(e.file("c.yaml", "model:\n  path: [x\n")),
         ("{d}/c.yaml", "not valid YAML")),
    Case("cfg-binary", lambda e: e.train(e.file("c.yaml", bytes(range(256)))),
         ("{d}/c.yaml", "not UTF-8")),
    Case("cfg-control-chars", lambda e: e.train(e.file("c.yaml", "model:\x00\x01\n")),
         ("{d}/c.yaml", "not valid YAML")),
    Case("cfg-unreadable", lambda e: e.train(_unreadable(e.config())),
         ("{d}/cfg.yaml", "permission denied"), needs_non_root=True),
    Case("cfg-is-directory", lambda e: e.train(e.d / "cfgdir.yaml") if (e.d / "cfgdir.yaml").mkdir() is None else [],
         ("{d}/cfgdir.yaml", "is a directory")),
    Case("cfg-txt-file", lambda e: e.train(e.file("notes.txt", "quantisation: 4\n")),
         ("{d}/notes.txt", "YAML file")),
    Case("cfg-missing", lambda e: e.train(e.d / "nope.yaml"),
         ("{d}/nope.yaml", "does not exist")),
    Case("cfg-unknown-recipe", lambda e: e.train(Path("internlm2_chat_7b_qlora_oasst")),
         ("internlm2_chat_7b_qlora_oasst", "no built-in config")),
    Case("cfg-a-list", lambda e: e.train(e.file("c.yaml", "- model\n- data\n")),
         ("{d}/c.yaml", "mapping")),
    Case("cfg-key-twice", lambda e: e.train(e.file("c.yaml", "train:\n  lr: 1\n  lr: 2\n")),
         ("{d}/c.yaml:3", "set twice")),
    Case("cfg-override-unknown", lambda e: e.train(e.config(), "train.lrr=1"),
         ("train.lrr=1", "unknown config key")),
    Case("cfg-override-bad-value", lambda e: e.train(e.config(), "train.max_steps=0"),
         ("train.max_steps=0", "train.max_steps")),
    Case("cfg-missing-data-file", lambda e: e.train(e.config(data={"files": [str(e.d / "nope.jsonl")]})),
         ("{d}/nope.jsonl", "no such data file")),
    Case("cfg-bad-data-record", lambda e: e.train(e.config(data_file=e.file("x.jsonl", "{oops\n"))),
         ("{d}/x.jsonl:1", "not valid JSON")),
    Case("cfg-no-data-files", lambda e: e.train(e.config(data={"files": []})),
         ("data.files",)),
    Case("cfg-missing-model", lambda e: e.train(e.config(model={"path": str(e.d / "no-model")})),
         ("{d}/no-model", "does not exist")),
    Case("cfg-quantization-without-lora", lambda e: e.train(e.config(quantization={"bits": 4}, lora=None)),
         ("quantization", "lora")),
    Case("cfg-guard-prompts-missing", lambda e: e.train(e.config(guard={"enabled": True, "prompts": str(e.d / "p.json")})),
         ("guard.prompts", "{d}/p.json")),
    Case("cfg-all-answers-truncated", lambda e: e.train(e.config(data_file=e.jsonl("x.jsonl", [
        {"instruction": "word " * 200, "output": "Red."}] * 4))),
         ("all 4 records", "max_length=128")),
    Case("cfg-all-answers-empty", lambda e: e.train(e.config(data_file=e.jsonl("x.jsonl", [
        {"instruction": "Hi?", "output": ""}] * 3))),
         ("all 3 records", "empty answer")),
    Case("cfg-stray-argument", lambda e: e.train(e.config(), "oops"),
         ("unrecognized arguments: oops",)),
    # ---- work dirs (train --work-dir) ------------------------------------------------------
    Case("work-dir-is-file", lambda e: ["train", str(e.config()), "--work-dir", str(e.file("w", "x"))],
         ("{d}/w", "is a file")),
    Case("work-dir-parent-is-file", lambda e: ["train", str(e.config()), "--work-dir", str(e.file("w", "x") / "run")],
         ("{d}/w", "is a file")),
    Case("work-dir-read-only", lambda e: ["train", str(e.config()), "--work-dir", str(_readonly(e.d / "w") if (e.d / "w").mkdir() is None else "")],
         ("{d}/w", "permission denied"), needs_non_root=True),
    Case("work-dir-different-run", lambda e: _different_run(e),
         ("{d}/work", "different config", "train.lr")),
    Case("work-dir-different-run-with-guard", lambda e: _different_run(e, guard=True),
         ("{d}/work", "different config")),
    Case("work-dir-has-checkpoints", lambda e: _same_run_with_checkpoint(e),
         ("{d}/work", "--resume auto")),
    Case("identity-work-dir-is-file", lambda e: ["identity", "--name", "Ada", "--author", "Me", "--model", str(e.model), "--work-dir", str(e.file("w", "x"))],
         ("{d}/w", "is a file")),
    Case("identity-misspelled-template", lambda e: ["identity", "--name", "Ada", "--author", "Me", "--model", str(e.model), "--work-dir", str(e.d / "w"), "data.template=chatmll"],
         ("data.template", "chatmll")),
    Case("resume-missing-path", lambda e: e.train(e.config(), "--resume", str(e.d / "no-ckpt")),
         ("{d}/no-ckpt",)),
    Case("resume-not-a-checkpoint", lambda e: e.train(e.config(), "--resume", str(e.file("notckpt/x", "x").parent)),
         ("{d}/notckpt",)),
    # ---- CLI arguments ---------------------------------------------------------------------
    Case("serve-port-too-big", lambda e: ["serve", str(e.model), "--port", "99999"],
         ("--port", "99999")),
    Case("serve-port-negative", lambda e: ["serve", str(e.model), "--port", "-1"],
         ("--port",)),
    Case("webui-port-too-big", lambda e: ["webui", str(e.model), "--port", "70000"],
         ("--port", "70000")),
    Case("chat-temperature-negative", lambda e: e.chat(e.model, "--temperature", "-1"),
         ("--temperature",)),
    Case("chat-top-p-above-one", lambda e: e.chat(e.model, "--top-p", "1.5"),
         ("--top-p",)),
    Case("chat-max-new-tokens-zero", lambda e: ["chat", str(e.model), "--prompt", "hi", "--max-new-tokens", "0"],
         ("--max-new-tokens",)),
    Case("chat-bits-3", lambda e: e.chat(e.model, "--bits", "3"),
         ("--bits",)),
    Case("identity-out-exists", lambda e: ["data", "identity", "--name", "Ada", "--author", "Me", "-o", str(e.file("out.jsonl", "keep me\n"))],
         ("{d}/out.jsonl", "already exists", "--force")),
    Case("identity-out-is-dir", lambda e: ["data", "identity", "--name", "Ada", "--author", "Me", "-o", str(e.d)],
         ("{d}", "is a directory")),
    Case("identity-out-parent-is-file", lambda e: ["data", "identity", "--name", "Ada", "--author", "Me", "-o", str(e.file("f", "x") / "o.jsonl")],
         ("{d}/f", "is a file")),
    Case("identity-repeat-zero", lambda e: ["data", "identity", "--name", "Ada", "--author", "Me", "-o", str(e.d / "o.jsonl"), "--repeat", "0"],
         ("--repeat",)),
    Case("identity-unknown-lang", lambda e: ["data", "identity", "--name", "Ada", "--author", "Me", "-o", str(e.d / "o.jsonl"), "--lang", "xx"],
         ("xx",)),
    Case("replace-out-exists", lambda e: ["data", "replace", str(e.jsonl("in.jsonl", [GOOD])), str(e.file("out.jsonl", "keep\n")), "--old-text", "Red", "--new-text", "Blue"],
         ("{d}/out.jsonl", "already exists")),
    Case("replace-old-text-nowhere", lambda e: ["data", "replace", str(e.jsonl("in.jsonl", [GOOD])), str(e.d / "o.jsonl"), "--old-text", "Zzzz", "--new-text", "X"],
         ("'Zzzz' occurs nowhere in {d}/in.jsonl: nothing to replace (check --old-text)",)),
    Case("replace-in-not-utf8", lambda e: ["data", "replace", str(e.file("in.jsonl", b"\xff\xfe\x00x")), str(e.d / "o.jsonl"), "--old-text", "a", "--new-text", "b"],
         ("{d}/in.jsonl", "UTF")),
    Case("replace-in-is-dir", lambda e: ["data", "replace", str(e.d), str(e.d / "o.jsonl"), "--old-text", "a", "--new-text", "b"],
         ("{d}", "is a directory")),
    Case("copy-cfg-unknown", lambda e: ["copy-cfg", "no_such_recipe", str(e.d)],
         ("no_such_recipe",)),
    Case("copy-cfg-into-file", lambda e: ["copy-cfg", "smollm2_135m_instruct_lora_identity", str(e.file("f", "x"))],
         ("{d}/f", "is a file")),
    Case("convert-cfg-missing", lambda e: ["convert-cfg", str(e.d / "x.py"), str(e.d / "x.yaml")],
         ("{d}/x.py",)),
    Case("eval-identity-json-is-dir", lambda e: ["eval", "identity", str(e.model), "--name", "Ada", "--author", "Me", "--json", str(e.d)],
         ("{d}", "is a directory")),
    Case("eval-retention-json-parent-is-file", lambda e: ["eval", "retention", str(e.model), "--base", str(e.model), "--json", str(e.file("f", "x") / "r.json")],
         ("{d}/f", "is a file")),
    # ---- model directories (chat MODEL, convert merge) -------------------------------------
    Case("model-missing", lambda e: e.chat(e.d / "nope"),
         ("{d}/nope", "does not exist")),
    Case("model-dir-without-config", lambda e: e.chat(_without(e.model_copy(), "config.json")),
         ("{d}/model", "config.json")),
    Case("model-config-not-json", lambda e: e.chat(_with_file(e.model_copy(), "config.json", "{not json")),
         ("{d}/model/config.json:1", "not valid JSON")),
    Case("model-unknown-type", lambda e: e.chat(_with_config(e.model_copy(), model_type="no_such_arch")),
         ("{d}/model/config.json", "no_such_arch")),
    Case("model-safetensors-garbage", lambda e: e.chat(_with_file(e.model_copy(), "model.safetensors", b"\x00garbage" * 64)),
         ("{d}/model/model.safetensors",)),
    Case("model-safetensors-truncated", lambda e: e.chat(_truncate(e.model_copy() / "model.safetensors")),
         ("{d}/model/model.safetensors",)),
    Case("model-safetensors-missing", lambda e: e.chat(_without(e.model_copy(), "model.safetensors")),
         ("{d}/model", "weights")),
    Case("model-wrong-shapes", lambda e: e.chat(_with_config(e.model_copy(), intermediate_size=96)),
         ("{d}/model", "shape")),
    Case("model-garbage-gguf", lambda e: e.chat(e.file("m.gguf", b"GGUF" + b"\xff" * 60)),
         ("{d}/m.gguf",)),
    Case("model-tokenizer-missing", lambda e: e.chat(_without(e.model_copy(), "tokenizer.json", "tokenizer_config.json")),
         ("{d}/model", "tokenizer")),
    # a damaged tokenizer.json: each parser error (JSON, missing key, wrong type, tokenizers'
    # own) and each command that reads the model's tokenizer
    Case("model-tokenizer-not-json", lambda e: e.chat(_with_file(e.model_copy(), "tokenizer.json", "{bad")),
         ("{d}/model", "no usable tokenizer")),
    Case("model-tokenizer-no-added-tokens", lambda e: e.chat(_with_file(e.model_copy(), "tokenizer.json", '{"model": {"type": "BPE"}}')),
         ("{d}/model", "no usable tokenizer")),
    Case("model-tokenizer-is-list", lambda e: e.chat(_with_file(e.model_copy(), "tokenizer.json", "[]")),
         ("{d}/model", "no usable tokenizer")),
    Case("model-tokenizer-no-vocab", lambda e: e.chat(_with_file(e.model_copy(), "tokenizer.json", '{"version": "1.0", "added_tokens": [], "model": {"type": "BPE"}}')),
         ("{d}/model", "no usable tokenizer")),
    Case("gguf-tokenizer-damaged", lambda e: ["convert", "gguf", str(_with_file(e.model_copy(), "tokenizer.json", "[]")), str(e.d / "m.gguf")],
         ("{d}/model", "no usable tokenizer")),
    Case("merge-gguf-tokenizer-damaged", lambda e: ["convert", "merge", str(_with_file(e.model_copy(), "tokenizer.json", "[]")), str(_adapter(e)), str(e.d / "out"), "--gguf"],
         ("{d}/model", "no usable tokenizer")),
    Case("train-tokenizer-damaged", lambda e: e.train(e.config(model={"path": str(_with_file(e.model_copy(), "tokenizer.json", "{bad"))})),
         ("{d}/model", "no usable tokenizer")),
    Case("adapter-without-config", lambda e: e.chat(e.model, "--adapter", str(e.file("ad/x", "x").parent)),
         ("{d}/ad", "adapter_config.json")),
    Case("adapter-corrupt-weights", lambda e: e.chat(e.model, "--adapter", str(_adapter(e))),
         ("{d}/adapter/adapter_model.safetensors",)),
    Case("merge-out-not-empty", lambda e: ["convert", "merge", str(e.model), str(_adapter(e)), str(e.file("out/x", "keep").parent)],
         ("{d}/out", "not empty")),
    Case("merge-adapter-missing", lambda e: ["convert", "merge", str(e.model), str(e.d / "no-adapter"), str(e.d / "out")],
         ("{d}/no-adapter",)),
    Case("merge-adapter-corrupt", lambda e: ["convert", "merge", str(e.model), str(_adapter(e)), str(e.d / "out")],
         ("{d}/adapter/adapter_model.safetensors",)),
    Case("merge-adapter-config-not-json", lambda e: ["convert", "merge", str(e.model), str(_with_file(_adapter(e), "adapter_config.json", "{")), str(e.d / "out")],
         ("{d}/adapter/adapter_config.json",)),
    Case("merge-out-inside-adapter", lambda e: ["convert", "merge", str(e.model), str(_adapter(e)), str(e.d / "adapter" / "merged")],
         ("{d}/adapter/merged", "inside")),
    Case("pth-to-hf-out-inside-checkpoint", lambda e: ["convert", "pth_to_hf", str(e.config()), str(_checkpoint(e)), str(e.d / "work/iter_1/hf")],
         ("{d}/work/iter_1/hf", "inside")),
    Case("gguf-out-inside-model", lambda e: ["convert", "gguf", str(e.model_copy()), str(e.d / "model" / "x.gguf")],
         ("{d}/model/x.gguf", "inside")),
    Case("train-work-dir-is-data-dir", lambda e: ["train", str(e.config()), "--work-dir", str(e.d)],
         ("{d}", "work dir holds the data file", "{d}/data.jsonl")),
    Case("train-work-dir-holds-data", lambda e: ["train", str(e.config(data_file=e.jsonl("data/sub/d.jsonl", [GOOD]))), "--work-dir", str(e.d / "data")],
         ("{d}/data", "work dir holds the data file")),
    Case("pth-to-hf-not-a-checkpoint", lambda e: ["convert", "pth_to_hf", str(e.config()), str(e.file("nock/x", "x").parent), str(e.d / "out")],
         ("{d}/nock", "checkpoint")),
    Case("pth-to-hf-adapter-damaged", lambda e: ["convert", "pth_to_hf", str(e.config()), str(_checkpoint(e)), str(e.d / "out")],
         ("{d}/work/iter_1/adapter/adapter_model.safetensors",)),
    Case("gguf-weights-damaged", lambda e: ["convert", "gguf", str(_with_file(e.model_copy(), "model.safetensors", b"\x00garbage" * 64)), str(e.d / "m.gguf")],
         ("{d}/model/model.safetensors",)),
    # ---- lone UTF-16 surrogates in JSON ("\\ud800"): refused where parsed, naming the field ---
    Case("data-lone-surrogate", lambda e: e.check(e.file("x.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a\\ud800", "output": "b"}\n')),
         ("{d}/x.jsonl:2", "field 'instruction' holds a lone surrogate (\\ud800)", "not valid Unicode")),
    Case("data-lone-surrogate-json", lambda e: e.check(e.file("x.json", '[{"instruction": "a", "output": "b"},\n {"messages": [{"role": "user", "content": "\\uDC00"}]}]')),
         ("{d}/x.json:2", "field 'messages[0].content'", "lone surrogate")),
    Case("data-show-lone-surrogate", lambda e: ["data", "show", str(e.file("x.jsonl", '{"instruction": "a\\ud800", "output": "b"}\n')), "--index", "0"],
         ("{d}/x.jsonl:1", "lone surrogate")),
    Case("data-replace-lone-surrogate", lambda e: ["data", "replace", str(e.file("x.jsonl", '{"instruction": "a\\ud800", "output": "b"}\n')), str(e.d / "o.jsonl"), "--old-text", "a", "--new-text", "b"],
         ("{d}/x.jsonl:1", "lone surrogate")),
    Case("train-lone-surrogate", lambda e: e.train(e.config(data_file=e.file("x.jsonl", '{"instruction": "a\\ud800", "output": "b"}\n'))),
         ("{d}/x.jsonl:1", "lone surrogate")),
    Case("eval-identity-questions-lone-surrogate", lambda e: ["eval", "identity", str(e.model), "--name", "Ada", "--author", "Me", "--questions", str(e.file("q.json", '[\n{"lang": "en", "question": "Who\\ud800?", "asks": "name"}]'))],
         ("{d}/q.json:2", "lone surrogate")),
    # ---- YAML aliases in configs: a recursive one was a RecursionError, a bomb took minutes --
    Case("config-recursive-alias", lambda e: e.train(e.file("rec.yaml", "a: &a [*a]\n")),
         ("{d}/rec.yaml:1", "YAML anchors/aliases are not supported in configs")),
    Case("config-alias-bomb", lambda e: e.train(e.file("bomb.yaml", 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)))),
         ("{d}/bomb.yaml:2", "YAML anchors/aliases are not supported")),
    # ---- not UTF-8: the same "not UTF-8 text ... save it as UTF-8" as every other reader -----
    Case("convert-cfg-latin1", lambda e: ["convert-cfg", str(e.file("x.py", "# Café\nlr = 2e-4\n".encode("latin-1"))), str(e.d / "x.yaml")],
         ("{d}/x.py", "not UTF-8 text", "save it as UTF-8")),
    Case("eval-identity-questions-latin1", lambda e: ["eval", "identity", str(e.model), "--name", "Ada", "--author", "Me", "--questions", str(e.file("q.jsonl", '[{"lang": "en", "question": "Qui êtes-vous?", "asks": "name"}]'.encode("latin-1")))],
         ("{d}/q.jsonl", "not UTF-8 text", "save it as UTF-8")),
    # ---- a boolean for a number field was read as 1 / 0 ------------------------------------
    Case("override-max-steps-true", lambda e: e.train(e.config(), "train.max_steps=true"),
         ("train.max_steps", "a number is needed here, not true")),
    Case("config-lora-r-false", lambda e: e.train(e.config(lora={"r": False})),
         ("{d}/cfg.yaml", "lora.r", "a number is needed here, not false")),
    # ---- a data file without a suffix was read as a config ("data.files is empty") ---------
    Case("data-check-no-suffix-empty", lambda e: e.check(e.file("data", "")),
         ("{d}/data: the file is empty", ".jsonl")),
    Case("data-check-no-suffix-blank", lambda e: e.check(e.file("data", " \n\t\n")),
         ("{d}/data: the file is empty",)),
    Case("data-show-no-suffix-empty", lambda e: ["data", "show", str(e.file("data", "")), "--model", str(e.model)],
         ("{d}/data: the file is empty",)),
    Case("data-check-no-suffix-jsonl", lambda e: e.check(e.jsonl("records", [GOOD])),
         ("{d}/records holds JSON records", "name it {d}/records.jsonl")),
    Case("data-check-no-suffix-json-list", lambda e: e.check(e.file("records", json.dumps([GOOD]))),
         ("{d}/records holds JSON records", "name it {d}/records.json")),
    # ---- an empty prompt was answered ----------------------------------------------------------
    Case("chat-prompt-empty", lambda e: ["chat", str(e.model), "--prompt", ""],
         ("--prompt (number 1) is empty",)),
    Case("chat-prompt-blank-second", lambda e: ["chat", str(e.model), "--prompt", "hi", "--prompt", " \n "],
         ("--prompt (number 2) is empty",)),
    # ---- an adapter that does not load on the base: peft's traceback ------------------------
    Case("chat-adapter-targets-absent", lambda e: e.chat(e.model, "--adapter", str(_real_adapter(e, target_modules=["nonexistent_proj"]))),
         ("{d}/adapter: this adapter does not load on this base model", "nonexistent_proj")),
    Case("chat-adapter-rank-differs", lambda e: e.chat(e.model, "--adapter", str(_real_adapter(e, r=8))),
         ("{d}/adapter: this adapter does not load on this base model", "size mismatch")),
    Case("merge-adapter-other-peft-type", lambda e: ["convert", "merge", str(e.model), str(_real_adapter(e, peft_type="PREFIX_TUNING")), str(e.d / "out")],
         ("{d}/adapter: this adapter does not load on this base model",)),
    # ---- a damaged config.json or a GGUF cut in its header was "no usable tokenizer" ---------
    Case("model-config-value-wrong-type", lambda e: e.chat(_with_config(e.model_copy(), hidden_size="abc")),
         ("{d}/model/config.json: not a valid llama config", "hidden_size")),
    Case("model-config-heads-do-not-divide", lambda e: e.chat(_with_config(e.model_copy(), num_attention_heads=5)),
         ("{d}/model/config.json: not a valid llama config", "attention heads")),
    Case("data-check-model-config-damaged", lambda e: ["data", "check", str(e.jsonl("x.jsonl", [GOOD])), "--model", str(_with_config(e.model_copy(), hidden_size="abc"))],
         ("{d}/model/config.json: not a valid llama config",)),
    Case("model-gguf-cut-in-header", lambda e: e.chat(e.file("m.gguf", b"GGUF\x03\x00\x00\x00" + b"\x01" + b"\x00" * 7 + b"\x01")),
         ("{d}/m.gguf: not a readable GGUF file",)),
    # ---- a key twice in one record: JSON kept the last without a word -------------------------
    Case("data-duplicate-key-jsonl", lambda e: e.check(e.file("x.jsonl", '{"instruction": "Name a colour.", "output": "Red.", "instruction": "Name a fruit."}\n')),
         ("{d}/x.jsonl:1: key 'instruction' appears twice in one object",)),
    Case("data-duplicate-key-json", lambda e: e.check(e.file("x.json", '[' + json.dumps(GOOD) + ',\n{"messages": [{"role": "user", "content": "a", "content": "b"}]}]')),
         ("{d}/x.json:2: key 'content' appears twice",)),
    Case("replace-duplicate-key", lambda e: ["data", "replace", str(e.file("in.jsonl", '{"output": "a", "output": "b", "instruction": "q"}\n')), str(e.d / "o.jsonl"), "--old-text", "a", "--new-text", "b"],
         ("{d}/in.jsonl:1: key 'output' appears twice",)),
    # ---- arguments that are not UTF-8 (lone surrogates): the tokenizer's TypeError -----------
    Case("chat-prompt-not-utf8", lambda e: ["chat", str(e.model), "--prompt", "caf\udce9"],
         ("--prompt (number 1) is not UTF-8 text (\\udce9)",)),
    Case("chat-system-not-utf8", lambda e: e.chat(e.model, "--system", "caf\udce9"),
         ("--system is not UTF-8 text",)),
    Case("serve-system-not-utf8", lambda e: ["serve", str(e.model), "--system", "caf\udce9"],
         ("--system is not UTF-8 text",)),
    Case("webui-system-not-utf8", lambda e: ["webui", str(e.model), "--system", "caf\udce9"],
         ("--system is not UTF-8 text",)),
    # ---- a damaged run config in the work dir: a YAML or UnicodeDecodeError traceback --------
    Case("work-dir-config-not-yaml", lambda e: e.train(e.config()) if e.file("work/config.yaml", "model: [") else [],
         ("{d}/work/config.yaml: the run config of this work dir is damaged (",)),
    Case("work-dir-config-not-utf8", lambda e: e.train(e.config()) if e.file("work/config.yaml", b"\xff\xfe\x00garbage") else [],
         ("{d}/work/config.yaml: the run config of this work dir is damaged (UnicodeDecodeError)",)),
    Case("work-dir-config-a-list", lambda e: e.train(e.config()) if e.file("work/config.yaml", "- a\n") else [],
         ("{d}/work/config.yaml: the run config of this work dir is damaged (list)",)),
    # ---- an API key that is empty (an unset shell variable) or holds spaces ------------------
    Case("serve-api-key-empty", lambda e: ["serve", str(e.model), "--api-key", ""],
         ("--api-key (or $TUNESMITH_API_KEY) is empty or holds spaces",)),
    Case("serve-api-key-spaces", lambda e: ["serve", str(e.model), "--api-key", " secret "],
         ("--api-key (or $TUNESMITH_API_KEY) is empty or holds spaces",)),
    Case("pth-to-hf-out-is-file", lambda e: ["convert", "pth_to_hf", str(e.config()), str(_checkpoint(e)), str(e.file("out", "x"))],
         ("{d}/out", "already exists")),
]  # fmt: skip


def _real_adapter(e: Env, **config) -> Path:
    """A LoRA (r 4 on q_proj) saved by peft for the shared tiny model, its config changed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(e.model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(e.d / "adapter")
    _set_json(e.d / "adapter" / "adapter_config.json", **config)
    return e.d / "adapter"


def _without(model: Path, *names: str) -> Path:
    for name in names:
        (model / name).unlink()
    return model


def _with_file(model: Path, name: str, content: str | bytes) -> Path:
    path = model / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return model


def _with_config(model: Path, **values) -> Path:
    _set_json(model / "config.json", **values)
    return model


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.parent


def _different_run(e: Env, guard: bool = False) -> list[str]:
    """W holds a run (config + guard files) made with lr 1e-3; this one asks for lr 5e-4."""
    guard_part = {"enabled": True} if guard else {"enabled": False}
    old = e.config("old.yaml", train={"lr": 1e-3}, guard=guard_part)
    from tunesmith.config.loader import dump_config, load_config

    cfg = load_config(str(old))
    cfg = cfg.model_copy(
        update={"runtime": cfg.runtime.model_copy(update={"work_dir": str(e.d / "work")})}
    )
    e.file("work/config.yaml", dump_config(cfg))
    if guard:
        e.file("work/guard/general_mix.jsonl", "".join(json.dumps(GOOD) + "\n" for _ in range(6)))
        e.file("work/guard/answers.jsonl", json.dumps(GOOD) + "\n")
        e.file("work/guard/key.json", json.dumps({"model": "another"}))
    return e.train(e.config(train={"lr": 5e-4}, guard=guard_part))


def _same_run_with_checkpoint(e: Env) -> list[str]:
    from tunesmith.config.loader import dump_config, load_config

    config = e.config()
    cfg = load_config(str(config))
    cfg = cfg.model_copy(
        update={"runtime": cfg.runtime.model_copy(update={"work_dir": str(e.d / "work")})}
    )
    e.file("work/config.yaml", dump_config(cfg))
    _checkpoint(e)
    return e.train(config)


def _no_exec(*args):
    raise AssertionError(f"a bad input reached exec: {args}")


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` -> its content hash ("dir" for a dir; its mode if unreadable)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = "dir"
            continue
        try:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError:
            out[rel] = f"unreadable, mode {path.stat().st_mode:o}"
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case, tmp_path, tiny_model_dir, capsys, monkeypatch):
    if case.needs_non_root and ROOT:
        pytest.skip("permission bits do not stop root")
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))  # never the user's cache
    monkeypatch.setattr(os, "execv", _no_exec)  # `webui` would replace the test process
    monkeypatch.setattr("tunesmith.infer.server.serve", _no_exec)  # `serve` would never return
    model_before = _snapshot(tiny_model_dir)
    argv = case.make(Env(d, tiny_model_dir))
    before = _snapshot(d)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    after = _snapshot(d)
    for path in d.rglob("*"):  # let pytest clean up what the case locked
        path.chmod(0o700)
    captured = capsys.readouterr()
    err = captured.out + captured.err  # `data check` lists the bad records on stdout
    assert code == 2, err
    assert "Traceback" not in err
    for expected in case.expect:
        assert expected.format(d=d, model=tiny_model_dir) in err, err
    assert after == before
    assert _snapshot(tiny_model_dir) == model_before


def test_the_corpus_is_large_and_ids_unique():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
