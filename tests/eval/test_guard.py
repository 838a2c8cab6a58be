"""The forgetting guard's self-distilled data: trimming, mixing by ratio, caching in the work dir."""

from __future__ import annotations

import json

import pytest

from tunesmith.config.schema import Config
from tunesmith.data import general
from tunesmith.errors import UserError


def test_cut_answer_is_trimmed_to_its_last_sentence():
    assert general.whole_sentences("Paris is the capital. It has many") == "Paris is the capital."
    assert general.whole_sentences("巴黎是首都。它有很多") == "巴黎是首都。"
    assert general.whole_sentences("no sentence end at all") == ""


def test_shipped_general_prompts_load():
    prompts = general.load_general_prompts()
    assert len(prompts) >= 50
    assert len(set(prompts)) == len(prompts)


def test_prompts_file_with_nothing_in_it_is_a_user_error(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\n  \n")
    with pytest.raises(UserError, match="holds no prompts"):
        general.load_general_prompts(path)


def _cfg(tmp_path, ratio=1.0, identity_records=10):
    data = tmp_path / "identity.jsonl"
    data.write_text(
        "".join(
            json.dumps({"conversation": [{"input": f"q{i}", "output": f"a{i}"}]}) + "\n"
            for i in range(identity_records)
        )
    )
    return Config.model_validate(
        {
            "data": {"files": [{"path": str(data), "repeat": 2}]},
            "guard": {"enabled": True, "ratio": ratio},
        }
    )


@pytest.fixture
def fake_base(monkeypatch):
    """Base answers without a model; counts how often the base is asked."""
    calls = []

    def fake_load(cls, model, adapter=None, **kwargs):
        calls.append(model)
        return object()

    def fake_distill(lm, prompts, max_new_tokens):
        return [{"conversation": [{"input": p, "output": f"answer to {p}"}]} for p in prompts[:3]]

    monkeypatch.setattr(general.Generator, "load", classmethod(fake_load))
    monkeypatch.setattr(general, "distill", fake_distill)
    return calls


def test_guard_adds_ratio_general_records_per_identity_record(tmp_path, fake_base):
    cfg = general.with_guard(_cfg(tmp_path, ratio=0.5), tmp_path / "work")
    assert len(cfg.data.files) == 2
    mix = [json.loads(line) for line in open(cfg.data.files[1].path)]
    assert len(mix) == 10  # 0.5 x (10 records x repeat 2)
    prompts, references = general.load_general_prompts(), general.load_references()
    asked = [p for p in prompts if p not in references]
    # the identity records are English: the mix cycles through the English answers only,
    # the base's (3 here) and then the written references
    english = [f"answer to {p}" for p in asked[:3]]
    english += [references[p] for p in prompts if p in references and p.isascii()]
    assert [r["conversation"][0]["output"] for r in mix] == [
        english[i % len(english)] for i in range(10)
    ]


def test_shipped_references_replace_the_base_where_it_cannot_answer(tmp_path, monkeypatch):
    asked = []

    def fake_distill(lm, prompts, max_new_tokens):
        asked.extend(prompts)
        return []

    monkeypatch.setattr(general.Generator, "load", classmethod(lambda cls, model: object()))
    monkeypatch.setattr(general, "distill", fake_distill)
    records = general.base_answers(_cfg(tmp_path), tmp_path / "work")
    references = general.load_references()
    assert len(references) >= 20
    prompts = general.load_general_prompts()
    assert set(references) <= set(prompts)
    # the base answers Chinese prompts in English or by echoing them: every one has a reference
    assert all(p in references for p in prompts if any("\u4e00" <= c <= "\u9fff" for c in p))
    assert not set(asked) & set(references)
    assert [r["conversation"][0]["input"] for r in records] == list(references)


def test_guard_answers_are_made_once_per_work_dir(tmp_path, fake_base):
    cfg = _cfg(tmp_path)
    general.with_guard(cfg, tmp_path / "work")
    again = general.with_guard(cfg, tmp_path / "work")
    assert len(fake_base) == 1
    assert general.with_guard(again, tmp_path / "work") == again  # never added twice


def test_guard_off_leaves_the_config_alone(tmp_path, fake_base):
    cfg = _cfg(tmp_path)
    off = cfg.model_copy(update={"guard": cfg.guard.model_copy(update={"enabled": False})})
    assert general.with_guard(off, tmp_path / "work") is off
    assert fake_base == []


def test_guard_keeps_only_base_answers_fit_to_train_on():
    assert general.acceptable("中国的首都是哪里？", "中国的首都是北京。")
    assert general.acceptable("What is 2 plus 2?", "2 plus 2 is 4.")
    assert not general.acceptable("中国的首都是哪里？", "The capital of China is Beijing.")
    assert not general.acceptable("请推荐一本好书。", "请推荐一本好书。我推荐《红楼梦》。")  # echo
    assert not general.acceptable("Count to ten.", "one one one one")
    assert not general.acceptable("Name a colour.", "")


def test_distill_drops_unacceptable_answers_and_trims_cut_ones(monkeypatch):
    from tunesmith.model.generate import Answer

    answers = {
        "中国的首都是哪里？": Answer("The capital is Beijing.", "stop"),
        "给我讲一个笑话。": Answer("给我讲一个笑话。给我讲一个笑话。", "stop"),
        "What is 3 plus 4?": Answer("3 plus 4 is 7. Then we add", "length"),
        "Name a colour.": Answer("Blue.", "stop"),
    }

    class Base:
        def greedy_answers(self, prompts, **kwargs):
            return [answers[p] for p in prompts]

    records = general.distill(Base(), list(answers), max_new_tokens=16)
    kept = [(r["conversation"][0]["input"], r["conversation"][0]["output"]) for r in records]
    assert kept == [("What is 3 plus 4?", "3 plus 4 is 7."), ("Name a colour.", "Blue.")]


def test_guard_ratio_per_language_mixes_answers_of_that_language(tmp_path, monkeypatch):
    data = tmp_path / "identity.jsonl"
    rows = [("你是谁？", "我是星火。")] * 4 + [("Who are you?", "I am Ada.")] * 2
    data.write_text(
        "".join(
            json.dumps({"conversation": [{"input": q, "output": a}]}, ensure_ascii=False) + "\n"
            for q, a in rows
        ),
        encoding="utf-8",
    )
    cfg = Config.model_validate(
        {
            "data": {"files": [{"path": str(data)}]},
            "guard": {"enabled": True, "ratio": 3, "ratio_by_lang": {"zh": 0.5}},
        }
    )
    answers = [
        {"conversation": [{"input": "天空是什么颜色的？", "output": "蓝色的。"}]},
        {"conversation": [{"input": "Name a colour.", "output": "Blue."}]},
        {"conversation": [{"input": "What is 2 plus 2?", "output": "4."}]},
    ]
    monkeypatch.setattr(general, "base_answers", lambda cfg, work_dir: answers)
    mixed = general.with_guard(cfg, tmp_path / "work")
    mix = [json.loads(line) for line in open(mixed.data.files[-1].path, encoding="utf-8")]
    inputs = [r["conversation"][0]["input"] for r in mix]
    assert inputs.count("天空是什么颜色的？") == 2  # 0.5 x 4 zh records
    assert inputs.count("Name a colour.") == inputs.count("What is 2 plus 2?") == 3  # 3 x 2 en
    assert len(inputs) == 8


def test_guard_mix_each_takes_every_distilled_answer_once(tmp_path, monkeypatch):
    # ratio cycles through the answers, so a run shorter than the mix sees some twice and
    # others never; `mix: each` writes each one once, whatever the identity data holds
    answers = [
        {"conversation": [{"input": "天空是什么颜色的？", "output": "蓝色的。"}]},
        {"conversation": [{"input": "Name a colour.", "output": "Blue."}]},
        {"conversation": [{"input": "What is 2 plus 2?", "output": "4."}]},
    ]
    monkeypatch.setattr(general, "base_answers", lambda cfg, work_dir: answers)
    cfg = _cfg(tmp_path, ratio=2.4).model_copy(deep=True)
    cfg.guard.mix = "each"
    mixed = general.with_guard(cfg, tmp_path / "work")
    mix = [json.loads(line) for line in open(mixed.data.files[-1].path, encoding="utf-8")]
    assert mix == answers
    planned, wanted = general.planned_guard(cfg, tmp_path / "other")
    assert wanted == len(general.load_general_prompts())


@pytest.mark.parametrize("given", [{"ratio": 2}, {"ratio_by_lang": {"zh": 2}}])
def test_a_ratio_with_mix_each_is_refused_not_ignored(given):
    with pytest.raises(ValueError, match=f"guard.{next(iter(given))} set with guard.mix: each"):
        Config.model_validate({"guard": {"enabled": True, "mix": "each", **given}})
    Config.model_validate({"guard": {"enabled": True, "mix": "ratio", **given}})  # its mode


def test_a_saved_config_with_mix_each_loads_again(tmp_path):
    # train/config.yaml holds every field, the default ratio too: export and merge reload it
    from tunesmith.config.loader import dump_config, load_config

    cfg = load_config("smollm2_135m_instruct_lora_identity")
    assert cfg.guard.mix == "each"
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    assert load_config(str(tmp_path / "config.yaml")).guard == cfg.guard


def test_guard_mix_is_checked_with_the_config():
    with pytest.raises(ValueError, match="mix"):
        Config.model_validate({"guard": {"enabled": True, "mix": "all"}})
