"""One `tunesmith train` per work dir: an exclusive `fcntl.flock` on `WORK_DIR/.lock`.

Held for the run's whole life by the process that owns the run: the plain process, the
NPROC_PER_NODE launcher (its torchrun workers skip it) or, under a bare torchrun, global rank 0.
A second run into the same work dir stops at once with a UserError naming the holder's pid,
before it writes anything. The lock file is removed on release; a dir made only for it is too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from tunesmith.errors import UserError

LOCK_NAME = ".lock"


def owns_lock(env: Mapping[str, str]) -> bool:
    """Whether this process takes the work dir lock (not a torchrun worker of our launcher,
    nor a rank other than 0, nor a launcher of a node other than 0)."""
    from tunesmith.train.distributed import LAUNCHED_ENV

    if env.get(LAUNCHED_ENV):
        return False  # the launcher that started torchrun holds it
    if "RANK" in env and ("LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env):
        return env.get("RANK", "0").strip() in ("", "0")
    return env.get("NODE_RANK", "0").strip() in ("", "0")


def _holder_pid(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


@contextlib.contextmanager
def work_dir_lock(work_dir: str | Path, env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Hold the exclusive lock on `work_dir` (made if missing) for the `with` block."""
    if not owns_lock(os.environ if env is None else env):
        yield
        return
    from tunesmith.fileio import check_writable_dir

    work_dir = check_writable_dir(work_dir, "work dir")
    created = not work_dir.exists()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{work_dir}: cannot create the work dir ({exc.strerror})") from None
    path = work_dir / LOCK_NAME
    fd = _acquire(path, work_dir)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding it: a waiting run re-checks the inode (_acquire)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                work_dir.rmdir()  # only when the run left nothing else in it


def _acquire(path: Path, work_dir: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"{path}: cannot create the work dir lock ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{path}: cannot lock the work dir ({exc.strerror})") from None
            raise UserError(
                f"{work_dir} is in use by another tunesmith run (pid {_holder_pid(path)})"
            ) from None
        try:  # the holder may have unlinked it between our open and lock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
