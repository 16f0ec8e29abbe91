"""Distill: the hybrid loss, the training settings, a name and tags, and the Launch button.

Launch is enabled only when the draft is valid (``workbench.ui.draft.check_draft``, on every
rerun); each message shows under the widgets of its field, once.
"""

from __future__ import annotations

import re

import streamlit as st
import torch

from pages._shared import (
    choices_caption,
    choices_key,
    choices_slug,
    errors_shown,
    live,
    manager,
    model_pair,
    pairs_editor,
    require_app,
    show_error,
    store,
    url_notes,
    user,
)
from workbench.ablation.suites import demo_preset, launch_suite
from workbench.config.choices import OPTIMIZERS, RESPONSE_KINDS, SCHEDULES
from workbench.config.recipes import METHODS, RECIPES
from workbench.config.run_config import COMPONENTS, PRESETS
from workbench.distill.feature import FEATURE_LOSSES
from workbench.distill.relation import RELATION_LOSSES
from workbench.distill.weighting import WEIGHTINGS
from workbench.storage.store import ACTIVE
from workbench.ui.draft import (
    check_draft,
    draft_key,
    launch_errors,
    launch_message,
    launch_runs,
    preset_draft,
    reset_pairs,
    route_errors,
)
from workbench.ui.escape import plain
from workbench.ui.form_values import hybrid_formula
from workbench.ui.tables import progress_text

require_app(__file__)
ss = st.session_state
slots: dict[str, object] = {}  # where each field's messages go (workbench.ui.draft.SLOTS)
st.title("Distill")
url_notes()
st.markdown(choices_caption())
st.page_link("pages/models.py", label="Change the models", icon=":material/account_tree:")


def apply_preset(name: str) -> None:
    for component, value in PRESETS[name].as_dict().items():
        ss[f"w_{component}"] = value


def apply_fields(method: str | None, recipe: str | None) -> None:
    """A method or recipe preset's fields into the draft (its widgets show them)."""
    ss.update(preset_draft(method=method, recipe=recipe, student=ss["student"]))


def active_preset() -> str | None:
    weights = {c: float(ss[f"w_{c}"]) for c in COMPONENTS}
    for name, preset in PRESETS.items():
        if all(abs(weights[c] - v) < 1e-9 for c, v in preset.as_dict().items()):
            return name
    return None


MESSAGE = "launch_message"  # the one message slot of the Launch buttons: the latest replaces it


def launch(suite: bool, demo: bool = False) -> None:
    """The Launch buttons' callback: queue through the submit gate (or keep its errors for
    their widgets); ``demo``: the demo ablation preset instead of the draft. A callback runs
    before the next script run, so no click after it is lost."""
    ss.pop("launched", None)
    ss.pop("launched_suite", None)
    ss[MESSAGE], ss["launch_errors"], ss["launch_problem"] = None, {}, None
    ss["launch_errors_for"] = key = draft_key(ss)
    configs, errors = ([], {}) if demo else check_draft(ss)
    if errors:
        ss["launch_errors"] = errors
        return
    who = user()

    def submit_many(submissions):  # queued as this session's user, all or none
        return manager().submit_many(submissions, who)

    def queue() -> None:
        if not suite:
            ss["launched"] = launch_runs(
                configs, submit_many, name=ss["run_name"], tags=ss["run_tags"]
            )
            ss[MESSAGE] = {"kind": "runs", "ids": ss["launched"], "for": key}
            return
        if demo:
            preset = demo_preset()
            base, seeds, factorial, name = (
                preset.config,
                preset.seeds,
                preset.factorial,
                preset.name,
            )
        else:
            base, seeds = configs[0].replace(seed=0), int(ss["ablation_seeds"])
            factorial, name = bool(ss["ablation_factorial"]), ss["run_name"].strip()
        record = launch_suite(
            base, store(), submit_many, seeds=seeds, factorial=factorial, name=name, owner=who.name
        )
        ss["launched_suite"] = ss["last_suite"] = record["id"]
        ss[MESSAGE] = {"kind": "suite", "id": record["id"], "for": key}

    _, ss["launch_errors"], ss["launch_problem"] = launch_errors(queue)


