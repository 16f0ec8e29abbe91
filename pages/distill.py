"""Distill: the hybrid loss, the training settings, and the Launch button."""

from __future__ import annotations

import re

import streamlit as st
import torch

from pages._shared import (
    TEACHER_MODES,
    choices_caption,
    choices_key,
    choices_slug,
    data_path,
    field_error,
    live,
    manager,
    model_pair,
    pairs_editor,
    require_app,
    show_error,
    store,
)
from workbench.config import COMPONENTS, PRESETS
from workbench.engine import preflight
from workbench.errors import IncompatibleModelsError
from workbench.forms import FormError, build_configs, hybrid_formula, parse_seeds
from workbench.losses import FEATURE_LOSSES, RELATION_LOSSES
from workbench.suites import launch_suite
from workbench.views import progress_text
from workbench.weighting import WEIGHTINGS

require_app(__file__)
ss = st.session_state
st.title("Distill")
st.markdown(choices_caption())
st.page_link("pages/models.py", label="Change the models", icon=":material/account_tree:")


def apply_preset(name: str) -> None:
    for component, value in PRESETS[name].as_dict().items():
        ss[f"w_{component}"] = value


# ---------------------------------------------------------------------------------- the loss
st.subheader("Loss")
st.caption("Presets fill the weights:")
for column, name in zip(st.columns(len(PRESETS)), PRESETS, strict=True):
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    column.button(name, key=f"preset_{slug}", on_click=apply_preset, args=(name,), width="stretch")

weight_columns = st.columns(len(COMPONENTS))
for column, component in zip(weight_columns, COMPONENTS, strict=True):
    column.number_input(
        f"{component} weight",
        min_value=0.0,
        max_value=100.0,
        step=0.05,
        format="%.2f",
        key=f"w_{component}",
        persist_state="session",
    )
weights_slot = st.container()
st.latex(
    hybrid_formula(
        {c: ss[f"w_{c}"] for c in COMPONENTS},
        ss["temperature"],
        feature_kind=ss["feature_kind"],
        relation_kind=ss["relation_kind"],
    )
)

