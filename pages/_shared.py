"""Streamlit helpers shared by the pages: the process-wide job manager, session defaults, errors.

Imported as ``pages._shared``: Streamlit puts the folder of ``app.py`` on ``sys.path``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from workbench.config.bounds import BOUNDS
from workbench.config.choices import (
    FEATURE_KINDS,
    OPTIMIZERS,
    RELATION_KINDS,
    RESPONSE_KINDS,
    SCHEDULES,
    WEIGHTING_SCHEMES,
    list_datasets,
    list_models,
)
from workbench.config.run_config import COMPONENTS, PRESETS, RunConfig
from workbench.errors import WorkbenchError
from workbench.lab import settings as lab_settings
from workbench.lab.identity import (
    User,
    check_oidc_ready,
    local_user,
    user_from_claims,
    user_from_headers,
)
from workbench.lab.settings import LabSettings
from workbench.storage.store import Store, default_home
from workbench.ui.draft import TEACHER_MODES
from workbench.ui.escape import plain
from workbench.ui.form_values import FormError, pairs_from_rows
from workbench.ui.url_state import dropped_notes, read_params, to_params

if TYPE_CHECKING:
    from workbench.distill.model_pair import ModelPair
    from workbench.runs.job_manager import JobManager

log = logging.getLogger("kdwb.app")

POLL_S = 1.0  # how often live views refresh while something runs
DEFAULT_PRESET = next(iter(PRESETS))


@st.cache_resource(show_spinner=False)
def _manager_for(home: str) -> JobManager:
    # One per store home and process, shared by every browser session; its worker threads call
    # loop.run only and never touch Streamlit.
    from workbench.runs.job_manager import JobManager

    settings = lab_settings.current()
    return JobManager(
        Store(home),
        device_slots={"cpu": settings.cpu_slots()},
        execute=settings.app_executes,
        settings=settings,
    )


def settings() -> LabSettings:
    """The instance's settings (``workbench.toml``), read once per process."""
    return lab_settings.current()


def current_user() -> User:
    """Who uses this session, from the identity source of the settings. With no one signed in
    (oidc) it shows a sign-in button, and with no user header (proxy) the reason, and stops
    the page: nothing below it runs for an unknown user."""
    config = settings()
    if config.identity_mode == "local":
        return local_user(config)
    if config.identity_mode == "proxy":
        headers = st.context.headers  # every value of a repeated header: refused, not guessed
        return user_from_headers({k: headers.get_all(k) for k in headers}, config)
    check_oidc_ready(_secrets())
    claims = st.user.to_dict()
    if not claims.get("is_logged_in"):
        hide_navigation()
        st.title("KD Workbench")
        st.info("This lab instance needs you to sign in.", icon=":material/login:")
        st.button("Sign in", on_click=st.login, type="primary", icon=":material/login:")
        st.stop()
    return user_from_claims(claims, config)


def hide_navigation() -> None:
    """Declare an empty, hidden navigation: a script that stops before ``st.navigation`` (no
    user yet) would otherwise get Streamlit's list of the ``pages/`` folder in the sidebar."""
    st.navigation([st.Page(lambda: None, title="KD Workbench", url_path="home")], position="hidden")


def _secrets() -> dict:
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets.toml at all
        return {}


def user() -> User:
    """The session's user (``current_user`` as ``app.py`` resolved it for this rerun)."""
    found = st.session_state.get(USER)
    return found if isinstance(found, User) else current_user()


def identity_sidebar(who: User) -> None:
    """The signed-in user, and a way to sign out, at the bottom of the sidebar."""
    config = settings()
    with st.sidebar:
        st.divider()
        st.caption(f"Signed in as **{plain(who.name)}**" + (" · admin" if who.admin else ""))
        if config.identity_mode == "oidc":
            st.button("Sign out", key="sign_out", on_click=st.logout, icon=":material/logout:")
        elif config.identity_mode == "proxy":
            st.link_button("Sign out", config.logout_url, icon=":material/logout:")
        else:
            st.caption("Local mode: one user, no sign-in.")


def manager() -> JobManager:
    """The process-wide job manager of the store at ``$KDWB_HOME`` (or ./cache)."""
    return _manager_for(str(default_home().resolve()))


def store() -> Store:
    return manager().store


