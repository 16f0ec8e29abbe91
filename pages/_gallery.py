"""Compare's per-image views (issue 21 items 5 and 6): the gallery of one run's disagreements
with its teacher, and the class-activation maps of the images picked there. UI only: the data
comes from ``workbench.ui.insight``, ``workbench.insight.disagreements`` and
``workbench.insight.cam_runs``; the figures from ``workbench.ui.plots``."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import streamlit as st

from pages._shared import errors_shown
from workbench.errors import WorkbenchError
from workbench.insight import cam_runs, pictures
from workbench.insight import disagreements as dis
from workbench.ui import insight
from workbench.ui.escape import plain
from workbench.ui.plots import cam, gallery

ss = st.session_state
PER_PAGE = 12
ALL_CLASSES = "all classes"
CAM_RUNS = 6  # the most runs whose maps one click computes (beside the teacher's)


def gallery_section(
    records: Sequence[Mapping[str, Any]],
    probes: Mapping[str, Mapping[str, Any] | None],
    names: Mapping[str, str],
    key: Hashable,
    chart: Callable[..., object],
    user: Any,
    store: Any,
) -> None:
    """The disagreement gallery of one selected run, then Grad-CAM of the images picked."""
    students = [r for r in records if r.get("role", "student") == "student" and probes.get(r["id"])]
    ready = [r["id"] for r in students if insight.gallery_inputs(probes[r["id"]]) is not None]
    if not students:
        return
    st.subheader("Where the student and the teacher disagree")
    missing = [r for r in students if r["id"] not in ready]
    blind = [names.get(r["id"], r["id"]) for r in missing if insight.never_tested(r)]
    older = [names.get(r["id"], r["id"]) for r in missing if not insight.never_tested(r)]
    if blind:
        st.caption(f"No per-image data for {plain(', '.join(blind))}: {insight.BLIND_NOTE}.")
    if older:
        st.caption(
            f"No per-image data for {plain(', '.join(older))}: trained before it was recorded or "
            "without a teacher; run them again to see this."
        )
    if not ready:
        return
    if ss.get("compare_gallery_run") not in ready:
        ss["compare_gallery_run"] = ready[0]
    run_id = st.selectbox(
        "Run", ready, key="compare_gallery_run", format_func=lambda r: names.get(r, r)
    )
    data = insight.gallery_inputs(probes[run_id])
    groups = dis.disagreement_groups(data.labels, data.student_logits, data.teacher_logits)
    _class_bars(data, probes[run_id], key, run_id, chart)
    options = [ALL_CLASSES, *data.class_names]
    if ss.get("compare_gallery_class") not in options:
        ss["compare_gallery_class"] = ALL_CLASSES
    col_group, col_class, col_page = st.columns([2, 1, 1], vertical_alignment="bottom")
    group_names = dict(dis.GROUPS)
    if ss.get("compare_gallery_group") not in group_names:
        ss["compare_gallery_group"] = next(iter(group_names))
    group = col_group.segmented_control(
        "Images",
        list(group_names),
        key="compare_gallery_group",
        required=True,
        format_func=lambda g: f"{group_names[g]} ({len(groups[g])})",
    )
    chosen_class = col_class.selectbox("Class", options, key="compare_gallery_class")
    class_filter = None if chosen_class == ALL_CLASSES else data.class_names.index(chosen_class)
    first = dis.gallery_page(
        groups[group], data.labels, class_filter=class_filter, page=0, per_page=PER_PAGE
    )
    number = col_page.number_input(
        f"Page (of {first.pages})", 1, first.pages, key="compare_gallery_page", step=1
    )
    page = dis.gallery_page(
        groups[group],
        data.labels,
        class_filter=class_filter,
        page=int(number) - 1,
        per_page=PER_PAGE,
    )
    st.caption(
        f"{page.total} image(s) of the {len(data.labels):,} in the test subset; the most "
        "confident mistakes first."
    )
    if not page.total:
        return
    record = next(r for r in records if r["id"] == run_id)
    with errors_shown():
        images = pictures.pictures(record.get("config") or {}, data.index[page.positions])
        tiles = dis.tiles(
            page.positions,
            data.labels,
            data.student_logits,
            data.teacher_logits,
            data.class_names,
        )
        name = names.get(run_id, run_id)
        chart(
            f"Disagreements of {name}: {group_names[group]}",
            "compare_gallery",
            (key, run_id, group, class_filter, page.page),
            lambda: gallery.gallery_figure(images, tiles, data.class_names, student_name=name),
        )
        _cam_picker(records, data, page.positions, names, user, store, chart)


def _class_bars(data, probe, key, run_id, chart) -> None:
    """Per-class test accuracy of the run and its teacher on the subset; a click on a bar
    filters the gallery to that class (applied once per new click)."""
    per_class = insight.per_class_on_subset(data, "student")
    event = chart(
        "Accuracy per class on the test subset",
        "compare_gallery_classes",
        (key, run_id, "classes"),
        lambda: gallery.per_class_accuracy_bars(per_class, data.class_names),
        on_select="rerun",
    )
    clicked = dis.clicked_class(getattr(event, "selection", None), data.class_names)
    if clicked is not None and ss.get("compare_gallery_clicked") != (run_id, clicked):
        ss["compare_gallery_clicked"] = (run_id, clicked)
        ss["compare_gallery_class"] = data.class_names[clicked]
        ss["compare_gallery_page"] = 1
    st.caption("Click a class's bar to show its images below.")


def _cam_picker(records, data, positions, names, user, store, chart) -> None:
    """Pick images of the page and compute the Grad-CAM maps of the teacher and the runs."""
    st.markdown("**Where each model looks** (Grad-CAM, computed on request)")
    index = [int(data.index[p]) for p in positions]
    label_of = {int(data.index[p]): data.class_names[int(data.labels[p])] for p in positions}
    ss["compare_cam_images"] = [i for i in ss.get("compare_cam_images", []) if i in label_of]
    picked = st.multiselect(
        "Images (at most 8)",
        index,
        key="compare_cam_images",
        max_selections=cam_runs.MOST_IMAGES,
        format_func=lambda i: f"test image {i} ({label_of[i]})",
        placeholder="Pick images of this page",
    )
    run_ids = [r["id"] for r in records if r.get("role", "student") == "student"][:CAM_RUNS]
    col_target, col_go = st.columns([2, 1], vertical_alignment="bottom")
    target = col_target.segmented_control(
        "Explain",
        ["prediction", "label"],
        key="compare_cam_target",
        default="prediction",
        required=True,
        help="The class each model predicted (Grad-CAM's usual choice), or the label.",
    )
    layers = _layer_choices(run_ids, names, user, store)
    request = (tuple(run_ids), tuple(picked), target, tuple(sorted(layers.items())))
    if col_go.button("Compute maps", key="compare_cam_go", disabled=not picked):
        with st.spinner(f"Grad-CAM of {len(picked)} image(s) × {len(run_ids) + 1} models…"):
            ss["compare_cam_result"] = (
                request,
                cam_runs.cam_results(store, user, run_ids, picked, layers=layers, target=target),
            )
    stored = ss.get("compare_cam_result")
    if stored and stored[0] == request:
        result = stored[1]
        for note in result.notes:
            st.caption(plain(note))
        if result.panels:
            chart(
                "Grad-CAM",
                "compare_cam",
                request,
                lambda: cam.cam_grid(result, data.class_names),
            )


def _layer_choices(run_ids, names, user, store) -> dict[str, str]:
    """A layer per model (default its deepest spatial one), chosen in an expander."""
    out: dict[str, str] = {}
    with st.expander("Layers"):
        models = [("teacher", None), *((r, r) for r in run_ids)]
        first = (store.get_run(run_ids[0]) if run_ids else None) or {}  # None: deleted meanwhile
        teacher = first.get("teacher_run")
        for key, run_id in models:
            target_run = teacher if run_id is None else run_id
            if not target_run:
                continue
            try:
                options = cam_runs.run_layers(store, user, target_run)
            except WorkbenchError:  # not visible, or its dataset is gone: its map says why
                continue
            if not options:
                st.caption(f"{plain(names.get(target_run, key))}: no spatial layer (an MLP).")
                continue
            widget = f"compare_cam_layer_{key}"
            if ss.get(widget) not in options:
                ss[widget] = options[-1]
            label = "teacher" if run_id is None else names.get(run_id, run_id)
            out[key] = st.selectbox(plain(label), options, key=widget)
    return out
