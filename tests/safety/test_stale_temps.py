"""Temps left by a writer killed with -9 are removed by the next write of the same output."""

import subprocess
import sys
import textwrap

from tunesmith.fileio import atomic_dir, atomic_write_text

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