def draft_defaults() -> dict[str, object]:
    """The Distill draft (with the Models page's choices) as a new session starts it."""
    defaults = RunConfig()
    values = {
        "dataset": defaults.dataset,
        "data_path": "",
        "teacher": defaults.teacher,
        "student": defaults.student,
        "teacher_mode": TEACHER_MODES[0],
        "teacher_epochs": defaults.teacher_epochs,
        "teacher_run": "",
        "layer_pairs": None,  # None: not set yet; () means pair automatically
        "temperature": defaults.temperature,
        "response_kind": defaults.response_kind,
        **{
            name: getattr(defaults, name)
            for name in ("dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma")
        },
        **{
            name: getattr(defaults, name)
            for name in ("optimizer", "momentum", "weight_decay", "schedule", "lr_decay")
        },
        "milestones": "",
        "warmup_epochs": defaults.warmup_epochs,
        "augment": defaults.augment,
        "feature_kind": defaults.feature_kind,
        "relation_kind": defaults.relation_kind,
        "weighting": defaults.weighting,
        "epochs": defaults.epochs,
        "batch_size": defaults.batch_size,
        "lr": defaults.lr,
        "seeds": "1",
        "device": "auto",
        "run_name": "",
        "run_tags": "",
    }
    values.update({f"w_{k}": v for k, v in PRESETS[DEFAULT_PRESET].as_dict().items()})
    return values


# What the draft's widgets can hold: a value from a link outside these is dropped with a note.
DRAFT_ALLOWED = {
    "dataset": list_datasets(),
    "teacher": list_models(),
    "student": list_models(),
    "teacher_mode": TEACHER_MODES,
    "response_kind": RESPONSE_KINDS,
    "feature_kind": FEATURE_KINDS,
    "relation_kind": RELATION_KINDS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    **{
        name: BOUNDS[name]
        for name in ("dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma")
    },
    **{name: BOUNDS[name] for name in ("momentum", "weight_decay", "lr_decay", "warmup_epochs")},
    "weighting": WEIGHTING_SCHEMES,
    "device": ("auto", "cpu", "cuda"),
    **{name: BOUNDS[name] for name in ("teacher_epochs", "epochs", "batch_size", "lr")},
    "temperature": BOUNDS["temperature"],
    **{f"w_{c}": BOUNDS["weight"] for c in COMPONENTS},
}


def init_session() -> None:
    """Defaults for the choices that every page shares (kept in ``st.session_state``); a new
    session (a reload) starts from the draft in the URL (``sync_draft_url``). Values of the link
    that no widget can hold are dropped; the page shows why (``url_notes``)."""
    ss = st.session_state
    defaults = draft_defaults()
    restored: dict[str, object] = {}
    if URL_READ not in ss:
        ss[URL_READ] = True
        params = st.query_params.to_dict()
        restored, dropped = read_params(params, defaults, DRAFT_ALLOWED)
        ss.update(restored)
        ss[URL_NOTES] = dropped_notes(params, dropped)
    for key, value in defaults.items():
        ss.setdefault(key, value)
    if "layer_pairs" in restored:  # pairs from the link, not the suggested ones
        ss["pairs_for"] = choices_key()  # after the defaults: the link may name no models
    ss.setdefault("compare_runs", [])


def url_notes(notes: Sequence[str] = ()) -> None:
    """Say which values of the link were ignored (the draft's, read by ``init_session``, and
    the page's own ``notes``, escaped already), once, in one short note."""
    shown = [*(st.session_state.pop(URL_NOTES, None) or ()), *notes]
    if shown:
        st.info("  \n".join(shown), icon=":material/link_off:")


def linked_pick(param: str, labels: Mapping[str, str], what: str) -> None:
    """On a reload or a link, ``?param=ID`` selects that one of ``labels`` (session key
    ``{param}_pick``); an id not among them (deleted, or someone else's private one) selects
    none, never another, and is said in one note with the other ignored link values."""
    ss, pick, missing = st.session_state, f"{param}_pick", f"{param}_missing"
    if page_entered():
        linked = st.query_params.get(param)
        ss[missing] = linked if linked and linked not in labels else None
        if linked:
            ss[pick] = linked if linked in labels else None
    if ss.get(missing) and ss.get(pick) is None:
        shown = ss[missing] if len(ss[missing]) <= 60 else ss[missing][:59] + "…"
        note = f"{what} {shown} not found: it was deleted, or it is private. Pick one below."
        url_notes([plain(note)])
    else:
        url_notes()


# The draft's fields each page holds in its URL: Distill the whole draft, Models its own choices
# (``require_app`` calls ``sync_draft_url``). Other pages' URLs hold only their own state.
DRAFT_IN_URL = {
    "distill": None,  # every field of the draft
    "models": (
        "dataset", "data_path", "teacher", "student", "teacher_mode", "teacher_epochs",
        "teacher_run", "layer_pairs",
    ),
}  # fmt: skip


