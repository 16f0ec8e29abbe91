"""Form values -> run configs: seeds, layer-pair rows, per-field errors, the formula."""

from __future__ import annotations

import pytest

from workbench.config.run_config import LossWeights, RunConfig
from workbench.ui.form_values import (
    MAX_SEEDS,
    FormError,
    build_configs,
    field_errors,
    hybrid_formula,
    pairs_from_rows,
    parse_seeds,
)

FORM = {
    "dataset": "digits",
    "teacher": "small_cnn",
    "student": "mlp",
    "weights": {"label": 0.3, "response": 0.3, "feature": 0.2, "relation": 0.2},
    "temperature": 4.0,
    "epochs": 1,
    "layer_pairs": (("layer1", "block2"),),
}


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("1", (0,)),
        ("3", (0, 1, 2)),
        (" 2 ", (0, 1)),
        ("0, 4, 7", (0, 4, 7)),
        ("5,", (5,)),
        (3, (0, 1, 2)),
    ],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text", ["", "0", "-1", str(MAX_SEEDS + 1), "x", "1, y", "1, -2", "1, 1", ","]
)
def test_parse_seeds_rejects_with_a_message_for_the_seeds_field(text):
    with pytest.raises(FormError) as info:
        parse_seeds(text)
    assert set(info.value.errors) == {"seeds"}
    assert "seed" in info.value.errors["seeds"]


def test_pairs_from_rows_skips_blank_rows_and_rejects_half_rows():
    rows = [
        {"student": "block1", "teacher": "layer2.0"},
        {"student": None, "teacher": None},
        {"student": float("nan"), "teacher": ""},
        {"student": " block3 ", "teacher": "layer4.1"},
    ]
    assert pairs_from_rows(rows) == (("block1", "layer2.0"), ("block3", "layer4.1"))
    with pytest.raises(FormError) as info:
        pairs_from_rows([{"student": "block1", "teacher": None}])
    assert "row 1 has no teacher layer" in info.value.errors["layer_pairs"]


def test_build_configs_one_per_seed():
    configs = build_configs(FORM, (0, 3))
    assert [c.seed for c in configs] == [0, 3]
    assert configs[0].replace(seed=3) == configs[1]
    assert configs[0].weights == LossWeights(0.3, 0.3, 0.2, 0.2)
    assert configs[0] == RunConfig(**FORM)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "weights",
            {"label": 0, "response": 0, "feature": 0, "relation": 0},
            "all loss weights are zero",
        ),
        (
            "weights",
            {"label": -1, "response": 0, "feature": 0, "relation": 0},
            "must be a number from 0 to 100",
        ),
        ("temperature", 0.0, "temperature must be a number from 0.05 to 100"),
        ("epochs", 0, "epochs must be a whole number from 1 to 500"),
        ("feature_kind", "nope", "unknown feature kind"),
        ("student", "nope", "unknown student model"),
        ("lr", -1.0, "lr must be a number from 1e-06 to 1"),
    ],
)
def test_each_error_is_attributed_to_its_field(field, value, message):
    with pytest.raises(FormError) as info:
        build_configs({**FORM, field: value}, (0,))
    assert set(info.value.errors) == {field}
    assert message in info.value.errors[field]


def test_several_bad_fields_are_all_reported():
    errors = field_errors({**FORM, "temperature": -1.0, "epochs": 0, "bogus": 1})
    assert set(errors) == {"temperature", "epochs", "bogus"}


def test_a_dataset_is_checked_with_its_folder():
    assert "data_path" in field_errors({"dataset": "image_folder"})["dataset"]
    assert field_errors({"dataset": "image_folder", "data_path": "/some/folder"}) == {}


def test_hybrid_formula_shows_the_numbers():
    latex = hybrid_formula(
        LossWeights(0.5, 0.5, 0, 0), 2.0, feature_kind="mse", relation_kind="rkd"
    )
    assert latex.startswith(r"\mathcal{L} = 0.5 \cdot \mathrm{CE}")
    assert r"2^2\, \mathrm{KL}" in latex and r"\sigma(z_t/2)" in latex
    assert r"{\color{gray} 0 \cdot \mathcal{L}_{\mathrm{feat}}^{\mathrm{mse}}}" in latex
    assert "rkd" in latex
    assert hybrid_formula({"label": 1.0}, 4.0).count("gray") == 3


def test_device_5_is_a_message_for_its_field_not_a_traceback():
    # issue 8: field_errors raised AttributeError ('int' object has no attribute 'startswith')
    assert field_errors({"device": 5}) == {"device": "device must be text, got 5"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("augment", "no"),
        ("teacher_cache", "false"),
        ("epochs", 10000),
        ("epochs", "3"),
        ("lr", 1e308),
        ("seed", 2**70),
        ("batch_size", 1),
        ("temperature", True),
        ("data_path", 7),
        ("layer_pairs", 5),
        ("weights", {"label": "x"}),
        ("weights", {"bogus": 1.0}),
        ("weights", "label=1"),
        ("role", None),
    ],
)
def test_wrong_values_are_attributed_to_their_field(field, value):
    errors = field_errors({**FORM, field: value})
    assert set(errors) == {field}
    assert "\n" not in errors[field]


def test_every_field_checked_alone_gives_a_message():
    from tests.test_config import WRONG_TYPES

    for field, values in WRONG_TYPES.items():
        for value in values:
            errors = field_errors({field: value})
            assert set(errors) == {field}, (field, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (str(2**32), "seeds must be a whole number from 0 to 4294967295, got 4294967296"),
        ("0, -1", "seeds must be a whole number from 0 to 4294967295, got -1"),
    ],
)
def test_seeds_within_the_seed_bounds(text, message):
    with pytest.raises(FormError) as info:
        parse_seeds(text if "," in text else f"0, {text}")
    assert info.value.errors["seeds"] == message


def test_a_teacher_role_is_checked_with_its_weights():
    label_only = {"label": 1.0, "response": 0.0, "feature": 0.0, "relation": 0.0}
    assert field_errors({"role": "teacher", "weights": label_only}) == {}
    errors = field_errors({"role": "teacher", "weights": FORM["weights"]})
    assert set(errors) == {"role"} and "labels alone" in errors["role"]
    # a bad companion is reported under its own field only
    assert set(field_errors({"role": None, "weights": label_only})) == {"role"}