# ---------------------------------------------------------------------------------- the loss
st.subheader("Loss")
st.caption("Presets fill the weights (the one in use is highlighted):")
current_preset = active_preset()
for column, name in zip(st.columns(len(PRESETS)), PRESETS, strict=True):
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    column.button(
        name,
        key=f"preset_{slug}",
        on_click=apply_preset,
        args=(name,),
        width="stretch",
        type="primary" if name == current_preset else "secondary",
    )

weight_columns = st.columns(len(COMPONENTS))
for column, component in zip(weight_columns, COMPONENTS, strict=True):
    column.number_input(
        f"{component.capitalize()} weight",
        step=0.05,
        format="%.2f",
        key=f"w_{component}",
        persist_state="session",
    )
slots["weights"] = st.container()
st.latex(
    hybrid_formula(
        {c: ss[f"w_{c}"] for c in COMPONENTS},
        ss["temperature"],
        feature_kind=ss["feature_kind"],
        relation_kind=ss["relation_kind"],
        response_kind=ss["response_kind"],
    )
)
st.caption("Method presets set the loss as its paper does:")
METHOD_ROW = 3  # buttons per row: the papers' names stay on one line
for start in range(0, len(METHODS), METHOD_ROW):
    row = list(METHODS)[start : start + METHOD_ROW]
    for column, name in zip(st.columns(METHOD_ROW), row, strict=False):
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        column.button(
            name, key=f"method_{slug}", on_click=apply_fields, args=(name, None), width="stretch"
        )

col_t, col_k, col_f, col_r, col_w = st.columns(5)
col_t.number_input(
    "Temperature T",
    step=0.5,
    key="temperature",
    persist_state="session",
    help="Softens both softmaxes of the response term (Hinton et al., 2015).",
)
col_k.selectbox(
    "Response kind",
    list(RESPONSE_KINDS),
    key="response_kind",
    persist_state="session",
    help="kd: Hinton et al. 2015; dkd: decoupled KD (Zhao et al. 2022); dist: Pearson "
    "relations of the class distributions (Huang et al. 2022).",
)
col_f.selectbox(
    "Feature kind",
    list(FEATURE_LOSSES),
    key="feature_kind",
    persist_state="session",
    help=(
        "cosine, mse (FitNets) or at (attention transfer; needs conv layers on both sides); "
        "reviewkd (knowledge review: fuses the student's stages, uses every layer pair); ofd "
        "(overhaul of feature distillation: needs pre-activation teacher layers such as "
        "layer3.2.preact)."
    ),
)
col_r.selectbox(
    "Relation kind",
    list(RELATION_LOSSES),
    key="relation_kind",
    persist_state="session",
    help="sp: similarity-preserving Gram matrices; rkd: relational KD distances and angles.",
)
col_w.selectbox(
    "Weighting scheme",
    list(WEIGHTINGS),
    key="weighting",
    persist_state="session",
    help="fixed uses the weights above; the others adapt them during training.",
)
slots["kinds"] = st.container()
if ss["response_kind"] == "dkd":
    col_a, col_be, col_wu = st.columns(3)
    col_a.number_input(
        "DKD alpha",
        step=0.5,
        key="dkd_alpha",
        persist_state="session",
        help="Weight of the target-class term TCKD.",
    )
    col_be.number_input(
        "DKD beta",
        step=0.5,
        key="dkd_beta",
        persist_state="session",
        help="Weight of the non-target-class term NCKD (8 in the paper).",
    )
    col_wu.number_input(
        "DKD warm-up epochs",
        step=1,
        key="dkd_warmup",
        persist_state="session",
        help="At 240 epochs; a shorter run scales it down (20 -> 2 for 24).",
    )
elif ss["response_kind"] == "dist":
    col_be, col_ga = st.columns(2)
    col_be.number_input(
        "DIST beta",
        step=0.5,
        key="dist_beta",
        persist_state="session",
        help="Weight of the inter-class relation (per sample).",
    )
    col_ga.number_input(
        "DIST gamma",
        step=0.5,
        key="dist_gamma",
        persist_state="session",
        help="Weight of the intra-class relation (per class).",
    )
