"""One `tunesmith train` per work dir: a second run into a locked work dir stops with exit 2."""

import fcntl
import os

import pytest
from train_cli_helpers import write_cli_config

from tunesmith.cli.main import main
from tunesmith.errors import UserError
from tunesmith.train.distributed import LAUNCHED_ENV
from tunesmith.train.worklock import owns_lock, work_dir_lock


def _hold(work_dir):
    work_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(work_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd


def test_a_second_train_into_a_work_dir_in_use_exits_2_and_writes_nothing(
    tmp_path, tiny_model_dir, capsys
):
    config = write_cli_config(
        tmp_path, tiny_model_dir, [("Hi?", "Hello.")], {"max_steps": 1}, {"save_steps": 1}
    )
    work_dir = tmp_path / "run"
    fd = _hold(work_dir)
    try:
        assert main(["train", str(config), "--work-dir", str(work_dir)]) == 2
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert f"error: {work_dir} is in use by another tunesmith run (pid 4242)" in err
    assert sorted(p.name for p in work_dir.iterdir()) == [".lock"]


def test_the_lock_is_exclusive_released_and_leaves_no_file(tmp_path):
    work_dir = tmp_path / "new" / "run"
    env = {}
    with work_dir_lock(work_dir, env):
        assert (work_dir / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            with work_dir_lock(work_dir, env):
                pass
    assert not work_dir.exists()  # made for the lock only: removed with it
    (tmp_path / "kept").mkdir()
    with work_dir_lock(tmp_path / "kept", env):
        (tmp_path / "kept" / "metrics.jsonl").write_text("")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["metrics.jsonl"]
    with work_dir_lock(work_dir, env):  # free again
        pass


def test_only_the_launcher_or_rank_0_takes_the_lock():
    assert owns_lock({})
    assert not owns_lock({LAUNCHED_ENV: "1", "RANK": "0", "LOCAL_RANK": "0"})
    assert owns_lock({"RANK": "0", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"})
    assert not owns_lock({"RANK": "1", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"})
    assert not owns_lock({"NPROC_PER_NODE": "2", "NNODES": "2", "NODE_RANK": "1"})
