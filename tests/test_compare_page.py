"""AppTests of the Compare and Ablations pages on a store of fabricated runs (nothing trains).

Records, histories, epochs and probes are written straight through ``Store``, shaped like the
engine's (``docs/ARCHITECTURE.md``, ``workbench/training/probe.py``). ``fabricate_run`` is also what
the Compare render-time measurement uses (10 runs, 8 x 8 layers, 60-sample Grams).
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from workbench.ablation.suites import launch_suite
from workbench.config.run_config import LossWeights, RunConfig
from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60
CLASSES = [str(c) for c in range(10)]


# ---------------------------------------------------------------------------------- fabrication
def fabricate_run(
    store: Store,
    name: str,
    *,
    seed: int = 0,
    weights: tuple[float, float, float, float] = (0.5, 0.5, 0.0, 0.0),
    role: str = "student",
    status: str = "completed",
    student: str = "small_cnn",
    weighting: str = "fixed",
    tags: tuple[str, ...] = (),
    student_layers: int = 3,
    teacher_layers: int = 4,
    per_class: int = 2,
    epochs: int = 3,
    steps: int = 20,
) -> str:
    """A finished run with metrics, history, epochs and (for a completed student) a probe."""
    rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
    if role == "teacher":
        config = RunConfig(role="teacher", student="resnet18", weights=LossWeights(1, 0, 0, 0))
    else:
        config = RunConfig(
            student=student, weights=LossWeights(*weights), seed=seed, weighting=weighting
        )
    run_id = store.create_run(config, name=name, tags=tags, status=status)
    done = epochs if status == "completed" else 1
    accs = np.clip(0.5 + 0.4 * np.linspace(0, 1, done) + rng.normal(0, 0.02, done), 0, 1)
    store.set_epochs(
        run_id,
        [
            {"epoch": e + 1, "val_acc": float(a), "agreement": float(a) - 0.02}
            | {"train_loss": 1.0 / (e + 1), "time": 2.0 * (e + 1)}
            for e, a in enumerate(accs)
        ],
    )
    w = config.weights.as_dict()
    history = []
    for step in range(0, steps * done, 1):
        terms = {c: float(np.exp(-step / 30) * (i + 1) + rng.uniform(0, 0.05)) for i, c in
                 enumerate(("label", "response", "feature", "relation"))}  # fmt: skip
        drift = 0.1 * np.sin(step / 5) if weighting != "fixed" else 0.0
        history.append(
            {"step": step * 10, "epoch": 1 + step // steps, "time": 0.1 * step}
            | {k: v * (w[k] > 0) for k, v in terms.items()}
            | {"total": sum(w[k] * v for k, v in terms.items())}
            | {f"w_{k}": max(0.0, v + drift) if v else 0.0 for k, v in w.items()}
        )
    store.set_history(run_id, history)
    now = time.time()
    metrics = {}
    if status == "completed":
        per_class_acc = rng.uniform(0.6, 1.0, len(CLASSES)).tolist()
        metrics = {
            "val_acc": float(accs[-1]),
            "test_acc": float(accs[-1]) - 0.01,
            "teacher_acc": 0.97,
            "agreement": float(accs[-1]) - 0.02,
            "per_class_acc": per_class_acc,
        }
    store.update_run(
        run_id,
        status=status,
        started_at=now - 30,
        finished_at=now,
        seconds=30.0,
        metrics=metrics,
        error="loss became NaN at step 12" if status == "failed" else None,
        progress={"epoch": done, "epochs": epochs, "step": steps * done, "total_steps": 0},
    )
    if role == "student" and status == "completed":
        store.save_probe(
            run_id, fabricate_probe(rng, student_layers, teacher_layers, per_class, weights)
        )
        store.update_run(run_id, teacher_run="teacher")
    return run_id


def fabricate_probe(rng, n_student, n_teacher, per_class, weights):
    s_layers = [f"block{i + 1}" for i in range(n_student)]
    t_layers = [f"layer{i + 1}.0" for i in range(n_teacher)]
    pairs = [[s_layers[i], t_layers[i * n_teacher // n_student]] for i in range(1, n_student, 2)]
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    m = len(labels)

    def gram():
        x = rng.normal(size=(m, 16)).astype(np.float32) + labels[:, None].astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T  # [M, M]

    return {
        "student_layers": s_layers,
        "teacher_layers": t_layers,
        "pairs": pairs,
        "class_names": CLASSES,
        "probe_size": 500,
        "cka": rng.uniform(size=(n_student, n_teacher)).astype(np.float32),
        "pair_cosine": rng.uniform(0.3, 0.9, len(pairs)).tolist() if weights[2] > 0 else None,
        "gram_labels": labels,
        "grams": [{"pair": p, "student": gram(), "teacher": gram()} for p in pairs],
        "per_class_acc": rng.uniform(0.6, 1.0, len(CLASSES)).tolist(),
        "agreement": 0.9,
    }


HYBRID = (0.3, 0.3, 0.2, 0.2)


def fabricate_store(store: Store) -> dict[str, str]:
    """Two seed groups, a scratch student with other layers, a teacher and a failed run."""
    return {
        "teacher": fabricate_run(store, "teacher", role="teacher", tags=("teachers",)),
        "kd0": fabricate_run(store, "KD", seed=0, tags=("kd",)),
        "kd1": fabricate_run(store, "KD", seed=1, tags=("kd",)),
        "hy0": fabricate_run(store, "hybrid", seed=0, weights=HYBRID, weighting="uncertainty"),
        "hy1": fabricate_run(store, "hybrid", seed=1, weights=HYBRID, weighting="uncertainty"),
        "mlp": fabricate_run(store, "mlp", weights=(1, 0, 0, 0), student="mlp", student_layers=2),
        "failed": fabricate_run(store, "broken", seed=3, status="failed", weights=HYBRID),
    }


# ---------------------------------------------------------------------------------- helpers
@pytest.fixture
def store(home, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `streamlit run` puts app.py's folder on sys.path
    s = Store(home)
    yield s
    st.cache_resource.clear()  # the next test gets a fresh JobManager for its own store
    s.close()


@pytest.fixture
def runs(store):
    return fabricate_store(store)


def open_compare(selection=None, at=None) -> AppTest:
    at = at or AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if selection is not None:
        at.session_state["compare_runs"] = list(selection)
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at: AppTest) -> dict[str, dict]:
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def frame(at: AppTest, index: str | None):
    """The table whose index is named ``index`` (a display-only st.dataframe has no key in
    AppTest): ``field`` config diff, ``layer pair`` cosines, ``class`` accuracy, None runs."""
    (found,) = [d.value for d in at.dataframe if d.value.index.name == index]
    return found


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in at.get(kind))


# ---------------------------------------------------------------------------------- Compare
def test_compare_without_runs_says_where_to_start(store):
    at = open_compare()
    assert any("No runs yet" in i.value for i in at.info)


def test_selection_draws_every_figure(runs):
    at = open_compare(runs.values())
    assert at.title[0].value == "Compare"
    assert at.multiselect(key="compare_runs").value == list(runs.values())
    assert at.selectbox(key="compare_group").value == "seeds of one config"
    drawn = charts(at)
    assert set(drawn) == {
        "compare_accuracy",
        "compare_losses",
        "compare_weights",
        "compare_cka",
        "compare_cka_diff",
        "compare_same_layer_cka",
        "compare_gram",
        "compare_parcoords",
    }
    # grouped: one mean curve (and its band) per seed group
    names = [t["name"] for t in drawn["compare_accuracy"]["data"]]
    assert "KD (2 seeds)" in names and "KD (2 seeds) +std" in names
    # one heatmap per probed unit, on one shared colour axis
    heatmaps = [t for t in drawn["compare_cka"]["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 3 and {t["coloraxis"] for t in heatmaps} == {"coloraxis"}
    # runs without a probe get a short note, not an error
    notes = texts(at, "caption")
    assert "No probe for teacher, broken" in notes
    assert {"compare_table_csv", "compare_report"} <= {b.key for b in at.get("download_button")}
    assert [d.value.index.name for d in at.dataframe] == [None, "field", "layer pair", "class"]


def test_single_runs_and_loss_component(runs):
    at = open_compare([runs["kd0"], runs["kd1"], runs["hy0"]])
    at.selectbox(key="compare_group").set_value("none").run()
    assert_clean(at)
    names = [t["name"] for t in charts(at)["compare_accuracy"]["data"]]
    assert names == ["KD · seed 0", "KD · seed 1", "hybrid"]
    at.selectbox(key="compare_component").set_value("feature").run()
    assert_clean(at)
    losses = charts(at)["compare_losses"]
    assert losses["layout"]["yaxis"]["title"]["text"] == "feature loss"
    weights = charts(at)["compare_weights"]
    assert weights["layout"]["yaxis"]["title"]["text"] == "feature weight"


def test_config_diff_lists_only_differing_fields(runs):
    at = open_compare([runs["kd0"], runs["kd1"], runs["hy0"], runs["hy1"]])
    diff = frame(at, "field")
    assert list(diff.columns) == ["KD (2 seeds)", "hybrid (2 seeds)"]
    assert set(diff.index) == {
        "weights.label",
        "weights.response",
        "weights.feature",
        "weights.relation",
        "weighting",
    }
    assert diff.loc["weighting"].tolist() == ["fixed", "uncertainty"]
    at.selectbox(key="compare_group").set_value("none").run()
    at.multiselect(key="compare_runs").set_value([runs["kd0"], runs["kd1"]]).run()
    assert_clean(at)
    assert frame(at, "field").index.tolist() == ["seed"]


def test_cka_difference_against_a_baseline(runs, store):
    at = open_compare([runs["mlp"], runs["kd0"], runs["hy0"]])
    at.selectbox(key="compare_group").set_value("none").run()
    # by default a baseline and a run with the same layers (mlp's student has other layers)
    assert at.selectbox(key="compare_baseline").value == "KD"
    assert at.selectbox(key="compare_diff_run").options == ["hybrid", "mlp"]
    assert "compare_cka_diff" in charts(at) and not at.warning
    at.selectbox(key="compare_baseline").set_value("KD").run()
    at.selectbox(key="compare_diff_run").set_value("hybrid").run()
    assert_clean(at)
    diff = charts(at)["compare_cka_diff"]
    heat = diff["data"][0]
    delta = np.asarray(store.probe(runs["hy0"])["cka"]) - np.asarray(
        store.probe(runs["kd0"])["cka"]
    )
    peak = float(np.abs(delta).max())
    # symmetric and fixed: +-0.2, or the next 0.1 above the largest difference
    expected = 0.2 if peak <= 0.2 else np.ceil(peak * 10) / 10
    assert (heat["zmin"], heat["zmax"], heat["zmid"]) == (-expected, expected, 0)
    assert diff["layout"]["title"]["text"] == (
        f"CKA(hybrid) - CKA(KD); colour range fixed at ±{expected:.2f}"
    )
    # another student has other layers: a clear message instead of a figure
    at.selectbox(key="compare_diff_run").set_value("mlp").run()
    assert_clean(at)
    assert "compare_cka_diff" not in charts(at)
    assert "same student layers" in texts(at, "warning")


def test_choices_follow_the_grouping(runs, store):
    at = open_compare([runs["kd0"], runs["kd1"], runs["hy0"], runs["hy1"]])
    assert at.selectbox(key="compare_baseline").value == "KD (2 seeds)"
    at.selectbox(key="compare_group").set_value("none").run()
    assert_clean(at)
    # the group labels are gone: the choices are set anew (so the browser shows them too)
    for key in ("compare_baseline", "compare_diff_run"):
        assert at.session_state[key] in at.selectbox(key=key).options
    # the default is the pair whose CKA differs most, the earlier one as the baseline
    labels = {"KD · seed 0": "kd0", "KD · seed 1": "kd1", "hybrid · seed 0": "hy0"}
    labels["hybrid · seed 1"] = "hy1"
    cka = {k: np.asarray(store.probe(runs[v])["cka"], dtype=float) for k, v in labels.items()}
    names = list(cka)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    base, other = max(pairs, key=lambda p: np.abs(cka[p[0]] - cka[p[1]]).mean())
    assert (at.session_state["compare_baseline"], at.session_state["compare_diff_run"]) == (
        base,
        other,
    )
    assert f"CKA({base});" in charts(at)["compare_cka_diff"]["layout"]["title"]["text"]


def test_gram_view_for_a_chosen_run_and_pair(runs):
    at = open_compare([runs["kd0"], runs["hy0"]])
    assert at.selectbox(key="compare_gram_run").options == ["KD", "hybrid"]
    at.selectbox(key="compare_gram_run").set_value(runs["hy0"]).run()
    assert at.selectbox(key="compare_gram_pair").options == ["block2 -> layer2.0"]
    assert_clean(at)
    gram = charts(at)["compare_gram"]
    assert [t["type"] for t in gram["data"]] == ["heatmap"] * 3
    assert "block2 -> layer2.0" in gram["layout"]["title"]["text"]
    assert len(gram["layout"]["shapes"]) == 3 * 2 * (len(CLASSES) - 1)  # class boundaries


def test_probe_tables(runs):
    at = open_compare([runs["kd0"], runs["kd1"], runs["hy0"], runs["hy1"]])
    cosines = frame(at, "layer pair")
    assert list(cosines.columns) == ["hybrid (2 seeds)"]  # KD has no feature loss: no cosines
    assert list(cosines.index) == ["block2 -> layer2.0"]
    per_class = frame(at, "class")
    assert list(per_class.columns) == ["KD (2 seeds)", "hybrid (2 seeds)"]
    assert per_class.index[0] == "agreement" and len(per_class) == 1 + len(CLASSES)


def test_filters_narrow_the_table_and_select_its_runs(runs):
    at = open_compare()
    assert len(frame(at, None)) == len(runs)
    assert at.multiselect(key="compare_f_tags").options == ["kd", "teachers"]
    at.multiselect(key="compare_f_status").set_value(["completed"]).run()
    at.multiselect(key="compare_f_student").set_value(["small_cnn"]).run()
    assert_clean(at)
    table = frame(at, None)
    assert set(table["id"]) == {runs[k] for k in ("kd0", "kd1", "hy0", "hy1")}
    assert set(table["group"]) == {"KD (2 seeds)", "hybrid (2 seeds)"}
    at.button(key="compare_select_shown").click().run()
    assert_clean(at)
    assert sorted(at.multiselect(key="compare_runs").value) == sorted(table["id"])
    # a filter never drops a selected run from the comparison
    at.multiselect(key="compare_f_student").set_value([]).run()
    at.multiselect(key="compare_f_tags").set_value(["teachers"]).run()
    assert_clean(at)
    assert sorted(at.multiselect(key="compare_runs").value) == sorted(table["id"])
    assert list(frame(at, None)["id"]) == [runs["teacher"]]


def test_only_runs_without_probes(runs):
    at = open_compare([runs["teacher"], runs["failed"]])
    drawn = charts(at)
    assert "compare_cka" not in drawn and "compare_gram" not in drawn
    assert {"compare_accuracy", "compare_losses"} <= set(drawn)
    assert "No probe for" in texts(at, "caption")


def test_report_holds_the_page_figures_and_tables(runs, downloads):
    """The download buttons' data, caught on its way in (AppTest has no download endpoint)."""
    open_compare([runs["kd0"], runs["hy0"]])
    html = downloads["compare_report"]()
    assert html.startswith("<!DOCTYPE html>") and 'id="figure-0"' in html
    assert html.count('class="figure"') == 8  # the same-layer CKA bars among them
    for heading in ("Runs", "Config fields that differ", "Accuracy per class", "Linear CKA"):
        assert f"<h2>{heading}</h2>" in html
    assert (
        downloads["compare_table_csv"]()
        .splitlines()[0]
        .startswith("id,shown as,name,owner,role,group,status")
    )


