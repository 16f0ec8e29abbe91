from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from workbench.config.run_config import (
    BOUNDS,
    IDENTITY_ADDED_LATER,
    PRESETS,
    Bound,
    LossWeights,
    RunConfig,
    check_run_name,
    fingerprint_of,
    parse_weights,
    summary_of,
)
from workbench.errors import ConfigError, UnknownNameError


def test_defaults_are_the_course_hybrid():
    config = RunConfig()
    assert config.weights.as_dict() == {
        "label": 0.3,
        "response": 0.3,
        "feature": 0.2,
        "relation": 0.2,
    }
    assert config.uses_teacher
    assert PRESETS["hybrid (course default)"] == config.weights


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teacher": "resnet999"}, "unknown teacher model 'resnet999'; choose one of: "),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"temperature": 0.0}, "temperature must be a number from 0.05 to 100, got 0"),
        ({"temperature": -1.0}, "temperature must be a number from 0.05 to 100, got -1"),
        ({"epochs": 0}, "epochs must be a whole number from 1 to 500, got 0"),
        ({"weights": LossWeights(0, 0, 0, 0)}, "all loss weights are zero"),
        (
            {"weights": LossWeights(-0.1, 1, 0, 0)},
            "weight label must be a number from 0 to 100, got -0.1",
        ),
        ({"feature_kind": "l7"}, "unknown feature kind 'l7'"),
        ({"relation_kind": "xx"}, "unknown relation kind 'xx'"),
        ({"weighting": "magic"}, "unknown weighting scheme 'magic'"),
        ({"lr": 0.0}, "lr must be a number from 1e-06 to 1, got 0"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ({"dataset": "image_folder"}, "needs data_path"),
        ({"layer_pairs": (("a",),)}, "each layer pair must be"),
    ],
)
def test_bad_values_say_what_to_change(changes, message):
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    assert message in str(info.value)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        RunConfig(student="nope")
    assert "small_cnn" in str(info.value) and "resnet18" in str(info.value)


def test_parse_weights():
    assert parse_weights("label=0.3,response=0.7") == LossWeights(0.3, 0.7, 0.0, 0.0)
    with pytest.raises(ConfigError, match="must be a number from 0 to 100, got -1"):
        parse_weights("label=-1")
    with pytest.raises(ConfigError, match="all loss weights are zero"):
        parse_weights("label=0")
    with pytest.raises(UnknownNameError, match="unknown loss component 'kd'"):
        parse_weights("kd=1")
    with pytest.raises(ConfigError, match="must be a number"):
        parse_weights("label=abc")


def _config_toml(config: RunConfig) -> str:
    """A TOML document of ``config``, written by hand (tomllib only reads)."""
    lines = [
        f"{key} = {json.dumps(value)}"
        for key, value in config.to_dict().items()
        if key not in ("weights", "layer_pairs")
    ]
    pairs = ", ".join(f"[{json.dumps(s)}, {json.dumps(t)}]" for s, t in config.layer_pairs)
    lines += [f"layer_pairs = [{pairs}]", "", "[weights]"]
    lines += [f"{k} = {v!r}" for k, v in config.weights.as_dict().items()]
    return "\n".join(lines) + "\n"


def test_toml_and_dict_round_trip(tmp_path):
    config = RunConfig(
        teacher="resnet8x4",
        weights=LossWeights(0.5, 0.5, 0.0, 0.25),
        layer_pairs=(("block2", "layer2"), ("block3", "layer3")),
        temperature=2.5,
        augment=True,
    )
    assert RunConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "run.toml"
    path.write_text(_config_toml(config))
    assert RunConfig.from_toml(path) == config


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="not valid TOML"):
        path = "bad.toml"
        import pathlib
        import tempfile

        p = pathlib.Path(tempfile.mkdtemp()) / path
        p.write_text("epochs = = 3")
        RunConfig.from_toml(p)


def test_fingerprint_ignores_device_but_not_results():
    base = RunConfig()
    assert base.fingerprint() == RunConfig(device="cpu", log_every=5).fingerprint()
    assert base.fingerprint() != RunConfig(seed=1).fingerprint()
    assert base.fingerprint() != RunConfig(temperature=2.0).fingerprint()


