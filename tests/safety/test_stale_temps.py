"""Temps left by a writer killed with -9 are removed by the next write of the same output."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tunesmith.fileio import atomic_dir, atomic_write_text, remove_stale_temps

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from tunesmith.fileio import atomic_dir, atomic_file
    with atomic_file(sys.argv[1]) as tmp, atomic_dir(sys.argv[2]) as tmp_dir:
        tmp.write_text("half")
        (tmp_dir / "part").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_new_write_removes_the_temps_of_a_killed_writer_but_not_a_live_ones(tmp_path):
    out, out_dir = tmp_path / "out.jsonl", tmp_path / "merged"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), str(out_dir)])
    assert killed.returncode == -9
    left = _names(tmp_path)
    assert len(left) == 2 and all(n.startswith((".out.jsonl.", ".merged-")) for n in left)

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".out.jsonl.pid{live.pid}.abc_12.tmp").write_text("writing")
        (tmp_path / f".merged-pid{live.pid}-abc_12").mkdir()
        (tmp_path / ".other.jsonl.pid1.zz.tmp").write_text("another output's")
        atomic_write_text(out, "whole\n")
        with atomic_dir(out_dir, replace=False) as tmp:
            (tmp / "weights").write_text("whole")
        assert _names(tmp_path) == sorted(
            [
                f".merged-pid{live.pid}-abc_12",
                ".other.jsonl.pid1.zz.tmp",
                f".out.jsonl.pid{live.pid}.abc_12.tmp",
                "merged",
                "out.jsonl",
            ]
        )
    finally:
        live.kill()
        live.wait()
    assert out.read_text() == "whole\n" and _names(out_dir) == ["weights"]


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_pid_less_temps_of_older_versions_go_once_an_hour_old(tmp_path):
    out, out_dir = tmp_path / "out.jsonl", tmp_path / "merged"
    old = [".out.jsonl.ab12_xyz.tmp", ".out.jsonl.tmp", ".merged-k3j_9a0z"]
    young = [".out.jsonl.zz99_qqq.tmp", ".merged-young_01"]
    for name in old + young:
        (tmp_path / name).mkdir() if name.startswith(".merged") else (tmp_path / name).touch()
    for name in old:
        _age(tmp_path / name, 2 * 3600)
    atomic_write_text(out, "whole\n")
    with atomic_dir(out_dir, replace=False) as tmp:
        (tmp / "weights").write_text("whole")
    assert _names(tmp_path) == sorted([*young, "merged", "out.jsonl"])


KILLED_AT_RENAME = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    import numpy as np

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    os.replace = pathlib.Path.replace = pathlib.Path.rename = die
    out = pathlib.Path(sys.argv[2])
    if sys.argv[1] == "dataset":
        from tunesmith.data.dataset import _save
        _save(out, {"input_ids": np.arange(4)}, {"documents": 1})
    else:
        from tunesmith.workflow.identity_preference import write_pairs
        write_pairs([{"prompt": "q", "chosen": "a", "rejected": "b"}], out)
    """
)


@pytest.mark.parametrize(
    "writer,name", [("dataset", "0123abcd"), ("pairs", "pairs.jsonl")], ids=["dataset", "pairs"]
)
def test_every_atomic_writer_leaves_temps_the_shared_cleanup_removes(tmp_path, writer, name):
    """The dataset cache and the preference pairs wrote their own temps (`.tmp-XXXX`,
    `.pairs.jsonl.tmp`) that no cleanup knew: a writer killed at the rename left them for good."""
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_RENAME, writer, str(tmp_path / name)])
    assert killed.returncode == -9
    left = _names(tmp_path)
    assert len(left) == 1 and left[0].startswith("."), left  # the killed writer's temp
    assert [p.name for p in remove_stale_temps(tmp_path / name)] == left
    assert _names(tmp_path) == []


def test_the_dataset_cache_write_removes_its_old_pid_less_temps(tmp_path):
    from tunesmith.data.dataset import _save

    (tmp_path / ".tmp-a1b2c3d4").mkdir()  # the cache's temp name before it used atomic_dir
    _age(tmp_path / ".tmp-a1b2c3d4", 2 * 3600)
    _save(tmp_path / "0123abcd", {"input_ids": np.arange(4)}, {"documents": 1})
    assert _names(tmp_path) == ["0123abcd"]
    assert sorted(p.name for p in (tmp_path / "0123abcd").iterdir()) == [
        "input_ids.npy",
        "summary.json",
    ]
