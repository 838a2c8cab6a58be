"""`tunesmith eval identity|retention` on a tiny random model: well-formed reports, bad input exits 2."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli.main import main


def _questions(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text(
        json.dumps(
            {
                "questions": [
                    {"lang": "en", "question": "How should I address you?", "asks": "name"},
                    {"lang": "zh", "question": "谁做了你？", "asks": "author"},
                ]
            },
            ensure_ascii=False,
        )
    )
    return path


def test_eval_identity_writes_a_report_with_every_answer(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "identity.json"
    code = main(
        [
            "eval",
            "identity",
            str(tiny_model_dir),
            "--name",
            "Ada",
            "--author",
            "Lab",
            "--questions",
            str(_questions(tmp_path)),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["questions"] == 2 and len(report["answers"]) == 2
    assert set(report["by_lang"]) == {"en", "zh"}
    assert 0.0 <= report["hit_rate"] <= report["keyword_hit_rate"] <= 1.0
    assert set(report["failed_checks"]) == {
        "keyword",
        "language",
        "stopped",
        "repetition",
        "author_role",
    }
    for a in report["answers"]:
        assert isinstance(a["answer"], str) and isinstance(a["finished"], bool)
        assert a["hit"] == (a["failed"] == []) == all(a["checks"].values())
    out = capsys.readouterr().out
    assert "identity rate (every check)" in out and "keyword hit rate" in out


def test_eval_identity_on_embedded_alias_defaults_old_names():
    from tunesmith.eval.identity import default_old_names

    assert default_old_names("smollm2-135m-instruct") == ["SmolLM", "Hugging Face"]
    assert default_old_names("/some/dir") == []


def test_eval_identity_with_empty_name_exits_2(tmp_path, tiny_model_dir, capsys):
    code = main(["eval", "identity", str(tiny_model_dir), "--name", "  ", "--author", "Lab"])
    assert code == 2
    assert "--name is empty" in capsys.readouterr().err


def test_eval_identity_of_a_model_without_chat_template_exits_2(no_template_model_dir, capsys):
    code = main(
        ["eval", "identity", str(no_template_model_dir), "--name", "Ada", "--author", "Lab"]
    )
    assert code == 2
    assert "no chat template" in capsys.readouterr().err


def test_eval_retention_writes_all_three_measures(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps(
            {
                "facts": [{"prompt": "Capital of France?", "answers": ["paris"]}],
                "general": ["Describe a cat.", "List two fruits."],
            }
        )
    )
    out = tmp_path / "retention.json"
    code = main(
        [
            "eval",
            "retention",
            str(tiny_model_dir),
            "--base",
            str(tiny_model_dir),
            "--name",
            "Ada",
            "--author",
            "Lab",
            "--prompts",
            str(prompts),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["facts"]["prompts"] == 1
    # the same model as its own base: no drift
    assert abs(report["drift"]["delta"]) < 1e-4
    assert report["leakage"]["answers"] == 3


def test_greedy_answers_are_cached_per_weights(tmp_path, tiny_model_dir, answer_cache, monkeypatch):
    from tunesmith.model.generate import Generator

    lm = Generator.load(str(tiny_model_dir))
    first = lm.greedy_answers(["Describe a cat.", "Hi"], max_new_tokens=5)
    assert len(list(answer_cache.glob("*.json"))) == 1

    def no_generation(*args, **kwargs):
        raise AssertionError("cached answers were generated again")

    lm = Generator.load(str(tiny_model_dir))  # a new process's generator: the disk cache
    monkeypatch.setattr(lm, "_greedy", no_generation)
    monkeypatch.setattr(lm, "_generate", no_generation)
    again = lm.greedy_answers(["Describe a cat.", "Hi"], max_new_tokens=5)
    assert [(a.text, a.finished) for a in again] == [(a.text, a.finished) for a in first]


def test_changed_weights_get_a_new_cache_key(tmp_path, tiny_model_dir):
    import shutil

    from tunesmith.model.answer_cache import weights_key

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = weights_key(copy)
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b" ")
    assert weights_key(copy) != before


def test_eval_identity_of_an_adapter_uses_the_adapter_tokenizer(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "adapter"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
    )
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)
    out = tmp_path / "identity.json"
    code = main(
        [
            "eval",
            "identity",
            str(tiny_model_dir),
            "--adapter",
            str(adapter),
            "--name",
            "Ada",
            "--author",
            "Lab",
            "--questions",
            str(_questions(tmp_path)),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert json.loads(out.read_text())["adapter"] == str(adapter)


@pytest.mark.parametrize("kind", ["identity", "retention"])
def test_eval_refuses_to_overwrite_a_report_without_force(tmp_path, tiny_model_dir, capsys, kind):
    out = tmp_path / "report.json"
    out.write_text('{"kept": true}')
    extra = (
        ["--base", str(tiny_model_dir)]
        if kind == "retention"
        else ["--name", "Ada", "--author", "Lab"]
    )
    code = main(["eval", kind, str(tiny_model_dir), *extra, "--json", str(out)])
    assert code == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == '{"kept": true}'
