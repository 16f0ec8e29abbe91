"""The teacher-output cache: same losses as the live teacher, built once, bounded, shared."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from workbench.config.run_config import LossWeights, RunConfig
from workbench.data.datasets import load_dataset
from workbench.distill.hybrid import HybridLoss
from workbench.distill.taps import FeatureTaps, build_adapters, pair_layers
from workbench.models.registry import build_model, feature_layers
from workbench.training.loop import run
from workbench.training.teacher_cache import (
    LIMIT_ENV,
    CachedTeacher,
    LiveTeacher,
    cache_root,
    complete_entries,
    teacher_predictions,
    teacher_source,
)

CONFIG = RunConfig(
    teacher="small_cnn",
    student="mlp",
    epochs=1,
    teacher_epochs=1,
    batch_size=128,
    device="cpu",
    log_every=2,
)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def make_teacher(digits, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = build_model("small_cnn", digits.input_shape, digits.num_classes)
    return teacher.eval().requires_grad_(False)


def count_forwards(model: torch.nn.Module) -> list[int]:
    """Batch sizes of every forward pass of ``model`` from now on."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, inputs: seen.append(len(inputs[0])))
    return seen


def source(digits, teacher, store, paths=("block2", "block3"), config=CONFIG, teacher_id=None):
    return teacher_source(config, teacher, teacher_id, list(paths), digits.train_x, store, CPU)


def test_cached_and_live_give_the_same_losses(digits, store):
    teacher = make_teacher(digits)
    torch.manual_seed(1)
    student = build_model("mlp", digits.input_shape, digits.num_classes)
    s_layers = feature_layers(student, digits.input_shape)
    t_layers = feature_layers(teacher, digits.input_shape)
    pairs = pair_layers(s_layers, t_layers)
    t_paths = [t for _, t in pairs]
    hybrid = HybridLoss(
        LossWeights(0.3, 0.3, 0.2, 0.2),
        temperature=4.0,
        adapters=build_adapters(pairs, s_layers, t_layers),
    )
    live = source(digits, teacher, store, t_paths, config=CONFIG.replace(teacher_cache=False))
    cached = source(digits, teacher, store, t_paths)
    assert isinstance(live, LiveTeacher) and live.kind == "live" and "off" in live.note
    assert isinstance(cached, CachedTeacher) and cached.kind == "cache" and cached.note

    idx = torch.randperm(len(digits.train_x), generator=torch.Generator().manual_seed(0))[:64]
    x, y = digits.train_x[idx], digits.train_y[idx]
    with FeatureTaps(student, [s for s, _ in pairs]) as taps:
        logits = student(x)
        s_feats = taps.features
    (l_logits, l_feats), (c_logits, c_feats) = live(idx, x), cached(idx, x)
    assert c_logits.shape == l_logits.shape == (64, digits.num_classes)
    torch.testing.assert_close(c_logits, l_logits, rtol=1e-5, atol=1e-5)
    for c, f in zip(c_feats, l_feats, strict=True):
        assert c.shape == f.shape
        torch.testing.assert_close(c, f, rtol=1e-5, atol=1e-5)
    live_terms = hybrid(logits, y, l_logits, s_feats, l_feats)
    cached_terms = hybrid(logits, y, c_logits, s_feats, c_feats)
    for name in ("label", "response", "feature", "relation", "total"):
        live_value, cached_value = live_terms[name].item(), cached_terms[name].item()
        assert live_value > 0.0 and cached_value == pytest.approx(live_value, abs=1e-5)
    cached_terms["total"].backward()  # cached outputs are ordinary constants for autograd
    assert any(p.grad is not None for p in student.parameters())


def test_a_run_with_the_cache_matches_a_run_without(store):
    cached = run(CONFIG, store)
    live = run(CONFIG.replace(teacher_cache=False), store)
    assert cached["status"] == live["status"] == "completed", (cached["error"], live["error"])
    assert cached["teacher_source"] == "cache" and "cache" in cached["teacher_note"]
    assert live["teacher_source"] == "live" and "off" in live["teacher_note"]
    assert cached["metrics"]["val_acc"] == pytest.approx(live["metrics"]["val_acc"], abs=1e-5)
    for name, value in live["metrics"]["final_losses"].items():
        assert cached["metrics"]["final_losses"][name] == pytest.approx(value, abs=1e-5)
    totals = [r["total"] for r in store.history(cached["id"])]
    assert totals == pytest.approx([r["total"] for r in store.history(live["id"])], abs=1e-5)