def test_every_seed_and_variant_shares_one_teacher():
    a = RunConfig(seed=0).teacher_config()
    b = RunConfig(seed=2, weights=LossWeights(1, 0, 0, 0), lr=0.01, batch_size=32).teacher_config()
    assert a.fingerprint() == b.fingerprint()
    assert a.role == "teacher" and a.trained_model == "resnet18"
    assert not a.uses_teacher
    assert RunConfig(teacher_epochs=7).teacher_config().fingerprint() != a.fingerprint()


def test_teacher_runs_train_on_labels_only():
    with pytest.raises(ConfigError, match="labels alone"):
        RunConfig(role="teacher")


def test_scratch_student_does_not_use_teacher():
    assert not RunConfig(weights=LossWeights(1, 0, 0, 0)).uses_teacher


# ---------------------------------------------------------------------- every field, every source
# A wrong value of each kind for each field; every one is a one-line ConfigError naming the field.
WRONG_TYPES = {
    "role": [5, None, ["student"]],
    "dataset": [5, None],
    "data_path": [7, None, b"/tmp", "a\x00b"],
    "teacher": [5, None],
    "student": [5, None],
    "teacher_run": [5, None],
    "weights": ["x", 5, {"label": "x"}, {"label": True}, {"label": None}, {"lable": 1.0}],
    "temperature": ["4", True, None, float("nan"), float("inf")],
    "feature_kind": [5, None],
    "relation_kind": [5, None],
    "layer_pairs": [5, "ab", [["a"]], [[1, 2]], [["a", ""]], [None]],
    "weighting": [5, None],
    "epochs": ["3", 3.0, True, None],
    "teacher_epochs": ["3", 3.0, True, None],
    "batch_size": ["64", 64.0, True, None],
    "lr": ["0.01", True, None, float("nan")],
    "seed": ["0", 0.0, False, None, -1],
    "device": [5, None, "tpu", "cuda:", "cuda:x", "cuda:0 "],
    "augment": ["no", "false", "yes", 0, 1, None],
    "train_fraction": ["0.5", True, None, 0, 1.5, float("nan")],
    "teacher_cache": ["false", "no", 0, 1, None],
    "evaluate_test": ["false", "no", 0, 1, None],
    "log_every": ["10", 10.0, True, None],
    "response_kind": [5, None, "KD", "crd"],
    "dkd_alpha": ["1", True, None, -1.0, float("nan")],
    "dkd_beta": ["8", True, None, -0.5, 101.0],
    "dkd_warmup": ["20", 20.0, True, None, -1],
    "dist_beta": ["1", True, None, -1.0],
    "dist_gamma": ["1", True, None, float("inf")],
    "optimizer": [5, None, "adam", "SGD"],
    "momentum": ["0.9", True, None, 1.0, -0.1],
    "weight_decay": ["0", True, None, -1e-4, 2.0],
    "schedule": [5, None, "step", "cos"],
    "milestones": [5, "150", [1.5], [True], [2, 1], [0], [3], [1, 1]],
    "lr_decay": ["0.1", True, None, 0, 1.5],
    "warmup_epochs": ["1", 1.0, True, None, -1, 3],
}
# How the message names each field (the loss terms are "weight label" etc.).
NAMED = {
    "weights": ("weight", "loss component"),
    "layer_pairs": ("layer pair", "layer_pairs"),
    "teacher": ("teacher",),
    "student": ("student",),
    "feature_kind": ("feature_kind", "feature kind"),
    "relation_kind": ("relation_kind", "relation kind"),
    "weighting": ("weighting",),
    "response_kind": ("response kind", "response_kind"),
    "milestones": ("milestone", "schedule"),
}


def test_every_field_has_wrong_values_to_try():
    assert set(WRONG_TYPES) == {f.name for f in dataclasses.fields(RunConfig)}


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in WRONG_TYPES.items() for v in values]
)
def test_every_field_refuses_a_wrong_type_in_one_line(field, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: value})
    message = str(info.value)
    assert "\n" not in message
    assert any(name in message for name in NAMED.get(field, (field,))), message
    with pytest.raises(ConfigError):  # the same through a dict (JSON, a stored record)
        RunConfig.from_dict({field: value})


def test_each_field_kind_is_checked_once():
    from workbench.config import run_config as config_module

    kinds = (
        config_module._TEXTS,
        config_module._WHOLES,
        config_module._FLOATS,
        config_module._SWITCHES,
        ("weights", "layer_pairs", "milestones"),
    )
    listed = [name for kind in kinds for name in kind]
    assert sorted(listed) == sorted(f.name for f in dataclasses.fields(RunConfig))
    # every number has its bounds in BOUNDS, and nothing else is there but the loss weight
    assert set(BOUNDS) == {*config_module._WHOLES, *config_module._FLOATS, "weight"}


