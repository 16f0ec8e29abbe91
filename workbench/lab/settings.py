"""The settings of a hosted instance: one frozen, validated ``LabSettings``, read once at start.

Where they come from, first found wins:

1. the file named by ``$KDWB_CONFIG`` (an error if it does not exist);
2. ``workbench.toml`` in the working directory;
3. ``workbench.toml`` in the store home (``$KDWB_HOME``, else ``./cache``);
4. none: the defaults, which are the zero-configuration ``local`` mode.

A complete file (every key optional)::

    [identity]
    mode = "proxy"                  # local | oidc | proxy
    header = "X-Forwarded-User"     # proxy: the trusted header that names the user
    logout_url = "/oauth2/sign_out" # proxy: where "Sign out" leads
    admins = ["alice"]

    [limits]                        # per user; local mode has none unless this section is given
    queued_runs = 100
    running_runs = 2
    epochs_per_run = 200
    store_mib = 10240

    [data]
    roots = ["/srv/datasets"]       # image_folder paths must lie under one of these
    any_path = false                # local mode only: allow any folder

    [uploads]
    max_mib = 100                   # the same default as Streamlit's maxUploadSize

    [workers]
    app_executes = "auto"           # auto | threads | none (see workbench.runs.job_manager)
    app_cpu_slots = 2               # CPU runs the app trains at once (default: one per core)
    executor = "ray"                # what `python -m workbench worker` runs: threads | ray
    ray_address = "10.0.0.5:6379"   # ray: the cluster's head (`ray start --head` prints it)
    cpus_per_run = 1                # ray: CPUs each run reserves on its node
    gpus_per_run = 0.25             # ray: GPUs each GPU run reserves (a fraction shares one)

Every mistake (an unknown section or key, a wrong type, a value out of range) is one
``SettingsError`` line that names the file, the key and what to write instead.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workbench.config.files import read_toml
from workbench.errors import ConfigError, cut, quoted

__all__ = [
    "GPUS_PER_RUN",
    "IDENTITY_MODES",
    "WORKER_EXECUTORS",
    "gpus_per_run_ok",
    "LabSettings",
    "SettingsError",
    "current",
    "is_user_header",
    "load",
    "settings_path",
]

IDENTITY_MODES = ("local", "oidc", "proxy")
EXECUTE_MODES = ("auto", "threads", "none")  # the same as workbench.runs.job_manager.EXECUTE_MODES
WORKER_EXECUTORS = ("threads", "ray")  # threads on this machine, or tasks on a Ray cluster
CONFIG_ENV = "KDWB_CONFIG"
FILE_NAME = "workbench.toml"
_HEADER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
# A header that names the user: oauth2-proxy's X-Forwarded-User / -Email / -Preferred-Username,
# X-Auth-Request-User, Remote-User, X-WebAuth-User, X-MS-Client-Principal-Name, ...
_USER_WORDS = re.compile(r"user|email|principal|login", re.IGNORECASE)
_NOT_USER = {"user-agent", "proxy-authorization", "authorization", "cookie", "host"}


def is_user_header(name: str) -> bool:
    """Whether ``name`` is a header meant to carry a user; headers a browser or a proxy sets for
    another purpose (``Host``, ``Cookie``, ``User-Agent``, ``Sec-*``) could sign anyone in."""
    lower = name.lower()
    return (
        bool(_USER_WORDS.search(lower)) and lower not in _NOT_USER and not lower.startswith("sec-")
    )


class SettingsError(ConfigError):
    """The instance's settings file is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class UserQuotas:
    """Per-user limits of a shared instance (a suite counts as its runs)."""

    queued_runs: int = 100  # runs waiting in the queue at once
    running_runs: int = 2  # runs training at once
    epochs_per_run: int = 200  # a run's epochs (and its teacher's, when one is trained)
    store_mib: int = 10_240  # checkpoints and run files kept in the store


