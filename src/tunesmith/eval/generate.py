"""Batched greedy answers and answer log-likelihoods, the two things every eval asks a model.

The infer Engine answers one conversation at a time with streaming; an eval asks
dozens of short questions, so it batches them (left padding) and decodes greedily.
Prompts are rendered with the tokenizer's own chat template: after an identity
fine-tune that is the template the merged model ships with, so the eval sees what
a vanilla client sees.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text


@dataclass
class LoadedModel:
    model: object  # PreTrainedModel (or PeftModel)
    tokenizer: object  # PreTrainedTokenizerBase
    name: str
    # Identifies the weights on disk (see `weights_key`); answers are cached under it.
    cache_key: str | None = None


def weights_key(*paths: str | Path) -> str | None:
    """A key that changes whenever a weight or tokenizer file changes (path, size, mtime)."""
    parts = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            return None
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in (".safetensors", ".json", ".jinja", ".bin"):
                stat = f.stat()
                parts.append(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20] if parts else None


class AnswerCache:
    """Greedy answers already computed for given weights, in ~/.cache/tunesmith/answers/.

    Greedy decoding is deterministic for fixed weights, prompt and settings, so a
    base model is asked each question once across runs (its answers feed the
    identity and retention evals and the forgetting guard of every run)."""

    def __init__(self, key: str | None):
        from tunesmith.model.embedded import cache_root

        # TUNESMITH_ANSWER_CACHE: another directory, or 0 to turn the cache off
        where = os.environ.get("TUNESMITH_ANSWER_CACHE") or str(cache_root() / "answers")
        self.path = Path(where) / f"{key}.json" if key and where != "0" else None
        self.entries = {}
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self.entries = {}

    @staticmethod
    def entry(prompt: str, system: str | None, max_new_tokens: int) -> str:
        return json.dumps([prompt, system, max_new_tokens], ensure_ascii=False)

    def get(self, entry: str) -> tuple[str, bool] | None:
        found = self.entries.get(entry)
        return (found[0], found[1]) if found else None

    def save(self, new: dict[str, tuple[str, bool]]) -> None:
        if not self.path or not new:
            return
        self.entries.update({k: list(v) for k, v in new.items()})
        atomic_write_text(self.path, json.dumps(self.entries, ensure_ascii=False))


def load_for_eval(model: str, adapter: str | None = None, device: str = "auto") -> LoadedModel:
    """Load MODEL (alias, dir, hub id in the local cache) and optionally a PEFT adapter on top."""
    from tunesmith.config.schema import ModelConfig
    from tunesmith.model.load import load_model, load_tokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # An exported adapter dir carries the tokenizer (and chat template) it was trained with.
    tok_source = (
        adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else model
    )
    if tok_source == adapter:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = load_tokenizer(tok_source)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{tok_source} has no chat template: it is not a chat model; "
            "evaluate a chat (instruct) model or export one with a template"
        )
    net = load_model(ModelConfig(path=model), device=device)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise UserError(f"{adapter} holds no adapter_config.json: pass a PEFT adapter dir")
        net = PeftModel.from_pretrained(net, adapter)
    net.eval()
    from tunesmith.model.resolve import resolve_model_path

    key = weights_key(resolve_model_path(model), *([adapter] if adapter else []))
    param = next(net.parameters())
    key = key and f"{key}-{param.device.type}-{str(param.dtype).removeprefix('torch.')}"
    return LoadedModel(net, tokenizer, adapter or model, key)


def _messages(prompt: str, system: str | None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def _render(tokenizer, prompt: str, system: str | None) -> str:
    return tokenizer.apply_chat_template(
        _messages(prompt, system), tokenize=False, add_generation_prompt=True
    )


def _stop_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return [i for i in ids if i is not None]


def greedy_answers(
    lm: LoadedModel,
    prompts: Sequence[str],
    system: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    desc: str = "answering",
) -> list[str]:
    """Greedy answer to each single-turn prompt, in order."""
    return [
        text for text, _ in greedy_generate(lm, prompts, system, max_new_tokens, batch_size, desc)
    ]


def greedy_generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    system: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    desc: str = "answering",
) -> list[tuple[str, bool]]:
    """(answer, finished) per prompt; finished = it ended with a stop token, not the length limit.

    Answers already in the `AnswerCache` of these weights are not generated again."""
    cache = AnswerCache(lm.cache_key)
    entries = [AnswerCache.entry(p, system, max_new_tokens) for p in prompts]
    answers = [cache.get(e) for e in entries]
    missing = [i for i, a in enumerate(answers) if a is None]
    if missing:
        fresh = _generate(
            lm, [prompts[i] for i in missing], system, max_new_tokens, batch_size, desc
        )
        for i, answer in zip(missing, fresh, strict=True):
            answers[i] = answer
        cache.save({entries[i]: answers[i] for i in missing})
    return answers


@torch.inference_mode()
def _generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    system: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    desc: str = "answering",
) -> list[tuple[str, bool]]:
    tokenizer, model = lm.tokenizer, lm.model
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    device = next(model.parameters()).device
    stop = _stop_ids(model, tokenizer)
    # Longest first keeps padding small within a batch.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[tuple[str, bool]] = [("", False)] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="q", leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            texts = [_render(tokenizer, prompts[i], system) for i in idx]
            rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            width = max(map(len, rows))
            input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
            attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=pad_id,
            )
            for row, i in zip(out[:, width:].tolist(), idx, strict=True):
                end = next((k for k, t in enumerate(row) if t in stop), None)
                text = tokenizer.decode(row[:end], skip_special_tokens=True).strip()
                answers[i] = (text, end is not None)
            bar.update(len(idx))
    return answers


@torch.inference_mode()
def answer_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    system: str | None = None,
    desc: str = "scoring",
) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each answer given its prompt."""
    tokenizer, model = lm.tokenizer, lm.model
    device = next(model.parameters()).device
    results = []
    for prompt, answer in tqdm(
        list(zip(prompts, answers, strict=True)), desc=desc, unit="q", leave=False
    ):
        prefix = tokenizer(_render(tokenizer, prompt, system), add_special_tokens=False)[
            "input_ids"
        ]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not target:
            results.append((0.0, 0))
            continue
        ids = torch.tensor([prefix + target], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prefix) - 1 : -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(1, torch.tensor(target, device=device)[:, None])
        results.append((float(picked.sum()), len(target)))
    return results


def fit_threads_to_load() -> int:
    """One torch thread on a small CPU machine where other processes are already busy.

    Two OpenMP threads fighting other processes for two cores spin at every barrier:
    measured here, 16 greedy answers took 90 s with 2 threads and 11 s with 1 on a
    busy 2-core machine, and LoRA steps ran 8x slower. On an idle machine torch's
    default is kept."""
    cores = os.cpu_count() or 1
    if torch.cuda.is_available() or cores > 4:
        return torch.get_num_threads()
    if os.getloadavg()[0] >= cores / 2:
        torch.set_num_threads(1)
    return torch.get_num_threads()
