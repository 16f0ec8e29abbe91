"""What the views of issue 21 cost: the probe's test view, Compare with the new views, Grad-CAM.

In one process, on a fresh store:

1. **The probe's extra time and bytes.** A teacher (``--teacher``, random weights: they cost the
   same as trained ones) is imported, and ``--runs`` students are trained with ``loop.run``
   (``--students``, alternately, seeds 0, 1, ...). The engine's two probe passes are timed
   inside every run: ``run_probe`` (today's probe: per-layer CKA, cosine, Gram) and
   ``run_view`` (the new test view: embeddings and logits of the test subset, the teacher's
   beside them, k-NN accuracy and silhouette). The first run computes the teacher's view; the
   others read it from the per-teacher cache. Bytes: each stored probe pickled with and
   without its ``test_view``.
2. **Compare's render time for the runs** (AppTest, the page's whole script: a fresh session
   per repeat, ``--repeats`` times, cold = first render of the page, warm = a rerun), on the
   store as trained and on a copy whose probes lost their ``test_view`` (what a run probed
   before the views shows: the page draws the "run it again" note instead of the views). One
   render before the timed ones is not counted: the first AppTest imports the pages.
3. **Grad-CAM of 8 test images x 3 models** (the teacher and the first two runs of a
   convolutional student, each on its deepest spatial layer,
   ``workbench.insight.cam_runs.cam_results``: weights loaded, maps computed) against one
   plain forward pass of the same 3 models on the same images, models already built. Median
   of ``--repeats``.

    .venv/bin/python bench/insight.py [--teacher resnet18] [--runs 10] [--epochs 1]
        [--repeats 3] [--smoke]

``--smoke``: a small_cnn teacher, 2 runs, 1 repeat (a check that the script runs, e.g. in
tests/test_bench.py; its figures are not measurements).

Last line: ``insight: view/probe time X (teacher cached Y), bytes +Z; Compare with views/without:
cold A, warm B; CAM 8x3 / forward C``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `streamlit run` puts app.py's folder on sys.path: pages._shared
APP = str(ROOT / "app.py")

from workbench.config.run_config import LossWeights, RunConfig  # noqa: E402
from workbench.data.datasets import load_dataset  # noqa: E402
from workbench.insight.cam import cam_layers  # noqa: E402
from workbench.insight.cam_runs import cam_results, model_of_run  # noqa: E402
from workbench.lab.identity import User  # noqa: E402
from workbench.models.registry import build_model, count_params  # noqa: E402
from workbench.runs.job_manager import JobManager  # noqa: E402
from workbench.storage.store import Store  # noqa: E402
from workbench.training import steps  # noqa: E402
from workbench.training.loop import run  # noqa: E402
from workbench.training.teachers import import_teacher  # noqa: E402

SMOKE = {"teacher": "small_cnn", "runs": 2, "repeats": 1}  # --smoke
OWNER = "bench"


def timed_calls(module: Any, name: str, into: list[float]) -> Callable[[], None]:
    """Wrap ``module.name`` so that each call's wall time is appended to ``into``; returns the
    function that puts the original back."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(module, name, wrapper)
    return lambda: setattr(module, name, original)


def train(args, store: Store, home: str) -> tuple[list[str], list[float], list[float], float]:
    """The run ids, the per-run times of ``run_probe`` and ``run_view``, and the median run."""
    data = load_dataset("digits")
    torch.manual_seed(1234)
    teacher = build_model(args.teacher, data.input_shape, data.num_classes)
    torch.save(teacher.state_dict(), f"{home}/teacher.pt")
    teacher_run = import_teacher(
        store, f"{home}/teacher.pt", teacher=args.teacher, dataset="digits", owner=OWNER
    )
    students = args.students.split(",")
    print(
        f"{args.teacher} ({count_params(teacher) / 1e6:.1f}M) -> {', '.join(students)} on digits "
        f"({len(data.test_y)} test images), {args.runs} run(s) of {args.epochs} epoch(s), "
        f"torch threads {torch.get_num_threads()}"
    )
    probe_s: list[float] = []
    view_s: list[float] = []
    undo = [timed_calls(steps, "run_probe", probe_s), timed_calls(steps, "run_view", view_s)]
    ids, run_s = [], []
    try:
        for i in range(args.runs):
            config = RunConfig(
                dataset="digits",
                teacher=args.teacher,
                student=students[i % len(students)],
                weights=LossWeights(0.5, 0.5, 0.0, 0.0),
                epochs=args.epochs,
                device="cpu",
                seed=i // len(students),
                teacher_run=teacher_run,
            )
            start = time.perf_counter()
            record = run(config, store)
            run_s.append(time.perf_counter() - start)
            assert record["status"] == "completed", record.get("error")
            ids.append(record["id"])
    finally:
        for put_back in undo:
            put_back()
    return ids, probe_s, view_s, statistics.median(run_s)


def probe_bytes(store: Store, ids: list[str]) -> tuple[float, float]:
    """Median pickled size of the runs' probes without and with their ``test_view``."""
    without, with_view = [], []
    for run_id in ids:
        probe = store.probe(run_id)
        with_view.append(len(pickle.dumps(probe, protocol=pickle.HIGHEST_PROTOCOL)))
        rest = {k: v for k, v in probe.items() if k != "test_view"}
        without.append(len(pickle.dumps(rest, protocol=pickle.HIGHEST_PROTOCOL)))
    return statistics.median(without), statistics.median(with_view)