# ---------------------------------------------------------------------------------- Ablations
def test_ablations_without_suites_says_how_to_start(store):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/ablations.py").run()
    assert_clean(at)
    assert any("No ablation suite yet" in i.value for i in at.info)


def recorded(store):
    """A suite's ``submit`` that only records its runs (the tests fill in their results)."""

    def submit(submissions):
        return [
            store.create_run(s.config, name=s.name, tags=s.tags, suite=s.suite, variant=s.variant)
            for s in submissions
        ]

    return submit


def test_ablations_shows_contributions_and_opens_compare(store):
    base = RunConfig(weights=LossWeights(0.5, 0.5, 0.0, 0.2))

    suite = launch_suite(base, store, recorded(store), seeds=2, name="fabricated suite")
    effect = {"label": 0.1, "response": 0.05, "relation": 0.01}
    for entry in suite["runs"]:
        config = store.get_run(entry["run_id"])["config"]
        acc = 0.5 + sum(v for k, v in effect.items() if config["weights"][k] > 0)
        acc += 0.01 * config["seed"] * (1 + len(entry["variant"]) % 3)  # some seed noise
        store.update_run(
            entry["run_id"], status="completed", metrics={"val_acc": acc, "test_acc": acc}
        )

    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/ablations.py").run()
    assert_clean(at)
    assert at.selectbox(key="suite_pick").value == suite["id"]
    assert "contrib_chart" in charts(at)
    contrib, variants, suite_runs = (d.value for d in at.dataframe)
    assert set(contrib["component"]) == {"label", "response", "relation"}
    assert "verdict" in contrib.columns
    assert set(variants["variant"]) == set(suite["variants"])
    assert list(suite_runs["run"]) == [r["run_id"] for r in suite["runs"]]
    assert set(suite_runs["status"]) == {"completed"}

    at.button(key="suite_compare").click().run()
    assert_clean(at)
    assert at.title[0].value == "Compare"
    assert at.multiselect(key="compare_runs").value == [r["run_id"] for r in suite["runs"]]
    assert "compare_accuracy" not in charts(at)  # fabricated suite runs logged no epochs
    assert "compare_parcoords" in charts(at)