slots["method"] = st.container()

# ---------------------------------------------------------------------------------- layer pairs
st.subheader("Layer pairs")
slots["pairs"] = st.container()
try:
    pair = model_pair(*choices_key())
except Exception as exc:  # e.g. the dataset is not on disk: Models shows how to get it
    show_error(exc)
    pair = None
if pair is not None:
    reset_pairs(ss, choices_key(), pair.suggested_pairs)  # Models was not visited for these
    pairs_editor(
        "distill_pairs_" + choices_slug(),
        [li.path for li in pair.student_layers],
        [li.path for li in pair.teacher_layers],
        inline_error=False,  # shown once, with the other field messages below
    )

# ---------------------------------------------------------------------------------- training
st.subheader("Training")
col_e, col_b, col_lr = st.columns(3)
# No min/max on the widgets: Streamlit would silently keep the old value of an out-of-range
# entry; the config's own check disables Launch and says why under the field instead.
col_e.number_input("Epochs", step=1, key="epochs", persist_state="session")
col_b.number_input("Batch size", step=16, key="batch_size", persist_state="session")
col_lr.number_input(
    "Learning rate",
    step=1e-4,
    format="%.4f",
    key="lr",
    persist_state="session",
)
slots["training"] = st.container()
st.caption("Recipe presets set the optimizer, schedule and length:")
for column, name in zip(st.columns(len(RECIPES)), RECIPES, strict=True):
    column.button(
        name, key=f"recipe_{name}", on_click=apply_fields, args=(None, name), width="stretch"
    )
col_o, col_wd, col_m, col_sc, col_ms, col_wu = st.columns(6)
col_o.selectbox("Optimizer", list(OPTIMIZERS), key="optimizer", persist_state="session")
col_wd.number_input(
    "Weight decay", step=1e-4, format="%.4f", key="weight_decay", persist_state="session"
)
col_m.number_input(
    "Momentum",
    step=0.05,
    key="momentum",
    persist_state="session",
    disabled=ss["optimizer"] != "sgd",
    help="SGD's; AdamW has none.",
)
col_sc.selectbox("LR schedule", list(SCHEDULES), key="schedule", persist_state="session")
multistep = ss["schedule"] == "multistep"
col_ms.text_input(
    "Milestones",
    key="milestones",
    persist_state="session",
    disabled=not multistep,
    placeholder="e.g. 150, 180, 210",
    help="Epochs after which multistep multiplies the learning rate by the decay.",
)
col_wu.number_input(
    "Warm-up epochs",
    step=1,
    key="warmup_epochs",
    persist_state="session",
    help="A linear learning-rate warm-up before the schedule.",
)
col_aug, col_decay = st.columns(2)
col_aug.checkbox(
    "Random crops and flips",
    key="augment",
    persist_state="session",
    help="Shifts by up to 1/8 of the side (4 pixels on 32x32) and, for RGB, horizontal flips, "
    "as the papers' CIFAR recipe.",
)
if multistep:
    col_decay.number_input(
        "LR decay at each milestone", step=0.05, key="lr_decay", persist_state="session"
    )
slots["recipe"] = st.container()
col_s, col_d = st.columns(2)
col_s.text_input(
    "Seeds",
    key="seeds",
    persist_state="session",
    help="A number N runs seeds 0..N-1; a comma list (0, 4, 7 or 5,) runs those seeds. "
    "Each seed is one run.",
)
devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
if ss["device"] not in devices:
    ss["device"] = "auto"
col_d.selectbox("Device", devices, key="device", persist_state="session")
slots["seeds"], slots["device"] = col_s.container(), col_d.container()

# ---------------------------------------------------------------------------------- name, launch
col_name, col_tags = st.columns(2)
col_name.text_input(
    "Run name",
    key="run_name",
    persist_state="session",
    placeholder="optional: named by what differs from the runs beside it",
    help="Shown in every table and legend; several seeds get '· seed N' appended.",
)
col_tags.text_input(
    "Tags (comma separated)", key="run_tags", persist_state="session", placeholder="optional"
)
slots["name"] = col_name.container()