def test_milestones_fit_the_schedule_and_the_run():
    config = RunConfig(schedule="multistep", milestones=[150, 180, 210], epochs=240)
    assert config.milestones == (150, 180, 210)
    assert RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="needs milestones"):
        RunConfig(schedule="multistep")
    with pytest.raises(ConfigError, match="multistep only"):
        RunConfig(milestones=[1])
    with pytest.raises(ConfigError, match="milestone 240 is not before the last epoch"):
        RunConfig(schedule="multistep", milestones=[150, 240], epochs=240)


def test_the_new_fields_at_their_defaults_keep_every_fingerprint():
    """Stores made before the recipe and response fields existed keep their teachers: a config
    that leaves them at their defaults hashes as it did (the value pinned from before)."""
    assert RunConfig().fingerprint() == "905720687e31c95d"
    assert RunConfig().teacher_config().fingerprint() == "54ab2bcb2d3b2be0"
    assert RunConfig(response_kind="dkd").fingerprint() != RunConfig().fingerprint()
    assert RunConfig(optimizer="sgd").fingerprint() != RunConfig().fingerprint()


def test_a_teacher_trains_with_the_students_recipe_at_its_own_length():
    student = RunConfig(
        optimizer="sgd",
        lr=0.01,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=[150, 180, 210],
        epochs=240,
        teacher_epochs=24,
    )
    teacher = student.teacher_config()
    assert (teacher.optimizer, teacher.lr, teacher.weight_decay) == ("sgd", 0.05, 5e-4)
    assert teacher.milestones == (15, 18, 21) and teacher.epochs == 24
    # students that differ only in lr share their teacher
    assert student.replace(lr=0.05).teacher_config() == teacher
    short = student.replace(teacher_epochs=1).teacher_config()
    assert short.schedule == "constant" and short.milestones == ()


@pytest.mark.parametrize("name", [n for n in BOUNDS if n != "weight"])
def test_limits_are_inclusive_and_enforced(name):
    bound = BOUNDS[name]
    step = 1 if bound.whole else bound.high * 1e-6
    others = {"epochs": 500} if name == "warmup_epochs" else {}  # a warm-up shorter than the run
    RunConfig(**{name: bound.low + step if bound.low_open else bound.low}, **others)
    RunConfig(**{name: bound.high}, **others)
    if bound.low_open:
        below = bound.low
    else:
        below = bound.low - (1 if bound.whole else bound.low / 2 or 1e-9)
    for outside in (below, bound.high + step):
        with pytest.raises(ConfigError) as info:
            RunConfig(**{name: outside}, **others)
        assert str(info.value).startswith(f"{name} must be {bound.describe()}, got ")


def test_limits_in_words():
    assert BOUNDS["epochs"].describe() == "a whole number from 1 to 500"
    assert BOUNDS["seed"].describe() == "a whole number from 0 to 4294967295"
    assert BOUNDS["lr"].describe() == "a number from 1e-06 to 1"
    assert Bound(0, 10, low_open=True).describe() == "a number > 0 and <= 10"
    assert not Bound(0, 10, low_open=True).contains(0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # issue 8, item 8: each was a traceback, a silent misreading or a mid-run failure
        ({"layer_pairs": 5}, "layer_pairs must be a list of [student_layer, teacher_layer]"),
        ({"augment": "no"}, "augment must be true or false, got 'no'"),
        ({"teacher_cache": "false"}, "teacher_cache must be true or false, got 'false'"),
        ({"lr": 1e308}, "lr must be a number from 1e-06 to 1, got 1e+308"),
        ({"seed": 2**70}, f"seed must be a whole number from 0 to 4294967295, got {2**70}"),
        ({"epochs": 10000}, "epochs must be a whole number from 1 to 500, got 10000"),
        ({"device": 5}, "device must be text, got 5"),
        ({"data_path": 7}, "data_path must be text, got 7"),
        ({"weights": {"label": "x"}}, "weight label must be a number from 0 to 100, got 'x'"),
        ({"lr": 2**2000}, "lr must be a number from 1e-06 to 1, got 11481306952742545"),
    ],
)
def test_issue_bad_inputs(changes, message):
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    assert str(info.value).startswith(message)


