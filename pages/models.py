"""Models: the dataset, the teacher (train, pick or upload) and the student, side by side."""

from __future__ import annotations

import streamlit as st

from pages._shared import (
    choices_key,
    choices_slug,
    data_path,
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
from workbench.config.choices import DATASETS, MODEL_INFO, list_datasets, list_models
from workbench.config.run_config import RunConfig
from workbench.storage.store import ACTIVE
from workbench.ui.draft import TEACHER_MODES, reset_pairs, upload_message
from workbench.ui.escape import plain
from workbench.ui.naming import ACCURACY_LABEL, ACCURACY_METRIC
from workbench.ui.tables import (
    format_percent,
    layer_rows,
    progress_fraction,
    progress_text,
    teacher_choices,
)

require_app(__file__)
ss = st.session_state
st.title("Models")
url_notes()
st.caption("Pick the data, a teacher and a student. Your choices carry over to Distill.")

# ---------------------------------------------------------------------------------- dataset
st.selectbox(
    "Dataset",
    list_datasets(),
    key="dataset",
    persist_state="session",
    format_func=lambda name: f"{name}: {DATASETS[name].description}",
)
if ss["dataset"] == "image_folder":
    st.text_input(
        "Image folder",
        key="data_path",
        persist_state="session",
        placeholder="/path/to/folder with one sub-folder of images per class",
        help="A folder with one sub-folder per class, each holding that class's images.",
    )
sizes_box = st.container()  # the split sizes: loaded after the choices are on screen, below

# ---------------------------------------------------------------------------------- teacher
st.subheader("Teacher")
st.selectbox(
    "Teacher architecture",
    list_models(),
    key="teacher",
    persist_state="session",
    format_func=lambda name: f"{name}: {MODEL_INFO[name].description}",
)
st.radio(
    "Teacher from", TEACHER_MODES, key="teacher_mode", persist_state="session", horizontal=True
)
mode = ss["teacher_mode"]


def teacher_job(run_id: str, polling: bool) -> None:
    """Live progress of the teacher being trained; polls only while it is queued or running."""
    try:
        record = store().get_run(run_id)
    except KeyError:
        st.warning(f"Teacher run {run_id} is no longer in the store.")
        return
    active = record["status"] in ACTIVE
    st.progress(progress_fraction(record), text=f"Teacher {run_id}: {progress_text(record)}")
    if record["status"] == "completed":
        acc = (record.get("metrics") or {}).get(ACCURACY_METRIC)
        st.success(
            f"Teacher trained: {ACCURACY_LABEL} {format_percent(acc)}. Students on this recipe "
            "reuse it."
        )
    elif not active:
        st.error(plain(f"Teacher run {record['status']}: {record.get('error') or 'no message'}"))
    if polling and not active:
        st.rerun()  # a full rerun redraws this fragment without polling


source_box = st.container()  # the teacher source: drawn once the data is loaded, below

# ---------------------------------------------------------------------------------- student
st.subheader("Student")
st.selectbox(
    "Student architecture",
    list_models(),
    key="student",
    persist_state="session",
    format_func=lambda name: f"{name}: {MODEL_INFO[name].description}",
)

# ------------------------------------------------------------------------ after the choices
# What follows loads the data and imports torch (seconds on a cold server): the title and the
# choices above are on screen first, then these boxes fill in.
with sizes_box:
    from workbench.data.datasets import load_dataset

    dataset_ok = False
    if ss["dataset"] == "image_folder" and not data_path():
        st.info("Type the path of an image folder on the server to use it.")
    else:
        try:
            sizes = load_dataset(ss["dataset"], data_path=data_path()).split_sizes()
            dataset_ok = True
            st.caption(
                f"Splits: {sizes['train']:,} train · {sizes['validation']:,} validation (what "
                f"adaptive weighting sees) · {sizes['test']:,} test (the accuracy reported)"
            )
        except Exception as exc:  # DatasetUnavailableError says how to get the files
            show_error(exc)

with source_box:
    from workbench.runs import permitted as actions
    from workbench.training.teachers import find_teacher, import_uploaded_teacher

    if mode == TEACHER_MODES[0]:  # train one now
        ss["teacher_run"] = ""
        col_epochs, col_button = st.columns([3, 1], vertical_alignment="bottom")
        col_epochs.number_input(
            "Teacher epochs",
            min_value=1,
            max_value=500,
            step=1,
            key="teacher_epochs",
            persist_state="session",
            help="Students distilled from this teacher reuse it when they ask for the same epochs.",
        )
        with errors_shown():
            recipe = RunConfig(
                teacher=ss["teacher"],
                dataset=ss["dataset"],
                data_path=data_path(),
                teacher_epochs=int(ss["teacher_epochs"]),
            ).teacher_config()
            found = find_teacher(store(), recipe, user().name) if dataset_ok else None
            if col_button.button("Train teacher", key="train_teacher", disabled=not dataset_ok):
                ss["teacher_job"] = found or manager().submit(
                    recipe, name=f"teacher {ss['teacher']}", user=user()
                )
            elif found and ss.get("teacher_job") != found:
                acc = (store().get_run(found).get("metrics") or {}).get(ACCURACY_METRIC)
                st.caption(
                    f"This teacher is trained already (run {found}, {ACCURACY_LABEL} "
                    f"{format_percent(acc)}): students reuse it."
                )
        job = ss.get("teacher_job")
        if job and store().has_run(job):
            status = store().get_run(job)["status"]
            polling = status in ACTIVE
            live(teacher_job, polling=polling)(job, polling)

    elif mode == TEACHER_MODES[1]:  # pick a trained teacher
        choices = teacher_choices(
            actions.list_runs(store(), user(), role="teacher", status="completed"),
            dataset=ss["dataset"],
            teacher=ss["teacher"],
            data_path=data_path(),
        )
        if not choices:
            st.info(
                f"No trained {ss['teacher']} on {ss['dataset']} yet: train one now or upload a "
                "checkpoint."
            )
            ss["teacher_run"] = ""
        else:
            current = ss.get("teacher_run") if ss.get("teacher_run") in choices else None
            picked = st.selectbox(
                "Trained teacher",
                list(choices),
                index=list(choices).index(current) if current else 0,
                format_func=choices.get,
                key="teacher_pick",
            )
            ss["teacher_run"] = picked

    else:  # upload a checkpoint
        uploaded = st.file_uploader(
            "Teacher checkpoint (.pt / .pth state dict)",
            type=["pt", "pth"],
            key="teacher_upload",
            help=f"torch.save(model.state_dict(), path) of a {ss['teacher']} trained on "
            f"{ss['dataset']}; loaded with weights_only=True.",
        )
        if uploaded is None:
            ss["teacher_run"] = ""
            ss["teacher_upload_error"] = None
        else:
            done = ss.get("teacher_upload_done") or {}
            stamp = (uploaded.file_id, *choices_key())
            if done.get("stamp") != stamp:  # import each upload once, not on every rerun
                done = {"stamp": stamp, "run_id": "", "error": None}
                try:
                    with st.spinner("Checking the checkpoint..."):
                        done["run_id"] = import_uploaded_teacher(
                            store(),
                            uploaded.getvalue(),
                            uploaded.name,
                            teacher=ss["teacher"],
                            dataset=ss["dataset"],
                            data_path=data_path(),
                            owner=user().name,
                        )
                except Exception as exc:  # CheckpointError says what to save instead
                    done["error"] = exc
                ss["teacher_upload_done"] = done
            if done["error"] is not None:
                ss["teacher_upload_error"] = upload_message(done["error"], uploaded.name)
                st.error(plain(ss["teacher_upload_error"]), icon=":material/error:")
                st.caption(
                    "Launch stays off until a checkpoint is accepted or another source is chosen."
                )
                ss["teacher_run"] = ""
            else:
                ss["teacher_upload_error"] = None
                acc = (store().get_run(done["run_id"]).get("metrics") or {}).get(ACCURACY_METRIC)
                st.success(
                    f"Teacher imported as run {done['run_id']} ({ACCURACY_LABEL} {format_percent(acc)})."
                )
                ss["teacher_run"] = done["run_id"]


# ---------------------------------------------------------------------------------- side by side
if not dataset_ok:
    st.stop()
try:
    pair = model_pair(*choices_key())
except Exception as exc:
    show_error(exc)
    st.stop()

reset_pairs(ss, choices_key(), pair.suggested_pairs)  # new models: the suggested pairs

st.subheader("Side by side")
st.caption(
    f"Input {' x '.join(map(str, pair.input_shape))}, {pair.num_classes} classes on {pair.dataset}."
)
left, middle, right = st.columns([2, 1, 2])
with left:
    st.metric(f"Teacher {pair.teacher}", f"{pair.teacher_params:,} params")
    st.dataframe(layer_rows(pair.teacher_layers), hide_index=True, key="teacher_layers")
with middle:
    st.metric("Size ratio", f"{pair.size_ratio:,.1f}x", help="teacher params / student params")
with right:
    st.metric(f"Student {pair.student}", f"{pair.student_params:,} params")
    st.dataframe(layer_rows(pair.student_layers), hide_index=True, key="student_layers")

st.subheader("Layer pairs for feature and relation losses")
st.caption(
    "Suggested by relative depth; edit, add or delete rows. An empty table pairs the layers "
    "automatically."
)
if pair.pairing_error:
    st.warning(plain(pair.pairing_error))
pairs_editor(
    "models_pairs_" + choices_slug(),
    [li.path for li in pair.student_layers],
    [li.path for li in pair.teacher_layers],
)
st.page_link("pages/distill.py", label="Next: set the loss and launch", icon=":material/tune:")
