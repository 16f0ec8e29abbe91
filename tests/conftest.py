from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A temporary store home (KDWB_HOME), so no test touches ./cache."""
    path = tmp_path / "home"
    monkeypatch.setenv("KDWB_HOME", str(path))
    return path


@pytest.fixture
def store(home):
    from workbench.store import Store

    s = Store(home)
    yield s
    s.close()
