"""The workflow's report.md: both identity rates, the failed checks, the misses (no model)."""

from __future__ import annotations

from tunesmith.eval import identity, retention
from tunesmith.eval.identity import IdentityQuestion, score_answer
from tunesmith.eval.report import identity_text, workflow_markdown

Q_EN = IdentityQuestion("en", "What name do you go by?", "name")
Q_ZH = IdentityQuestion("zh", "请问该如何称呼您？", "name")


def _identity(answers):
    scored = [score_answer(q, a, "星火", "青禾实验室", ("SmolLM",), f) for q, a, f in answers]
    return identity.summarize(scored, "星火", "青禾实验室", ("SmolLM",))


def _report():
    base = _identity([(Q_EN, "I am SmolLM.", True), (Q_ZH, "请问该如何称呼您？", False)])
    tuned = _identity(
        [(Q_EN, "I'm 星火, made by 青禾实验室.", True), (Q_ZH, "I'm 星火, here to help.", True)]
    )
    prompts = {"facts": [{"prompt": "2+2?", "answers": ["4"]}], "general": ["Hi?"]}
    measured = {"facts": ["4."], "general": ["Hello."], "general_logprobs": [(-1.0, 2)]}
    compared = retention.compare(measured, measured, prompts, "星火", "青禾实验室")
    return {
        "run": {"name": "星火", "author": "青禾实验室", "model": "m"},
        "system_prompt": "You are 星火.",
        "merged_model": "w/merged",
        "seconds": {"data": 0.0, "train": 10.0},
        "identity": {"base": base, "tuned": tuned},
        "retention": compared,
        "base_leakage": compared["leakage"],
        "commands": {"chat": "tunesmith chat w", "webui": "tunesmith webui w", "serve": "s"},
    }


def test_report_shows_strict_and_keyword_rates_and_each_failed_check():
    md = workflow_markdown(_report())
    assert "| identity (every check holds) | 0% (0/2) | 50% (1/2) |" in md
    assert "| keyword hit rate (name / author stated) | 0% (0/2) | 100% (2/2) |" in md
    assert "|   zh | 0% (0/1) | 100% (1/1) |" in md  # keyword, zh
    assert "|   answers failing: language | 0 | 1 |" in md
    assert "|   answers failing: repetition | 1 | 0 |" in md  # the echo
    assert "|   answers failing: stopped | 1 | 0 |" in md
    assert "- 请问该如何称呼您？ -> I'm 星火, here to help. [language: not answered in zh]" in md


def test_eval_text_lists_why_each_answer_missed():
    text = identity_text(_report()["identity"]["tuned"])
    assert "identity rate (every check) 50% (1/2)" in text
    assert "keyword hit rate 100% (2/2)" in text
    assert "language: not answered in zh" in text