@dataclass(frozen=True)
class LabSettings:
    """Everything a hosted instance is configured with (see the module docstring)."""

    identity_mode: str = "local"
    user_header: str = "X-Forwarded-User"
    logout_url: str = "/oauth2/sign_out"
    admins: tuple[str, ...] = ()
    quotas: UserQuotas = field(default_factory=UserQuotas)
    data_roots: tuple[str, ...] = ()  # empty: $KDWB_HOME/datasets
    any_data_path: bool | None = None  # None: true in local mode, false otherwise
    upload_max_mib: int = 100  # = maxUploadSize in .streamlit/config.toml (MB)
    app_executes: str = "auto"
    app_cpu_slots: int = 0  # 0: one per core of this machine
    worker_executor: str = "threads"
    ray_address: str = ""  # "": the cluster this machine started (`ray start --head`)
    cpus_per_run: int = 1
    gpus_per_run: float | None = None  # None: 1 when the cluster has GPUs, else 0
    quotas_set: bool = False  # a [limits] section was given
    source: str = ""  # the file they were read from ("" for the defaults)

    @property
    def local(self) -> bool:
        return self.identity_mode == "local"

    def user_quotas(self) -> UserQuotas | None:
        """The per-user limits in force: none in local mode unless a [limits] section sets
        them (one person on their own machine), the configured or default ones otherwise."""
        return self.quotas if self.quotas_set or not self.local else None

    def cpu_slots(self) -> int:
        """CPU runs the app's own executor trains at once: ``[workers] app_cpu_slots``, else
        one per core (a suite of small runs on 2 cores finishes about 1.9x sooner with 2
        slots than with 1: ``bench/suite_slots.py``)."""
        return self.app_cpu_slots or max(1, os.cpu_count() or 1)

    def max_running(self) -> int | None:
        """The per-user limit of runs training at once (None: no limits in force)."""
        limits = self.user_quotas()
        return limits.running_runs if limits else None

    @property
    def upload_max_bytes(self) -> int:
        return self.upload_max_mib * 2**20

    def allows_any_data_path(self) -> bool:
        """Whether an ``image_folder`` path may lie anywhere (local mode, unless turned off)."""
        return self.local if self.any_data_path is None else self.any_data_path

    def roots(self, home: Path) -> list[Path]:
        """The folders image_folder paths must lie under (resolved)."""
        roots = self.data_roots or (str(home / "datasets"),)
        return [Path(r).expanduser().resolve() for r in roots]


# ---------------------------------------------------------------------- reading
# section -> key -> (field of LabSettings or "limits.<field>", type, check)
def _positive(low: int, high: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high, (
        f"a whole number from {low} to {high}"
    )


def _choice(options: tuple[str, ...]):
    return lambda v: v in options, "one of " + ", ".join(repr(o) for o in options)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)


def _folders(v: Any) -> bool:
    """Absolute folders only: a relative root would follow the working directory of whichever
    process reads it (the app, a worker), so the same file would allow different folders."""
    return _names(v) and all(Path(x.strip()).expanduser().is_absolute() for x in v)


def _ray_address(v: Any) -> bool:
    """``host:port`` or ``auto`` (what ``ray.init(address=...)`` takes), no blanks."""
    if not isinstance(v, str) or any(ch.isspace() or not ch.isprintable() for ch in v):
        return False
    return v == "auto" or bool(re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", v))


def gpus_per_run_ok(v: Any) -> bool:
    """A fraction of one GPU (0 to 1: runs share it) or a whole number of GPUs up to 8, as
    Ray's ``num_gpus`` takes them."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return 0 <= v <= 1 or (float(v).is_integer() and 1 <= v <= 8)


GPUS_PER_RUN = "0 (CPU only), a fraction such as 0.25 (runs share a GPU) or a whole number up to 8"


def _logout_url(v: Any) -> bool:
    r"""A path on this site (one ``/``, then no second ``/`` or ``\``: browsers read ``//host`` and
    ``/\host`` as another site) or an absolute ``https://`` URL with a host. No blanks or
    control characters anywhere: browsers drop tabs and newlines, so ``/<tab>/host`` is
    ``//host``."""
    if not isinstance(v, str) or any(ch.isspace() or not ch.isprintable() for ch in v):
        return False
    if "\\" in v:
        return False
    if v.startswith("/"):
        return not v.startswith("//")
    parts = urlsplit(v)
    return parts.scheme == "https" and bool(parts.hostname) and v.startswith("https://")


_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "identity": {
        "mode": ("identity_mode", _choice(IDENTITY_MODES)),
        "header": (
            "user_header",
            (
                lambda v: isinstance(v, str) and bool(_HEADER.fullmatch(v)) and is_user_header(v),
                "the name of a header that carries a user (e.g. X-Forwarded-User, "
                "X-Auth-Request-Email, Remote-User), not one a browser or proxy sets for "
                "something else (Host, Cookie, Authorization, User-Agent, ...)",
            ),
        ),
        "logout_url": (
            "logout_url",
            (
                _logout_url,
                "a path on this site that starts with a single / (e.g. /oauth2/sign_out) or an "
                "absolute https:// URL",
            ),
        ),
        "admins": ("admins", (_names, "a list of user names")),
    },
    "limits": {
        "queued_runs": ("limits.queued_runs", _positive(1, 100_000)),
        "running_runs": ("limits.running_runs", _positive(1, 1_000)),
        "epochs_per_run": ("limits.epochs_per_run", _positive(1, 500)),
        "store_mib": ("limits.store_mib", _positive(1, 2**30)),
    },
    "data": {
        "roots": (
            "data_roots",
            (_folders, "a list of absolute folders (e.g. /srv/datasets)"),
        ),
        "any_path": ("any_data_path", (lambda v: isinstance(v, bool), "true or false")),
    },
    "uploads": {"max_mib": ("upload_max_mib", _positive(1, 100_000))},
    "workers": {
        "app_executes": ("app_executes", _choice(EXECUTE_MODES)),
        "app_cpu_slots": ("app_cpu_slots", _positive(1, 64)),
        "executor": ("worker_executor", _choice(WORKER_EXECUTORS)),
        "ray_address": (
            "ray_address",
            (_ray_address, "the head of a Ray cluster as host:port (e.g. 10.0.0.5:6379) or auto"),
        ),
        "cpus_per_run": ("cpus_per_run", _positive(1, 64)),
        "gpus_per_run": ("gpus_per_run", (gpus_per_run_ok, GPUS_PER_RUN)),
    },
}


