"""Atomic outputs: a directory or file appears complete under its name, or not at all.

TF Serving loads any new version directory it sees, and users rerun commands after crashes;
so every output is written under a temporary name beside its target and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ppnet.errors import PPNetError


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` when the block succeeds.

    An existing ``target`` is refused unless ``overwrite``; it is swapped out only after the new
    directory is complete. On any failure the temporary directory is removed.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise PPNetError(f"{target}: {what} already exists; pass --overwrite to replace it")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(complete: Path, target: Path) -> None:
    """Rename the finished directory ``complete`` to ``target``; an existing ``target`` is moved
    aside first and deleted last, so ``target`` always names a whole directory (old or new)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    complete.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file through a temporary name and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
