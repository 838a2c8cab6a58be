"""`tunesmith identity` refuses bad input with exit 2 and leaves the work dir untouched."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli.main import main
from tunesmith.workflow.identity import MANIFEST, IdentityRun, build_config


def _identity(*args):
    return main(["identity", *args])


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_exits_2(tmp_path, capsys, name):
    work = tmp_path / "work"
    assert _identity("--name", name, "--author", "Lab", "--work-dir", str(work)) == 2
    assert "--name is empty" in capsys.readouterr().err
    assert not work.exists()


def test_name_with_placeholder_braces_exits_2(tmp_path, capsys):
    work = tmp_path / "work"
    assert _identity("--name", "Ada{{x}}", "--author", "Lab", "--work-dir", str(work)) == 2
    assert "{{" in capsys.readouterr().err
    assert not work.exists()


def test_unknown_language_exits_2(tmp_path, capsys):
    work = tmp_path / "work"
    assert (
        _identity("--name", "Ada", "--author", "Lab", "--lang", "fr", "--work-dir", str(work)) == 2
    )
    assert "--lang" in capsys.readouterr().err


def test_model_without_chat_template_exits_2(tmp_path, capsys, no_template_model_dir):
    work = tmp_path / "work"
    code = _identity(
        "--name",
        "Ada",
        "--author",
        "Lab",
        "--model",
        str(no_template_model_dir),
        "--work-dir",
        str(work),
    )
    assert code == 2
    assert "no chat template" in capsys.readouterr().err
    assert not work.exists()


def _manifest(work, **run):
    record = {
        "name": "Ada",
        "author": "Lab",
        "model": "smollm2-135m-instruct",
        "langs": ["zh", "en"],
        "config": None,
        "overrides": [],
        "system": None,
        "questions": None,
        "prompts": None,
        **run,
    }
    work.mkdir(parents=True)
    (work / MANIFEST).write_text(json.dumps({"run": record, "stages": {"data": {"seconds": 1.0}}}))
    return (work / MANIFEST).read_text()


def test_work_dir_of_a_different_run_exits_2_and_is_kept(tmp_path, capsys):
    work = tmp_path / "work"
    before = _manifest(work, name="Bob")
    (work / "data").mkdir()
    (work / "data" / "identity.jsonl").write_text("{}\n")
    assert _identity("--name", "Ada", "--author", "Lab", "--work-dir", str(work)) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert (work / MANIFEST).read_text() == before
    assert (work / "data" / "identity.jsonl").read_text() == "{}\n"


def test_non_empty_dir_without_manifest_exits_2(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    assert _identity("--name", "Ada", "--author", "Lab", "--work-dir", str(work)) == 2
    assert "holds no identity run" in capsys.readouterr().err
    assert (work / "notes.txt").read_text() == "mine"


def test_config_trains_on_identity_data_with_new_system_prompt_and_guard(tmp_path):
    run = IdentityRun(
        name="Ada", author="Lab", model="smollm2-135m-instruct", overrides=("train.max_steps=3",)
    )
    cfg = build_config(run, tmp_path)
    assert [f.path for f in cfg.data.files] == [str(tmp_path / "data" / "identity.jsonl")]
    assert cfg.data.system == "You are a helpful AI assistant."  # the identity is in the weights
    assert cfg.guard.enabled
    assert cfg.train.max_steps == 3
    assert cfg.runtime.work_dir == str(tmp_path / "train")


def test_guard_can_be_turned_off_by_override(tmp_path):
    run = IdentityRun(
        name="Ada", author="Lab", model="smollm2-135m-instruct", overrides=("guard.enabled=false",)
    )
    assert not build_config(run, tmp_path).guard.enabled