def parse(data: dict[str, Any], source: str = "") -> LabSettings:
    """``LabSettings`` from the parsed TOML ``data``; a ``SettingsError`` names what is wrong."""
    where = f"{source}: " if source else ""
    top: dict[str, Any] = {"source": source}
    limits: dict[str, Any] = {}
    for section, values in data.items():
        if section not in _SCHEMA:
            raise SettingsError(
                f"{where}unknown section [{cut(section)}]; the sections are "
                + ", ".join(f"[{s}]" for s in _SCHEMA)
            )
        if not isinstance(values, dict):
            raise SettingsError(f"{where}{section} must be a [{section}] table")
        for key, value in values.items():
            if key not in _SCHEMA[section]:
                known = ", ".join(_SCHEMA[section])
                raise SettingsError(
                    f"{where}unknown key {section}.{cut(key)}; [{section}] takes {known}"
                )
            name, (check, wanted) = _SCHEMA[section][key]
            if not check(value):
                raise SettingsError(f"{where}{section}.{key} must be {wanted}, got {quoted(value)}")
            if isinstance(value, list):
                value = tuple(v.strip() for v in value)
            if name.startswith("limits."):
                limits[name.split(".", 1)[1]] = value
                top["quotas_set"] = True
            else:
                top[name] = value
    settings = LabSettings(**top, quotas=UserQuotas(**limits))
    if settings.any_data_path and not settings.local:
        raise SettingsError(
            f"{where}data.any_path = true is for local mode only; a shared instance must keep "
            "image folders under data.roots"
        )
    return settings


def settings_path() -> Path | None:
    """The settings file in effect (see the module docstring), or None for the defaults."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.exists():  # a folder or a FIFO is named by the reader, not "no such file"
            raise SettingsError(
                f"{CONFIG_ENV}={named}: no such file; point it at the instance's workbench.toml "
                "or unset it"
            )
        return path
    from workbench.storage.store import default_home

    for candidate in (Path.cwd() / FILE_NAME, default_home() / FILE_NAME):
        if candidate.is_file():
            return candidate
    return None


def load(path: str | Path | None = None) -> LabSettings:
    """Read and validate the settings at ``path`` (default: ``settings_path()``)."""
    path = Path(path) if path is not None else settings_path()
    if path is None:
        return LabSettings()
    return parse(read_toml(path, "settings file", SettingsError), str(path))


@functools.lru_cache(maxsize=1)
def _cached(key: tuple[str, str, str]) -> LabSettings:
    return load()


def current() -> LabSettings:
    """The settings of this process: read once, again only when ``$KDWB_CONFIG``, the working
    directory or ``$KDWB_HOME`` changes (tests switch between them)."""
    key = (os.environ.get(CONFIG_ENV, ""), os.getcwd(), os.environ.get("KDWB_HOME", ""))
    return _cached(key)
