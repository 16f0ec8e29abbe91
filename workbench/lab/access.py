"""Who may see and change a run or a suite: the owner, and admins; private runs are hidden.

Every run, suite and teacher records its ``owner`` (a user name) and whether it is
``private``. The rules, checked where the job manager and the store act (``workbench.runs.permitted``),
never only by hiding a button:

- everyone sees the lab's runs; a private run is seen by its owner and the admins only, and to
  anyone else it does not exist (``no run ...``, the same answer as for a deleted run);
- only the owner or an admin may cancel, resume, restart, delete, rename, tag, or change the
  visibility of a run (or a suite).

A record written before runs had owners has none: only admins may change it (in ``local`` mode
the OS user is one, so a single-user store behaves as it always did).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workbench.errors import WorkbenchError
from workbench.lab.identity import User

__all__ = ["AccessError", "can_change", "can_see", "check_change", "owner_of", "visible"]


class AccessError(WorkbenchError):
    """A user asked for something only the owner or an admin may do."""


def owner_of(record: dict[str, Any]) -> str:
    return record.get("owner") or ""


def can_see(user: User, record: dict[str, Any]) -> bool:
    return not record.get("private") or user.admin or owner_of(record) == user.name


def can_change(user: User, record: dict[str, Any]) -> bool:
    return user.admin or (bool(owner_of(record)) and owner_of(record) == user.name)


def check_change(user: User, record: dict[str, Any], action: str, what: str = "run") -> None:
    """Raise ``AccessError`` unless ``user`` may ``action`` the ``record``."""
    if can_change(user, record):
        return
    owner = owner_of(record) or "no one (it predates owners)"
    raise AccessError(
        f"{user.name} may not {action} {what} {record['id']}: it belongs to {owner}; only its "
        "owner or an admin may"
    )


def visible(records: Iterable[dict[str, Any]], user: User) -> list[dict[str, Any]]:
    return [r for r in records if can_see(user, r)]
