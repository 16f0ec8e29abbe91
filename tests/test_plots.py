from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from workbench.ablation.statistics import contributions
from workbench.ui.plots.curves import (
    accuracy_curves,
    curve_figure,
    group_runs,
    loss_curves,
    smooth,
    weight_curves,
)
from workbench.ui.plots.heatmaps import (
    cka_difference,
    cka_heatmaps,
    difference_range,
    fit_text,
    gram_heatmaps,
    tick_labels,
    wrap_name,
)
from workbench.ui.plots.style import NOT_SIGNIFICANT, PlotDataError
from workbench.ui.plots.summaries import config_diff, contribution_bars, parallel_coordinates


# ---------------------------------------------------------------------- fabricated run data
def config(**changes):
    """A config dict shaped like ``RunConfig.to_dict()``."""
    data = {
        "role": "student",
        "dataset": "digits",
        "data_path": "",
        "teacher": "resnet18",
        "student": "small_cnn",
        "teacher_run": "",
        "weights": {"label": 0.3, "response": 0.3, "feature": 0.2, "relation": 0.2},
        "temperature": 4.0,
        "feature_kind": "cosine",
        "relation_kind": "sp",
        "layer_pairs": [],
        "weighting": "fixed",
        "epochs": 3,
        "teacher_epochs": 5,
        "batch_size": 64,
        "lr": 0.002,
        "seed": 0,
        "device": "auto",
        "augment": False,
        "teacher_cache": True,
        "log_every": 10,
    }
    data.update(changes)
    return data


def record(run_id, name="", *, acc=0.9, status="completed", variant=None, **config_changes):
    return {
        "id": run_id,
        "name": name,
        "tags": ["sweep", "t4"],
        "role": "student",
        "status": status,
        "config": config(**config_changes),
        "metrics": {"val_acc": acc, "test_acc": acc, "teacher_acc": 0.95, "agreement": 0.9}
        if acc
        else {},
        "created_at": 1_700_000_000.0,
        "seconds": 12.5,
        "suite": None,
        "variant": variant,
    }


def epoch_rows(accs, agreement=None):
    return [
        {"epoch": e, "val_acc": a, "agreement": agreement, "train_loss": 1.0 / e, "time": 2.0 * e}
        for e, a in enumerate(accs, start=1)
    ]


def history_rows(totals, w_feature=0.2):
    rows = []
    for step, total in enumerate(totals):
        row = {"step": step * 10, "epoch": 1, "time": 0.1 * step, "total": total}
        row |= {"label": 1.0, "response": 0.5, "feature": 0.25, "relation": 0.125}
        row |= {"w_label": 0.3, "w_response": 0.3, "w_feature": w_feature, "w_relation": 0.0}
        rows.append(row)
    return rows


STUDENT = ["conv1", "conv2", "fc"]
TEACHER = ["layer1", "layer2", "layer3", "layer4"]


def probe(seed=0, cka=True, labels=(0, 0, 1, 1, 1, 2)):
    rng = np.random.default_rng(seed)
    m = len(labels)
    return {
        "student_layers": STUDENT,
        "teacher_layers": TEACHER,
        "cka": rng.uniform(size=(3, 4)) if cka else None,
        "pairs": [["conv2", "layer3"]],
        "pair_cosine": [0.5],
        "gram_labels": np.array(labels),
        "class_names": ["zero", "one", "two"],
        "grams": [
            {
                "pair": ["conv2", "layer3"],
                "student": rng.uniform(size=(m, m)),
                "teacher": rng.uniform(size=(m, m)),
            }
        ],
        "per_class_acc": [0.9, 0.8, 0.7],
        "agreement": 0.9,
    }


def traces(fig, kind):
    return [t for t in fig.data if isinstance(t, kind)]