def test_a_finished_suite_can_be_deleted_and_its_runs_stay(store):
    base = RunConfig(weights=LossWeights(0.5, 0.5, 0.0, 0.0))
    suite = launch_suite(base, store, recorded(store), seeds=1)
    for entry in suite["runs"]:
        store.update_run(entry["run_id"], status="completed", metrics={"test_acc": 0.5})
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/ablations.py").run()
    at.button(key="suite_delete").click().run()
    assert_clean(at)
    assert store.list_suites() != []  # asks first
    at.button(key="suite_delete_yes").click().run()
    assert_clean(at)
    assert store.list_suites() == []
    assert {r["id"] for r in store.list_runs()} == {e["run_id"] for e in suite["runs"]}
    assert any("No ablation suite yet" in i.value for i in at.info)


def test_ablations_tables_fill_in_while_the_suite_runs_and_its_url_restores_it(store):
    base = RunConfig(weights=LossWeights(0.5, 0.5, 0.0, 0.0))
    suite = launch_suite(base, store, recorded(store), seeds=1, name="s")
    first, *rest = suite["runs"]
    store.update_run(
        first["run_id"], status="completed", metrics={"val_acc": 0.8, "test_acc": 0.79}
    )
    store.update_run(rest[0]["run_id"], status="running")
    store.set_epochs(rest[0]["run_id"], [{"epoch": 1, "val_acc": 0.55}])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["suite"] = suite["id"]
    at.run()
    at.switch_page("pages/ablations.py").run()
    assert_clean(at)
    assert at.selectbox(key="suite_pick").value == suite["id"]
    # the page is still polling (a run is active), yet it shows what has finished so far
    variants = next(
        d.value for d in at.dataframe if "variant" in d.value.columns and "n" in d.value.columns
    )
    assert list(variants["variant"]) == [first["variant"]]
    suite_runs = next(d.value for d in at.dataframe if "run" in d.value.columns)
    by_run = suite_runs.set_index("run")
    assert by_run.loc[first["run_id"], "val_acc"] == 0.8
    assert by_run.loc[rest[0]["run_id"], "val_acc"] == 0.55  # running: its last epoch
    store.update_run(rest[0]["run_id"], status="cancelled")
    at.run()
    by_run = next(d.value for d in at.dataframe if "run" in d.value.columns).set_index("run")
    assert by_run.loc[rest[0]["run_id"], "val_acc"] == 0.55  # cancelled: keeps its last one
    assert "1 of" in texts(at, "caption") or any(
        "runs finished" in str(p.proto) for p in at.get("progress")
    )


