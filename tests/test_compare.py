"""workbench.ui.compare: filters, selection, seed groups and the probe tables, on plain records.

Also the title/legend layout of ``plots.curves.curve_figure`` (the Compare page's curves)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench.ui import compare
from workbench.ui.plots.curves import curve_figure


def record(run_id, name="", *, status="completed", tags=(), acc=0.9, role="student", **config):
    base = {
        "role": role,
        "dataset": "digits",
        "teacher": "resnet18",
        "student": "small_cnn",
        "weights": {"label": 0.5, "response": 0.5, "feature": 0.0, "relation": 0.0},
        "temperature": 4.0,
        "weighting": "fixed",
        "seed": 0,
        "device": "auto",
    }
    return {
        "id": run_id,
        "name": name,
        "role": role,
        "status": status,
        "tags": list(tags),
        "config": base | config,
        "metrics": {"val_acc": acc, "test_acc": acc} if acc is not None else {},
        "created_at": 1_700_000_000.0,
        "finished_at": 1_700_000_100.0 if status == "completed" else None,
        "progress": {"epoch": 3, "step": 60},
    }


RECORDS = [
    record("a", "KD", tags=["kd", "t4"]),
    record("b", "KD", seed=1, tags=["kd"]),
    record("c", "mlp", student="mlp", status="failed", acc=None),
    record("d", "cifar", dataset="cifar10", tags=["t4"]),
    record("t", "teacher", role="teacher", student="resnet18"),
]


def probe(cka, *, layers=("b1", "b2"), cosine=None, per_class=(0.9, 0.8), agreement=0.9):
    return {
        "student_layers": list(layers),
        "teacher_layers": ["l1", "l2", "l3"],
        "pairs": [["b2", "l3"]],
        "class_names": ["zero", "one"],
        "cka": None if cka is None else np.asarray(cka, dtype=float),
        "pair_cosine": cosine,
        "grams": [],
        "per_class_acc": list(per_class),
        "agreement": agreement,
    }


# ---------------------------------------------------------------------- filters
def test_filter_values_are_the_stores_distinct_values():
    values = compare.filter_values(RECORDS)
    assert values == {
        "status": ["completed", "failed"],
        "dataset": ["cifar10", "digits"],
        "teacher": ["resnet18"],
        "student": ["mlp", "resnet18", "small_cnn"],
        "tags": ["kd", "t4"],
    }


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [
        ({}, ["a", "b", "c", "d", "t"]),
        ({"status": [], "tags": []}, ["a", "b", "c", "d", "t"]),  # empty: no filter
        ({"status": ["completed"]}, ["a", "b", "d", "t"]),
        ({"dataset": ["digits"], "student": ["small_cnn", "mlp"]}, ["a", "b", "c"]),
        ({"tags": ["t4"]}, ["a", "d"]),  # any chosen tag
        ({"tags": ["kd", "t4"], "dataset": ["cifar10"]}, ["d"]),  # every filter
        ({"teacher": ["vgg"]}, []),
    ],
)
def test_filter_runs(chosen, expected):
    assert [r["id"] for r in compare.filter_runs(RECORDS, chosen)] == expected


def test_unknown_filter_is_refused():
    with pytest.raises(ValueError, match="unknown filter"):
        compare.filter_runs(RECORDS, {"colour": ["red"]})


# ---------------------------------------------------------------------- selection
def test_valid_selection_keeps_existing_runs_in_order():
    assert compare.valid_selection(["d", "gone", "a", "d"], ["a", "b", "d"]) == ["d", "a"]
    assert compare.valid_selection(None, ["a"]) == []


def test_selection_options_keep_hidden_selected_runs():
    assert compare.selection_options(["a", "b"], ["c", "a"]) == ["a", "b", "c"]
    assert compare.selection_options([], []) == []


def test_data_version_changes_with_progress_and_finish():
    r = record("a")
    assert compare.data_version(r) == ("a", "completed", 1_700_000_100.0, 60, 3)
    running = r | {"status": "running", "finished_at": None, "progress": {"step": 61}}
    assert compare.data_version(running) != compare.data_version(r)


# ---------------------------------------------------------------------- units
def test_units_group_seeds_or_keep_single_runs():
    grouped = compare.units(RECORDS[:3], group_by=compare.SEED_GROUP)
    assert {k: [r["id"] for r in v] for k, v in grouped.items()} == {
        "KD (2 seeds)": ["a", "b"],
        "mlp": ["c"],
    }
    single = compare.units(RECORDS[:3], group_by=compare.NO_GROUP)
    assert {k: [r["id"] for r in v] for k, v in single.items()} == {
        "KD · seed 0": ["a"],
        "KD · seed 1": ["b"],
        "mlp": ["c"],
    }


def test_units_group_by_any_config_field():
    runs = [
        record("a", feature_kind="at"),
        record("b", feature_kind="at", seed=1),
        record("c", feature_kind="mse"),
    ]
    by_kind = compare.units(runs, group_by="feature_kind")
    assert {k: [r["id"] for r in v] for k, v in by_kind.items()} == {
        "at (2 runs)": ["a", "b"],
        "mse": ["c"],
    }
    by_weight = compare.units(RECORDS[:2], group_by="weights.label")
    assert list(by_weight) == ["label 0.5 (2 runs)"]
    assert "feature_kind" in compare.group_choices(runs)
    assert "seed" not in compare.group_choices(runs)  # that is "seeds of one config"


def test_colour_by_a_field_shares_colours_between_units_with_its_value():
    runs = [
        record("a", temperature=2.0),
        record("b", temperature=4.0),
        record("c", temperature=2.0, seed=1),
    ]
    unit_map = compare.units(runs, group_by=compare.NO_GROUP)
    colours = compare.colours(unit_map, "temperature")
    assert list(colours.values()) == [0, 1, 0]
    assert compare.colours(unit_map, compare.NO_GROUP) is None


def test_curve_runs_nest_group_rows_and_skip_empty_units():
    units = compare.units(RECORDS[:3], group_by=compare.SEED_GROUP)
    rows = {"a": [{"epoch": 1}], "b": [{"epoch": 1}, {"epoch": 2}], "c": []}
    out = compare.curve_runs(units, rows)
    assert out == {"KD (2 seeds)": [[{"epoch": 1}], [{"epoch": 1}, {"epoch": 2}]]}
    # a group with one logged seed is drawn as that run's rows
    assert compare.curve_runs(units, {"a": [{"epoch": 1}]}) == {"KD (2 seeds)": [{"epoch": 1}]}


def test_group_probe_averages_the_seeds():
    units = {"KD (2 seeds)": [RECORDS[0], RECORDS[1]], "mlp": [RECORDS[2]], "t": [RECORDS[4]]}
    probes = {
        "a": probe([[0.2, 0.4, 0.6], [0.0, 1.0, 0.5]], cosine=[0.5], per_class=(1.0, math.nan)),
        "b": probe([[0.4, 0.6, 0.8], [1.0, 0.0, 0.5]], cosine=[0.7], per_class=(0.5, 0.5)),
        "c": None,  # failed: no probe
    }
    found, missing = compare.probe_units(units, probes)
    assert missing == ["mlp", "t"]
    kd = found["KD (2 seeds)"]
    np.testing.assert_allclose(kd["cka"], [[0.3, 0.5, 0.7], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(kd["pair_cosine"], [0.6])
    np.testing.assert_allclose(kd["per_class_acc"], [0.75, 0.5])  # NaN seeds ignored
    assert kd["agreement"] == pytest.approx(0.9) and kd["seeds"] == 2
    assert probes["a"]["cka"][0, 0] == 0.2  # the stored probe is not changed


def test_group_probe_without_a_common_shape_has_no_mean():
    units = {"g": [record("a"), record("b", seed=1)]}
    probes = {
        "a": probe([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]),
        "b": probe([[0.1, 0.2, 0.3]], layers=("b1",)),  # other layers
    }
    found, _ = compare.probe_units(units, probes)
    assert found["g"]["cka"] is None


def test_has_probe_data():
    p = probe([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    assert compare.has_probe_data(p, "cka")
    assert not compare.has_probe_data(p, "grams")
    assert not compare.has_probe_data(p, "pair_cosine")
    assert not compare.has_probe_data(probe(None), "cka")


def test_baseline_defaults_to_a_comparable_run():
    cka = [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    probes = {
        "mlp": probe([[0.5, 0.5, 0.5]], layers=("b1",)),
        "KD": probe(cka),
        "hybrid": probe(cka),
    }
    assert compare.same_layers(probes["KD"], probes["hybrid"])
    assert not compare.same_layers(probes["KD"], probes["mlp"])
    assert compare.default_baseline(probes) == "KD"  # the first with the most partners
    assert compare.comparable_first(probes, "mlp") == ["KD", "hybrid"]
    assert compare.comparable_first(probes, "hybrid") == ["KD", "mlp"]
    assert compare.default_baseline({"only": probes["KD"]}) == "only"


def test_the_cka_difference_defaults_to_the_most_different_comparable_pair():
    """Two runs of one config and seed are identical: their difference is all zeros."""
    same = [[0.5, 0.6, 0.7], [0.2, 0.3, 0.4]]
    probes = {
        "KD": probe(same),
        "KD again": probe(same),
        "hybrid": probe([[0.9, 0.6, 0.7], [0.2, 0.3, 0.1]]),
        "mlp": probe([[0.0, 0.0, 0.0]], layers=("b1",)),  # other layers: never paired
        "scratch": probe(None),
    }
    assert compare.most_different_pair(probes) == ("KD", "hybrid")
    probes["far"] = probe([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert compare.most_different_pair(probes) == ("hybrid", "far")  # mean |delta| 0.77 > 0.65
    assert compare.most_different_pair({"KD": probes["KD"], "mlp": probes["mlp"]}) is None
    assert compare.most_different_pair({"KD": probes["KD"]}) is None


def test_weights_over_time_only_for_adaptive_weighting():
    fixed = [record("a"), record("b", weighting="fixed")]
    assert not compare.adaptive_weighting(fixed)
    assert compare.adaptive_weighting([*fixed, record("c", weighting="uncertainty")])
    assert not compare.adaptive_weighting([])


def test_a_table_of_many_runs_is_turned_to_fit_the_page():
    classes = pd.Index(["agreement", *map(str, range(10))], name="class")
    few = pd.DataFrame({f"run {i}": [0.9] * 11 for i in range(4)}, index=classes)
    assert compare.fit_columns(few) == (few, False)
    many = pd.DataFrame({f"run {i}": [0.9] * 11 for i in range(20)}, index=classes)
    fitted, flipped = compare.fit_columns(many)
    assert flipped and list(fitted.columns) == list(classes) and len(fitted) == 20
    assert fitted.index.name == "run"
    # key columns first: agreement, then the classes; and now it fits 1440 px
    assert compare.MEDIUM_PX + compare.SMALL_PX * len(fitted.columns) <= compare.CONTENT_PX
    # many classes and many runs: the narrower of the two
    huge = pd.DataFrame(0.5, index=range(100), columns=[f"r{i}" for i in range(30)])
    assert compare.fit_columns(huge)[1] is False


# ---------------------------------------------------------------------- tables
def test_pair_cosine_table_one_column_per_unit_with_cosines():
    table = compare.pair_cosine_table(
        {"hybrid": probe(None, cosine=[0.75]), "KD": probe(None, cosine=None)}
    )
    assert table.index.name == "layer pair"
    assert table.to_dict() == {"hybrid": {"b2 -> l3": 0.75}}
    assert compare.pair_cosine_table({}).empty


def test_per_class_table_has_agreement_first():
    table = compare.per_class_table(
        {"KD": probe(None, per_class=(0.9, 0.8)), "x": probe(None, agreement=None)}
    )
    assert list(table.index) == ["agreement", "zero", "one"]
    assert table["KD"].tolist() == [0.9, 0.9, 0.8]
    assert math.isnan(table["x"].iloc[0])
    assert compare.per_class_table({}).empty


def test_diff_table_shows_only_differing_fields():
    units = compare.units(RECORDS[:3], group_by=compare.SEED_GROUP)
    diff = compare.diff_table(units)
    assert list(diff.columns) == ["KD (2 seeds)", "mlp"]
    assert diff.to_dict("index") == {
        "student": {"KD (2 seeds)": "small_cnn", "mlp": "mlp"},
        "seed": {"KD (2 seeds)": "0, 1", "mlp": "0"},
    }
    single = compare.diff_table(compare.units(RECORDS[:2], group_by=compare.NO_GROUP))
    assert single.index.tolist() == ["seed"]
    assert compare.diff_table(compare.units(RECORDS[:2], group_by=compare.SEED_GROUP)).empty


def test_parcoords_records_keep_finished_students():
    runs = compare.parcoords_records(RECORDS, grouped=False)
    assert [r["id"] for r in runs] == ["a", "b", "d"]  # no failed run, no teacher
    a, b = record("a", "KD", acc=0.8), record("b", "KD", acc=0.9, seed=1)
    grouped = compare.parcoords_records([a, b], grouped=True)
    assert len(grouped) == 1 and grouped[0]["metrics"]["test_acc"] == pytest.approx(0.85)
    assert a["metrics"]["test_acc"] == 0.8


def test_selection_table_adds_the_seed_group():
    table = compare.selection_table(RECORDS)
    assert list(table.columns[:6]) == ["id", "name", "owner", "role", "group", "status"]
    assert table["group"].tolist() == ["KD (2 seeds)", "KD (2 seeds)", "", "", ""]
    assert table["role"].tolist() == ["student"] * 4 + ["teacher"]
    assert isinstance(compare.selection_table([]), pd.DataFrame)


# ---------------------------------------------------------------------- curve layout
def test_curve_title_and_legend_do_not_share_the_top():
    few = {f"run {i}": [(0, i), (1, i + 1)] for i in range(3)}
    plain = curve_figure(few)
    assert plain.layout.title.text is None
    assert (plain.layout.legend.yanchor, plain.layout.legend.y) == ("bottom", 1.02)
    titled = curve_figure(few, title="validation accuracy")
    assert titled.layout.title.text == "validation accuracy"
    assert (titled.layout.title.yref, titled.layout.title.yanchor) == ("container", "top")
    legend = titled.layout.legend
    assert (legend.orientation, legend.yref, legend.yanchor, legend.y) == (
        "h",
        "container",
        "bottom",
        0.0,
    )


def test_many_curves_get_a_legend_column_beside_the_plot_that_toggles_them():
    many = {f"run {i}": [(0, i), (1, i + 1)] for i in range(20)}
    for fig in (curve_figure(many), curve_figure(many, title="acc")):
        legend = fig.layout.legend
        # a column right of the plot (x > 1): it never pushes the plot down, however many runs
        assert (legend.orientation, legend.x) == ("v", 1.02)
        assert (legend.itemclick, legend.itemdoubleclick) == ("toggle", "toggleothers")
        assert fig.layout.title.text in (None, "acc")


def test_cka_heatmaps_wrap_into_rows_on_one_colour_scale():
    from workbench.ui.plots.heatmaps import cka_heatmaps

    cka = [[0.1, 0.5, 0.9], [0.2, 0.4, 0.6]]
    probes = {f"run {i}": probe(cka) for i in range(7)}
    one_row = cka_heatmaps(probes)
    wrapped = cka_heatmaps(probes, per_row=3)
    assert len(wrapped.data) == len(one_row.data) == 7
    assert {t.coloraxis for t in wrapped.data} == {"coloraxis"}
    # rows of 3, 3 and 1: heatmap i sits in grid cell (i // 3, i % 3)
    x_domains = [tuple(wrapped.layout[f"xaxis{i + 1 if i else ''}"].domain) for i in range(7)]
    y_domains = [tuple(wrapped.layout[f"yaxis{i + 1 if i else ''}"].domain) for i in range(7)]
    assert x_domains[0] == x_domains[3] == x_domains[6] != x_domains[1]
    assert y_domains[0] == y_domains[2] and y_domains[0][0] > y_domains[3][1] > y_domains[6][1]
    assert list(wrapped.layout.xaxis7.ticktext) == ["l1", "l2", "l3"]
    assert wrapped.layout.height > one_row.layout.height
    assert [a.text for a in wrapped.layout.annotations] == list(probes)


def test_gram_panels_name_the_classes_once():
    from workbench.ui.plots.heatmaps import gram_heatmaps

    labels = np.array([0, 0, 1, 1])
    grams = [{"pair": ["b2", "l3"], "student": np.eye(4), "teacher": np.ones((4, 4))}]
    p = probe(None) | {"grams": grams, "gram_labels": labels}
    fig = gram_heatmaps(p)
    assert [fig.layout[a].showticklabels for a in ("yaxis", "yaxis2", "yaxis3")] == [
        True,
        False,
        False,
    ]
    assert len(fig.layout.shapes) == 3 * 2  # one class boundary, both directions, 3 panels