def sync_draft_url(page: str) -> None:
    """Put the draft's changed fields in the URL of the pages that show them (``DRAFT_IN_URL``),
    so a reload there keeps them; layer pairs only when they are not the ones suggested. The
    draft lives in the session: another page's URL carries none of it."""
    if page not in DRAFT_IN_URL:
        return
    ss = st.session_state
    defaults = draft_defaults() | {"layer_pairs": ss.get("pairs_suggested")}
    fields = DRAFT_IN_URL[page] or tuple(defaults)
    defaults = {k: v for k, v in defaults.items() if k in fields}
    set_params(to_params({k: ss.get(k) for k in defaults}, defaults), owned=defaults)


def set_params(values: dict[str, str], owned: object = ()) -> None:
    """Set query parameters; those of ``owned`` that are not in ``values`` are removed.

    Every change of the URL adds an entry to the browser's history (Streamlit pushes it), so
    the URL is written only when the page's state changes: not on the run that enters the page
    (what a page derives from its URL as it opens, such as the newest run, is no new state, and
    Back must not land on the same page), and not when the values are those written last."""
    written = st.session_state.setdefault(URL_WRITTEN, {})
    slot = tuple(sorted({*owned, *values}))
    if written.get(slot) == values or slot not in written:
        written[slot] = dict(values)
        return
    written[slot] = dict(values)
    params = st.query_params
    for key in owned:
        if key not in values and key in params:
            del params[key]
    for key, value in values.items():
        if params.get(key) != value:
            params[key] = value


def show_error(exc: BaseException, where=None) -> None:
    """Show an error without a traceback: the library's message, or a short line for a bug."""
    target = where if where is not None else st
    if isinstance(exc, WorkbenchError):  # its message may quote a user's value: shown as text
        target.error(plain(exc), icon=":material/error:")
        return
    log.exception("unexpected error in the app", exc_info=exc)
    first = plain(str(exc).strip().splitlines()[0][:200]) if str(exc).strip() else ""
    target.error(
        f"Something went wrong ({type(exc).__name__}{': ' + first if first else ''}). "
        "The details are in the server log.",
        icon=":material/error:",
    )


@contextmanager
def errors_shown(where=None) -> Iterator[None]:
    """Run a page action; any error becomes an ``st.error`` (Streamlit's reruns pass through)."""
    try:
        yield
    except Exception as exc:  # st.rerun/st.stop raise BaseExceptions, which pass
        show_error(exc, where)


def live(fn: Callable[..., None], *, polling: bool) -> Callable[..., None]:
    """``fn`` as a fragment that reruns itself every ``POLL_S`` while ``polling``; its errors
    become an ``st.error``. Pass ``polling`` on to ``fn`` too: when it sees that nothing is
    active any more it calls ``st.rerun()``, and the full rerun draws it without polling."""

    @functools.wraps(fn)
    def body(*args: object, **kwargs: object) -> None:
        with errors_shown():
            fn(*args, **kwargs)

    return st.fragment(body, run_every=POLL_S if polling else None)


@st.cache_data(show_spinner="Building the models...", max_entries=32)
def model_pair(teacher: str, student: str, dataset: str, data_path: str) -> ModelPair:
    from workbench.distill.model_pair import inspect_pair  # torch: after the first paint

    return inspect_pair(teacher, student, dataset, data_path)


def data_path() -> str:
    """The image folder, for the image_folder dataset only (other datasets ignore a path)."""
    ss = st.session_state
    return ss["data_path"].strip() if ss["dataset"] == "image_folder" else ""


def choices_key() -> tuple[str, str, str, str]:
    ss = st.session_state
    return (ss["teacher"], ss["student"], ss["dataset"], data_path())


def choices_slug() -> str:
    """A short stable key for the current teacher/student/dataset choice (widget keys)."""
    return hashlib.sha1(repr(choices_key()).encode()).hexdigest()[:10]


