"""Files the user gives or asks for: one place to read them, check them and write them safely.

Every stage reads user files (configs, data, prompts) and writes results (datasets,
checkpoints, exports, reports). What can go wrong with the file itself (missing, a
directory, unreadable, not UTF-8, read-only, a disk too full) becomes one `UserError`
naming the path, and every write goes to a temp file or dir beside its target that is
renamed over it at the end, so a crash or a refusal never leaves a half-written file
that looks whole.

    text = read_text(path, "config")           # UserError instead of OSError / UnicodeDecodeError
    check_new_output(out, force=args.force)    # before any work: refuse to overwrite
    atomic_write_text(out, text)               # tmp + rename
    with atomic_dir(out_dir) as tmp: ...       # a whole directory, renamed when the block ends
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunesmith.errors import UserError

_BOMS = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16", b"\xef\xbb\xbf": "UTF-8"}


# ---- reading -------------------------------------------------------------------------------


def check_readable_file(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path when it is a file this process can read; else a UserError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such {what}")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a {what}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: cannot read this {what} (permission denied)")
    return path


def decode_error(path: str | Path, exc: UnicodeDecodeError) -> UserError:
    """The message for a file that is not UTF-8 text (says UTF-16 when its BOM says so)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    if _BOMS.get(head) == "UTF-16":
        hint = "it looks like UTF-16"
    else:
        hint = f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start} of a read"
    return UserError(f"{path}: not UTF-8 text ({hint}); save it as UTF-8")


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text (UTF-8, a BOM allowed); every way of failing is a UserError."""
    path = check_readable_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read this {what} ({exc.strerror})") from None


# ---- checking outputs before any work ------------------------------------------------------


def check_writable_dir(path: str | Path, what: str = "directory") -> Path:
    """`path` is (or can be made as) a directory this process can write into.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: the {what} is a file, not a directory; pass a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{path}: cannot write into the {what} (permission denied)")
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{path}: cannot create the {what}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot create the {what}: {parent} is not writable")
    return path


def check_new_output(path: str | Path, force: bool = False, what: str = "output file") -> Path:
    """An output file to be written: refuse an existing one (without `force`) or a directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(
            f"{path} is a directory; give the {what}'s file name (e.g. {path}/out.jsonl)"
        )
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it")
    check_writable_dir(path.parent, f"directory of the {what}")
    return path


def check_new_dir(path: str | Path, what: str = "output directory") -> Path:
    """An output directory to be created: it must not exist, or be an empty directory."""
    path = Path(path).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} already exists and is not empty: pick a new OUT or delete it")
    check_writable_dir(path.parent, f"parent of the {what}")
    return path


def check_outside(out: str | Path, source: str | Path, what: str = "output") -> None:
    """Refuse an output inside (or equal to) the directory it is made from."""
    out_r, src_r = Path(out).expanduser().resolve(), Path(source).expanduser().resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise UserError(
            f"{out}: the {what} would be written inside {source}; pick a place outside it"
        )


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """Refuse a write of `needed` bytes (plus 5%) where the disk holding `path` has less free."""
    probe = Path(path).expanduser()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.05:
        raise UserError(
            f"{what} needs {_gb(needed)} in {probe}, but only {_gb(free)} is free there; "
            f"free some space or point it elsewhere"
        )


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


# ---- writing -------------------------------------------------------------------------------


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temp file beside it, renamed over it."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


# Temps named before the writer's pid went into them (`.NAME.XXXXXXXX.tmp`, `.NAME-XXXXXXXX/`
# from mkstemp/mkdtemp, `.NAME.tmp`) cannot say whether their writer lives: they go once
# they are this old (no writer of those names runs any more; an hour covers a slow disk).
LEGACY_TEMP_AGE_S = 3600.0


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temps of `path` left by a writer that died (kill -9) before it could clean
    up: `.NAME.pidN.XXXX.tmp` (atomic_file) and `.NAME-pidN-XXXX/` (atomic_dir) whose
    creating pid N no longer runs, and pid-less temps of older versions (see
    LEGACY_TEMP_AGE_S) older than an hour. A live writer's temps are left alone."""
    path = Path(path)
    name = re.escape(path.name)
    with_pid = re.compile(rf"^\.{name}(?:\.pid(\d+)\.[A-Za-z0-9_]+\.tmp|-pid(\d+)-[A-Za-z0-9_]+)$")
    legacy = re.compile(rf"^\.{name}(?:\.[a-z0-9_]{{8}}\.tmp|-[a-z0-9_]{{8}}|\.tmp)$")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = with_pid.match(entry.name)
        if match is not None:
            pid = int(match.group(1) or match.group(2))
            if pid == os.getpid() or _pid_alive(pid):
                continue
        elif legacy.match(entry.name) is None or not _older_than(entry, now - LEGACY_TEMP_AGE_S):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue  # another writer removed it first, or it cannot be: leave it
        removed.append(entry)
    return removed


def _older_than(entry: Path, cutoff: float) -> bool:
    try:
        return entry.lstat().st_mtime < cutoff
    except OSError:
        return False


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp file path beside `path` to write; renamed to `path` when the block succeeds,
    removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it 0600: give it what open() would have
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """A temp dir beside `target`, renamed to `target` when the block succeeds (an existing
    `target` is replaced when `replace`, else it must be empty), removed when it fails."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-pid{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: give it what mkdir would have
        if target.exists():
            if replace:
                shutil.rmtree(target)
            else:
                target.rmdir()  # an empty dir (checked by check_new_dir); else OSError
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
