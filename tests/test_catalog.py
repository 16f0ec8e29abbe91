"""The catalog (torch-free names) is the registries' names: the app lists what the engine builds."""

from __future__ import annotations

import pytest

from workbench.config import choices as catalog
from workbench.data import datasets as data
from workbench.distill import feature, relation, weighting
from workbench.models import registry as models


def test_datasets_are_the_catalogs_own():
    assert data.DATASETS is catalog.DATASETS and data.DatasetSpec is catalog.DatasetSpec
    assert data.list_datasets() == catalog.list_datasets() == list(catalog.DATASETS)


def test_models_have_the_catalogs_names_order_and_descriptions():
    assert models.list_models() == catalog.list_models() == list(catalog.MODEL_INFO)
    for name, spec in models.MODELS.items():
        info = catalog.MODEL_INFO[name]
        assert (spec.name, spec.family, spec.description) == (
            info.name,
            info.family,
            info.description,
        )


def test_loss_and_weighting_names_are_the_registries_keys_in_order():
    assert tuple(feature.FEATURE_LOSSES) == catalog.FEATURE_KINDS
    assert tuple(relation.RELATION_LOSSES) == catalog.RELATION_KINDS
    assert tuple(weighting.WEIGHTINGS) == catalog.WEIGHTING_SCHEMES


def test_a_name_registered_twice_is_refused():
    info = catalog.MODEL_INFO["mlp"]
    with pytest.raises(ValueError, match="registered twice"):
        catalog._by_name(info, info)
