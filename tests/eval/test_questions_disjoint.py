"""The held-out identity questions share no wording with the generated training data."""

from __future__ import annotations

import unicodedata

from tunesmith.data.general import load_general_prompts
from tunesmith.data.identity import generate_identity, identity_questions
from tunesmith.eval.identity import load_questions
from tunesmith.eval.retention import load_prompts


def _normalise(text: str) -> str:
    """Case-folded, without punctuation, symbols or spaces."""
    return "".join(
        c
        for c in unicodedata.normalize("NFKC", text).casefold()
        if unicodedata.category(c)[0] not in "PZS"
    )


def _training_questions() -> set[str]:
    records = generate_identity("Ada", "Tunesmith Lab", langs=("zh", "en"))
    asked = {turn["input"] for r in records for turn in r["conversation"]}
    templates = set(identity_questions("zh")) | set(identity_questions("en"))
    return asked | templates


def test_eval_questions_are_not_training_questions():
    held_out = {q.question for q in load_questions()}
    assert held_out.isdisjoint(_training_questions())


def test_eval_questions_differ_after_normalising_case_and_punctuation():
    held_out = {_normalise(q.question) for q in load_questions()}
    training = {_normalise(q) for q in _training_questions()}
    assert held_out.isdisjoint(training)


def test_no_eval_question_contains_a_training_question():
    # greetings like "hi" / "嗨" are too short to count as shared wording
    training = {t for t in (_normalise(q) for q in _training_questions()) if len(t) >= 6}
    contained = [
        (q.question, t)
        for q in load_questions()
        for t in training
        if t in _normalise(q.question) or _normalise(q.question) in t
    ]
    assert contained == []


def test_normalising_ignores_case_and_punctuation():
    assert _normalise("Who are you?") == _normalise("who  are YOU")
    assert _normalise("你是谁？") == _normalise("你是谁?")


def _retention_prompts() -> set[str]:
    prompts = load_prompts()
    return {f["prompt"] for f in prompts["facts"]} | set(prompts["general"])


def test_guard_prompts_are_not_eval_prompts():
    # the forgetting guard trains on these; the retention and leakage evals ask the others
    guard = {_normalise(p) for p in load_general_prompts()}
    held_out = {_normalise(p) for p in _retention_prompts()}
    held_out |= {_normalise(q.question) for q in load_questions()}
    assert guard.isdisjoint(held_out)
    contained = [(g, h) for g in guard for h in held_out if len(g) >= 6 and (g in h or h in g)]
    assert contained == []