def test_the_entry_is_built_once_and_reused(digits, store):
    teacher = make_teacher(digits)
    forwards = count_forwards(teacher)
    first = source(digits, teacher, store)
    assert first.kind == "cache" and "built now" in first.note
    assert sum(b for b in forwards if b > 2) == len(digits.train_x)  # one pass over the data
    forwards.clear()
    second = source(digits, teacher, store)
    assert second.kind == "cache" and "earlier run" in second.note
    assert forwards == []  # the teacher did not run at all
    assert len(complete_entries(cache_root(store))) == 1
    idx = torch.tensor([0, 5, 7])
    torch.testing.assert_close(second(idx, None)[0], first(idx, None)[0])


def test_different_inputs_or_layers_get_their_own_entry(digits, store):
    teacher = make_teacher(digits)
    source(digits, teacher, store)
    source(digits, teacher, store, paths=("block3",))
    scaled = teacher_source(CONFIG, teacher, None, ["block3"], digits.train_x * 2, store, CPU)
    assert scaled.kind == "cache" and "built now" in scaled.note
    assert len(complete_entries(cache_root(store))) == 3


def test_over_the_size_limit_the_teacher_runs_live(digits, store, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "100000")
    got = source(digits, make_teacher(digits), store)
    assert got.kind == "live"
    assert "limit" in got.note and LIMIT_ENV in got.note
    assert complete_entries(cache_root(store)) == []


def test_with_augmentation_or_the_flag_off_the_teacher_runs_live(digits, store):
    teacher = make_teacher(digits)
    augmented = source(digits, teacher, store, config=CONFIG.replace(augment=True))
    assert augmented.kind == "live" and "augmentation" in augmented.note
    off = source(digits, teacher, store, config=CONFIG.replace(teacher_cache=False))
    assert off.kind == "live" and "off" in off.note
    assert complete_entries(cache_root(store)) == []


def test_eviction_removes_the_least_recently_used_entry(digits, store, monkeypatch):
    teachers = [make_teacher(digits, seed) for seed in range(3)]  # three keys, same size

    def build(i: int) -> str:
        before = {e.key for e in complete_entries(cache_root(store))}
        assert source(digits, teachers[i], store, paths=("block3",)).kind == "cache"
        (key,) = {e.key for e in complete_entries(cache_root(store))} - before
        return key

    a = build(0)
    size = complete_entries(cache_root(store))[0].bytes
    monkeypatch.setenv(LIMIT_ENV, str(int(2.5 * size)))  # room for two entries
    b = build(1)
    assert "earlier run" in source(digits, teachers[0], store, paths=("block3",)).note  # a used
    c = build(2)  # no room for three: b, the least recently used, goes
    entries = complete_entries(cache_root(store))
    assert {e.key for e in entries} == {a, c} and b not in {a, c}
    assert sum(e.bytes for e in entries) <= 2.5 * size
    assert [e.key for e in entries] == [a, c]  # least recently used first


def test_concurrent_builders_make_one_valid_entry(digits, store):
    teacher = make_teacher(digits)
    copies = [teacher, copy.deepcopy(teacher)]  # each run loads its own teacher module
    forwards, forwards_b = count_forwards(copies[0]), count_forwards(copies[1])
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def build(i: int) -> None:
        barrier.wait()
        results[i] = source(digits, copies[i], store)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and r.kind == "cache" for r in results), results
    built = sum(b for b in forwards + forwards_b if b > 2)
    assert built == len(digits.train_x)  # one build; the other run waited and read it
    assert len(complete_entries(cache_root(store))) == 1
    assert not [p for p in cache_root(store).iterdir() if p.name.startswith(".")]
    idx = torch.arange(len(digits.train_x))
    (la, fa), (lb, fb) = results[0](idx, None), results[1](idx, None)
    live_logits, live_feats = LiveTeacher(teacher, ["block2", "block3"])(idx, digits.train_x)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(la, live_logits, rtol=1e-5, atol=1e-5)
    for a, b, f in zip(fa, fb, live_feats, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, f, rtol=1e-5, atol=1e-5)


def test_teacher_predictions_are_computed_once(digits, store):
    teacher = make_teacher(digits)
    expected = teacher(digits.val_x).argmax(dim=1)
    forwards = count_forwards(teacher)
    first = teacher_predictions(CONFIG, teacher, None, digits.val_x, store)
    assert forwards and torch.equal(first, expected)
    forwards.clear()
    assert torch.equal(teacher_predictions(CONFIG, teacher, None, digits.val_x, store), expected)
    assert forwards == []
    off = CONFIG.replace(teacher_cache=False)
    assert torch.equal(teacher_predictions(off, teacher, None, digits.val_x, store), expected)
    assert forwards  # the cache off: computed again