col_t, col_f, col_r, col_w = st.columns(4)
col_t.number_input(
    "Temperature T",
    min_value=0.05,
    max_value=100.0,
    step=0.5,
    key="temperature",
    persist_state="session",
    help="Softens both softmaxes of the response term (Hinton et al., 2015).",
)
col_f.selectbox(
    "Feature kind",
    list(FEATURE_LOSSES),
    key="feature_kind",
    persist_state="session",
    help="cosine, mse (FitNets) or at (attention transfer; needs conv layers on both sides).",
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
kinds_slot = st.container()

# ---------------------------------------------------------------------------------- layer pairs
st.subheader("Layer pairs")
pairs_slot = st.container()
try:
    pair = model_pair(*choices_key())
except Exception as exc:  # e.g. the dataset is not on disk: Models shows how to get it
    show_error(exc)
    pair = None
if pair is not None:
    if ss.get("pairs_for") != choices_key():  # Models was not visited for these choices
        ss["pairs_for"] = choices_key()
        ss["layer_pairs"] = pair.suggested_pairs
    pairs_editor(
        "distill_pairs_" + choices_slug(),
        [li.path for li in pair.student_layers],
        [li.path for li in pair.teacher_layers],
    )

# ---------------------------------------------------------------------------------- training
st.subheader("Training")
col_e, col_b, col_lr = st.columns(3)
col_e.number_input(
    "Epochs", min_value=1, max_value=500, step=1, key="epochs", persist_state="session"
)
col_b.number_input(
    "Batch size", min_value=2, max_value=4096, step=16, key="batch_size", persist_state="session"
)
col_lr.number_input(
    "Learning rate",
    min_value=1e-6,
    max_value=1.0,
    step=1e-4,
    format="%.4f",
    key="lr",
    persist_state="session",
)
train_slot = st.container()
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
seeds_slot = col_s.container()
device_slot = col_d.container()

# ---------------------------------------------------------------------------------- launch
col_launch, col_ablate, col_ab_seeds, col_ab_kind = st.columns(
    [1, 1.4, 1, 1.6], vertical_alignment="bottom"
)
launched = col_launch.button(
    "Launch", key="launch", type="primary", icon=":material/rocket_launch:"
)
ablate = col_ablate.button(
    "Launch ablation suite",
    key="launch_ablation",
    icon=":material/science:",
    help="The full loss, the loss with each active component removed, and label only, "
    "each for the ablation seeds; results on the Ablations page.",
)
col_ab_seeds.number_input(
    "Ablation seeds", min_value=1, max_value=10, value=3, key="ablation_seeds"
)
col_ab_kind.checkbox(
    "all on/off combinations (Shapley values)",
    key="ablation_factorial",
    help="A factorial suite: 2^k - 1 variants for k active components instead of k + 2.",
)
launch_slot = st.container()

if launched or ablate:
    ss.pop("launched", None)
    ss.pop("launched_suite", None)
    values = {
        "dataset": ss["dataset"],
        "data_path": data_path(),
        "teacher": ss["teacher"],
        "student": ss["student"],
        "teacher_run": ss["teacher_run"] if ss["teacher_mode"] != TEACHER_MODES[0] else "",
        "teacher_epochs": int(ss["teacher_epochs"]),
        "weights": {c: float(ss[f"w_{c}"]) for c in COMPONENTS},
        "temperature": float(ss["temperature"]),
        "feature_kind": ss["feature_kind"],
        "relation_kind": ss["relation_kind"],
        "weighting": ss["weighting"],
        "layer_pairs": tuple(ss.get("layer_pairs") or ()),
        "epochs": int(ss["epochs"]),
        "batch_size": int(ss["batch_size"]),
        "lr": float(ss["lr"]),
        "device": ss["device"],
    }
    errors: dict[str, str] = {}
    problem: Exception | None = None  # an error that belongs to no single widget
    try:
        seeds = parse_seeds(ss["seeds"])
    except FormError as exc:
        errors.update(exc.errors)
        seeds = (0,)
    configs = []
    try:
        configs = build_configs(values, seeds)
    except FormError as exc:
        errors.update(exc.errors)
    if ss.get("layer_pairs_error"):
        errors["layer_pairs"] = ss["layer_pairs_error"]
    if not errors:
        try:
            with st.spinner("Checking the data and the models..."):
                preflight(configs[0])
        except IncompatibleModelsError as exc:
            errors["layer_pairs"] = str(exc)
        except Exception as exc:  # e.g. DatasetUnavailableError, with how to get the files
            problem = exc
    if errors or problem:
        with weights_slot:
            field_error(errors, "weights", "temperature")
        with kinds_slot:
            field_error(errors, "feature_kind", "relation_kind", "weighting")
        with pairs_slot:
            field_error(errors, "layer_pairs")
        with train_slot:
            field_error(errors, "epochs", "batch_size", "lr", "teacher_epochs")
        with seeds_slot:
            field_error(errors, "seeds")
        with device_slot:
            field_error(errors, "device")
        with launch_slot:
            model_fields = [
                f
                for f in ("dataset", "data_path", "teacher", "student", "teacher_run")
                if f in errors
            ]
            if model_fields:
                st.error(
                    "Change this on the Models page: " + "; ".join(errors[f] for f in model_fields),
                    icon=":material/error:",
                )
            field_error(errors, "form")
            if problem is not None:
                show_error(problem)
            st.caption("Nothing was queued.")
    else:
        try:
            if ablate:
                suite = launch_suite(
                    configs[0].replace(seed=0),
                    store(),
                    manager().submit,
                    seeds=int(ss["ablation_seeds"]),
                    factorial=bool(ss["ablation_factorial"]),
                )
                ss["launched_suite"] = ss["last_suite"] = suite["id"]
            else:
                ss["launched"] = [manager().submit(config) for config in configs]
        except Exception as exc:
            with launch_slot:
                show_error(exc)


def launched_status(run_ids: list[str], polling: bool) -> None:
    """Status of the runs this session just launched; polls only while one of them is active."""
    records = [store().get_run(r) for r in run_ids if store().has_run(r)]
    for record in records:
        st.write(f"`{record['id']}` seed {record['config']['seed']}: {progress_text(record)}")
    if polling and not any(r["status"] in ("queued", "running") for r in records):
        st.rerun()


if ss.get("launched"):
    with launch_slot:
        ids = ss["launched"]
        st.success(f"Queued {len(ids)} run{'s' if len(ids) > 1 else ''}.")
        active = any(
            store().has_run(r) and store().get_run(r)["status"] in ("queued", "running")
            for r in ids
        )
        live(launched_status, polling=active)(ids, active)
        if st.button("Open Runs", key="open_runs", icon=":material/monitoring:"):
            st.switch_page("pages/runs.py")

if ss.get("launched_suite"):
    with launch_slot:
        suite = store().get_suite(ss["launched_suite"])
        st.success(
            f"Queued an ablation suite: {len(suite['variants'])} variants x {suite['seeds']} "
            f"seed(s) = {len(suite['runs'])} runs."
        )
        if st.button("Open Ablations", key="open_ablations", icon=":material/science:"):
            st.switch_page("pages/ablations.py")
