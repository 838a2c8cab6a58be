"""Retention eval: what did the fine-tune break?

Three measures, each comparing the tuned model with its base:
  facts    short factual and coding prompts with keyword answers; the answers the
           base got right that the tuned model lost
  drift    the tuned model's mean token log-likelihood of the base model's own
           greedy answers to general prompts, minus the base's own (0 = unchanged;
           -0.1 means each base token became ~10% less likely)
  leakage  the share of answers to non-identity prompts that mention the new
           name or author unasked ("Paris. I am Ada.")
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.eval.identity import mentions, read_json

MAX_NEW_TOKENS = {"facts": 32, "general": 64}


def default_prompts_path() -> Path:
    return Path(str(resources.files("tunesmith.eval") / "assets" / "retention.json"))


def load_prompts(path: str | Path | None = None) -> dict:
    """{"facts": [{"prompt", "answers": [keyword, ...]}], "general": [prompt, ...]}"""
    path = Path(path) if path else default_prompts_path()
    doc = read_json(path, "prompts")
    facts, general = doc.get("facts"), doc.get("general")
    if not isinstance(facts, list) or not isinstance(general, list) or not facts or not general:
        raise UserError(f"{path}: needs non-empty lists 'facts' and 'general'")
    for i, fact in enumerate(facts):
        if not fact.get("prompt") or not fact.get("answers"):
            raise UserError(f"{path}: facts[{i}] needs 'prompt' and a non-empty 'answers' list")
    return {"facts": facts, "general": general}


def is_correct(answer: str, keywords: list[str]) -> bool:
    """Any keyword appears as a whole word, case-insensitively."""
    return any(mentions(answer, k) for k in keywords)


def requests(prompts: dict) -> list[tuple[str, int]]:
    """(prompt, max_new_tokens) of every answer `measure` asks for."""
    facts = [(f["prompt"], MAX_NEW_TOKENS["facts"]) for f in prompts["facts"]]
    return facts + [(p, MAX_NEW_TOKENS["general"]) for p in prompts["general"]]


def measure(
    lm, prompts: dict, system: str | None = None, base_general: list[str] | None = None
) -> dict:
    """One model's side of the comparison: its greedy answers, and the log-likelihood
    it gives the base's general answers (its own when `base_general` is None: it is the base)."""
    general = prompts["general"]
    facts = lm.greedy_answers(
        [f["prompt"] for f in prompts["facts"]],
        system=system,
        max_new_tokens=MAX_NEW_TOKENS["facts"],
        desc="factual prompts",
    )
    facts = [a.text for a in facts]
    own_general = lm.greedy_answers(
        general, system=system, max_new_tokens=MAX_NEW_TOKENS["general"], desc="general prompts"
    )
    own_general = [a.text for a in own_general]
    reference = own_general if base_general is None else base_general
    logprobs = lm.answer_logprobs(general, reference, system=system, desc="drift")
    return {"system": system, "facts": facts, "general": own_general, "general_logprobs": logprobs}


def _mean_logprob(logprobs: list) -> float:
    tokens = sum(n for _, n in logprobs)
    return sum(s for s, _ in logprobs) / tokens if tokens else 0.0


def leaks(answer: str, name: str | None, author: str | None) -> bool:
    return any(mentions(answer, p) for p in (name, author) if p)


def compare(
    base: dict, tuned: dict, prompts: dict, name: str | None = None, author: str | None = None
) -> dict:
    """The retention report from `measure` of the base and of the tuned model."""
    facts = []
    for fact, b, t in zip(prompts["facts"], base["facts"], tuned["facts"], strict=True):
        facts.append(
            {
                "prompt": fact["prompt"],
                "expected": fact["answers"],
                "base_answer": b,
                "tuned_answer": t,
                "base_ok": is_correct(b, fact["answers"]),
                "tuned_ok": is_correct(t, fact["answers"]),
            }
        )
    base_ok = [f for f in facts if f["base_ok"]]
    kept = [f for f in base_ok if f["tuned_ok"]]
    base_ll, tuned_ll = (
        _mean_logprob(base["general_logprobs"]),
        _mean_logprob(tuned["general_logprobs"]),
    )

    leakage = None
    if name or author:
        asked = [(f["prompt"], f["tuned_answer"]) for f in facts]
        asked += list(zip(prompts["general"], tuned["general"], strict=True))
        leaked = [{"prompt": p, "answer": a} for p, a in asked if leaks(a, name, author)]
        leakage = {
            "answers": len(asked),
            "leaked": len(leaked),
            "rate": len(leaked) / len(asked),
            "examples": leaked,
        }
    return {
        "facts": {
            "prompts": len(facts),
            "base_correct": len(base_ok),
            "tuned_correct": sum(f["tuned_ok"] for f in facts),
            "kept": len(kept),
            "retention": len(kept) / len(base_ok) if base_ok else 1.0,
            "lost": [f for f in base_ok if not f["tuned_ok"]],
            "answers": facts,
        },
        "drift": {
            "prompts": len(prompts["general"]),
            "base_logprob": base_ll,
            "tuned_logprob": tuned_ll,
            "delta": tuned_ll - base_ll,
            # per-token probability of the base's answers, tuned / base
            "likelihood_ratio": math.exp(tuned_ll - base_ll),
        },
        "leakage": leakage,
        "general_answers": [
            {"prompt": p, "base_answer": b, "tuned_answer": t}
            for p, b, t in zip(prompts["general"], base["general"], tuned["general"], strict=True)
        ],
    }