def pairs_editor(
    key: str,
    student_paths: Sequence[str],
    teacher_paths: Sequence[str],
    *,
    inline_error: bool = True,
) -> tuple[tuple[str, str], ...]:
    """An editable table of (student layer, teacher layer) pairs bound to
    ``st.session_state["layer_pairs"]``; cells are selectboxes of the valid layer paths.

    The editor starts from the pairs in the session when it appears and writes the edited pairs
    back; its own edit state is dropped by Streamlit when the page changes, so the next page
    starts from the edited pairs. While a row is half filled in, the last valid pairs stay and
    ``st.session_state["layer_pairs_error"]`` holds the message.
    """
    ss = st.session_state
    base_key = f"{key}__base"
    if key not in ss or base_key not in ss:  # freshly shown: start from the shared pairs
        ss[base_key] = pd.DataFrame(
            [{"student": s, "teacher": t} for s, t in ss.get("layer_pairs") or ()],
            columns=["student", "teacher"],
            dtype="object",
        )
    edited = st.data_editor(
        ss[base_key],
        key=key,
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        column_config={
            "student": st.column_config.SelectboxColumn(
                "student layer", options=list(student_paths), required=True
            ),
            "teacher": st.column_config.SelectboxColumn(
                "teacher layer", options=list(teacher_paths), required=True
            ),
        },
    )
    try:
        pairs = pairs_from_rows(edited.to_dict("records"))
    except FormError as exc:  # a half-filled row: keep the last valid pairs, block Launch
        ss["layer_pairs_error"] = exc.errors["layer_pairs"]
        if inline_error:
            st.error(exc.errors["layer_pairs"], icon=":material/error:")
        return tuple(ss.get("layer_pairs") or ())
    ss["layer_pairs_error"] = None
    ss["layer_pairs"] = pairs
    return pairs


def choices_caption() -> str:
    ss = st.session_state
    dataset = plain(ss["dataset"]) + (f" ({plain(data_path())})" if data_path() else "")
    name = plain(ss["teacher"])
    if ss["teacher_mode"] == TEACHER_MODES[0]:
        teacher = f"{name} (trained for {plain(ss['teacher_epochs'])} epochs, or reused)"
    elif not ss.get("teacher_run"):  # never a quiet fallback to training one
        teacher = f"{name} (none yet: {plain(ss['teacher_mode'])} on the Models page)"
    else:
        teacher = f"{name} (run {plain(ss['teacher_run'])})"
    return f"**Teacher** {teacher} → **student** {plain(ss['student'])} on **{dataset}**"


# ---------------------------------------------------------------------------------- callbacks
def guarded(fn: Callable[..., object]) -> Callable[..., None]:
    """A widget callback that keeps its error for ``show_action_error`` instead of raising."""

    def callback(*args: object, **kwargs: object) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            st.session_state["_action_error"] = exc

    return callback


def show_action_error() -> None:
    """Show (once) the error of the last guarded callback, if it failed."""
    exc = st.session_state.pop("_action_error", None)
    if exc is not None:
        show_error(exc)


def require_app(page_file: str) -> None:
    """Make a deep link on a fresh server go through ``app.py``.

    Before ``app.py`` has declared the navigation in a session, Streamlit resolves a URL such as
    ``/compare`` against the ``pages/`` folder and runs the page file alone (its older multipage
    mode: no navigation, no session defaults). Hand over to ``app.py``, which switches back to the
    page through ``st.navigation``.
    """
    if not st.session_state.get(APP_STARTED):
        # the query parameters go along both ways: they hold the page's state (a reload)
        params = st.query_params.to_dict()
        st.session_state[DEEP_LINK] = ("pages/" + Path(page_file).name, params)
        st.switch_page("app.py", query_params=params)
    # A page reads its state from the URL when it is entered (a reload, a link, a page switch)
    # and writes it back as it changes (``page_entered``).
    # Back and Forward enter the page again: it reads the state of the URL it went back to.
    name = Path(page_file).stem
    entered = st.session_state.get(PAGE) != name or _history_navigation()
    st.session_state[PAGE_ENTERED] = entered
    st.session_state[PAGE] = name
    if entered:
        st.session_state[URL_WRITTEN] = {}  # the URL as the page opens is its state
    sync_draft_url(name)


def _history_navigation() -> bool:
    """Whether this run is the browser's Back or Forward (Streamlit reruns the page then)."""
    ctx = get_script_run_ctx()
    return bool(ctx is not None and getattr(ctx, "is_history_navigation", False))


URL_READ = "_kdwb_url_read"
URL_NOTES = "_kdwb_url_notes"
URL_WRITTEN = "_kdwb_url_written"  # {the page's parameters: their values as last written}
USER = "_kdwb_user"
PAGE = "_kdwb_page"
PAGE_ENTERED = "_kdwb_page_entered"


def page_entered() -> bool:
    """Whether this run is the first of a visit to the page (then its URL state applies)."""
    return bool(st.session_state.get(PAGE_ENTERED, True))


APP_STARTED = "_kdwb_app_started"
DEEP_LINK = "_kdwb_deep_link"
