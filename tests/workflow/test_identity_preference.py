"""`tunesmith identity --preference`: the pairs it makes, its stages, its training config."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tunesmith.workflow.identity import STAGES, IdentityRun, IdentityWorkflow, build_config
from tunesmith.workflow.identity_preference import (
    MAX_PAIRS,
    identity_pairs,
    preference_config,
)


class BaseModelAnswers:
    """A stand-in for the base model's Generator: answers every question with its old name."""

    def __init__(self, same_for: str = ""):
        self.same_for = same_for
        self.asked: list[str] = []

    def greedy_answers(self, prompts, max_new_tokens=64, desc=""):
        self.asked += list(prompts)
        return [
            SimpleNamespace(text="I am Ada." if p == self.same_for else " I am SmolLM. ")
            for p in prompts
        ]


def _identity_file(tmp_path, n: int):
    path = tmp_path / "identity.jsonl"
    rows = [
        {"conversation": [{"input": f"Who are you {i}?", "output": "I am Ada."}]} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_base_answers_become_rejected_and_identity_answers_chosen(tmp_path):
    base = BaseModelAnswers(same_for="Who are you 1?")
    pairs = identity_pairs(_identity_file(tmp_path, 3), base)
    assert pairs == [
        {"prompt": "Who are you 0?", "chosen": "I am Ada.", "rejected": "I am SmolLM."},
        {"prompt": "Who are you 2?", "chosen": "I am Ada.", "rejected": "I am SmolLM."},
    ]  # the question the base already answers as Ada gives no pair


def test_pairs_are_capped_to_a_seeded_sample(tmp_path):
    base = BaseModelAnswers()
    pairs = identity_pairs(_identity_file(tmp_path, MAX_PAIRS + 20), base)
    assert len(pairs) == len(base.asked) == MAX_PAIRS
    again = identity_pairs(_identity_file(tmp_path, MAX_PAIRS + 20), BaseModelAnswers())
    assert again == pairs


def test_preference_stages_come_after_merge_and_old_runs_read_the_same(tmp_path):
    plain = IdentityWorkflow(IdentityRun("Ada", "Lab", "smollm2-135m-instruct"), tmp_path / "a")
    assert plain.stages == STAGES and "preference" not in plain._run_record()
    run = IdentityRun("Ada", "Lab", "smollm2-135m-instruct", preference="dpo")
    flow = IdentityWorkflow(run, tmp_path / "b")
    assert flow.stages[flow.stages.index("merge") + 1 :] == (
        "sft_eval",
        "pairs",
        "preference",
        "preference_merge",
        "tuned_eval",
        "report",
    )
    assert flow.final_model == tmp_path / "b" / "preference" / "merged"


def test_preference_config_trains_the_merged_sft_model_on_the_pairs(tmp_path):
    run = IdentityRun("Ada", "Lab", "smollm2-135m-instruct")
    sft = build_config(run, tmp_path)
    cfg = preference_config(sft, "simpo", tmp_path / "merged", tmp_path / "pairs.jsonl", tmp_path)
    assert cfg.model.path == str(tmp_path / "merged")
    assert cfg.preference.loss == "simpo" and cfg.lora is not None
    assert [f.path for f in cfg.data.files] == [str(tmp_path / "pairs.jsonl")]
    assert cfg.data.system == sft.data.system == run.system_prompt
    assert not cfg.guard.enabled
