"""The reduced-data recipe: RunConfig.train_fraction and data.train_subset."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
import torch

from workbench.config.run_config import IDENTITY_ADDED_LATER, RunConfig
from workbench.data.datasets import train_subset
from workbench.errors import ConfigError


def test_train_subset_is_stratified_fixed_and_without_repeats():
    labels = torch.tensor([0] * 40 + [1] * 20 + [2] * 3)
    idx = train_subset(labels, 0.1, seed=0)
    counts = Counter(labels[idx].tolist())
    # max(1, round(0.1 * n_c)) per class, by hand: 4, 2, 1 (round(0.3) = 0 -> 1)
    assert counts == {0: 4, 1: 2, 2: 1}
    assert len(set(idx.tolist())) == len(idx) and idx.tolist() == sorted(idx.tolist())
    assert torch.equal(idx, train_subset(labels, 0.1, seed=0))  # same images every time
    assert not torch.equal(idx, train_subset(labels, 0.1, seed=1))
    assert torch.equal(train_subset(labels, 1.0), torch.arange(63))


def test_train_fraction_validates_and_keeps_old_fingerprints():
    with pytest.raises(ConfigError, match="train_fraction must be a number > 0 and <= 1, got 0"):
        RunConfig(train_fraction=0.0)
    with pytest.raises(ConfigError, match="train_fraction must be a number > 0 and <= 1, got 1.5"):
        RunConfig(train_fraction=1.5)
    config = RunConfig()
    # The fingerprint of a default config is that of the same config before the field existed.
    skipped = ("device", "log_every", "evaluate_test")  # IDENTITY_EXCLUDED
    old = {k: v for k, v in config.to_dict().items() if k not in skipped}
    for name in IDENTITY_ADDED_LATER:  # train_fraction, and the fields of issue 20 after it
        del old[name]
    expected = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert config.fingerprint() == expected
    reduced = config.replace(train_fraction=0.05)
    assert reduced.fingerprint() != config.fingerprint()
    assert RunConfig.from_dict(reduced.to_dict()) == reduced
    assert reduced.teacher_config().train_fraction == 1.0
    assert "5% of train" in reduced.summary()
    # Records written before the field existed load (the default fills it in).
    legacy = config.to_dict()
    del legacy["train_fraction"]
    assert RunConfig.from_dict(legacy) == config
