import re

import pytest

from tunesmith.data.formats import to_conversation
from tunesmith.data.identity import LANGUAGES, _templates, generate_identity, identity_questions
from tunesmith.errors import UserError


def test_identity_records_name_the_assistant_and_author_in_both_languages():
    records = generate_identity("Tuney", "the tunesmith team")
    outputs = [r["conversation"][0]["output"] for r in records]
    inputs = [r["conversation"][0]["input"] for r in records]
    assert all("Tuney" in o for o in outputs)
    assert any(re.search(r"[\u4e00-\u9fff]", q) for q in inputs)
    assert any(q.isascii() for q in inputs)
    for i, record in enumerate(records):  # valid conversation records
        to_conversation(record, "conversation", f"record {i}")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_identity_templates_are_varied_enough_to_generalise(lang):
    questions = identity_questions(lang)
    answers = [a for group in _templates()[lang].values() for a in group["answers"]]
    assert len(set(questions)) >= 60
    assert len(set(answers)) >= 20


def test_identity_denies_being_other_assistants_but_never_itself():
    records = generate_identity("SmolLM", "Hugging Face", langs=["en"])
    pairs = [(r["conversation"][0]["input"], r["conversation"][0]["output"]) for r in records]
    denials = [(q, a) for q, a in pairs if a.startswith(("No", "I'm not", "That's not"))]
    assert any("ChatGPT" in q for q, _ in denials)
    assert not any("Are you SmolLM?" == q for q, _ in pairs)


def test_identity_repeat_lang_and_system_options():
    one = generate_identity("Tuney", "T", langs=["en"])
    three = generate_identity("Tuney", "T", langs=["en"], repeat=3, system="You are Tuney.")
    assert len(three) == 3 * len(one)
    assert all(r["conversation"][0]["system"] == "You are Tuney." for r in three)
    assert generate_identity("Tuney", "T", langs=["en"]) == one  # deterministic


@pytest.mark.parametrize("name", ["", "   ", "{{name}}", "Tu{{ney"])
def test_bad_names_are_user_errors(name):
    with pytest.raises(UserError, match="--name"):
        generate_identity(name, "author")


def test_unknown_language_is_a_user_error():
    with pytest.raises(UserError, match="--lang"):
        generate_identity("Tuney", "T", langs=["fr"])


def test_no_placeholder_survives_generation():
    records = generate_identity("Tuney", "T")
    assert not any(
        "{{" in r["conversation"][0]["input"] + r["conversation"][0]["output"] for r in records
    )


def test_a_template_placeholder_left_unfilled_is_a_user_error(monkeypatch):
    from tunesmith.data import identity

    broken = {
        "others": [],
        "en": {"who": {"questions": ["Who are you?"], "answers": ["I am {{nickname}}."]}},
    }
    monkeypatch.setattr(identity, "_templates", lambda: broken)
    with pytest.raises(UserError, match=r"\{\{nickname\}\} was not filled"):
        generate_identity("Tuney", "T", langs=["en"])


def test_each_question_comes_once_per_repeat_in_every_language():
    # zh came twice per pass (lang_repeat) while the identity recipe trained on a random
    # quarter of the records; it now trains one epoch, in which each question comes once
    for lang in ("zh", "en"):
        records = generate_identity("星火", "青禾实验室", langs=[lang], others_per_question=1)
        questions = [r["conversation"][0]["input"] for r in records]
        assert len(set(questions)) == len(questions)
        twice = generate_identity(
            "星火", "青禾实验室", langs=[lang], repeat=2, others_per_question=1
        )
        assert len(twice) == 2 * len(records)
    zh = generate_identity("星火", "青禾实验室", langs=["zh"])
    en = generate_identity("星火", "青禾实验室", langs=["en"])
    assert len(generate_identity("星火", "青禾实验室")) == len(zh) + len(en)


def test_zh_answers_never_put_the_author_where_the_assistant_names_itself():
    # "我是由北辰 AI Lab开发的" taught SmolLM2 "我是北辰 AI Lab" for a mixed-script author:
    # after 我是 / 我叫 / 我是由 comes the name, never the author
    records = generate_identity("星火", "北辰 AI Lab", langs=("zh",))
    answers = {turn["output"] for r in records for turn in r["conversation"]}
    wrong = [
        a
        for a in answers
        for opener in ("我是", "我叫", "我是由", "我由", "我的名字是")
        if opener + "北辰" in a
    ]
    assert wrong == []
