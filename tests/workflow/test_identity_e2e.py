"""`tunesmith identity` end to end on the embedded SmolLM2 with a few steps (slow).

Checks that the workflow completes, that the merged model loads with vanilla
transformers, that report.json is well formed, that the strict identity rate is
computed from the per-answer checks (language, stopped, repetition, author role
besides the keywords), and that a re-run skips every stage. The scores themselves are
not asserted: a few steps do not teach the identity.
"""

from __future__ import annotations

import json

import pytest

from tunesmith.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture
def small_eval_sets(tmp_path):
    questions = tmp_path / "questions.json"
    questions.write_text(
        json.dumps(
            {
                "questions": [
                    {"lang": "en", "question": "How should I address you?", "asks": "name"},
                    {"lang": "zh", "question": "是谁做出了你？", "asks": "author"},
                ]
            },
            ensure_ascii=False,
        )
    )
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps(
            {
                "facts": [{"prompt": "What is the capital of France?", "answers": ["paris"]}],
                "general": ["List three fruits."],
            }
        )
    )
    guard = tmp_path / "guard.txt"
    guard.write_text("What is 3 plus 4?\nName a colour.\n")
    return questions, prompts, guard


def test_identity_workflow_completes_and_resumes(tmp_path, small_eval_sets, capsys, monkeypatch):
    questions, prompts, guard = small_eval_sets
    # the trainer's model is freed before the next stage starts (reference cycles kept a 7B
    # QLoRA model's 6.7 GiB on the GPU through merge and tuned_eval)
    import weakref

    from tunesmith.train.recipe import TrainRecipe
    from tunesmith.workflow.identity import IdentityWorkflow

    trained, alive_at_export = [], []
    setup, export = TrainRecipe.setup, IdentityWorkflow.stage_export

    def recording_setup(recipe):
        setup(recipe)
        trained.append(weakref.ref(recipe.model))

    def checking_export(workflow):
        alive_at_export.append(trained[0]() is not None)
        export(workflow)

    monkeypatch.setattr(TrainRecipe, "setup", recording_setup)
    monkeypatch.setattr(IdentityWorkflow, "stage_export", checking_export)
    work = tmp_path / "work"
    args = [
        "identity",
        "--name",
        "Ada",
        "--author",
        "Tunesmith Lab",
        "--work-dir",
        str(work),
        "--questions",
        str(questions),
        "--prompts",
        str(prompts),
        "train.max_steps=2",
        "train.batch_size=1",
        "data.max_length=256",
        f"guard.prompts={guard}",
        "guard.max_new_tokens=16",
    ]
    assert main(args) == 0
    assert alive_at_export == [False]
    out = capsys.readouterr().out
    assert "tunesmith chat" in out and "tunesmith serve" in out

    report = json.loads((work / "report.json").read_text())
    assert report["run"]["name"] == "Ada"
    checks = {"keyword", "language", "stopped", "repetition", "author_role"}
    for side in ("base", "tuned"):
        ident = report["identity"][side]
        assert ident["questions"] == 2 and set(ident["by_lang"]) == {"en", "zh"}
        answers = ident["answers"]
        for a in answers:
            assert set(a["checks"]) == checks and isinstance(a["finished"], bool)
            assert a["hit"] == all(a["checks"].values()) == (a["failed"] == [])
            assert a["checks"]["keyword"] == a["keyword_hit"]
        assert ident["hits"] == sum(a["hit"] for a in answers)
        assert ident["hit_rate"] == ident["hits"] / 2
        assert ident["keyword_hits"] == sum(a["keyword_hit"] for a in answers)
        assert ident["failed_checks"] == {
            c: sum(not a["checks"][c] for a in answers) for c in checks
        }
    retention = report["retention"]
    assert set(retention) >= {"facts", "drift", "leakage"}
    assert retention["leakage"]["answers"] == 2
    markdown = (work / "report.md").read_text()
    assert markdown.startswith("# Identity report: Ada")
    assert "| identity (every check holds) |" in markdown
    assert "| keyword hit rate (name / author stated) |" in markdown

    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = work / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    # vanilla clients get the run's system prompt, not SmolLM's default
    assert "You are a helpful AI assistant." in prompt
    assert "SmolLM" not in prompt
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert model(input_ids=ids).logits.isfinite().all()

    assert main(args) == 0
    rerun = capsys.readouterr().out
    assert rerun.count("skipped") == 8
