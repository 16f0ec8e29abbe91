"""What runs of one process share (workbench.training.teacher_pool): a warm run equals a cold one, a teacher is
lent to one run at a time, and nothing is served under another teacher's or data's key."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from workbench.config.run_config import LossWeights, RunConfig
from workbench.data.datasets import load_dataset
from workbench.models.registry import build_model, feature_layers
from workbench.training import probe
from workbench.training import teacher_pool as warm
from workbench.training import teachers as engine
from workbench.training.loop import run
from workbench.training.teacher_cache import cache_root, complete_entries
from workbench.training.teachers import import_teacher

CONFIG = RunConfig(
    teacher="small_cnn",
    student="mlp",
    weights=LossWeights(0.3, 0.3, 0.2, 0.2),
    epochs=1,
    batch_size=128,
    device="cpu",
    log_every=2,
    teacher_cache=True,
)


@pytest.fixture(autouse=True)
def _cold():
    warm.clear()
    yield
    warm.clear()


def _teacher_file(tmp_path, seed: int) -> str:
    data = load_dataset("digits")
    torch.manual_seed(seed)
    model = build_model("small_cnn", data.input_shape, data.num_classes)
    path = tmp_path / f"teacher{seed}.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _count_loads(monkeypatch) -> list[str]:
    loads: list[str] = []
    original = engine.load_teacher

    def counted(teacher_run, *args):
        loads.append(teacher_run)
        return original(teacher_run, *args)

    monkeypatch.setattr(engine, "load_teacher", counted)
    return loads


def _outcome(store, record: dict) -> dict:
    """Everything a run produced that must not depend on what ran before it in the process."""
    assert record["status"] == "completed", record.get("error")
    untimed = [{k: v for k, v in row.items() if k != "time"} for row in store.history(record["id"])]
    epochs = [{k: v for k, v in row.items() if k != "time"} for row in store.epochs(record["id"])]
    found = store.probe(record["id"])
    arrays = {k: v for k, v in found.items() if isinstance(v, np.ndarray)}
    grams = [(g["pair"], g["student"], g["teacher"]) for g in found["grams"]]
    return {
        "metrics": record["metrics"],
        "history": untimed,
        "epochs": epochs,
        "arrays": arrays,
        "grams": grams,
        "pair_cosine": found["pair_cosine"],
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["history"] == b["history"]
    assert a["epochs"] == b["epochs"]
    assert a["pair_cosine"] == b["pair_cosine"]
    assert a["arrays"].keys() == b["arrays"].keys()
    for key in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][key], b["arrays"][key], err_msg=key)
    for (pa, sa, ta), (pb, sb, tb) in zip(a["grams"], b["grams"], strict=True):
        assert pa == pb
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_array_equal(ta, tb)


def test_a_warm_run_equals_a_cold_one_and_reuses_the_teacher(store, tmp_path, monkeypatch):
    teacher_run = import_teacher(
        store, _teacher_file(tmp_path, 0), teacher="small_cnn", dataset="digits"
    )
    config = CONFIG.replace(teacher_run=teacher_run)
    loads = _count_loads(monkeypatch)
    cold = _outcome(store, run(config, store))
    assert loads == [teacher_run] and warm.pool_size() == 1
    assert len(probe._TEACHER_GRAMS) == 1  # the teacher's side of the probe's CKA, kept
    again = _outcome(store, run(config, store))
    assert loads == [teacher_run]  # lent from the pool, not loaded again
    _assert_identical(cold, again)
    warm.clear()  # and a cold process gets the same again
    _assert_identical(cold, _outcome(store, run(config, store)))
    assert loads == [teacher_run, teacher_run]


def test_another_teacher_or_checkpoint_is_not_served_from_the_warm_one(store, tmp_path):
    first = import_teacher(store, _teacher_file(tmp_path, 0), teacher="small_cnn", dataset="digits")
    other = import_teacher(store, _teacher_file(tmp_path, 1), teacher="small_cnn", dataset="digits")
    run(CONFIG.replace(teacher_run=first), store)  # warms the pool and the probe's memo
    warm_other = _outcome(store, run(CONFIG.replace(teacher_run=other), store))
    warm.clear()
    _assert_identical(warm_other, _outcome(store, run(CONFIG.replace(teacher_run=other), store)))
    # The same run id with a replaced checkpoint file is another teacher.
    state = torch.load(_teacher_file(tmp_path, 2), weights_only=True)
    before = _outcome(store, run(CONFIG.replace(teacher_run=first), store))
    store.save_weights(first, state)
    after = _outcome(store, run(CONFIG.replace(teacher_run=first), store))
    assert not np.array_equal(after["arrays"]["cka"], before["arrays"]["cka"])
    warm.clear()
    _assert_identical(after, _outcome(store, run(CONFIG.replace(teacher_run=first), store)))


def test_concurrent_runs_get_their_own_teacher_and_the_sequential_results(store, tmp_path):
    teacher_run = import_teacher(
        store, _teacher_file(tmp_path, 0), teacher="small_cnn", dataset="digits"
    )
    configs = [CONFIG.replace(teacher_run=teacher_run, seed=s) for s in (0, 1)]
    sequential = [_outcome(store, run(c, store)) for c in configs]
    lent: list[int] = []
    original = warm.lend_teacher

    def recorded(key, load):
        manager = original(key, load)
        model = manager.__enter__()
        lent.append(id(model))
        return _Entered(manager, model)

    barrier = threading.Barrier(2)
    records: list = [None, None]

    def start(i: int) -> None:
        barrier.wait()
        records[i] = run(configs[i], store)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warm, "lend_teacher", recorded)
        threads = [threading.Thread(target=start, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert len(set(lent)) == 2  # two runs at once never share one teacher's hooks
    for expected, record in zip(sequential, records, strict=True):
        _assert_identical(expected, _outcome(store, record))


class _Entered:
    """A context manager already entered (the test records what it lent)."""

    def __init__(self, manager, value):
        self.manager, self.value = manager, value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return self.manager.__exit__(*exc)


def test_the_pool_lends_each_teacher_to_one_holder_and_keeps_a_few():
    def load():
        return torch.nn.Sequential(torch.nn.Linear(2, 2)).eval().requires_grad_(False)

    with warm.lend_teacher("a", load) as one, warm.lend_teacher("a", load) as two:
        assert one is not two
    assert warm.pool_size() == 2
    with warm.lend_teacher("a", load) as again:
        assert again in (one, two)
    for key in ("b", "c", "d"):
        with warm.lend_teacher(key, load):
            pass
    assert warm.pool_size() == warm.IDLE_TEACHERS
    with warm.lend_teacher("a", load) as fresh:  # evicted: loaded anew
        assert fresh is not one and fresh is not two


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.train(),
        lambda m: m.requires_grad_(True),
        lambda m: m.to(memory_format=torch.channels_last),
    ],
    ids=["train mode", "unfrozen", "channels-last"],
)
def test_a_teacher_changed_by_its_run_is_not_lent_again(change):
    def load():
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        return model.eval().requires_grad_(False)

    with warm.lend_teacher("k", load) as model:
        change(model)
    assert warm.pool_size() == 0
    with pytest.raises(RuntimeError), warm.lend_teacher("k", load):
        raise RuntimeError("the run failed")
    assert warm.pool_size() == 0  # a run that failed returns nothing


def test_layers_are_found_once_per_model():
    data = load_dataset("digits")
    model = build_model("small_cnn", data.input_shape, data.num_classes)
    calls: list[int] = []

    def find(m, shape):
        calls.append(1)
        return feature_layers(m, shape)

    first = warm.layers_of(model, data.input_shape, find)
    assert warm.layers_of(model, data.input_shape, find) == first and len(calls) == 1
    other = build_model("small_cnn", data.input_shape, data.num_classes)
    assert warm.layers_of(other, data.input_shape, find) == first and len(calls) == 2


def test_memo_is_bounded_by_entries_and_bytes():
    memo = warm.Memo(entries=2, max_bytes=100, size=lambda v: v)
    assert memo.get_or_make("a", lambda: 10) == 10
    assert memo.get_or_make("a", lambda: 99) == 10  # kept
    memo.get_or_make("b", lambda: 20)
    memo.get_or_make("a", lambda: 0)  # a is now the most recent
    memo.get_or_make("c", lambda: 30)  # over 2 entries: b goes
    assert memo.get_or_make("b", lambda: 21) == 21
    memo.get_or_make("d", lambda: 90)  # over 100 bytes: all but d go
    assert len(memo) == 1 and memo.get_or_make("d", lambda: 0) == 90
    assert memo.get_or_make("huge", lambda: 500) == 500 and len(memo) == 1  # never kept


def _probe_kwargs() -> dict:
    torch.manual_seed(0)
    shape = (1, 8, 8)
    student = build_model("small_cnn", shape, 10).eval()
    teacher = build_model("resnet8x4", shape, 10).eval()
    return {
        "student": student,
        "student_layers": [i.path for i in feature_layers(student, shape)],
        "teacher": teacher,
        "teacher_layers": [i.path for i in feature_layers(teacher, shape)],
        "pairs": (),
        "adapters": None,
        "val_x": torch.randn(200, *shape),
        "val_y": torch.arange(200) % 10,
        "class_names": [str(i) for i in range(10)],
        "device": torch.device("cpu"),
    }


def test_probe_grams_are_kept_per_teacher_and_probe_samples(store):
    """Other probe samples (another dataset or split) get their own teacher Gram matrices;
    each probe equals the one computed with nothing kept."""
    kwargs = _probe_kwargs()
    x = kwargs.pop("val_x")
    for val_x in (x, x.flip(0), x * 2):
        cached = probe.run_probe(**kwargs, val_x=val_x, store=store)
        np.testing.assert_allclose(
            cached["cka"], probe.run_probe(**kwargs, val_x=val_x)["cka"], rtol=0, atol=1e-6
        )
    assert len(probe._TEACHER_GRAMS) == 3


def test_probe_grams_are_stored_with_the_entry_for_a_new_process(store, monkeypatch):
    kwargs = _probe_kwargs()
    first = probe.run_probe(**kwargs, store=store)
    (entry,) = complete_entries(cache_root(store))
    stored = entry.path / "cka_grams.pt"
    assert stored.exists()
    sides: list[int] = []
    original = probe.centred_grams
    monkeypatch.setattr(probe, "centred_grams", lambda f: sides.append(len(f)) or original(f))
    warm.clear()  # as in a new process: the file is read, only the student's side is computed
    again = probe.run_probe(**kwargs, store=store)
    assert sides == [len(kwargs["student_layers"])]
    np.testing.assert_array_equal(first["cka"], again["cka"])
    stored.write_bytes(b"damaged")
    warm.clear()
    sides.clear()
    repaired = probe.run_probe(**kwargs, store=store)
    assert sorted(sides) == sorted([len(kwargs["student_layers"]), len(kwargs["teacher_layers"])])
    np.testing.assert_array_equal(first["cka"], repaired["cka"])
    assert torch.load(stored, weights_only=True).dtype == torch.float64  # written again
