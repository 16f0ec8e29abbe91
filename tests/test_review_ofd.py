"""ReviewKD (Chen et al., CVPR 2021) and OFD (Heo et al., ICCV 2019), the two stateful feature
kinds: their math against computations written here, their modules inside HybridLoss, the
pre-activation taps OFD needs, and both end to end in the engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_engine_steps import resume_is_exact
from workbench.cli import main
from workbench.config.run_config import LossWeights, RunConfig
from workbench.distill.feature import feature_loss, uses_adapter
from workbench.distill.hybrid import HybridLoss
from workbench.distill.overhaul import OFDTerm, ofd_margin, ofd_partial_l2, pre_activation_bn
from workbench.distill.review import ABF, ReviewKDTerm, hcl
from workbench.distill.stateful import MethodInputs
from workbench.distill.taps import check_pairs, pair_layers
from workbench.errors import IncompatibleModelsError
from workbench.models.registry import build_model, feature_layers


def _inputs(student, teacher, s_paths, t_paths, shape=(1, 8, 8)) -> MethodInputs:
    s_shapes = {li.path: li.shape for li in feature_layers(student, shape, preact=True)}
    t_shapes = {li.path: li.shape for li in feature_layers(teacher, shape, preact=True)}
    return MethodInputs(
        student_shapes=tuple(s_shapes[p] for p in s_paths),
        teacher_shapes=tuple(t_shapes[p] for p in t_paths),
        student_paths=tuple(s_paths),
        teacher_paths=tuple(t_paths),
        num_samples=10,
        teacher=teacher,
    )


# ------------------------------------------------------------------------------------ ReviewKD
def test_abf_keeps_shapes():
    g = torch.Generator().manual_seed(0)
    deep = ABF(16, 8, 32, fuse=False)
    out, res = deep(torch.randn(2, 16, 2, 2, generator=g), None, (2, 2))
    assert out.shape == (2, 32, 2, 2) and res.shape == (2, 8, 2, 2)
    shallow = ABF(4, 8, 12, fuse=True)
    out, res2 = shallow(torch.randn(2, 4, 8, 8, generator=g), res, (4, 4))
    assert out.shape == (2, 12, 4, 4) and res2.shape == (2, 8, 4, 4)
    # The whole review: one output per pair, each of its teacher feature's shape.
    term = ReviewKDTerm(
        MethodInputs(((4, 8, 8), (8, 4, 4), (16, 2, 2)), ((6, 8, 8), (3, 4, 4), (5, 1, 1)))
    )
    assert term.abfs[0].conv1[0].out_channels == 16  # mid = min(512, C of the deepest student)
    feats = [torch.randn(2, *s, generator=g) for s in ((4, 8, 8), (8, 4, 4), (16, 2, 2))]
    outs = term.fused(feats, [(8, 8), (4, 4), (1, 1)])
    assert [tuple(o.shape) for o in outs] == [(2, 6, 8, 8), (2, 3, 4, 4), (2, 5, 1, 1)]
    assert term.abfs[-1].att_conv is None and all(a.att_conv is not None for a in term.abfs[:-1])


def _bn_eval(x, bn):
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)


def test_abf_fusion_matches_a_hand_computation():
    torch.manual_seed(1)
    abf = ABF(3, 2, 4, fuse=True).eval()
    with torch.no_grad():
        for bn in (abf.conv1[1], abf.conv2[1]):
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 4, 4)
    residual = torch.randn(2, 2, 2, 2)
    out, fused = abf(x, residual, (4, 4))
    with torch.no_grad():
        w1 = abf.conv1[0].weight[:, :, 0, 0]  # [mid, C]
        h = _bn_eval(torch.einsum("mc,bchw->bmhw", w1, x), abf.conv1[1])
        y = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest, x2
        wa, ba = abf.att_conv[0].weight[:, :, 0, 0], abf.att_conv[0].bias  # [2, 2 mid], [2]
        z = torch.cat([h, y], 1)
        a = torch.sigmoid(torch.einsum("km,bmhw->bkhw", wa, z) + ba.view(1, 2, 1, 1))
        expected_fused = h * a[:, :1] + y * a[:, 1:]
        padded = F.pad(expected_fused, (1, 1, 1, 1))
        w2 = abf.conv2[0].weight  # [4, mid, 3, 3]
        conv = sum(
            torch.einsum("om,bmhw->bohw", w2[:, :, i, j], padded[:, :, i : i + 4, j : j + 4])
            for i in range(3)
            for j in range(3)
        )
        expected = _bn_eval(conv, abf.conv2[1])
    torch.testing.assert_close(fused, expected_fused)
    torch.testing.assert_close(out, expected)


def _np_hcl(f: np.ndarray, t: np.ndarray) -> float:
    """The reference's hcl for one pair, with the pools as block means (sizes divide)."""
    b, c, h, w = f.shape

    def pool(x, level):
        return x.reshape(b, c, level, h // level, level, w // level).mean(axis=(3, 5))

    loss, weight, total = float(np.mean((f - t) ** 2)), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= h:
            continue
        weight = weight / 2
        loss += weight * float(np.mean((pool(f, level) - pool(t, level)) ** 2))
        total += weight
    return loss / total


@pytest.mark.parametrize("size", [8, 4, 2, 1])
def test_hcl_matches_a_loop_over_the_pyramid(size):
    g = torch.Generator().manual_seed(size)
    f, t = torch.randn(3, 5, size, size, generator=g), torch.randn(3, 5, size, size, generator=g)
    expected = _np_hcl(f.double().numpy(), t.double().numpy())
    assert hcl(f, t).item() == pytest.approx(expected, rel=1e-5)
    assert feature_loss(f, t, "reviewkd").item() == pytest.approx(expected, rel=1e-5)


def test_hcl_weights_for_an_eight_by_eight_map():
    # f - t = 1 on one 4x4 quadrant of an 8x8 map, one channel: the full map's MSE is 1/4; the
    # 4x4 pool's 1/4 (4 of 16 cells differ by 1), the 2x2 pool's 1/4, the 1x1 pool's 1/16.
    f = torch.zeros(1, 1, 8, 8)
    f[..., :4, :4] = 1.0
    expected = (0.25 + 0.25 / 2 + 0.25 / 4 + (1 / 16) / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    assert hcl(f, torch.zeros_like(f)).item() == pytest.approx(expected, rel=1e-6)


def test_reviewkd_term_is_the_sum_of_hcls_and_trains_its_abfs():
    torch.manual_seed(2)
    term = ReviewKDTerm(MethodInputs(((4, 4, 4), (8, 2, 2)), ((6, 4, 4), (3, 2, 2))))
    s = [torch.randn(3, 4, 4, 4), torch.randn(3, 8, 2, 2)]
    t = [torch.randn(3, 6, 4, 4), torch.randn(3, 3, 2, 2)]
    loss = term(s, t)
    outs = term.fused(s, [(4, 4), (2, 2)])
    assert loss.item() == pytest.approx(
        sum(hcl(o, x).item() for o, x in zip(outs, t, strict=True)), rel=1e-6
    )
    loss.backward()
    assert all(p.grad is not None for p in term.parameters())


# ------------------------------------------------------------------------------------------ OFD
def _integrated_margin(sigma: float, mu: float) -> float:
    """E[x | x < 0] for x ~ N(mu, sigma^2), by the trapezoid rule on [mu - 12 sigma, 0]."""
    x = torch.linspace(min(mu - 12 * sigma, -1e-9), 0.0, 400_001, dtype=torch.float64)
    density = torch.exp(-0.5 * ((x - mu) / sigma) ** 2)
    return float(torch.trapezoid(x * density, x) / torch.trapezoid(density, x))


def test_ofd_margin_is_the_mean_of_the_negative_part():
    weight = torch.tensor([1.0, 0.5, -2.0, 0.3, 1.0, 0.7])
    bias = torch.tensor([0.0, 1.0, -1.0, 0.2, 5.0, -3.0])
    margin = ofd_margin(weight, bias)
    for c in range(len(weight)):
        sigma, mu = abs(float(weight[c])), float(bias[c])
        mass = 0.5 * math.erfc(mu / sigma / math.sqrt(2))  # P(x < 0)
        expected = _integrated_margin(sigma, mu) if mass > 0.001 else -3 * sigma
        assert margin[c].item() == pytest.approx(expected, rel=1e-4, abs=1e-6), c
    assert margin[4].item() == pytest.approx(-3.0)  # P(x < 0) = 2.9e-7 for N(5, 1): -3 sigma
    assert (margin < 0).all()


def test_ofd_partial_l2_leaves_out_exactly_s_below_t_below_zero():
    # One channel, margin -1; each column one case: (s, t) -> counted (s - max(t, m))^2 or not.
    cases = [
        (-1.0, -0.5, None),  # s <= t <= 0: left out
        (-0.5, -0.5, None),  # s == t <= 0: left out
        (-0.2, -0.5, 0.09),  # s > t: (s - t)^2
        (-1.0, 0.5, 2.25),  # t > 0: counted though s < t
        (1.0, 2.0, 1.0),  # t > 0
        (-2.0, -3.0, None),  # t' = m = -1, s <= t' <= 0: left out
        (-0.5, -3.0, 0.25),  # t' = -1 < s: (s - m)^2
        (0.5, 0.0, 0.25),  # t = 0, s > t
    ]
    s = torch.tensor([[c[0] for c in cases]]).view(1, 1, 1, -1).repeat(2, 1, 1, 1)
    t = torch.tensor([[c[1] for c in cases]]).view(1, 1, 1, -1).repeat(2, 1, 1, 1)
    expected = sum(c[2] for c in cases if c[2] is not None)  # per sample; mean over 2 samples
    loss = ofd_partial_l2(s, t, torch.tensor([-1.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert feature_loss(s, t, "ofd", margin=torch.tensor([-1.0])).item() == loss.item()


def test_ofd_partial_l2_equals_mdistillers_three_term_form():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    m = -torch.rand(4, generator=g).view(1, 4, 1, 1)
    # mdistiller's feat_loss, written out
    loss = (
        (s - m) ** 2 * ((s > m) & (t <= m))
        + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0))
        + (s - t) ** 2 * (t > 0)
    )
    expected = loss.mean(dim=0).sum()
    assert ofd_partial_l2(s, t, m.flatten()).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ofd_without_a_margin_says_where_it_comes_from():
    with pytest.raises(ValueError, match="batch-norm statistics"):
        feature_loss(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), "ofd")
    assert not uses_adapter("ofd") and not uses_adapter("reviewkd")


def test_gradcheck_in_float64():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: hcl(x, t), (f,))
    margin = torch.full((3,), -0.5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ofd_partial_l2(x, t, margin), (f,))
    abf = ABF(3, 2, 4, fuse=True).double().eval()
    res = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, r: abf(x, r, (4, 4))[0], (f, res))


