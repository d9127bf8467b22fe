"""Durable, private files: the fsync rule the snapshot writers need, and the data directory's
permissions."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable: the directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private(directory: Path) -> None:
    """Create the data directory if missing and keep everything in it private to the service.

    The database, its WAL, the snapshot and the keys hold biometric or key material, so the
    directory (and any below it) is 0700 and its files 0600, tightening what earlier versions
    left at 0755/0644. The process's umask becomes 077, so every file it creates from now on
    (SQLite's WAL and shared-memory files included) is 0600 whatever creates it.
    """
    os.umask(0o077)
    directory.mkdir(parents=True, exist_ok=True)
    for path in (directory, *directory.rglob("*")):
        if path.is_symlink():
            continue
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
