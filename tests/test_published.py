"""The published CIFAR-100 table (``workbench.ablation.published``): its rows, the method and
recipe a stored config must have to be compared with one, the mean and interval shown beside
it, and the Compare and Ablations pages that show them (AppTest, fabricated runs)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import streamlit as st

from tests.test_ablations_page import open_ablations, submit_as
from tests.test_compare_page import fabricate_store, open_compare
from workbench.ablation import suites
from workbench.ablation.published import (
    PUBLISHED,
    follows_protocol,
    method_of,
    published_for,
    published_rows,
)
from workbench.config.choices import MODEL_INFO
from workbench.config.recipes import apply_presets
from workbench.config.run_config import LossWeights, RunConfig
from workbench.storage.store import Store
from workbench.ui import report

ROOT = Path(__file__).resolve().parents[1]
KD = "KD (Hinton et al. 2015)"
PAIRS = [
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
]
PUBLISHED_COLUMN = "published top-1 (percent)"


def protocol(
    teacher: str = "resnet32x4", student: str = "resnet8x4", method: str | None = KD, **changes
) -> RunConfig:
    """A student config of the papers' CIFAR-100 recipe (``crd-cifar100``, augmentation on)."""
    fields = {"dataset": "cifar100", "teacher": teacher, "student": student, "augment": True}
    return RunConfig(**apply_presets(fields, recipe="crd-cifar100", method=method)).replace(
        **changes
    )


def looked_up() -> dict[tuple[str, str, str], float]:
    return {(p.method, p.teacher, p.student): p.top1 for p in PUBLISHED}


# ---------------------------------------------------------------------------------- the table
def test_every_row_names_registered_models():
    names = {name for p in PUBLISHED for name in (p.teacher, p.student)}
    assert names - set(MODEL_INFO) == set(), "register these in workbench/config/choices.py"


def test_every_row_is_a_percentage_with_a_source():
    assert len(PUBLISHED) == 99  # 13 x 7 of RepDistiller's table 1 less FSP's 0.00, 6 DKD, 3 DIST
    for p in PUBLISHED:
        assert 0 < p.top1 < 100 and p.source, p
        for value in (p.teacher_top1, p.student_top1):
            assert value is None or 0 < value < 100, p
        assert p.spread is None or 0 < p.spread < 5, p
        assert (p.teacher, p.student) in PAIRS, p
    keys = [(p.method, p.teacher, p.student) for p in PUBLISHED]
    assert len(keys) == len(set(keys)), "one row per method and pair"
    methods = {p.method for p in PUBLISHED}
    assert {"KD", "FitNet", "AT", "SP", "RKD", "PKT", "CRD", "DKD", "DIST"} <= methods
    assert "ReviewKD" not in methods  # no stored source gives a number: none invented


def test_rows_against_the_readmes():
    table = looked_up()
    # RepDistiller README, table 1:
    # "| KD | 74.92 | 73.54 | 70.66 | 70.67 | 73.08 | 73.33 | 72.98 |"
    assert [table["KD", t, s] for t, s in PAIRS] == [
        74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98
    ]  # fmt: skip
    # "| **CRD** | **75.48** | **74.14** | **71.16** | **71.46** | **73.48** | **75.51** | **73.94** |"
    assert table["CRD", "resnet32x4", "resnet8x4"] == 75.51
    # "| AT | 74.08 | 72.77 | 70.55 | 70.22 | 72.31 | 73.44 | 71.43 |"
    assert table["AT", "vgg13", "vgg8"] == 71.43
    # "| FSP | 72.91 | 0.00 | 69.95 | ..." : 0.00 is not a result
    assert ("FSP", "wrn_40_2", "wrn_40_1") not in table
    # "| Teacher <br> Student |    75.61 <br> 73.26    | ..." (wrn-40-2 -> wrn-16-2)
    (kd,) = [p for p in PUBLISHED if (p.method, p.student) == ("KD", "wrn_16_2")]
    assert (kd.teacher_top1, kd.student_top1) == (75.61, 73.26)
    # mdistiller README, DKD on CIFAR-100 (ResNet56/20, ResNet110/32, ResNet32x4/8x4, ...):
    # "| **DKD** | **71.97** | **74.11** | **76.32** | **76.23** | **74.81** | **74.68** |"
    assert table["DKD", "resnet32x4", "resnet8x4"] == 76.32
    assert table["DKD", "wrn_40_2", "wrn_16_2"] == 76.23
    assert ("DKD", "resnet110", "resnet20") not in table  # not in that table
    # DIST_KD README, CIFAR-100:
    # "|ResNet-8x4 (72.50)|ResNet-32x4 (79.42)|76.31±0.19|`cifar_resnet8x4`|`cifar_resnet32x4`|"
    (dist,) = [p for p in PUBLISHED if (p.method, p.student) == ("DIST", "resnet8x4")]
    assert (dist.top1, dist.spread, dist.teacher_top1, dist.student_top1) == (
        76.31, 0.19, 79.42, 72.50
    )  # fmt: skip
    assert sum(p.method == "DIST" for p in PUBLISHED) == 3