# ---------------------------------------------------------------------------------- the URL
def test_compare_selection_and_view_come_from_the_url(runs):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(
        {"runs": f"{runs['kd0']},{runs['hy0']},gone", "group": "none", "smooth": "0.5", "log": "1"}
    )
    at.run()
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    assert at.multiselect(key="compare_runs").value == [runs["kd0"], runs["hy0"]]
    assert at.selectbox(key="compare_group").value == "none"
    assert at.slider(key="compare_smooth").value == 0.5
    assert at.toggle(key="compare_log").value is True
    assert charts(at)["compare_losses"]["layout"]["yaxis"]["type"] == "log"
    assert [t["name"] for t in charts(at)["compare_accuracy"]["data"]] == ["KD", "hybrid"]
    # a change goes back into the URL (the unknown id is gone from it)
    at.selectbox(key="compare_colour").set_value("weighting").run()
    assert at.query_params["colour"] in ("weighting", ["weighting"])
    assert at.query_params["runs"] in (
        f"{runs['kd0']},{runs['hy0']}",
        [f"{runs['kd0']},{runs['hy0']}"],
    )


def test_group_and_colour_by_a_config_field(runs):
    at = open_compare([runs["kd0"], runs["kd1"], runs["hy0"], runs["mlp"]])
    at.selectbox(key="compare_group").set_value("weighting").run()
    assert_clean(at)
    names = [t["name"] for t in charts(at)["compare_accuracy"]["data"] if "std" not in t["name"]]
    assert names == ["fixed (3 runs)", "uncertainty"]
    at.selectbox(key="compare_group").set_value("none").run()
    at.selectbox(key="compare_colour").set_value("student").run()
    lines = [t for t in charts(at)["compare_accuracy"]["data"]]
    colour = {t["name"]: t["line"]["color"] for t in lines}
    # kd0, kd1 and hy0 train small_cnn, mlp trains mlp: two colours
    assert len(set(colour.values())) == 2
    assert colour["KD · seed 0"] == colour["KD · seed 1"] == colour["hybrid"] != colour["mlp"]