def _toml(tmp_path, text: str | bytes):
    path = tmp_path / "run.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[weights]\nlabel = "x"\n', "weight label must be a number from 0 to 100, got 'x'"),
        ("device = 5\n", "device must be text, got 5"),
        ("data_path = 7\n", "data_path must be text, got 7"),
        ('augment = "no"\n', "augment must be true or false, got 'no'"),
        ('teacher_cache = "false"\n', "teacher_cache must be true or false, got 'false'"),
        ("epochs = 10000\n", "epochs must be a whole number from 1 to 500, got 10000"),
        ("epochs = 3.0\n", "epochs must be a whole number from 1 to 500, got 3"),
        ("lr = 1e308\n", "lr must be a number from 1e-06 to 1, got 1e+308"),
        ("lr = nan\n", "lr must be a number from 1e-06 to 1, got nan"),
        ("seed = 1180591620717411303424\n", "seed must be a whole number from 0 to 4294967295"),
        ("seed = 4294967296\n", "seed must be a whole number from 0 to 4294967295"),
        ("layer_pairs = 5\n", "layer_pairs must be a list"),
        ("weights = 5\n", "weights must be a table of label, response, feature, relation"),
        ("[weights]\nlable = 1.0\n", "unknown loss component 'lable'"),
        (b'name = "\xff\xfe"\n', "is not UTF-8 text (byte 0xff at offset 8)"),
    ],
)
def test_toml_bad_inputs_are_one_line_naming_the_file(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_toml(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_toml_that_is_a_folder_or_missing(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a TOML file"):
        RunConfig.from_toml(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_toml(tmp_path / "nope.toml")


def test_toml_weights_left_out_are_zero_as_on_the_command_line(tmp_path):
    path = _toml(tmp_path, "[weights]\nlabel = 1\nresponse = 0.5\n")
    assert RunConfig.from_toml(path).weights == parse_weights("label=1,response=0.5")
    assert RunConfig.from_toml(path).weights == LossWeights(1.0, 0.5, 0.0, 0.0)


def test_whole_numbers_in_number_fields_are_the_same_config():
    assert RunConfig(temperature=4, lr=1) == RunConfig(temperature=4.0, lr=1.0)
    assert RunConfig(temperature=4).fingerprint() == RunConfig().fingerprint()
    assert isinstance(RunConfig(lr=1).lr, float)
    weights = LossWeights(1, 0, 0, 0)
    assert weights.as_dict() == {"label": 1.0, "response": 0.0, "feature": 0.0, "relation": 0.0}
    assert (
        RunConfig(weights=weights).fingerprint()
        == RunConfig(weights=LossWeights(1.0, 0.0, 0.0, 0.0)).fingerprint()
    )


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("epochs", "7", 7),
        ("lr", "0.01", 0.01),
        ("seed", "4294967295", 2**32 - 1),
        ("device", "cpu", "cpu"),
    ],
)
def test_parse_field_from_text(name, text, value):
    assert RunConfig.parse_field(name, text) == value


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("epochs", "10000", "epochs must be a whole number from 1 to 500, got 10000"),
        ("epochs", "abc", "epochs must be a whole number from 1 to 500, got 'abc'"),
        ("seed", "2**70", "seed must be a whole number from 0 to 4294967295, got '2**70'"),
        ("seed", str(2**70), f"seed must be a whole number from 0 to 4294967295, got {2**70}"),
        ("lr", "1e308", "lr must be a number from 1e-06 to 1, got 1e+308"),
        ("lr", "inf", "lr must be a number from 1e-06 to 1, got inf"),
        ("batch_size", "3.5", "batch_size must be a whole number from 2 to 4096, got '3.5'"),
    ],
)
def test_parse_field_refuses_in_one_line(name, text, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.parse_field(name, text)
    assert str(info.value) == message


# ---------------------------------------------------------------------- run names
@pytest.mark.parametrize(
    ("name", "kept"), [("  my run ", "my run"), ("", ""), ("résumé ü 1", "résumé ü 1")]
)
def test_run_names_kept(name, kept):
    assert check_run_name(name) == kept


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "bell\x07", "a\rb", "x" * 201, 5])
def test_run_names_refused(name):
    with pytest.raises(ConfigError) as info:
        check_run_name(name)
    assert str(info.value).startswith("name must be one line of printable text")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- one run identity
