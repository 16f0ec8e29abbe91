"""workbench.ui.url_state: a page's state as query parameters, and back."""

from __future__ import annotations

import pytest

from workbench.ui.url_state import decode_ids, decode_value, encode_value, from_params, to_params

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
