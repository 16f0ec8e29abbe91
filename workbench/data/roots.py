"""Where ``image_folder`` data may come from: under the instance's data roots.

On a shared instance a run's ``data_path`` is typed by whoever submits it, and the server reads
it with its own rights: without a rule, anyone could make it read (and report on) any folder
the server can see, ``/etc`` or another user's home. So the path must lie under one of the
configured roots (``[data] roots`` in ``workbench.toml``, default ``$KDWB_HOME/datasets``),
unless the settings allow any path (local mode, by default: one person on their own machine).

The rule is checked on the path with symlinks and ``..`` resolved, so a link inside a root that
points outside it is refused like the folder it points to. The refusal says the same thing
whether or not the path exists, and no error lists a folder outside the roots (a local app is
still reachable from the network when Streamlit listens on every interface). The files inside
an allowed folder are held to the same rule as they are listed (``workbench.data.image_files``).
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import ConfigError
from workbench.lab.settings import LabSettings, current

__all__ = ["check_data_path", "data_roots", "inside_roots"]


def data_roots(settings: LabSettings | None = None, home: Path | None = None) -> list[Path]:
    """The resolved roots in force (``home`` default: the store home)."""
    from workbench.storage.store import (
        default_home,  # lazy, as in workbench.lab.settings: store pulls torch
    )

    settings = settings or current()
    return settings.roots(Path(home) if home is not None else default_home())


def _resolved(path: str | Path) -> Path | None:
    """``path`` with ``~``, symlinks and ``..`` resolved; None when it cannot be (a NUL byte, a
    symlink loop)."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def inside_roots(
    path: str | Path, settings: LabSettings | None = None, home: Path | None = None
) -> bool:
    """Whether ``path`` (resolved) is one of the data roots or lies under one. Errors may list a
    folder's contents only when this holds."""
    resolved = _resolved(path)
    return resolved is not None and any(
        resolved.is_relative_to(root) for root in data_roots(settings, home)
    )


def check_data_path(
    path: str | Path, settings: LabSettings | None = None, home: Path | None = None
) -> Path:
    """``path`` resolved, once it is allowed; a one-line ``ConfigError`` otherwise.

    The error names the roots, never whether ``path`` exists or what it holds, and it echoes
    the path as given rather than resolved (which would show where a link points)."""
    settings = settings or current()
    resolved = _resolved(path)
    if settings.allows_any_data_path():
        if resolved is None:
            raise ConfigError(f"image folder {str(path)!r} is not a usable folder path")
        return resolved
    if resolved is None or not inside_roots(resolved, settings, home):
        roots = ", ".join(str(r) for r in data_roots(settings, home))
        raise ConfigError(
            f"image folder {str(path)!r} is outside this instance's data roots ({roots}); "
            "put the data under one of them"
        )
    return resolved