configs, draft_errors = check_draft(ss)
# The errors of the last click (the submit gate: data, models, pairs, quotas) until the draft changes.
clicked = ss.get("launch_errors") or {}
if ss.get("launch_errors_for") != draft_key(ss):
    clicked, ss["launch_errors"], ss["launch_problem"] = {}, {}, None
routed = route_errors({**clicked, **draft_errors})
for name, slot in slots.items():  # the launch slot is drawn below the buttons
    with slot:
        for message in routed.get(name, []):
            st.error(plain(message), icon=":material/error:")

col_launch, col_ablate, col_ab_seeds, col_ab_kind = st.columns(
    [1, 1.4, 1, 1.6], vertical_alignment="bottom"
)
blocked = "Fix the fields marked in red first." if draft_errors else None
col_launch.button(
    "Launch",
    key="launch",
    type="primary",
    icon=":material/rocket_launch:",
    disabled=bool(draft_errors),
    help=blocked,
    on_click=launch,
    args=(False,),
)
col_ablate.button(
    "Launch ablation suite",
    key="launch_ablation",
    icon=":material/science:",
    disabled=bool(draft_errors),
    help=blocked
    or "The full loss, the loss with each active component removed, and label only, "
    "each for the ablation seeds; results on the Ablations page.",
    on_click=launch,
    args=(True,),
)
col_ab_seeds.number_input(
    "Ablation seeds", min_value=1, max_value=10, value=3, key="ablation_seeds"
)
col_ab_kind.checkbox(
    "all on/off combinations (Shapley values)",
    key="ablation_factorial",
    help="A factorial suite: 2^k - 1 variants for k active components instead of k + 2.",
)
demo = demo_preset()
col_demo, col_demo_text = st.columns([1, 3.5], vertical_alignment="center")
col_demo.button(
    "Launch the demo ablation",
    key="launch_demo",
    icon=":material/play_circle:",
    on_click=launch,
    args=(True, True),
    help="Queues the preset suite as it is: the fields above are not used.",
)
col_demo_text.caption(plain(demo.shows))
slots["launch"] = st.container()
refused = bool(clicked) or ss.get("launch_problem") is not None
shown = launch_message(ss.get(MESSAGE), draft_key(ss), blocked=bool(draft_errors), refused=refused)
with slots["launch"]:
    for message in routed.get("launch", []):
        st.error(plain(message), icon=":material/error:")
    if ss.get("launch_problem") is not None:
        show_error(ss["launch_problem"])
    if shown and shown["kind"] == "nothing":
        st.caption("Nothing was queued.")


def launched_status(run_ids: list[str], polling: bool) -> None:
    """Status of the runs this session just launched; polls only while one of them is active."""
    records = [store().get_run(r) for r in run_ids if store().has_run(r)]
    for record in records:
        st.write(f"`{record['id']}` seed {record['config']['seed']}: {progress_text(record)}")
    if polling and not any(r["status"] in ACTIVE for r in records):
        st.rerun()


def open_runs(run_id: str) -> None:
    ss["runs_select_next"] = run_id  # the run just launched, not the one selected before


if shown and shown["kind"] == "runs":
    with slots["launch"], errors_shown():
        ids = shown["ids"]
        st.success(f"Queued {len(ids)} run{'s' if len(ids) > 1 else ''}.")
        active = any(store().has_run(r) and store().get_run(r)["status"] in ACTIVE for r in ids)
        live(launched_status, polling=active)(ids, active)
        if st.button(
            "Open Runs",
            key="open_runs",
            icon=":material/monitoring:",
            on_click=open_runs,
            args=(ids[0],),
        ):
            st.switch_page("pages/runs.py", query_params={"run": ids[0]})

if shown and shown["kind"] == "suite":
    with slots["launch"], errors_shown():
        suite = store().get_suite(shown["id"])
        st.success(
            f"Queued an ablation suite: {len(suite['variants'])} variants x {suite['seeds']} "
            f"seed(s) = {len(suite['runs'])} runs."
        )
        if st.button("Open Ablations", key="open_ablations", icon=":material/science:"):
            st.switch_page("pages/ablations.py", query_params={"suite": suite["id"]})
