"""workbench.ui.url_state: a page's state as query parameters, and back."""

from __future__ import annotations

import pytest

from workbench.ui.url_state import (
    MAX_TEXT,
    Steps,
    decode_ids,
    decode_value,
    dropped_notes,
    encode_value,
    from_params,
    read_params,
    to_params,
)

DEFAULTS = {"temperature": 4.0, "epochs": 3, "feature_kind": "cosine", "layer_pairs": None}


def test_ids_round_trip_and_unknown_ids_are_dropped():
    assert decode_ids("r1,r2,gone,r1", ["r1", "r2"]) == ["r1", "r2"]
    assert decode_ids("", ["r1"]) == [] and decode_ids(None, ["r1"]) == []


def test_only_changed_fields_go_into_the_url_and_come_back_typed():
    values = {"temperature": 2.5, "epochs": 3, "feature_kind": "at", "layer_pairs": ()}
    params = to_params(values, DEFAULTS)
    assert params == {"temperature": "2.5", "feature_kind": "at", "layer_pairs": "auto"}
    assert from_params(params, DEFAULTS) == {
        "temperature": 2.5,
        "feature_kind": "at",
        "layer_pairs": (),
    }


def test_layer_pairs_and_booleans():
    pairs = (("block1", "layer1.0"), ("block2", "layer2"))
    assert decode_value(encode_value(pairs), None) == pairs
    assert decode_value(encode_value(True), False) is True
    assert decode_value("7", 3) == 7 and isinstance(decode_value("7", 3), int)
    with pytest.raises(ValueError):
        decode_value("block1", None)


def test_a_stale_or_hand_edited_link_keeps_the_defaults():
    params = {"epochs": "many", "temperature": "0", "bogus": "1"}
    # "0" reads as a number: the page then shows it invalid and disables Launch
    assert from_params(params, DEFAULTS) == {"temperature": 0.0}


# ---------------------------------------------------------------------------------- what a widget can hold
SMOOTH = {"smooth": 0.0, "x": "step", "log": False}
ALLOWED = {"smooth": Steps(0.0, 0.95, 0.05), "x": ("step", "epoch", "time")}


@pytest.mark.parametrize("text", ["0.97", "5", "-0.05", "nan", "inf", "0.33", "1e308", "x"])
def test_a_slider_value_out_of_its_range_or_step_is_dropped(text):
    values, dropped = read_params({"smooth": text}, SMOOTH, ALLOWED)
    assert values == {} and set(dropped) == {"smooth"}


@pytest.mark.parametrize("text", ["0", "0.3", "0.95", "0.05"])
def test_a_slider_value_on_its_steps_is_kept(text):
    assert read_params({"smooth": text}, SMOOTH, ALLOWED) == ({"smooth": float(text)}, {})


def test_options_length_and_control_characters():
    params = {"x": "bogus", "log": "2", "smooth": "0.5"}
    values, dropped = read_params(params, SMOOTH, ALLOWED)
    assert values == {"smooth": 0.5}
    assert dropped == {"x": "not one of the choices", "log": "not 0 or 1"}
    for text in ("a" * (MAX_TEXT + 1), "a\x00b", "a\nb"):
        assert read_params({"name": text}, {"name": ""}) == (
            {},
            {"name": f"not printable text of at most {MAX_TEXT} characters"},
        )


def test_notes_name_the_value_short_and_escaped():
    params = {"smooth": "5", "x": "[click](http://evil.example)" + "y" * 100}
    _, dropped = read_params(params, SMOOTH, ALLOWED)
    notes = dropped_notes(params, dropped)
    assert (
        notes[0] == r"ignored smooth=5 from the link: not a number from 0 to 0.95 in steps of 0.05"
    )
    assert notes[1].startswith(r"ignored x=\[click\](http\://evil.example)yy")
    assert "…" in notes[1] and len(notes[1]) < 120
