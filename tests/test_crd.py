"""CRD (Tian, Krishnan and Isola, ICLR 2020) against the paper's NCE written out as loops here:
the memory's momentum rule, Z set once, K capped, the positive never a negative, float64
gradchecks, state_dict round trips (memory, Z, the negatives' generator), and whole runs from
the CLI (its term non-zero, served by the teacher cache, a resumed run equal to a whole one)."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.test_engine_steps import resume_is_exact
from workbench.cli import main
from workbench.config.loss_terms import LossWeights
from workbench.config.run_config import RunConfig
from workbench.distill import hybrid as hybrid_module
from workbench.distill.contrastive import (
    ContrastiveRepresentation,
    crd_loss,
    crd_negatives,
    momentum_update,
    nce_loss,
)
from workbench.distill.hybrid import HybridLoss
from workbench.distill.relation import relation_loss
from workbench.distill.stateful import MethodInputs
from workbench.errors import ConfigError
from workbench.storage.store import Store


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _inputs(n: int, s_shape=(3, 2, 2), t_shape=(5,)) -> MethodInputs:
    # Two pairs: CRD reads the last one only (the first has other widths on purpose).
    return MethodInputs(
        student_shapes=((7,), s_shape), teacher_shapes=((9,), t_shape), num_samples=n
    )


def _feats(b: int, s_shape=(3, 2, 2), t_shape=(5,)):
    student = [torch.randn(b, 7), torch.randn(b, *s_shape)]
    teacher = [torch.randn(b, 9), torch.randn(b, *t_shape)]
    return student, teacher


def _nce_loop(anchors, memory, idx, negatives, z, n, tau=0.07):
    """-(1/B) sum_b [log P(D=1|v_b, m_pos) + sum_k log(1 - P(D=1|v_b, m_neg))] with
    P = h / (h + K/N), h = exp(v . m / tau) / Z: plain Python floats."""
    total = 0.0
    for b, v in enumerate(anchors):
        k = len(negatives[b])

        def p(row, v=v, k=k):
            h = math.exp(sum(a * c for a, c in zip(v, memory[row], strict=True)) / tau) / z
            return h / (h + k / n)

        total += math.log(p(idx[b])) + sum(math.log(1.0 - p(j)) for j in negatives[b])
    return -total / len(anchors)


# ------------------------------------------------------------------------------- pure math
def test_momentum_update_follows_the_rule_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    feats = torch.tensor([[0.8, -0.6], [0.0, 1.0]])
    rows = momentum_update(memory, feats, torch.tensor([2, 0]), 0.5)
    # 0.5 [0.6, 0.8] + 0.5 [0.8, -0.6] = [0.7, 0.1]; 0.5 [1, 0] + 0.5 [0, 1] = [0.5, 0.5]
    expected = torch.tensor([[0.7, 0.1], [0.5, 0.5]]) / torch.tensor([[0.5**0.5], [0.5**0.5]])
    assert torch.allclose(rows, expected, atol=1e-6)
    assert torch.allclose(rows.norm(dim=1), torch.ones(2))


def test_nce_matches_the_papers_formula_in_a_loop():
    g = torch.Generator().manual_seed(1)
    b, k, n, d = 2, 3, 10, 4
    v_s, v_t = (F.normalize(torch.randn(b, d, generator=g), dim=1) for _ in range(2))
    mem_s, mem_t = (F.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2))
    idx, neg = [4, 7], [[0, 1, 2], [9, 3, 5]]
    rows = torch.tensor([[i, *js] for i, js in zip(idx, neg, strict=True)])  # [B, K+1]
    z_s, z_t = 3.5, 7.25
    value = crd_loss(v_s, v_t, mem_s[rows], mem_t[rows], z_s, z_t, n)
    expected = _nce_loop(v_s.tolist(), mem_t.tolist(), idx, neg, z_s, n) + _nce_loop(
        v_t.tolist(), mem_s.tolist(), idx, neg, z_t, n
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert k == len(neg[0])


def test_crd_loss_and_nce_pass_gradcheck_in_float64():
    g = torch.Generator().manual_seed(2)
    b, k, d = 3, 4, 5
    v_s = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    v_t = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    m_s = torch.randn(b, k + 1, d, generator=g, dtype=torch.float64) * 0.3
    m_t = torch.randn(b, k + 1, d, generator=g, dtype=torch.float64) * 0.3
    fn = lambda a, c: crd_loss(a, c, m_s, m_t, 2.0, 3.0, 20, temperature=0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v_s, v_t))
    p = torch.rand(b, k + 1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: nce_loss(q, 20), (p,))


def test_negatives_are_distinct_others_uniformly():
    g = torch.Generator().manual_seed(3)
    idx = torch.tensor([0, 5, 9])
    neg = crd_negatives(idx, 10, 9, g)  # K = N - 1: every other sample once
    for i, row in zip(idx.tolist(), neg.tolist(), strict=True):
        assert sorted(row) == [j for j in range(10) if j != i]
    counts = torch.zeros(3)
    for _ in range(600):
        draw = crd_negatives(torch.tensor([1]), 3, 1, g)
        assert draw.item() != 1  # the positive is never its own negative
        counts[draw.item()] += 1
    assert counts[1] == 0 and 240 < counts[0] < 360 and 240 < counts[2] < 360


def test_relation_loss_refuses_crd_without_its_memory():
    with pytest.raises(ValueError, match="crd keeps memory banks of the training set.*HybridLoss"):
        relation_loss(torch.randn(4, 3), torch.randn(4, 3), "crd")


# ---------------------------------------------------------------------------------- module
def test_the_module_is_the_papers_loss_and_updates_its_memory():
    n, b = 6, 4  # K = min(16384, N - 1) = 5: every other sample is a negative
    crd = ContrastiveRepresentation(_inputs(n))
    assert crd.nce_k == 5 and crd.feat_dim == 128
    stdv = 1 / math.sqrt(128 / 3)
    assert crd.memory_student.abs().max() <= stdv and crd.memory_teacher.shape == (n, 128)
    assert crd.z_student.item() == crd.z_teacher.item() == -1.0
    s_feats, t_feats = _feats(b)
    idx = torch.tensor([3, 0, 5, 1])
    mem_s, mem_t = crd.memory_student.clone(), crd.memory_teacher.clone()
    with torch.no_grad():
        w_s, w_t = crd.embed_student.linear, crd.embed_teacher.linear
        v_s = F.normalize(s_feats[1].reshape(b, -1) @ w_s.weight.T + w_s.bias, dim=1)
        v_t = F.normalize(t_feats[1] @ w_t.weight.T + w_t.bias, dim=1)
    value = crd(s_feats, t_feats, idx)
    # Z = N * mean of exp(v . m / 0.07) over the B x (K + 1) = B x N scores, per direction.
    z_s = n * torch.exp(v_s @ mem_t.T / 0.07).mean().item()
    z_t = n * torch.exp(v_t @ mem_s.T / 0.07).mean().item()
    assert crd.z_student.item() == pytest.approx(z_s, rel=1e-5)
    assert crd.z_teacher.item() == pytest.approx(z_t, rel=1e-5)
    others = [[j for j in range(n) if j != i] for i in idx.tolist()]
    expected = _nce_loop(v_s.tolist(), mem_t.tolist(), idx.tolist(), others, z_s, n)
    expected += _nce_loop(v_t.tolist(), mem_s.tolist(), idx.tolist(), others, z_t, n)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # m <- normalise(0.5 m + 0.5 v) on the batch's rows, the others untouched.
    for memory, old, v in ((crd.memory_student, mem_s, v_s), (crd.memory_teacher, mem_t, v_t)):
        new = 0.5 * old[idx] + 0.5 * v
        assert torch.allclose(memory[idx], new / new.norm(dim=1, keepdim=True), atol=1e-6)
        assert torch.equal(memory[[2, 4]], old[[2, 4]])
    # Z is fixed after the first batch.
    z = (crd.z_student.item(), crd.z_teacher.item())
    s2, t2 = _feats(b)
    crd([f * 3 for f in s2], t2, torch.tensor([2, 4, 0, 1]))
    assert (crd.z_student.item(), crd.z_teacher.item()) == z


def test_k_is_capped_and_the_positive_is_never_a_negative():
    crd = ContrastiveRepresentation(_inputs(40), nce_k=8)
    assert crd.nce_k == 8 and ContrastiveRepresentation(_inputs(40)).nce_k == 39
    idx = torch.arange(40)
    for _ in range(5):
        neg = crd_negatives(idx, 40, crd.nce_k, crd._generator(idx.device))
        assert neg.shape == (40, 8) and (neg != idx[:, None]).all()
        assert neg.min() >= 0 and neg.max() < 40
        assert all(len(set(row)) == 8 for row in neg.tolist())


def test_the_module_needs_indices_and_a_training_set():
    crd = ContrastiveRepresentation(_inputs(6))
    s_feats, t_feats = _feats(2)
    with pytest.raises(ValueError, match="pass indices"):
        crd(s_feats, t_feats)
    with pytest.raises(ValueError, match="at least 2 samples"):
        ContrastiveRepresentation(_inputs(1))


def test_state_dict_holds_memory_z_and_the_negatives_generator():
    n, b = 50, 4
    a = ContrastiveRepresentation(_inputs(n), nce_k=8)
    s_feats, t_feats = _feats(b)
    a(s_feats, t_feats, torch.tensor([1, 2, 3, 4]))
    state = a.state_dict()
    assert {"memory_student", "memory_teacher", "z_student", "z_teacher"} <= set(state)
    torch.manual_seed(123)  # another construction: other memory, other seed
    c = ContrastiveRepresentation(_inputs(n), nce_k=8)
    assert not torch.equal(c.memory_student, a.memory_student)
    c.load_state_dict(state)
    assert torch.equal(c.memory_teacher, a.memory_teacher) and c.z_student == a.z_student
    c.load_state_dict(a.state_dict())  # twice: a loaded, never drawn state saves as it came
    s2, t2 = _feats(b)
    idx = torch.tensor([9, 8, 7, 6])
    assert torch.equal(a(s2, t2, idx), c(s2, t2, idx))  # the same negatives
    assert torch.equal(a.memory_student, c.memory_student)
    ga, gc = a._generator(idx.device), c._generator(idx.device)
    assert torch.equal(crd_negatives(idx, n, 8, ga), crd_negatives(idx, n, 8, gc))


def test_hybrid_builds_crd_and_trains_only_the_teachers_head_on_its_features():
    inputs = _inputs(6)
    hybrid = HybridLoss(
        LossWeights(0.5, 0, 0, 0.5),
        temperature=4.0,
        relation_kind="crd",
        relation_params={"temperature": 0.1},
        inputs=inputs,
    )
    crd = hybrid.relation_module
    assert isinstance(crd, ContrastiveRepresentation) and crd.temperature == 0.1
    assert {id(p) for p in crd.parameters()} <= {id(p) for p in hybrid.parameters()}
    s_feats, _ = _feats(3)
    s_feats = [f.requires_grad_() for f in s_feats]
    with torch.inference_mode():
        t_feats = [torch.randn(3, 9), torch.randn(3, 5)]
    before = [f.clone() for f in t_feats]
    logits = torch.randn(3, 4, requires_grad=True)
    out = hybrid(logits, torch.tensor([0, 1, 2]), None, s_feats, t_feats, indices=torch.arange(3))
    out["total"].backward()
    assert out["relation"].item() > 0
    assert crd.embed_teacher.linear.weight.grad.abs().sum() > 0
    assert s_feats[1].grad.abs().sum() > 0 and s_feats[0].grad is None  # the last pair only
    assert all(torch.equal(x, y) for x, y in zip(before, t_feats, strict=True))
    with pytest.raises(ConfigError, match="no parameter 'tau'"):
        HybridLoss(LossWeights(), temperature=4.0, relation_kind="crd", relation_params={"tau": 1})


def test_forward_never_syncs_with_the_device(monkeypatch):
    crd = ContrastiveRepresentation(_inputs(30), nce_k=8)
    for _ in range(2):  # the first batch sets Z, the second reads it
        s_feats, t_feats = _feats(4)
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):

                def forbidden(*_args, _name=name, **_kwargs):
                    raise AssertionError(f"host sync in forward: Tensor.{_name}")

                m.setattr(torch.Tensor, name, forbidden)
            value = crd(s_feats, t_feats, torch.randperm(30)[:4])
        assert torch.isfinite(value).item()


# ------------------------------------------------------------------------------ whole runs
BASE = [
    "run", "--teacher", "small_cnn", "--student", "small_cnn", "--epochs", "1",
    "--teacher-epochs", "1", "--batch-size", "128", "--device", "cpu", "--json",
    "--weights", "label=0.5,relation=0.5", "--relation-kind", "crd",
]  # fmt: skip


def test_crd_trains_from_the_cli_served_by_the_teacher_cache(home, capsys):
    results = {}
    for flags in ((), ("--no-teacher-cache",)):
        code = main([*BASE, *flags])
        out, err = capsys.readouterr()
        assert code == 0, err[-2000:]
        results[flags] = json.loads(out)
    cached, live = results[()], results[("--no-teacher-cache",)]
    for result in (cached, live):
        assert result["status"] == "completed", result["error"]
        assert result["losses"]["relation"] > 0 and result["test_acc"] > 0
    store = Store(home)
    assert store.get_run(cached["run_id"])["teacher_source"] == "cache"
    assert store.get_run(live["run_id"])["teacher_source"] == "live"
    assert store.get_run(cached["run_id"])["config"]["relation_kind"] == "crd"
    # The same teacher features, from the cache or live: the same term.
    assert cached["losses"]["relation"] == pytest.approx(live["losses"]["relation"], rel=1e-3)


def test_a_resumed_crd_run_equals_an_uninterrupted_one(store, monkeypatch):
    # K = 64 of the ~1,000 digits: the negatives are a random draw, so only the checkpointed
    # generator gives the resumed run the whole run's negatives (K = N - 1 takes them all).
    crd_64 = functools.partial(ContrastiveRepresentation, nce_k=64)
    monkeypatch.setitem(hybrid_module.RELATION_MODULES, "crd", crd_64)
    config = RunConfig(
        teacher="small_cnn",
        student="mlp",
        epochs=2,
        teacher_epochs=1,
        batch_size=128,
        device="cpu",
        log_every=2,
        augment=True,
        weights=LossWeights(0.5, 0, 0, 0.5),
        relation_kind="crd",
    )
    _, run_id, state = resume_is_exact(config, store)
    assert state["hybrid"]["relation_module.z_student"] > 0  # Z and the memory are checkpointed
    assert all(row["relation"] > 0 for row in store.history(run_id))
