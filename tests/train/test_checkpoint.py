import pytest

from tunesmith.errors import UserError
from tunesmith.train import checkpoint as ckpt


def _writer(step):
    def write(out):
        (out / "weights.bin").write_bytes(b"w" * 8)
        return {"step": step}

    return write


def test_rotation_keeps_exactly_the_newest_n(tmp_path):
    for step in range(1, 6):
        ckpt.save_atomic(tmp_path, step, _writer(step), keep=2)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["iter_4", "iter_5"]
    assert (tmp_path / "latest").read_text().strip() == "iter_5"


def test_rotation_with_minus_one_keeps_all(tmp_path):
    for step in (2, 4, 6):
        ckpt.save_atomic(tmp_path, step, _writer(step), keep=-1)
    assert len(ckpt.checkpoint_dirs(tmp_path)) == 3


def test_keep_zero_still_keeps_the_checkpoint_just_written(tmp_path):
    ckpt.save_atomic(tmp_path, 1, _writer(1), keep=0)
    ckpt.save_atomic(tmp_path, 2, _writer(2), keep=0)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["iter_2"]


def test_crash_mid_save_leaves_no_checkpoint_that_looks_whole(tmp_path):
    ckpt.save_atomic(tmp_path, 2, _writer(2), keep=2)

    def crashing(out):
        (out / "weights.bin").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.save_atomic(tmp_path, 4, crashing, keep=2)
    assert not (tmp_path / "iter_4").exists()
    assert not list(tmp_path.glob(".tmp-*"))
    assert ckpt.find_latest(tmp_path) == tmp_path / "iter_2"


def test_killed_mid_save_tmp_dir_is_never_picked_for_resume(tmp_path):
    ckpt.save_atomic(tmp_path, 3, _writer(3))
    # what a SIGKILL during a save leaves behind: a temp dir, even one that got its state file
    (tmp_path / ".tmp-iter_6").mkdir()
    ckpt.write_json(tmp_path / ".tmp-iter_6" / ckpt.STATE_FILE, {"step": 6})
    (tmp_path / "iter_5").mkdir()  # no state file: not whole
    assert ckpt.resolve_resume("auto", tmp_path) == tmp_path / "iter_3"


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path):
    assert ckpt.resolve_resume("auto", tmp_path) is None


def test_resume_from_a_path_that_is_not_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a whole checkpoint"):
        ckpt.resolve_resume(str(tmp_path), tmp_path)