# ---------------------------------------------------------------------------------- matching
@pytest.mark.parametrize(
    "term, field, kind, method",
    [
        ("response", "response_kind", "kd", "KD"),
        ("response", "response_kind", "dkd", "DKD"),
        ("response", "response_kind", "dist", "DIST"),
        ("feature", "feature_kind", "fitnet", "FitNet"),
        ("feature", "feature_kind", "mse", "FitNet"),
        ("feature", "feature_kind", "at", "AT"),
        ("feature", "feature_kind", "at_paper", "AT"),
        ("feature", "feature_kind", "nst", "NST"),
        ("feature", "feature_kind", "vid", "VID"),
        ("feature", "feature_kind", "cosine", None),
        ("relation", "relation_kind", "sp", "SP"),
        ("relation", "relation_kind", "sp_paper", "SP"),
        ("relation", "relation_kind", "rkd", "RKD"),
        ("relation", "relation_kind", "rkd_paper", "RKD"),
        ("relation", "relation_kind", "pkt", "PKT"),
        ("relation", "relation_kind", "cc", "CC"),
    ],
)
def test_method_of_each_kind(term, field, kind, method):
    weights = {"label": 1.0, "response": 0.0, "feature": 0.0, "relation": 0.0, term: 1.0}
    config = RunConfig(weights=weights, **{field: kind}).to_dict()
    assert method_of(config) == method
    if term != "response":  # the kind of a term that is off does not count
        off = RunConfig(weights={"label": 1.0, "response": 1.0}, **{field: kind}).to_dict()
        assert method_of(off) == "KD"


@pytest.mark.parametrize(
    "weights, changes",
    [
        ((1, 0, 0, 0), {}),  # a scratch student
        ((0, 1, 0, 0), {}),  # no label term: no source trains so
        ((1, 1, 1, 0), {}),  # two distillation terms
        ((1, 1, 0, 0), {"weighting": "uncertainty"}),  # adaptive weights
    ],
)
def test_method_of_none(weights, changes):
    assert method_of(RunConfig(weights=LossWeights(*weights), **changes).to_dict()) is None


def test_method_of_a_teacher_run_is_none():
    teacher = RunConfig(role="teacher", student="resnet18", weights=LossWeights(1, 0, 0, 0))
    assert method_of(teacher.to_dict()) is None


def test_published_for_the_full_protocol_only():
    config = protocol().to_dict()
    (row,) = published_for(config)
    assert (row.method, row.teacher, row.student, row.top1) == (
        "KD",
        "resnet32x4",
        "resnet8x4",
        73.33,
    )
    assert published_for({**config, "teacher_epochs": 5})  # a stored teacher may stand in
    assert published_for({**config, "temperature": 2.0, "weights": {"label": 1, "response": 1}})
    changed = {
        "optimizer": "adamw",
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 1e-4,
        "schedule": "cosine",
        "milestones": [150, 180],
        "lr_decay": 0.2,
        "warmup_epochs": 5,
        "epochs": 200,
        "batch_size": 128,
        "dataset": "cifar10",
        "augment": False,
        "train_fraction": 0.5,
        "teacher": "wrn_40_2",  # no such pair
        "response_kind": "dkd",  # DKD has a row for resnet32x4 -> resnet8x4, but not this recipe
    }
    for name, value in changed.items():
        other = {**config, name: value}
        if name == "response_kind":
            assert published_for(other)[0].method == "DKD"
            continue
        assert published_for(other) == [], name
    assert published_for({k: v for k, v in config.items() if k != "optimizer"}) == []


def test_the_small_students_learning_rate():
    mobile = protocol(teacher="vgg13", student="mobilenet_v2_cifar").to_dict()
    assert mobile["lr"] == 0.01 and follows_protocol(mobile)
    assert not follows_protocol({**mobile, "lr": 0.05})
    assert not follows_protocol(protocol(lr=0.01).to_dict())


def test_published_for_a_pair_without_a_row():
    dkd = protocol(teacher="resnet110", student="resnet20", method="DKD (Zhao et al. 2022)")
    assert method_of(dkd.to_dict()) == "DKD" and published_for(dkd.to_dict()) == []
    sp = protocol(weights=LossWeights(1, 0, 0, 1), relation_kind="sp")
    assert published_for(sp.to_dict())[0].top1 == 72.94  # "| SP | ... | 72.94 | 72.68 |"


# ---------------------------------------------------------------------------------- the rows
def record(config: RunConfig, acc: float, status: str = "completed", teacher: float = 0.79):
    return {
        "config": config.to_dict(),
        "status": status,
        "metrics": {"test_acc": acc, "teacher_acc": teacher} if status == "completed" else {},
    }