def test_runs_page_selection_and_options_come_from_the_url(runs, store):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"run": runs["hy0"], "x": "time", "smooth": "0.3"})
    at.run()
    at.switch_page("pages/runs.py").run()
    assert_clean(at)
    assert at.selectbox(key="runs_selected").value == runs["hy0"]
    assert at.slider(key="runs_smooth").value == 0.3
    assert charts(at)["run_losses"]["layout"]["xaxis"]["title"]["text"] == "time (s)"
    # a rename does not move the selection, and the URL keeps naming the run
    store.update_run(runs["hy0"], name="renamed")
    at.run()
    assert at.selectbox(key="runs_selected").value == runs["hy0"]
    assert at.query_params["run"] in (runs["hy0"], [runs["hy0"]])


def test_runs_table_shows_a_running_runs_latest_accuracy(store):
    run_id = fabricate_run(store, "live", status="running")  # one epoch at ~0.5 logged
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/runs.py").run()
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[run_id, "val_acc"] == pytest.approx(store.epochs(run_id)[-1]["val_acc"])
    assert any(m.label == "val acc (last epoch)" for m in at.metric)


# ---------------------------------------------------------------------------------- issue 19
def test_the_cka_difference_defaults_to_the_most_different_pair_and_lives_in_the_url(runs, store):
    """Two runs of one config and seed have equal CKA: as a default pair they showed zeros."""
    twin = fabricate_run(store, "KD", seed=0, tags=("kd",))  # kd0's config, seed and data
    at = open_compare([runs["kd0"], twin, runs["hy0"]])
    at.selectbox(key="compare_group").set_value("none").run()
    assert_clean(at)
    base, other = at.session_state["compare_baseline"], at.session_state["compare_diff_run"]
    assert "hybrid" in (base, other), (base, other)
    assert not (base.startswith("KD") and other.startswith("KD"))  # not the twins' zeros
    assert at.query_params["cka_base"] in (base, [base])
    assert at.query_params["cka_run"] in (other, [other])
    # the reader's choice goes into the URL, and a link restores it
    twins = [n for n in at.selectbox(key="compare_baseline").options if n.startswith("KD")]
    at.selectbox(key="compare_baseline").set_value(twins[0]).run()
    at.selectbox(key="compare_diff_run").set_value(twins[1]).run()
    params = {k: at.query_params[k] for k in ("runs", "group", "cka_base", "cka_run")}
    assert params["cka_run"] in (twins[1], [twins[1]])
    fresh = AppTest.from_file(APP, default_timeout=TIMEOUT)
    fresh.query_params.update({k: v if isinstance(v, str) else v[0] for k, v in params.items()})
    fresh.run()
    fresh.switch_page("pages/compare.py").run()
    assert_clean(fresh)
    assert fresh.selectbox(key="compare_baseline").value == twins[0]
    assert fresh.selectbox(key="compare_diff_run").value == twins[1]
    # a link's run that is not among the selection falls back to the default, quietly
    bad = AppTest.from_file(APP, default_timeout=TIMEOUT)
    bad.query_params.update({"runs": params["runs"], "group": "none", "cka_base": "<b>gone"})
    bad.run()
    bad.switch_page("pages/compare.py").run()
    assert_clean(bad)
    assert bad.selectbox(key="compare_baseline").value == base