def strip_views(home: Path, copy: Path, ids: list[str]) -> None:
    """``copy``: the store at ``home`` with every probe's ``test_view`` removed."""
    shutil.copytree(home, copy)
    stripped = Store(copy)
    try:
        for run_id in ids:
            probe = stripped.probe(run_id)
            probe.pop("test_view", None)
            stripped.save_probe(run_id, probe)
    finally:
        stripped.close()


def render_compare(home: Path, ids: list[str], repeats: int) -> tuple[float, float]:
    """Median (cold, warm) seconds of the Compare page with ``ids`` selected."""
    import streamlit as st
    from streamlit import logger
    from streamlit.testing.v1 import AppTest

    cold, warm = [], []
    for _ in range(repeats):
        logger.set_log_level("error")  # clearing outside a script warns
        for manager in list(JobManager._live):
            manager.close()
        st.cache_resource.clear()
        st.cache_data.clear()
        os.environ["KDWB_HOME"] = str(home)
        at = AppTest.from_file(APP, default_timeout=600).run()
        at.session_state["compare_runs"] = list(ids)
        start = time.perf_counter()
        at.switch_page("pages/compare.py").run()
        cold.append(time.perf_counter() - start)
        assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
        start = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - start)
    return statistics.median(cold), statistics.median(warm)


def cam_against_forward(store: Store, ids: list[str], repeats: int) -> tuple[float, float]:
    """Median seconds of ``cam_results`` for 8 images x (teacher + 2 runs), and of one forward
    pass of the same 3 models (built and loaded beforehand) on the same images."""
    user = User(OWNER)
    positions = list(range(8))
    convolutional = [r for r in ids if store.get_run(r)["config"]["student"] != "mlp"]
    picked = (convolutional or ids)[:2]  # an MLP has no map: it would only add a note
    data = load_dataset("digits")
    teacher_run = store.get_run(picked[0])["teacher_run"]
    models = [model_of_run(store, user, r, data) for r in (teacher_run, *picked)]
    x = data.test_x[positions]  # [8, C, H, W]
    cams, forwards = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = cam_results(store, user, picked, positions)
        cams.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for model in models:
                model(x)
        forwards.append(time.perf_counter() - start)
    shown = [p.name for p in result.panels]
    print(f"CAM panels: {', '.join(shown)}; notes: {'; '.join(result.notes) or 'none'}")
    layers = {m.__class__.__name__: cam_layers(m, data.input_shape)[-1:] for m in models}
    print(f"CAM layers (deepest spatial): {layers}")
    return statistics.median(cams), statistics.median(forwards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--students", default="small_cnn,mlp", help="comma-separated, alternated")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:  # explicit options still win over these
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    os.environ["KDWB_USER"] = OWNER  # the viewer of the pages: the runs' owner

    tmp = Path(tempfile.mkdtemp(prefix="kdwb-bench-insight-"))
    home = tmp / "home"
    store = Store(home)
    ids, probe_s, view_s, run_median = train(args, store, str(tmp))
    without, with_view = probe_bytes(store, ids)
    cam_s, forward_s = cam_against_forward(store, ids, args.repeats)
    store.close()
    strip_views(home, tmp / "stripped", ids)
    render_compare(tmp / "stripped", ids, 1)  # not timed: the first AppTest imports the pages
    views = render_compare(home, ids, args.repeats)
    stripped = render_compare(tmp / "stripped", ids, args.repeats)
    shutil.rmtree(tmp, ignore_errors=True)

    probe_med, view_first = statistics.median(probe_s), view_s[0]
    view_cached = statistics.median(view_s[1:]) if len(view_s) > 1 else view_first
    print(
        f"per run (median of {len(ids)}): the whole run {run_median:.2f} s; run_probe "
        f"{probe_med:.3f} s; run_view {view_cached:.3f} s with the teacher's view cached "
        f"({view_first:.3f} s for the first run, which computes it)"
    )
    print(
        f"probe bytes (pickled, median): {without:,.0f} without the view, {with_view:,.0f} "
        f"with it (+{with_view - without:,.0f})"
    )
    print(
        f"Compare, {len(ids)} runs (median of {args.repeats}): with the views cold "
        f"{views[0]:.2f} s, warm {views[1]:.2f} s; views stripped cold {stripped[0]:.2f} s, "
        f"warm {stripped[1]:.2f} s"
    )
    print(f"Grad-CAM 8 images x 3 models {cam_s:.3f} s; forward of the 3 models {forward_s:.4f} s")
    print(
        f"insight: view/probe time {view_first / probe_med:.2f} (teacher cached "
        f"{view_cached / probe_med:.2f}), bytes +{(with_view - without) / without:.0%}; Compare "
        f"with views/without: cold {views[0] / stripped[0]:.2f}, warm "
        f"{views[1] / stripped[1]:.2f}; CAM 8x3 / forward {cam_s / forward_s:.0f}"
    )


if __name__ == "__main__":
    main()