# ---------------------------------------------------------------------- curves
def test_single_runs_are_lines():
    fig = accuracy_curves({"a": epoch_rows([0.5, 0.6]), "b": epoch_rows([0.4, 0.7, 0.8])})
    assert [t.name for t in fig.data] == ["a", "b"]
    assert all(isinstance(t, go.Scatter) and t.fill is None for t in fig.data)
    assert list(fig.data[1].x) == [1, 2, 3]
    assert list(fig.data[1].y) == [0.4, 0.7, 0.8]
    assert fig.layout.xaxis.title.text == "epoch"


def test_group_is_mean_with_std_band():
    group = [epoch_rows([0.5, 0.7]), epoch_rows([0.6, 0.8]), epoch_rows([0.7, 0.9])]
    fig = accuracy_curves({"KD (3 seeds)": group, "scratch": epoch_rows([0.4, 0.5])})
    names = [t.name for t in fig.data]
    assert names == ["KD (3 seeds) +std", "KD (3 seeds) -std", "KD (3 seeds)", "scratch"]
    upper, lower, mean, _ = fig.data
    # by hand: means [0.6, 0.8]; sample std of (0.5, 0.6, 0.7) and (0.7, 0.8, 0.9) is 0.1
    np.testing.assert_allclose(mean.y, [0.6, 0.8])
    np.testing.assert_allclose(upper.y, [0.7, 0.9])
    np.testing.assert_allclose(lower.y, [0.5, 0.7])
    assert lower.fill == "tonexty" and upper.fill is None
    assert not upper.showlegend and not lower.showlegend
    assert upper.legendgroup == lower.legendgroup == mean.legendgroup
    assert len(accuracy_curves({"KD": group}, band=False).data) == 1


def test_missing_values_are_skipped():
    rows = epoch_rows([0.5, 0.6, 0.7], agreement=0.8)
    rows[1]["agreement"] = float("nan")
    runs = {"scratch": epoch_rows([0.5, 0.6]), "KD": rows}  # no agreement without a teacher
    fig = accuracy_curves(runs, metric="agreement")
    assert [t.name for t in fig.data] == ["KD"]
    assert list(fig.data[0].x) == [1, 3]


def test_curve_figure_from_tidy_frame():
    frame = pd.DataFrame(
        {"label": ["a"] * 4 + ["b"], "x": [0, 1, 0, 1, 0], "y": [1.0, 2.0, 3.0, 4.0, 5.0]}
    )
    fig = curve_figure(frame, x_title="step")
    mean = next(t for t in fig.data if t.name == "a")
    np.testing.assert_allclose(mean.y, [2.0, 3.0])  # rows sharing label and x are seeds
    assert [t.name for t in fig.data][-1] == "b"


def test_loss_and_weight_curves():
    runs = {"run 1": history_rows([3.0, 2.0, 1.0]), "run 2": history_rows([2.0, 1.0, 0.5], 0.4)}
    fig = loss_curves(runs, "total")
    assert list(fig.data[0].x) == [0, 10, 20]
    assert list(fig.data[1].y) == [2.0, 1.0, 0.5]
    assert list(loss_curves(runs, "feature").data[0].y) == [0.25] * 3
    with pytest.raises(PlotDataError, match="unknown loss component"):
        loss_curves(runs, "kd")
    assert list(weight_curves(runs, "feature").data[1].y) == [0.4] * 3
    # every component that is ever non-zero (relation weight stays 0)
    names = [t.name for t in weight_curves(runs).data]
    assert names == [f"{r}: {c}" for r in runs for c in ("label", "response", "feature")]
    assert [t.name for t in weight_curves({"one": runs["run 1"]}).data] == [
        "label",
        "response",
        "feature",
    ]