def test_weights_over_time_are_drawn_only_for_adaptive_weighting(runs):
    at = open_compare([runs["kd0"], runs["kd1"]])  # fixed weights: flat lines said nothing
    assert "compare_weights" not in charts(at)
    assert "every selected run has fixed weights" in texts(at, "caption")
    at.multiselect(key="compare_runs").set_value([runs["kd0"], runs["hy0"]]).run()
    assert_clean(at)
    assert "compare_weights" in charts(at)  # hybrid adapts its weights (uncertainty)


def test_the_per_class_table_has_the_page_width_and_narrow_columns(runs):
    at = open_compare([runs["kd0"], runs["kd1"], runs["hy0"], runs["hy1"], runs["mlp"]])
    at.selectbox(key="compare_group").set_value("none").run()
    assert_clean(at)
    for column in at.columns:  # not squeezed into half of the page beside the cosines
        assert [d for d in column.get("dataframe") if d.value.index.name == "class"] == []
    (table,) = [d for d in at.dataframe if d.value.index.name == "class"]
    assert table.value.index[0] == "agreement"  # the key row first
    widths = {name: c.get("width") for name, c in json.loads(table.proto.columns).items()}
    assert widths.pop("_index") == "medium"
    assert set(widths) == set(table.value.columns) and set(widths.values()) == {"small"}
