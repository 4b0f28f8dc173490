"""Atomic outputs: a directory or file appears complete under its name, or not at all.

TF Serving loads any new version directory it sees, and users rerun commands after crashes;
so every output is written under a temporary name beside its target and renamed into place. Two
processes never write one output at once: each holds ``exclusive_lock`` on it while it works.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ppnet.errors import PPNetError


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool, what: str, ours: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` when the block succeeds.

    An existing ``target`` is refused unless ``overwrite`` and ``ours(target)`` (it is a ``what``
    ppnet wrote: ``--overwrite`` never deletes anyone else's directory); it is swapped out only
    after the new directory is complete. On any failure the temporary directory is removed.
    """
    target = Path(target)
    check_output_path(target, what)
    if target.exists() and not overwrite:
        raise PPNetError(f"{target}: {what} already exists; pass --overwrite to replace it")
    if target.exists() and not ours(target):
        raise PPNetError(f"{target}: ppnet did not write this {what}; --overwrite only replaces ppnet's own")
    remove_leftovers(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(target: Path) -> None:
    """Remove what a killed ppnet process left beside ``target``: its ``.NAME.tmp-PID`` (an
    unfinished output) and ``.NAME.old-PID`` (a replaced one), when process PID is gone. A live
    process's are its work in progress and stay; data reading skips them either way."""
    for path in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        stem, _, pid = path.name.rpartition("-")
        if stem.endswith((".tmp", ".old")) and pid.isdigit() and not process_alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def check_output_path(path: Path, what: str, directory: bool = True) -> None:
    """Fail before any work, with one line, if ``path`` cannot become the ``what`` (a directory, or
    a file with ``directory=False``): no name (``.``), a symbolic link, a file where a directory
    goes (or the reverse), under a file, or in a directory this process cannot write."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise PPNetError(f"{path}: not a name for a new {what}; name one, e.g. runs/my-run")
    if path.is_symlink():
        raise PPNetError(f"{path}: is a symbolic link (to {os.readlink(path)}); give the {what} a path of its own")
    if path.exists() and path.is_dir() != directory:
        raise PPNetError(f"{path}: is a {'file' if directory else 'directory'}; expected a {what}")
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise PPNetError(f"{path}: lies under {ancestor}, which is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PPNetError(f"{path}: cannot write in {ancestor} (permission denied)")


def replace_directory(complete: Path, target: Path) -> None:
    """Rename the finished directory ``complete`` to ``target``; an existing ``target`` is moved
    aside first and deleted last, so ``target`` always names a whole directory (old or new)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    complete.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file through a temporary name and a rename."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a small file through a temporary name and a rename: a reader (or a crash) never
    leaves a half-written file under ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def lock_file(target: Path) -> Path:
    """The lock file of ``target`` (a run directory or an export base): hidden, beside it."""
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive_lock(target: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``target``'s lock file for the block, or fail at once naming
    the process that holds it.

    The kernel releases a ``flock`` when its holder exits, however it exits (``kill -9``
    included), so a lock left by a dead process is simply taken over; the file only records the
    holder's PID for the message. It stays in place after the block: deleting it could let a
    third process lock a new file while a second one waits on the old.
    """
    check_output_path(Path(target), what)
    path = lock_file(Path(target))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise PPNetError(f"{target}: cannot create the {what}'s lock there ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise PPNetError(
                f"{target}: the {what} is in use by process {holder} (lock {path}); wait for it to end or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


PREPARED = "_ppnet.json"  # marks a directory ``ppnet prepare`` wrote (``_``: never read as data)


def prepared_by_ppnet(directory: Path) -> bool:
    return (directory / PREPARED).is_file()