def test_group_runs_by_config_without_seed():
    records = [
        record("r1", "KD", seed=0),
        record("r2", "KD", seed=1),
        record("r3", "KD", seed=2, device="cpu"),
        record("r4", "KD hot", seed=0, temperature=8.0),
        record("r5", "", seed=0, lr=0.01),
        record("r6", "", seed=1, lr=0.01),
    ]
    groups = group_runs(records)
    assert list(groups) == [
        "KD (3 seeds)",
        "KD hot",
        "T 4 · lr 0.01 (2 seeds)",  # named by what differs from the other groups
    ]
    assert [r["id"] for r in groups["KD (3 seeds)"]] == ["r1", "r2", "r3"]
    suite = [record(f"s{i}", f"suite / full / seed {i}", seed=i, variant="full") for i in range(2)]
    assert list(group_runs(suite)) == ["full (2 seeds)"]
    # two repeats of seed 0 are two runs, not "2 seeds"
    assert list(group_runs([record("x", "KD", seed=0), record("y", "KD", seed=0)])) == [
        "KD (2 runs)"
    ]


# ---------------------------------------------------------------------- layer comparison
def test_cka_heatmaps_share_one_colour_scale():
    probes = {"hybrid": probe(0), "KD only": probe(1)}
    fig = cka_heatmaps(probes)
    heatmaps = traces(fig, go.Heatmap)
    assert len(heatmaps) == 2
    for trace, p in zip(heatmaps, probes.values(), strict=True):
        assert list(trace.x) == TEACHER and list(trace.y) == STUDENT
        np.testing.assert_allclose(trace.z, p["cka"])
        assert trace.coloraxis == "coloraxis"
        assert (trace.zmin, trace.zmax) == (0.0, 1.0)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    for axis in ("xaxis", "xaxis2"):
        assert list(fig.layout[axis].ticktext) == TEACHER
        assert fig.layout[axis].type == "category"
    for axis in ("yaxis", "yaxis2"):
        assert list(fig.layout[axis].ticktext) == STUDENT
    assert [a.text for a in fig.layout.annotations] == ["hybrid", "KD only"]


def test_cka_heatmaps_skip_runs_without_teacher():
    fig = cka_heatmaps({"hybrid": probe(0), "scratch": probe(1, cka=False)})
    assert len(traces(fig, go.Heatmap)) == 1
    assert "no CKA: scratch" in fig.layout.title.text
    with pytest.raises(ValueError, match="no CKA|CKA matrix"):
        cka_heatmaps({"scratch": probe(1, cka=False)})


def test_cka_difference_is_centred_at_zero():
    a, b = probe(0), probe(1)
    fig = cka_difference(a, b, label="hybrid", baseline_label="KD only")
    (heatmap,) = traces(fig, go.Heatmap)
    np.testing.assert_allclose(heatmap.z, a["cka"] - b["cka"])
    assert heatmap.zmid == 0
    assert list(fig.layout.xaxis.ticktext) == TEACHER
    other = probe(2) | {"student_layers": ["conv1", "fc"], "cka": np.zeros((2, 4))}
    with pytest.raises(ValueError, match="same student layers"):
        cka_difference(a, other)


def test_cka_difference_has_a_fixed_symmetric_range_stated_in_the_title():
    a = probe(0)
    tiny = a | {"cka": a["cka"] + 0.0005}
    fig = cka_difference(tiny, a, label="hybrid", baseline_label="KD only")
    (heatmap,) = traces(fig, go.Heatmap)
    # a 0.0005 difference sits at the pale centre of a +-0.2 scale, not at its ends
    assert (heatmap.zmin, heatmap.zmax) == (-0.2, 0.2)
    assert "±0.20" in fig.layout.title.text
    big = a | {"cka": a["cka"] + 0.31}
    (wide,) = traces(cka_difference(big, a), go.Heatmap)
    assert (wide.zmin, wide.zmax) == (-0.4, 0.4)  # widened to the next 0.1, still symmetric
    assert difference_range(np.array([[-0.25, 0.1], [np.nan, 0.0]])) == 0.3
    assert difference_range(np.array([0.2])) == 0.2