# Fingerprints computed by the code before this change (main at ba9119c): teachers are found in
# existing stores by these, so they must never move.
GOLDEN = {
    "default": "905720687e31c95d",
    "default_teacher": "54ab2bcb2d3b2be0",
    "small_cnn_teacher_1ep": "1d5d0563749eaff7",
    "cifar_teacher_aug": "a00684a7fcbf684d",
    "folder_teacher": "576aff374cabe141",
    "student_full": "e1a10c26c9312778",
}


def _golden_configs() -> dict[str, RunConfig]:
    return {
        "default": RunConfig(),
        "default_teacher": RunConfig().teacher_config(),
        "small_cnn_teacher_1ep": RunConfig(
            teacher="small_cnn", student="mlp", teacher_epochs=1
        ).teacher_config(),
        "cifar_teacher_aug": RunConfig(
            dataset="cifar10", teacher="resnet8x4", teacher_epochs=40, augment=True, device="cuda"
        ).teacher_config(),
        "folder_teacher": RunConfig(
            dataset="image_folder", data_path="/data/flowers", teacher="small_cnn"
        ).teacher_config(),
        "student_full": RunConfig(
            teacher="resnet8x4",
            student="small_cnn",
            weights=LossWeights(0.5, 0.5, 0.0, 0.25),
            temperature=2.5,
            layer_pairs=(("block2", "layer2"), ("block3", "layer3")),
            feature_kind="mse",
            relation_kind="rkd",
            weighting="uncertainty",
            epochs=7,
            batch_size=32,
            lr=0.01,
            seed=3,
            augment=True,
            teacher_cache=False,
            teacher_run="20261130-035530-8963d9",
        ),
    }


@pytest.mark.parametrize("case", list(GOLDEN))
def test_fingerprints_of_existing_configs_do_not_move(case):
    config = _golden_configs()[case]
    assert config.fingerprint() == GOLDEN[case]
    # and by hand: sha256 of the sorted JSON without device, log_every and evaluate_test (nor
    # train_fraction, which came later, at its default)
    skipped = ("device", "log_every", "evaluate_test")
    data = {k: v for k, v in config.to_dict().items() if k not in skipped}
    for name, default in IDENTITY_ADDED_LATER.items():
        assert data.pop(name) == default
    by_hand = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert by_hand == GOLDEN[case]
    # a stored record's config dict gives the same fingerprint, without being validated again
    assert fingerprint_of(json.loads(json.dumps(config.to_dict()))) == GOLDEN[case]


def test_seed_groups_share_a_key_that_only_the_seed_leaves_out():
    base = RunConfig(temperature=2.0)
    key = base.fingerprint(exclude_seed=True)
    assert base.replace(seed=7).fingerprint(exclude_seed=True) == key
    assert base.replace(seed=7).fingerprint() != base.fingerprint()
    assert base.replace(device="cpu", log_every=3).fingerprint(exclude_seed=True) == key
    assert base.replace(temperature=3.0).fingerprint(exclude_seed=True) != key
    assert base.replace(epochs=4).fingerprint(exclude_seed=True) != key
    assert base.replace(train_fraction=0.5).fingerprint(exclude_seed=True) != key
    # a record stored before train_fraction existed groups with one stored after, at 1.0
    older = {k: v for k, v in base.to_dict().items() if k not in IDENTITY_ADDED_LATER}
    assert fingerprint_of(older, exclude_seed=True) == key
    data = {
        k: v
        for k, v in base.to_dict().items()
        if k not in ("seed", "device", "log_every", "evaluate_test", *IDENTITY_ADDED_LATER)
    }
    assert key == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def test_summary_of_a_stored_dict_matches_the_config_and_needs_no_validation():
    config = RunConfig(weights=LossWeights(0.5, 0.5, 0.0, 0.0), temperature=2.5)
    assert config.summary() == "resnet18 -> small_cnn on digits: lab 0.5 res 0.5, T=2.5"
    assert summary_of(config.to_dict()) == config.summary()
    teacher = config.teacher_config()
    assert summary_of(teacher.to_dict()) == teacher.summary() == "teacher resnet18 on digits, 5 ep"
    # a record stored before today's bounds (epochs 10000) still gets its line
    old = {**config.to_dict(), "epochs": 10000, "lr": 5.0}
    assert summary_of(old) == config.summary()
