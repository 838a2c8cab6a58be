"""Scoring of identity and retention answers, on hand-written answers (no model)."""

from __future__ import annotations

import json

import pytest

from tunesmith.errors import UserError
from tunesmith.eval import identity, retention
from tunesmith.eval.identity import IdentityQuestion, claimed_old, mentions, score_answer

OLD = ("SmolLM", "Hugging Face")
NAME_Q = IdentityQuestion("en", "What name do you go by?", "name")
AUTHOR_Q = IdentityQuestion("en", "Who trained this assistant?", "author")
BOTH_Q_ZH = IdentityQuestion("zh", "你叫什么，又是谁开发的？", "both")


def test_mentions_is_case_and_space_insensitive():
    assert mentions("I am ADA, made by tunesmith  lab.", "Tunesmith Lab")
    assert mentions("我是Ada，由Tunesmith Lab开发。", "ada")


def test_mentions_needs_whole_words_for_latin_names():
    assert not mentions("I can adapt to any task.", "Ada")
    assert not mentions("There are 14 of them.", "4")
    assert mentions("The answer is 4.", "4")


def test_english_answer_with_new_name_is_a_hit():
    scored = score_answer(NAME_Q, "I'm Ada, your assistant.", "Ada", "Tunesmith Lab", OLD)
    assert scored["hit"] and scored["name_ok"] and not scored["old_claimed"]


def test_answer_claiming_old_name_is_a_miss_even_with_new_name():
    scored = score_answer(NAME_Q, "I am Ada, also known as SmolLM.", "Ada", "Tunesmith Lab", OLD)
    assert not scored["hit"]
    assert scored["old_claimed"] == ["SmolLM"]


def test_denying_the_old_identity_is_not_a_claim():
    assert claimed_old("No, I'm not SmolLM. I am Ada.", OLD) == []
    assert claimed_old("I wasn't built by Hugging Face.", OLD) == []
    assert claimed_old("我不是SmolLM，我是Ada。", OLD) == []
    assert claimed_old("我是SmolLM，由Hugging Face训练。", OLD) == ["SmolLM", "Hugging Face"]


def test_author_question_needs_the_author_not_the_name():
    assert score_answer(AUTHOR_Q, "Tunesmith Lab trained me.", "Ada", "Tunesmith Lab", OLD)["hit"]
    assert not score_answer(AUTHOR_Q, "I am Ada.", "Ada", "Tunesmith Lab", OLD)["hit"]


def test_chinese_answer_needs_name_and_author_when_both_asked():
    full = score_answer(
        BOTH_Q_ZH, "我叫Ada，是由Tunesmith Lab开发的。", "Ada", "Tunesmith Lab", OLD
    )
    half = score_answer(BOTH_Q_ZH, "我叫Ada。", "Ada", "Tunesmith Lab", OLD)
    assert full["hit"] and not half["hit"]
    assert half["name_ok"] and not half["author_ok"]


def test_chinese_name_is_matched_in_chinese_text():
    q = IdentityQuestion("zh", "请问该如何称呼您？", "name")
    assert score_answer(q, "您可以叫我小智。", "小智", "星河实验室", OLD)["hit"]
    assert not score_answer(q, "您可以叫我助手。", "小智", "星河实验室", OLD)["hit"]


def test_summary_reports_rates_per_language():
    scored = [
        score_answer(NAME_Q, "I'm Ada.", "Ada", "Lab", OLD),
        score_answer(NAME_Q, "I'm SmolLM.", "Ada", "Lab", OLD),
        score_answer(BOTH_Q_ZH, "我叫Ada，由Lab开发。", "Ada", "Lab", OLD),
    ]
    report = identity.summarize(scored, "Ada", "Lab", OLD)
    assert report["hit_rate"] == pytest.approx(2 / 3)
    assert report["by_lang"]["en"] == {"questions": 2, "hits": 1, "hit_rate": 0.5}
    assert report["by_lang"]["zh"]["hit_rate"] == 1.0
    assert report["old_claims"] == 1
    json.dumps(report)  # the report is plain JSON


def test_shipped_questions_cover_both_languages():
    questions = identity.load_questions()
    for lang in ("en", "zh"):
        assert len([q for q in questions if q.lang == lang]) >= 20
    assert {q.asks for q in questions} == {"name", "author", "both"}


def test_bad_questions_file_names_the_entry(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"questions": [{"question": "Who?", "asks": "age"}]}))
    with pytest.raises(UserError, match=r"questions\[0\]\.asks"):
        identity.load_questions(path)


def test_keyword_answer_is_correct_only_as_a_whole_word():
    assert retention.is_correct("The capital of France is Paris.", ["paris"])
    assert not retention.is_correct("A year has 365 days, so 312 months.", ["12", "twelve"])
    assert retention.is_correct("Use `len()` for that.", ["len"])


def _measured(facts, general, logprobs):
    return {"facts": facts, "general": general, "general_logprobs": logprobs}


def test_retention_lists_facts_the_tuned_model_lost():
    prompts = {
        "facts": [
            {"prompt": "Capital of France?", "answers": ["paris"]},
            {"prompt": "2 plus 2?", "answers": ["4"]},
            {"prompt": "Capital of Italy?", "answers": ["rome"]},
        ],
        "general": ["Describe a cat."],
    }
    base = _measured(["Paris.", "It is 4.", "Milan."], ["A cat is small."], [(-2.0, 4)])
    tuned = _measured(["Paris. I am Ada.", "I am Ada.", "Rome."], ["A cat is small."], [(-4.0, 4)])
    report = retention.compare(base, tuned, prompts, name="Ada", author="Lab")
    facts = report["facts"]
    assert (facts["base_correct"], facts["kept"], facts["tuned_correct"]) == (2, 1, 2)
    assert facts["retention"] == 0.5
    assert [f["prompt"] for f in facts["lost"]] == ["2 plus 2?"]
    assert report["drift"]["delta"] == pytest.approx(-0.5)
    assert report["leakage"]["leaked"] == 2 and report["leakage"]["answers"] == 4


def test_shipped_retention_prompts_are_disjoint_from_guard_prompts():
    from tunesmith.data.general import load_general_prompts

    prompts = retention.load_prompts()
    evaluated = {f["prompt"] for f in prompts["facts"]} | set(prompts["general"])
    assert evaluated.isdisjoint(load_general_prompts())