def test_cka_grid_of_20_runs_has_titles_that_fit_and_one_colour_bar():
    names = [f"at · bs {16 * i} · {i} ep · T {i / 2:g} · lr 0.00{i}" for i in range(20)]
    fig = cka_heatmaps({n: probe(i % 3) for i, n in enumerate(names)}, per_row=4)
    width = int(1100 / 4 / 7)
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 20
    assert all(len(line) <= width for t in titles for line in t.split("<br>"))
    assert all(t.count("<br>") <= 1 for t in titles)
    # what tells the runs apart (the end of the name) is still in the title
    assert titles[3] == names[3]  # 36 characters fit one line
    four = {f"label 0.3 · resp 0.3 · feat 0.2 · rel 0.2 · seed {i}": probe(0) for i in range(4)}
    long = cka_heatmaps(four, per_row=4)
    assert long.layout.annotations[2].text == "label 0.3 · resp 0.3 · feat 0.2<br>rel 0.2 · seed 2"
    assert len(set(titles)) == 20
    assert {t.coloraxis for t in traces(fig, go.Heatmap)} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    # the hover names the run in full
    assert all(n in t.hovertemplate for n, t in zip(names, traces(fig, go.Heatmap), strict=True))
    assert fit_text("abcdef", 4) == "abc…" and fit_text("abc", 4) == "abc"
    assert wrap_name("a · b · c", 5) == "a · b<br>c"
    assert wrap_name("aaaa · bbbb · cccc", 4) == "aaaa<br>bbb…"


def _cka_probe(n_student, n_teacher, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "student_layers": [f"features.{i}.conv" for i in range(n_student)],
        "teacher_layers": [f"layer{i // 2 + 1}.{i % 2}.conv2" for i in range(n_teacher)],
        "cka": rng.uniform(size=(n_student, n_teacher)),
    }


@pytest.mark.parametrize("runs", [1, 4, 8])
@pytest.mark.parametrize("layers", [4, 17, 40])
def test_cka_tick_labels_never_overlap(runs, layers):
    """Each named tick gets at least TICK_PX along its axis, on a 1100 px wide figure."""
    from workbench.ui.plots.heatmaps import FIGURE_PX, TICK_PX

    fig = cka_heatmaps({f"run {i}": _cka_probe(layers, layers, i) for i in range(runs)}, per_row=4)
    layout = fig.layout
    plot_px = layout.height - layout.margin.t - layout.margin.b
    for name in layout.to_plotly_json():
        axis = layout[name] if name.startswith(("xaxis", "yaxis")) else None
        if axis is None:
            continue
        span = axis.domain[1] - axis.domain[0]
        px = span * (FIGURE_PX if name.startswith("x") else plot_px)
        assert len(axis.tickvals) * TICK_PX <= px + 1e-6, (name, len(axis.tickvals), px)
        assert len(axis.tickvals) >= min(layers, 4)  # still named, if not every one
        assert axis.tickfont.size <= 11
    diff = cka_difference(_cka_probe(layers, layers, 1), _cka_probe(layers, layers, 2))
    assert len(diff.layout.xaxis.tickvals) * TICK_PX <= FIGURE_PX


def test_tick_labels_keep_every_kth():
    labels = [str(i) for i in range(10)]
    assert tick_labels(labels, 1000) == labels
    assert tick_labels(labels, 90) == ["0", "2", "4", "6", "8"]
    assert tick_labels(labels, 1) == ["0"]


def test_smoothing_is_a_debiased_exponential_moving_average():
    y = [1.0, 3.0, 2.0, 5.0]
    w = 0.6
    expected, m = [], 0.0
    for t, v in enumerate(y, start=1):  # TensorBoard's formula, written out
        m = w * m + (1 - w) * v
        expected.append(m / (1 - w**t))
    np.testing.assert_allclose(smooth(y, w), expected)
    assert smooth(y, 0.0).tolist() == y
    assert smooth(y, w)[0] == 1.0  # debiased: the first point is not pulled towards 0
    with pytest.raises(PlotDataError):
        smooth(y, 1.0)
    fig = curve_figure({"run": list(enumerate(y))}, smoothing=w)
    np.testing.assert_allclose(fig.data[0].y, expected)