def test_published_rows_mean_and_interval():
    accs = [0.70, 0.72, 0.75]
    records = [record(protocol(seed=s), a, teacher=0.79 + s / 100) for s, a in enumerate(accs)]
    records += [
        record(protocol(seed=3), 0.9, status="failed"),  # not finished: left out
        record(protocol(seed=4, epochs=24, milestones=(15, 18, 21)), 0.5),  # not the recipe
        record(protocol(seed=0, temperature=2.0), 0.71),  # another configuration: its own row
    ]
    first, second = published_rows(records)
    mean = sum(accs) / 3
    sd = statistics.stdev(accs)
    t_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)
    assert first["seeds"] == 3
    assert first["your test acc (percent)"] == pytest.approx(100 * mean)
    assert first["your 95% CI ± (percent)"] == pytest.approx(100 * t_975_2 * sd / math.sqrt(3))
    assert first[PUBLISHED_COLUMN] == 73.33 and first["published teacher (percent)"] == 79.42
    assert first["your teacher (percent)"] == pytest.approx(80.0)
    assert first["source"].startswith("RepDistiller README")
    assert first["published ± (percent)"] is None
    assert second["seeds"] == 1 and second["your 95% CI ± (percent)"] is None
    assert second["your test acc (percent)"] == pytest.approx(71.0)
    assert "T=2" in second["configuration"] and "T=4" in first["configuration"]
    assert published_rows(records[3:5]) == []
    assert published_rows([]) == []


def test_a_seed_counts_once():
    rows = published_rows([record(protocol(seed=0), 0.70), record(protocol(seed=0), 0.70)])
    assert rows[0]["seeds"] == 1


def test_the_rows_go_into_the_html_report():
    import pandas as pd

    rows = pd.DataFrame(published_rows([record(protocol(seed=s), 0.7 + s / 100) for s in (0, 1)]))
    html = report.comparison_report("t", [], [("Published numbers beside yours", rows)])
    assert "73.33" in html and "RepDistiller README" in html


# ---------------------------------------------------------------------------------- the pages
@pytest.fixture
def page_store(home, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `streamlit run` puts app.py's folder on sys.path
    s = Store(home)
    yield s
    st.cache_resource.clear()
    s.close()


def finished(store: Store, config: RunConfig, acc: float) -> str:
    run_id = store.create_run(config, name=f"kd seed {config.seed}", status="completed")
    store.update_run(run_id, status="completed", metrics={"test_acc": acc, "teacher_acc": 0.79})
    return run_id


def published_tables(at) -> list:
    return [d.value for d in at.dataframe if PUBLISHED_COLUMN in d.value.columns]


def test_compare_shows_the_published_value_beside_matching_runs(page_store):
    for seed, acc in enumerate([0.72, 0.74]):
        finished(page_store, protocol(seed=seed), acc)
    at = open_compare()
    assert "Published numbers beside yours" in [s.value for s in at.subheader]
    (table,) = published_tables(at)
    assert table[PUBLISHED_COLUMN].tolist() == [73.33]
    assert table["your test acc (percent)"].tolist() == pytest.approx([73.0])
    assert table["method"].tolist() == ["KD"]


def test_compare_shows_no_published_table_without_a_match(page_store):
    fabricate_store(page_store)
    finished(page_store, protocol(augment=False), 0.72)  # not the papers' recipe
    at = open_compare()
    assert "Published numbers beside yours" not in [s.value for s in at.subheader]
    assert published_tables(at) == []


@pytest.fixture
def lab(page_store, home, monkeypatch):
    """bob sees alice's finished suite of the KD protocol on CIFAR-100 (its data never loads)."""
    monkeypatch.setenv("KDWB_USER", "bob")
    config = home.parent / "workbench.toml"
    config.write_text('[workers]\napp_executes = "none"\n')  # queued runs stay queued
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    split = SimpleNamespace(num_classes=100, val_y=[0] * 10, test_y=[0] * 100)
    monkeypatch.setattr(suites, "load_dataset", lambda *a, **k: split)

    def launch(base: RunConfig) -> dict:
        suite = suites.launch_suite(
            base, page_store, submit_as(page_store, "alice"), seeds=2, owner="alice"
        )
        for entry in suite["runs"]:
            acc = 0.73 + entry["seed"] / 100 if entry["variant"] == "full" else 0.70
            page_store.update_run(entry["run_id"], status="completed", metrics={"test_acc": acc})
        return suite

    return launch


def test_ablations_shows_the_published_value_of_the_full_variant(lab):
    suite = lab(protocol())
    at = open_ablations({"suite": suite["id"]})
    (table,) = published_tables(at)
    # only the full loss (label + KD) is a published method; label only is a scratch student
    assert table[PUBLISHED_COLUMN].tolist() == [73.33]
    assert table["your test acc (percent)"].tolist() == pytest.approx([73.5])
    assert table["seeds"].tolist() == [2]


def test_ablations_shows_no_published_table_off_the_recipe(lab):
    suite = lab(protocol(epochs=24, milestones=(15, 18, 21)))
    at = open_ablations({"suite": suite["id"]})
    assert published_tables(at) == []
    assert "Published numbers beside yours" not in [s.value for s in at.subheader]
