"""A run store private to the user that runs the workbench: its folders are 0700 and the
process umask makes every file written in it 0600. The store holds pickles, so a reader is a
leak and a writer could run code in the next process that loads one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_folder", "private_umask"]


def private_umask() -> None:
    """Mask group and other bits for every file this process creates from now on. diskcache
    (SQLite files, value files) and torch create files with the process umask, and the store
    holds pickles: another local user who can read it reads every run, one who can write it
    plants a pickle that runs code when loaded. Set 0o077 first so the mask is never looser
    than that, even between the two calls (other threads may be writing); then keep whatever
    else the process already masked."""
    old = os.umask(0o077)
    if old & ~0o077:
        os.umask(old | 0o077)


def private_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) as 0700, and tighten it to 0700 if it exists with
    group or other bits (a store made before this rule, or by hand)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)
