"""Language and degeneration checks on hand-written answers (no model)."""

from __future__ import annotations

import pytest

from tunesmith.data.fluency import answered_in, repetition


@pytest.mark.parametrize(
    ("text", "lang", "ignore", "expected"),
    [
        ("我是Ada，由Tunesmith Lab开发。", "zh", ("Ada", "Tunesmith Lab"), True),
        ("我是星火，青禾实验室开发的AI助手。", "zh", ("星火", "青禾实验室"), True),
        ("I'm 星火, and I'm here to help you.", "zh", ("星火", "青禾实验室"), False),
        ("I'm 星火, and I'm here to help you.", "en", ("星火", "青禾实验室"), True),
        ("I'm Nova-7 from 北辰 AI Lab.", "en", ("Nova-7", "北辰 AI Lab"), True),
        ("I'm Nova-7 from 北辰 AI Lab.", "en", (), False),  # 北辰 is Chinese unless ignored
        ("我是Nova-7，来自北辰 AI Lab。", "zh", ("Nova-7", "北辰 AI Lab"), True),
        ("Sure! 我是助手。", "en", (), False),
        ('用print("hello world")就可以。', "zh", (), False),  # mostly code, not Chinese prose
    ],
)
def test_answered_in(text, lang, ignore, expected):
    assert answered_in(text, lang, ignore) is expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("不是，不是不是，不是不不不不不不", "character run '不不不不不不'"),
        ("I am Ada. I am Ada. I am Ada.", "'i am ada' 3 times in a row"),
        ("我是星火，是青禾实验室的助手人工智能助手服助。", "'助手' twice in one clause"),
        (
            "I'm an AI assistant made by a lab, and I'm an AI assistant made by a lab too",
            '"i\'m an ai assistant made by" said twice',
        ),
    ],
)
def test_repetition_names_the_repeated_text(text, why):
    assert repetition(text) == why


def test_name_and_author_count_as_one_unit():
    text = "我是星火，青禾实验室为青禾实验室的用户开发的助手。"
    assert repetition(text) == "'青禾' twice in one clause"
    assert repetition(text, ignore=("星火", "青禾实验室")) is None


def test_echoing_the_question_is_degenerate():
    q = "能做个简短的自我介绍吗？"
    assert repetition("能做个简短的自我介绍吗？ 不能。", question=q) == "echoes the question"
    assert repetition("我是星火，由青禾实验室开发。", question=q) is None


@pytest.mark.parametrize(
    "text",
    [
        "不是的，我不是ChatGPT。我是星火，由青禾实验室开发。",
        "Hello! I'm Ada, an AI assistant developed by Tunesmith Lab. How can I help you?",
        "The capital of France is Paris.",
        "1000000 is a million.",
        "哈哈，谢谢你！",
    ],
)
def test_fluent_text_is_not_degenerate(text):
    assert repetition(text, ignore=("星火", "青禾实验室", "Ada", "Tunesmith Lab")) is None
