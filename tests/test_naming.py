"""workbench.ui.naming: one short name per run, from what tells the runs shown apart."""

from __future__ import annotations

from workbench.config.run_config import LossWeights, RunConfig
from workbench.ui import naming
from workbench.ui.naming import field_text, option_label, short_names


def run(run_id, name="", **fields):
    config = RunConfig(**({"teacher": "small_cnn", "student": "mlp"} | fields))
    return {"id": run_id, "name": name, "role": config.role, "config": config.to_dict()}


def test_runs_are_named_by_the_fields_that_differ():
    runs = [
        run("a", feature_kind="at", batch_size=32, epochs=5),
        run("b", feature_kind="cosine", batch_size=64, epochs=5),
        run("c", feature_kind="at", batch_size=64, epochs=2),
    ]
    assert short_names(runs) == {
        "a": "at · 5 ep · bs 32",
        "b": "cosine · 5 ep · bs 64",
        "c": "at · 2 ep · bs 64",
    }


def test_a_given_name_wins_and_repeats_are_told_apart():
    runs = [run("a", "KD"), run("b", "KD", seed=1), run("c", "KD", seed=1), run("d")]
    names = short_names(runs)
    assert names["a"] == "KD · seed 0"
    # b and c share name and seed: only the id tells them apart
    assert (names["b"], names["c"]) == ("KD · seed 1 · b", "KD · seed 1 · c")
    assert names["d"] == "seed 0"  # unnamed: what differs from the others
    assert len(set(names.values())) == 4


def test_one_run_alone_or_identical_configs():
    assert short_names([run("a")]) == {"a": "student"}
    assert short_names([run("a"), run("b")]) == {"a": "student · a", "b": "student · b"}
    teacher = RunConfig(teacher="small_cnn").teacher_config()
    rec = {"id": "t", "name": "", "role": "teacher", "config": teacher.to_dict()}
    assert short_names([rec]) == {"t": "teacher"}


def test_weights_and_pairs_are_written_briefly_and_at_most_five_fields():
    runs = [
        run("a", weights=LossWeights(1, 0, 0, 0), temperature=2.0, lr=0.01, epochs=3),
        run("b", weights=LossWeights(0.5, 0.5, 0, 0), temperature=8.0, lr=0.1, epochs=4),
    ]
    names = short_names(runs)
    assert names["a"] == "label 1 · resp 0 · T 2 · 3 ep · lr 0.01"
    assert len(names["a"].split(" · ")) == naming.MAX_FIELDS
    assert field_text("layer_pairs", '[["b1", "l2"]]') == "pairs b1>l2"
    assert field_text("layer_pairs", "[]") == "pairs auto"
    assert field_text("teacher_epochs", 3) == "teacher 3 ep"


def test_device_and_log_interval_never_name_a_run():
    names = short_names([run("a", device="cpu"), run("b", device="auto")])
    assert names == {"a": "student · a", "b": "student · b"}


def test_option_label_is_the_name_cut_to_forty_characters():
    assert option_label("at · 5 ep", "r1") == "at · 5 ep"
    assert option_label("KD · r1", "r1") == "KD · r1"
    assert len(option_label("x" * 90, "r1")) == naming.MAX_NAME


def test_the_accuracy_label_comes_from_one_place():
    # a finished run's headline number is the test split's; every epoch's is validation's
    assert (naming.ACCURACY_METRIC, naming.ACCURACY_LABEL) == ("test_acc", "test acc")
    assert (naming.EPOCH_METRIC, naming.EPOCH_LABEL) == ("val_acc", "val acc")


def test_metric_labels_name_the_split():
    assert naming.metric_label("val_acc") == "val acc"
    assert naming.metric_label("test_acc") == "test acc"


LONG_PAIRS = (("block1", "layer2.0"), ("block2", "layer3.0"), ("block3", "layer4.1"))


def test_a_chip_is_the_table_name_and_at_most_40_characters():
    runs = [
        run("a", layer_pairs=LONG_PAIRS, weights=LossWeights(0.3, 0.3, 0.4, 0), lr=0.01),
        run("b", layer_pairs=LONG_PAIRS[:2], weights=LossWeights(0.3, 0.3, 0.4, 0), lr=0.1),
        run("c", name="a name a user gave this run, far longer than forty characters"),
        run("20261127-181501-3f9a2c", feature_kind="cosine"),
        run("20261127-181502-77aa01", feature_kind="cosine"),
    ]
    names = short_names(runs)
    for run_id, name in names.items():
        assert len(name) <= naming.MAX_NAME, name
        assert option_label(name, run_id) == name  # one name in table, legend and chip
    assert len(set(names.values())) == len(runs)
    # identical configs: the id tells them apart, shortened to its random part, last
    assert names["20261127-181501-3f9a2c"].endswith(" · 3f9a2c")
    assert "block1>layer2.0,block2>layer3.0,block3>layer4.1" not in " ".join(names.values())


def test_automatic_pairs_are_named_as_the_pairs_they_resolved_to():
    auto = run("a", seed=0) | {"pairs": [list(p) for p in LONG_PAIRS]}  # recorded by the engine
    explicit = run("b", seed=1, layer_pairs=LONG_PAIRS)
    assert short_names([auto, explicit]) == {"a": "seed 0", "b": "seed 1"}
    unknown = run("c", seed=1)  # auto, and nothing says what it resolved to: told apart
    assert "pairs auto" in short_names([unknown, explicit])["c"]


def test_a_subset_is_named_as_among_the_page_runs():
    runs = [run("a", seed=0, epochs=2), run("b", seed=1, epochs=2), run("c", seed=0, epochs=5)]
    page = short_names(runs)
    assert short_names(runs[:2], among=runs) == {"a": page["a"], "b": page["b"]}


def test_a_long_shared_name_is_cut_before_what_tells_the_runs_apart():
    """20 runs over many fields and 4 seeds (the browser's legibility case): the cut falls on
    what the runs sharing a name have in common, never on their seed."""
    runs = [
        run(
            f"20261202-0700{i:02d}-{i:06x}",
            student="small_cnn",
            teacher="resnet18",
            weights=LossWeights(1, 1 + i // 4, 0.5 * (i // 4), 0),
            temperature=2.0 + i // 4,
            epochs=3 + i // 8,
            seed=i % 4,
        )
        for i in range(20)
    ]
    names = short_names(runs)
    assert len(set(names.values())) == 20
    for i, r in enumerate(runs):
        assert len(names[r["id"]]) <= naming.MAX_NAME and f"seed {i % 4}" in names[r["id"]]


def test_a_name_of_many_fields_keeps_its_last_one_whole():
    runs = [
        run(f"20261202-0710{i:02d}-{i:06x}", weights=LossWeights(*w), seed=seed)
        for i, (w, seed) in enumerate(
            (w, s) for w in ((0.5, 0.5, 0, 0), (0.3, 0.3, 0.2, 0.2)) for s in range(4)
        )
    ]
    names = short_names(runs)
    assert len(set(names.values())) == 8
    assert all(
        len(n) <= naming.MAX_NAME and n.endswith(f"seed {i % 4}")
        for i, n in enumerate(names.values())
    )