def test_accuracy_is_drawn_in_percent_on_whole_epochs():
    fig = accuracy_curves({"run": [{"epoch": 1, "val_acc": 0.97, "time": 3.0}]})
    assert fig.layout.yaxis.tickformat == ".0%" and tuple(fig.layout.yaxis.range) == (0.0, 1.0)
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"
    assert fig.layout.yaxis.title.text == "val acc"
    by_time = accuracy_curves({"run": [{"epoch": 1, "val_acc": 0.97, "time": 3.0}]}, x="time")
    assert list(by_time.data[0].x) == [3.0] and by_time.layout.xaxis.title.text == "time (s)"
    with pytest.raises(PlotDataError):
        accuracy_curves({"run": []}, x="step")


def test_loss_curves_by_step_epoch_or_time_and_on_a_log_scale():
    rows = [
        {"step": 1, "epoch": 1, "time": 0.5, "total": 4.0},
        {"step": 2, "epoch": 1, "time": 1.0, "total": 2.0},
        {"step": 3, "epoch": 2, "time": 1.5, "total": 1.0},
    ]
    assert list(loss_curves({"r": rows}, x="time").data[0].x) == [0.5, 1.0, 1.5]
    by_epoch = loss_curves({"r": rows}, x="epoch").data[0]
    assert list(by_epoch.x) == [1, 2] and list(by_epoch.y) == [3.0, 1.0]  # epoch means
    assert loss_curves({"r": rows}, log_y=True).layout.yaxis.type == "log"
    with pytest.raises(PlotDataError):
        loss_curves({"r": rows}, x="wall")


def test_gram_heatmaps_mark_class_boundaries():
    p = probe(0)
    fig = gram_heatmaps(p, 0)
    teacher, student, diff = traces(fig, go.Heatmap)
    grams = p["grams"][0]
    np.testing.assert_allclose(teacher.z, grams["teacher"])
    np.testing.assert_allclose(student.z, grams["student"])
    np.testing.assert_allclose(diff.z, np.abs(grams["teacher"] - grams["student"]))
    assert teacher.coloraxis == student.coloraxis != diff.coloraxis
    # labels (0, 0, 1, 1, 1, 2): boundaries before samples 2 and 5 -> lines at 1.5 and 4.5
    vertical = sorted(s.x0 for s in fig.layout.shapes if s.x0 == s.x1)
    horizontal = sorted(s.y0 for s in fig.layout.shapes if s.y0 == s.y1)
    assert vertical == horizontal == [1.5, 1.5, 1.5, 4.5, 4.5, 4.5]
    assert {s.xref for s in fig.layout.shapes} == {"x", "x2", "x3"}
    # one tick per class at its block centre: (0+1)/2, (2+4)/2, 5
    assert list(fig.layout.xaxis.tickvals) == [0.5, 3.0, 5.0]
    assert list(fig.layout.yaxis3.ticktext) == ["zero", "one", "two"]


def test_gram_heatmaps_sort_samples_by_class():
    p = probe(0, labels=(1, 0, 1))
    fig = gram_heatmaps(p)
    order = [1, 0, 2]
    teacher = np.asarray(p["grams"][0]["teacher"])
    np.testing.assert_allclose(fig.data[0].z, teacher[np.ix_(order, order)])
    assert list(fig.layout.xaxis.ticktext) == ["zero", "one"]
    with pytest.raises(ValueError, match="out of range"):
        gram_heatmaps(p, 3)


