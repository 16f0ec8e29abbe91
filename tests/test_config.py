from __future__ import annotations

import pytest

from workbench.config import PRESETS, LossWeights, RunConfig, parse_weights
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
        ({"temperature": 0.0}, "temperature must be > 0, got 0"),
        ({"temperature": -1.0}, "temperature must be > 0, got -1"),
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"weights": LossWeights(0, 0, 0, 0)}, "all loss weights are zero"),
        ({"weights": LossWeights(-0.1, 1, 0, 0)}, "weight label must be >= 0, got -0.1"),
        ({"feature_kind": "l7"}, "unknown feature kind 'l7'"),
        ({"relation_kind": "xx"}, "unknown relation kind 'xx'"),
        ({"weighting": "magic"}, "unknown weighting scheme 'magic'"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
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
    with pytest.raises(ConfigError, match="must be >= 0"):
        parse_weights("label=-1")
    with pytest.raises(ConfigError, match="all loss weights are zero"):
        parse_weights("label=0")
    with pytest.raises(UnknownNameError, match="unknown loss component 'kd'"):
        parse_weights("kd=1")
    with pytest.raises(ConfigError, match="must be a number"):
        parse_weights("label=abc")


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
    path.write_text(config.to_toml())
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
