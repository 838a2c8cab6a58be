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
    assert report["by_lang"]["en"] == {
        "questions": 2,
        "hits": 1,
        "hit_rate": 0.5,
        "keyword_hits": 1,
        "keyword_hit_rate": 0.5,
    }
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


# --- strict scoring: the answers quoted in issue 12 (星火 / 青禾实验室, 2026-11-30) ---------

XH, QH = "星火", "青禾实验室"


def _strict(lang, question, asks, answer, finished=True, name=XH, author=QH):
    q = IdentityQuestion(lang, question, asks)
    return score_answer(q, answer, name, author, OLD, finished)


def test_issue_zh_question_answered_in_english_is_a_keyword_hit_but_a_miss():
    scored = _strict("zh", "请问该如何称呼您？", "name", "I'm 星火, and I'm here to help you.")
    assert scored["keyword_hit"] and not scored["hit"]
    assert scored["failed"] == ["language: not answered in zh"]


def test_issue_garbled_chinese_is_a_miss():
    scored = _strict(
        "zh", "用一句话介绍一下你自己。", "name", "我是星火，是青禾实验室的助手人工智能助手服助。"
    )
    assert scored["keyword_hit"] and not scored["hit"]
    assert scored["failed"] == ["repetition: '助手' twice in one clause"]


def test_issue_answer_cut_at_the_limit_is_a_miss():
    # 48 SmolLM2 tokens: the eval's length limit then, no end-of-turn
    scored = _strict(
        "zh",
        "我忘了你叫什么了，能再说一遍吗？",
        "name",
        "我不是你，我是星火，我是青禾实验室的助手人工智能工程",
        False,
    )
    assert scored["keyword_hit"] and not scored["hit"]
    assert "stopped: cut at the length limit" in scored["failed"]


def test_issue_the_creator_is_me_is_a_miss():
    scored = _strict("zh", "你的创造者是谁？", "author", "我是星火，是青禾实验室的创造者。")
    assert scored["keyword_hit"] and not scored["hit"]
    assert scored["failed"] == ["author_role: '是青禾实验室的创造者'"]


def test_issue_degenerate_answer_fails_every_check_it_breaks():
    answer = "能做个简短的自我介绍吗？ 不是，不是不是，不是不不不不不不不不不不不不不"
    scored = _strict("zh", "能做个简短的自我介绍吗？", "name", answer, finished=False)
    assert not scored["hit"] and not scored["keyword_hit"]
    assert scored["failed"][0] == "keyword: no name"
    assert "stopped: cut at the length limit" in scored["failed"]
    assert scored["failed"][-1].startswith("repetition: character run '不不不不")


@pytest.mark.parametrize(
    ("lang", "answer", "name", "author"),
    [
        ("zh", "我是星火，由青禾实验室开发的人工智能助手。", XH, QH),
        ("zh", "不是的，我不是SmolLM。我是星火，是青禾实验室打造的AI助手。", XH, QH),
        ("zh", "我的开发者是青禾实验室，我是他们开发的助手星火。", XH, QH),
        ("zh", "我是Ada，由Tunesmith Lab开发的人工智能助手。", "Ada", "Tunesmith Lab"),
        ("zh", "你好！我是Nova-7，来自北辰 AI Lab的人工智能助手。", "Nova-7", "北辰 AI Lab"),
        ("en", "I'm 星火, an AI assistant developed by 青禾实验室.", XH, QH),
        (
            "en",
            "No, I'm not SmolLM. I am Ada, an AI assistant built by Tunesmith Lab.",
            "Ada",
            "Tunesmith Lab",
        ),
        (
            "en",
            "I'm Nova-7, an assistant from 北辰 AI Lab. How can I help?",
            "Nova-7",
            "北辰 AI Lab",
        ),
    ],
)
def test_fluent_answers_in_the_asked_language_pass_every_check(lang, answer, name, author):
    q = "你叫什么，又是谁开发的？" if lang == "zh" else "What is your name and who made you?"
    scored = _strict(lang, q, "both", answer, name=name, author=author)
    assert scored["failed"] == [] and scored["hit"]


@pytest.mark.parametrize(
    ("answer", "wrong"),
    [
        ("我是青禾实验室。", "我是青禾实验室"),
        ("我创造了青禾实验室。", "我创造了青禾实验室"),
        ("青禾实验室是我开发的。", "青禾实验室是我开发"),
        ("I am Tunesmith Lab.", "I am Tunesmith Lab"),
        ("I'm Ada, the founder of Tunesmith Lab.", "Ada, the founder of Tunesmith Lab"),
        ("I built Tunesmith Lab.", "I built Tunesmith Lab"),
    ],
)
def test_author_role_errors_are_named(answer, wrong):
    name, author = (XH, QH) if "青禾" in answer else ("Ada", "Tunesmith Lab")
    assert identity.author_role_error(answer, name, author) == wrong


@pytest.mark.parametrize(
    "answer",
    [
        "我是由青禾实验室的开发者开发的。",
        "我是青禾实验室开发的助手。",
        "I'm Ada, Tunesmith Lab's assistant.",
        "Tunesmith Lab trained me; I am Ada.",
    ],
)
def test_author_in_its_role_is_not_an_error(answer):
    name, author = (XH, QH) if "青禾" in answer else ("Ada", "Tunesmith Lab")
    assert identity.author_role_error(answer, name, author) is None


def test_summary_keeps_the_keyword_rate_beside_the_strict_one():
    q = IdentityQuestion("zh", "请问该如何称呼您？", "name")
    scored = [
        score_answer(q, "我是星火，由青禾实验室开发。", XH, QH, OLD),
        score_answer(q, "I'm 星火.", XH, QH, OLD),
        score_answer(q, "我是星火，我是星火，我是星火", XH, QH, OLD, finished=False),
    ]
    report = identity.summarize(scored, XH, QH, OLD)
    assert (report["hits"], report["keyword_hits"]) == (1, 3)
    assert report["by_lang"]["zh"]["keyword_hit_rate"] == 1.0
    assert report["by_lang"]["zh"]["hit_rate"] == pytest.approx(1 / 3)
    assert report["failed_checks"] == {
        "keyword": 0,
        "language": 1,
        "stopped": 1,
        "repetition": 1,
        "author_role": 0,
    }


@pytest.mark.parametrize(
    ("name", "author"), [(XH, QH), ("Ada", "Tunesmith Lab"), ("Nova-7", "北辰 AI Lab")]
)
def test_every_training_answer_passes_every_check(name, author):
    from tunesmith.data.identity import generate_identity

    for record in generate_identity(name, author):
        turn = record["conversation"][0]
        lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in turn["input"]) else "en"
        q = IdentityQuestion(lang, turn["input"], "both")
        assert score_answer(q, turn["output"], name, author, OLD)["failed"] == [], turn
