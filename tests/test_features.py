"""Forward-hook taps, layer pairing, pair checks and FitNets adapters."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.distill.taps import Adapter, FeatureTaps, build_adapters, check_pairs, pair_layers
from workbench.errors import IncompatibleModelsError
from workbench.models.registry import LayerInfo, build_model, feature_layers


def _layers(prefix: str, n: int, shape: tuple[int, ...] = (8, 4, 4)) -> list[LayerInfo]:
    return [LayerInfo(f"{prefix}{i}", shape, 0) for i in range(n)]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ------------------------------------------------------------------------------------- taps
def test_taps_return_the_module_outputs_in_the_order_of_paths():
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        b1 = model.block1(x)  # the modules called directly: an independent reference
        b2 = model.block2(b1)
    with FeatureTaps(model, ["block2", "block1"]) as taps, torch.no_grad():
        logits = model(x)
        f2, f1 = taps.features
    assert torch.equal(f1, b1) and torch.equal(f2, b2)
    assert torch.allclose(logits, model.head(model.block3(b2)))


def test_taps_match_a_manual_hook_and_follow_each_forward():
    model = build_model("resnet18", (1, 8, 8), 10).eval()
    seen = []
    handle = model.layer3[1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    with FeatureTaps(model, ["layer3.1"]) as taps, torch.no_grad():
        model(torch.randn(2, 1, 8, 8))
        first = taps.features[0]
        model(torch.randn(3, 1, 8, 8))
        second = taps.features[0]
    handle.remove()
    assert torch.equal(first, seen[0]) and torch.equal(second, seen[1])
    assert second.shape == (3, 256, 2, 2)


def test_hooks_are_removed_after_the_block_and_after_an_exception():
    model = build_model("small_cnn", (1, 8, 8), 10)
    with FeatureTaps(model, ["block1", "block3"]):
        assert model.block1._forward_hooks and model._forward_pre_hooks
    assert _no_hooks(model)
    with pytest.raises(ValueError, match="boom"), FeatureTaps(model, ["block1", "block3"]):
        model(torch.randn(2, 1, 8, 8))
        raise ValueError("boom")
    assert _no_hooks(model)


def test_tapped_features_carry_gradients_into_the_model():
    model = build_model("small_cnn", (1, 8, 8), 10)
    with FeatureTaps(model, ["block2"]) as taps:
        model(torch.randn(2, 1, 8, 8))
        taps.features[0].square().mean().backward()
    assert model.block1[0].weight.grad is not None
    assert model.block1[0].weight.grad.abs().sum() > 0


def test_a_tuple_output_gives_its_first_tensor():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, "extra"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    x = torch.ones(2, 3)
    with FeatureTaps(Net(), ["pair"]) as taps:
        taps.model(x)
        assert torch.equal(taps.features[0], x * 2)


def test_empty_paths_and_reading_before_a_forward():
    model = build_model("mlp", (1, 8, 8), 10)
    with FeatureTaps(model, []) as taps:
        model(torch.randn(2, 1, 8, 8))
        assert taps.features == []
    with FeatureTaps(model, ["layer1"]) as taps, pytest.raises(RuntimeError, match="layer1"):
        taps.features  # noqa: B018 - reading the property is the test


def test_an_unknown_path_lists_candidate_layers():
    model = build_model("resnet18", (1, 8, 8), 10)
    with pytest.raises(IncompatibleModelsError) as info:
        FeatureTaps(model, ["layer3.1", "layer5.0"])
    message = str(info.value)
    assert "layer5.0" in message and "layer1.0" in message and "did you mean" in message
    assert _no_hooks(model)


# ---------------------------------------------------------------------------------- pairing
def test_pairing_three_student_layers_with_eight_teacher_layers():
    # Student depths 1/3, 2/3, 1; nearest teacher depths 3/8, 5/8, 8/8 -> indices 2, 4, 7.
    pairs = pair_layers(_layers("s", 3), _layers("t", 8))
    assert pairs == (("s0", "t2"), ("s1", "t4"), ("s2", "t7"))


def test_pairing_worked_examples():
    # 8 vs 8, four pairs: every second layer, matched one to one.
    assert pair_layers(_layers("s", 8), _layers("t", 8)) == tuple(
        (f"s{i}", f"t{i}") for i in (1, 3, 5, 7)
    )
    # 17 student candidates (mobilenet_v2-like) vs 8: student 4, 8, 12, 16 at depths 5/17, 9/17,
    # 13/17, 1; teacher depths 2.35/8, 4.24/8, 6.12/8, 8/8 round to indices 1, 3, 5, 7.
    assert pair_layers(_layers("s", 17), _layers("t", 8)) == (
        ("s4", "t1"),
        ("s8", "t3"),
        ("s12", "t5"),
        ("s16", "t7"),
    )
    # A tie (depth 1/2 is 1/6 from both 1/3 and 2/3) goes to the deeper teacher layer.
    assert pair_layers(_layers("s", 2), _layers("t", 3)) == (("s0", "t1"), ("s1", "t2"))
    # One pair: the deepest candidates.
    assert pair_layers(_layers("s", 5), _layers("t", 9), num_pairs=1) == (("s4", "t8"),)


def test_pairing_real_models_resnet18_to_resnet50():
    s = feature_layers(build_model("resnet18", (1, 8, 8), 10), (1, 8, 8))
    t = feature_layers(build_model("resnet50", (1, 8, 8), 10), (1, 8, 8))
    assert pair_layers(s, t) == (
        ("layer1.1", "layer2.0"),
        ("layer2.1", "layer3.0"),
        ("layer3.1", "layer3.4"),
        ("layer4.1", "layer4.2"),
    )


@pytest.mark.parametrize("s_count", [1, 2, 3, 5, 8, 17])
@pytest.mark.parametrize("t_count", [1, 3, 4, 8, 16])
def test_pairing_matches_a_brute_force_nearest_depth(s_count, t_count):
    student, teacher = _layers("s", s_count), _layers("t", t_count)
    for n in range(1, min(s_count, t_count) + 1):
        pairs = pair_layers(student, teacher, num_pairs=n)
        s_idx = [int(s[1:]) for s, _ in pairs]
        assert len(pairs) == n and s_idx == sorted(set(s_idx)) and s_idx[-1] == s_count - 1
        assert pairs[-1] == (f"s{s_count - 1}", f"t{t_count - 1}")
        for k, (s_path, t_path) in enumerate(pairs, start=1):
            s = int(s_path[1:])
            assert Fraction(s + 1, s_count) >= Fraction(k, n) > Fraction(s, s_count)
            depth = Fraction(s + 1, s_count)
            best = min(range(t_count), key=lambda j: (abs(Fraction(j + 1, t_count) - depth), -j))
            assert t_path == f"t{best}"


def test_pairing_errors():
    with pytest.raises(IncompatibleModelsError, match="student has no candidate"):
        pair_layers([], _layers("t", 3))
    for bad in (0, 4, 2.5):
        with pytest.raises(IncompatibleModelsError, match="from 1 to 3"):
            pair_layers(_layers("s", 3), _layers("t", 8), num_pairs=bad)


# ------------------------------------------------------------------------------ check_pairs
def test_check_pairs_accepts_candidate_pairs_and_only_those():
    s_layers, t_layers = _layers("s", 2), _layers("t", 8)
    assert check_pairs((("s0", "t2"), ("s1", "t7")), s_layers, t_layers, "at") is None
    with pytest.raises(IncompatibleModelsError, match="t8"):
        check_pairs((("s0", "t2"), ("s1", "t8")), s_layers, t_layers, "at")


def test_check_pairs_names_the_unknown_layer_and_the_valid_ones():
    with pytest.raises(IncompatibleModelsError) as info:
        check_pairs((("nope", "t1"),), _layers("s", 3), _layers("t", 3), "cosine")
    assert "'nope'" in str(info.value) and "student" in str(info.value)
    assert "s0, s1, s2" in str(info.value)
    with pytest.raises(IncompatibleModelsError, match="teacher; choose one of: t0, t1"):
        check_pairs((("s0", "layer9"),), _layers("s", 3), _layers("t", 2), "mse")


def test_check_pairs_rejects_empty_and_malformed_pairs():
    with pytest.raises(IncompatibleModelsError, match="no layer pairs"):
        check_pairs((), _layers("s", 3), _layers("t", 3), "cosine")
    with pytest.raises(IncompatibleModelsError, match="student_layer, teacher_layer"):
        check_pairs((("s0",),), _layers("s", 3), _layers("t", 3), "cosine")


def test_attention_transfer_needs_maps_on_both_sides():
    student = feature_layers(build_model("mlp", (1, 8, 8), 10), (1, 8, 8))
    teacher = feature_layers(build_model("small_cnn", (1, 8, 8), 10), (1, 8, 8))
    pairs = pair_layers(student, teacher)
    check_pairs(pairs, student, teacher, "cosine")  # vectors are fine for cosine
    with pytest.raises(IncompatibleModelsError) as info:
        check_pairs(pairs, student, teacher, "at")
    message = str(info.value).lower()
    assert "attention" in message and "cosine" in message and "mse" in message
    assert "layer1" in message
    with pytest.raises(IncompatibleModelsError, match="attention transfer"):
        check_pairs(pairs, student, teacher, "at_paper")  # the paper-scale kind too
    # Maps of other channel counts and sizes pass: the loss resizes the student's map.
    convs = feature_layers(build_model("small_cnn", (1, 8, 8), 10), (1, 8, 8))
    assert len({li.shape for li in convs}) > 1
    check_pairs(((convs[0].path, convs[-1].path),), convs, convs, "at")


# --------------------------------------------------------------------------------- adapters
@pytest.mark.parametrize(
    "s_shape,t_shape",
    [
        ((16, 8, 8), (32, 4, 4)),  # map -> smaller map: 1x1 conv + adaptive average pooling
        ((16, 2, 2), (32, 4, 4)),  # map -> larger map: 1x1 conv + bilinear interpolation
        ((16, 4, 4), (32, 4, 4)),  # map -> map of the same size
        ((16, 8, 2), (32, 4, 4)),  # mixed: interpolation
        ((64,), (128,)),  # vector -> vector
        ((16, 4, 4), (128,)),  # map -> vector
        ((64,), (8, 2, 2)),  # vector -> map
    ],
)
def test_adapter_output_shapes(s_shape, t_shape):
    adapter = Adapter(s_shape, t_shape)
    assert adapter(torch.randn(3, *s_shape)).shape == (3, *t_shape)


def test_adapter_is_conv_then_resize():
    torch.manual_seed(0)
    down, up = Adapter((4, 8, 8), (6, 2, 2)), Adapter((4, 2, 2), (6, 5, 5))
    x_big, x_small = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 2, 2)
    w, b = down.proj.weight, down.proj.bias
    ref = F.adaptive_avg_pool2d(F.conv2d(x_big, w, b), (2, 2))
    assert torch.allclose(down(x_big), ref, atol=1e-6)
    ref = F.interpolate(
        F.conv2d(x_small, up.proj.weight, up.proj.bias), size=(5, 5), mode="bilinear"
    )
    assert torch.allclose(up(x_small), ref, atol=1e-6)
    pooled = Adapter((4, 3, 3), (5,))
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(pooled(x), pooled.proj(x.mean(dim=(2, 3))), atol=1e-6)


def test_adapter_refuses_other_ranks():
    with pytest.raises(IncompatibleModelsError, match="vectors"):
        Adapter((4, 8), (4,))


def test_adapters_are_built_before_the_optimizer_and_train():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    student = build_model("small_cnn", shape, 10)
    teacher = build_model("resnet8x4", shape, 10).eval()
    s_layers, t_layers = feature_layers(student, shape), feature_layers(teacher, shape)
    pairs = pair_layers(s_layers, t_layers)
    assert pairs == (("block1", "layer1.0"), ("block2", "layer2.0"), ("block3", "layer3.0"))
    check_pairs(pairs, s_layers, t_layers, "at")
    adapters = build_adapters(pairs, s_layers, t_layers)
    assert len(adapters) == len(pairs)
    assert [a.teacher_shape for a in adapters] == [t.shape for t in t_layers]

    optimizer = torch.optim.SGD([*student.parameters(), *adapters.parameters()], lr=0.1)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in adapters.parameters())
    before = [p.detach().clone() for p in adapters.parameters()]

    x = torch.randn(4, *shape)
    with FeatureTaps(student, [s for s, _ in pairs]) as s_taps:
        with torch.no_grad(), FeatureTaps(teacher, [t for _, t in pairs]) as t_taps:
            teacher(x)
            t_feats = t_taps.features
        student(x)
        loss = sum(
            F.mse_loss(a(s), t) for a, s, t in zip(adapters, s_taps.features, t_feats, strict=True)
        )
        optimizer.zero_grad()
        loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.parameters())
    optimizer.step()
    after = list(adapters.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert _no_hooks(student) and _no_hooks(teacher)


def test_build_adapters_checks_the_pairs():
    with pytest.raises(IncompatibleModelsError, match="'x9'"):
        build_adapters((("x9", "t0"),), _layers("s", 2), _layers("t", 2))