# ---------------------------------------------------------------------- sweeps and ablations
def test_parallel_coordinates():
    records = [
        record("a", acc=0.8, temperature=2.0),
        record("b", acc=0.9, weights={"label": 1.0, "response": 0, "feature": 0, "relation": 0}),
        record("c", acc=None, status="running"),
    ]
    fig = parallel_coordinates(records)
    (par,) = traces(fig, go.Parcoords)
    dims = {d.label: list(d.values) for d in par.dimensions}
    assert dims == {
        "label weight": [0.3, 1.0],
        "response weight": [0.3, 0.0],
        "feature weight": [0.2, 0.0],
        "relation weight": [0.2, 0.0],
        "temperature": [2.0, 4.0],
        "test acc": [0.8, 0.9],
    }
    assert list(par.line.color) == [0.8, 0.9]
    assert [tuple(d.range) for d in par.dimensions[:4]] == [(0.0, 1.0)] * 4
    # ranges read "94.4%" and "2", not "0.944444" and "2.000000"
    assert [d.tickformat for d in par.dimensions] == [".2~f"] * 4 + [".3~g", ".1%"]
    with pytest.raises(ValueError, match="no run"):
        parallel_coordinates(records[2:])


def test_contribution_bars_error_bars_are_ci_half_widths():
    results = {
        "full": [0.80, 0.82, 0.81],
        # differences 0.02, 0.03, 0.03: +0.0267 +- 0.014342, p = 0.0153, Holm (x2) 0.031 < 0.05
        "without feature": [0.78, 0.79, 0.78],
        "without relation": [0.80, 0.80, 0.83],  # +0.0 +- ...: not distinguishable
    }
    table = contributions(results)
    fig = contribution_bars(table)
    (bar,) = traces(fig, go.Bar)
    assert list(bar.x) == ["feature", "relation"]
    np.testing.assert_allclose(bar.y, table["contribution"])
    np.testing.assert_allclose(bar.error_y.array, table["half_width"])
    assert bar.error_y.symmetric is True
    assert bar.error_y.array[0] == pytest.approx(0.014342, abs=1e-6)
    assert bar.marker.color[0] != NOT_SIGNIFICANT and bar.marker.color[1] == NOT_SIGNIFICANT
    assert [(a.x, a.text) for a in fig.layout.annotations] == [("relation", "n.s.")]


def test_contribution_bars_without_intervals():
    shapley = pd.DataFrame({"component": ["label", "response"], "contribution": [0.2, 0.1]})
    (bar,) = contribution_bars(shapley).data
    assert bar.error_y.array is None
    assert not contribution_bars(shapley).layout.annotations


# ---------------------------------------------------------------------- tables
def test_config_diff_keeps_only_differing_fields():
    records = [
        record("r1", "hybrid", seed=0),
        record("r2", "hybrid", seed=1, temperature=2.0),
        record(
            "r3",
            "scratch",
            weights={"label": 1.0, "response": 0.3, "feature": 0.2, "relation": 0.2},
        ),
    ]
    diff = config_diff(records)
    assert list(diff.index) == ["weights.label", "temperature", "seed"]
    assert list(diff.columns) == ["hybrid · T 4 · seed 0", "hybrid · T 2 · seed 1", "scratch"]
    assert diff.loc["weights.label"].tolist() == [0.3, 0.3, 1.0]
    assert diff.loc["temperature"].tolist() == [4.0, 2.0, 4.0]
    assert config_diff(records[:1]).empty


def test_gradient_share_curves_draw_each_active_terms_share_in_percent():
    from workbench.ui.plots.curves import gradient_share_curves

    history = [
        {"step": s, "g_label": 0.6, "g_response": 0.39, "g_feature": 0.0, "g_relation": 0.01}
        for s in (10, 20, 30)
    ] + [{"step": 35, "total": 1.0}]  # a logged step without shares
    fig = gradient_share_curves(history)
    traces = {t.name: t for t in fig.data if t.name}
    assert set(traces) == {"label", "response", "relation"}  # feature never acts: left out
    assert list(traces["response"].x) == [10, 20, 30]
    assert [round(v, 6) for v in traces["response"].y] in ([39.0] * 3, [0.39] * 3)
    with pytest.raises(PlotDataError, match="no gradient shares"):
        gradient_share_curves([{"step": 1, "total": 1.0}])