def test_pre_activation_bn_is_the_last_bn_of_the_residual_branch():
    resnet = build_model("resnet20", (1, 8, 8), 10)
    assert (
        pre_activation_bn(resnet, "layer2.0.preact") is resnet.layer2[0].bn2
    )  # not the shortcut's
    wrn = build_model("wrn_16_2", (1, 8, 8), 10)
    assert pre_activation_bn(wrn, "block2.0.bn1") is wrn.block2[0].bn1
    vgg = build_model("vgg8", (1, 8, 8), 10)
    assert pre_activation_bn(vgg, "block2.1") is vgg.block2[1]
    with pytest.raises(IncompatibleModelsError, match="pre-activation teacher layer"):
        pre_activation_bn(resnet, "layer3.2")


def test_ofd_term_weights_the_pairs_by_depth_and_reads_the_teachers_bns():
    torch.manual_seed(6)
    teacher, student = (
        build_model("resnet20", (1, 8, 8), 10),
        build_model("resnet20", (1, 8, 8), 10),
    )
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-1, 1)
    paths = ("layer1.2.preact", "layer2.2.preact", "layer3.2.preact")
    term = OFDTerm(_inputs(student, teacher, paths, paths))
    blocks = (teacher.layer1[2], teacher.layer2[2], teacher.layer3[2])
    for margin, block in zip(term.margins(), blocks, strict=True):
        torch.testing.assert_close(margin, ofd_margin(block.bn2.weight, block.bn2.bias))
    s = [torch.randn(2, c, h, h) for c, h in ((16, 8), (32, 4), (64, 2))]
    t = [torch.randn(2, c, h, h) for c, h in ((16, 8), (32, 4), (64, 2))]
    expected = sum(
        ofd_partial_l2(conn(x), y, m).item() * w
        for conn, x, y, m, w in zip(
            term.connectors, s, t, term.margins(), (0.25, 0.5, 1.0), strict=True
        )
    )
    assert term(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_hybrid_loss_builds_both_with_their_state_in_parameters_and_state_dict():
    teacher, student = (
        build_model("resnet20", (1, 8, 8), 10),
        build_model("resnet20", (1, 8, 8), 10),
    )
    paths = ("layer2.2.preact", "layer3.2.preact")
    inputs = _inputs(student, teacher, paths, paths)
    for kind, owned, key in (
        ("reviewkd", "abfs", "feature_module.abfs.0.conv1.0.weight"),
        ("ofd", "connectors", "feature_module.margin_1"),
    ):
        hybrid = HybridLoss(
            LossWeights(0.5, 0, 0.5, 0), temperature=4.0, feature_kind=kind, inputs=inputs
        )
        module = getattr(hybrid.feature_module, owned)
        ids = {id(p) for p in hybrid.parameters()}
        assert module.parameters() and all(id(p) in ids for p in module.parameters())
        assert key in hybrid.state_dict() and hybrid.adapters is None
        s = [torch.randn(2, 32, 4, 4), torch.randn(2, 64, 2, 2)]
        t = [torch.randn(2, 32, 4, 4), torch.randn(2, 64, 2, 2)]
        terms = hybrid(torch.randn(2, 10), torch.tensor([1, 2]), None, s, t)
        assert terms["feature"].item() > 0
        off = HybridLoss(LossWeights(1, 0, 0, 0), temperature=4.0, feature_kind=kind)
        assert off.feature_module is None  # weight 0: not built, no inputs needed


# ------------------------------------------------------------------------ pre-activation taps
@pytest.mark.parametrize(
    "name", ["resnet20", "wrn_16_2", "vgg8", "shufflenet_v1_cifar", "small_cnn"]
)
def test_pre_activation_taps_are_listed_but_never_suggested(name):
    model = build_model(name, (1, 8, 8), 10)
    plain = feature_layers(model, (1, 8, 8))
    full = feature_layers(model, (1, 8, 8), preact=True)
    assert [li for li in full if not li.preact] == plain and not any(li.preact for li in plain)
    assert pair_layers(full, full) == pair_layers(plain, plain)
    if name == "resnet20":
        pre = [li.path for li in full if li.preact]
        assert pre == [f"layer{s}.{b}.preact" for s in (1, 2, 3) for b in range(3)]
        check_pairs([("layer3.2.preact", "layer3.2.preact")], full, full, "ofd")
        with pytest.raises(IncompatibleModelsError, match="ofd needs a pre-activation"):
            check_pairs([("layer3.2", "layer3.2")], full, full, "ofd")


BASE = [
    "run", "--teacher", "resnet20", "--student", "resnet20", "--epochs", "1",
    "--teacher-epochs", "1", "--batch-size", "128", "--device", "cpu", "--json",
    "--train-fraction", "0.25", "--weights", "label=0.5,feature=0.5",
]  # fmt: skip


def test_ofd_and_reviewkd_train_from_the_cli_with_their_terms_non_zero(home, capsys):
    pairs = "layer2.2.preact:layer2.2.preact,layer3.2.preact:layer3.2.preact"
    results = {}
    for kind, extra in (("ofd", ["--layer-pairs", pairs]), ("reviewkd", [])):
        code = main([*BASE, "--feature-kind", kind, *extra])
        out, err = capsys.readouterr()
        assert code == 0, err[-2000:]
        results[kind] = json.loads(out)
        assert results[kind]["status"] == "completed", results[kind]["error"]
        assert results[kind]["losses"]["feature"] > 0
    assert results["ofd"]["losses"]["feature"] != results["reviewkd"]["losses"]["feature"]
    # a post-activation teacher layer: one line with the fix
    code = main([*BASE, "--feature-kind", "ofd", "--layer-pairs", "layer3.2:layer3.2"])
    _, err = capsys.readouterr()
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ofd needs a pre-activation teacher layer such as"), line


@pytest.mark.parametrize("kind", ["ofd", "reviewkd"])
def test_either_on_vector_layers_is_one_line_naming_it(home, capsys, kind):
    args = ["run", "--teacher", "small_cnn", "--student", "mlp", "--epochs", "1"]
    code = main(
        [
            *args,
            "--teacher-epochs",
            "1",
            "--device",
            "cpu",
            "--weights",
            "label=0.5,feature=0.5",
            "--feature-kind",
            kind,
        ]
    )
    _, err = capsys.readouterr()
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {kind} needs 4-D feature maps"), line


# ------------------------------------------------------------------------------ resume exactness
def test_a_resumed_reviewkd_run_equals_an_uninterrupted_one(store):
    config = RunConfig(
        teacher="small_cnn",
        student="small_cnn",
        epochs=2,
        teacher_epochs=1,
        train_fraction=0.4,
        batch_size=128,
        device="cpu",
        log_every=2,
        weights=LossWeights(0.5, 0, 0.5, 0),
        feature_kind="reviewkd",
        augment=True,
    )
    whole, _, _ = resume_is_exact(config, store)
    assert whole["metrics"]["final_losses"]["feature"] > 0
