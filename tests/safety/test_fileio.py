"""The shared file helpers: free space before large writes, atomic writes that leave nothing."""

import os
import shutil
from collections import namedtuple

import pytest

from tunesmith.cli.main import main
from tunesmith.errors import UserError
from tunesmith.fileio import atomic_dir, atomic_write_text, check_free_space

Usage = namedtuple("Usage", "total used free")


def _adapter(model_dir, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(out)
    return out


def test_merge_stops_before_writing_when_the_disk_is_too_small(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**6, 10**6 - 1000, 1000))
    assert main(["convert", "merge", str(tiny_model_dir), str(adapter), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the merged model" in err and f"in {tmp_path}" in err and "only 0.0 MB is free" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_free_space_names_what_needs_how_much_where(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, 3 * 10**9))
    with pytest.raises(UserError, match=r"the copy needs 15\.0 GB in .*, but only 3\.0 GB is free"):
        check_free_space(tmp_path / "not" / "made", 15 * 10**9, "the copy")
    check_free_space(tmp_path, 2 * 10**9, "the copy")  # fits


def test_atomic_writes_leave_the_old_file_and_no_temp_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "dir") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_outputs_get_the_mode_a_plain_write_would(tmp_path, umask):
    """mkdtemp / mkstemp make their temps 0700 / 0600: merged models, adapters and caches
    were unreadable to every other user (an Ollama or web server running as another)."""
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "merged") as tmp:
            (tmp / "config.json").write_text("{}")
        atomic_write_text(tmp_path / "out.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~umask
