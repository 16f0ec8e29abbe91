"""Class-activation maps (workbench.insight.cam): Grad-CAM against the formula computed here by
hand with hooks, the input's shape kept, maps that change with the target class, every
registered architecture, and an MLP refused."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from workbench.errors import ConfigError
from workbench.insight.cam import cam_layers, class_activation_maps
from workbench.models.registry import build_model, list_models


def _frozen(name: str, shape: tuple[int, int, int], classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, shape, classes)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _grad_cam_by_hand(model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor):
    """Selvaraju et al. 2017, written out: alpha_k = mean_ij dy_c/dA_k, L = ReLU(sum_k alpha_k A_k),
    bilinear upsampling to the input, divided by the map's maximum."""
    store = {}
    module = dict(model.named_modules())[layer]

    def keep(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    handle = module.register_forward_hook(keep)
    maps = []
    try:
        for i in range(len(x)):
            xi = x[i : i + 1].clone().requires_grad_(True)  # lets A require grad
            logits = model(xi)
            logits[0, int(targets[i])].backward()
            a, g = store["a"], store["a"].grad  # [1, K, h, w]
            alpha = g.mean(dim=(2, 3), keepdim=True)  # [1, K, 1, 1]
            cam = torch.relu((alpha * a).sum(dim=1, keepdim=True))  # [1, 1, h, w]
            up = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear")[0, 0]
            maps.append(up / up.max() if up.max() > 0 else up)
    finally:
        handle.remove()
    return torch.stack(maps).detach()


def test_grad_cam_matches_the_formula_computed_by_hand():
    model = _frozen("small_cnn", (1, 8, 8))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 4, 9])
    for layer in cam_layers(model, (1, 8, 8)):
        got = class_activation_maps(model, layer, x, targets)
        want = _grad_cam_by_hand(model, layer, x, targets)
        assert torch.allclose(got, want, atol=1e-5), layer


def test_maps_keep_the_input_shape_and_change_with_the_target_class():
    model = _frozen("resnet8x4", (3, 16, 16))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    layer = cam_layers(model, (3, 16, 16))[-1]
    a = class_activation_maps(model, layer, x, torch.tensor([0, 1, 2, 3]))
    b = class_activation_maps(model, layer, x, torch.tensor([7, 8, 9, 6]))
    assert a.shape == (4, 16, 16) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert (a - b).abs().amax(dim=(1, 2)).min() > 1e-3  # every image's map moved


def test_the_model_is_left_as_it_was():
    model = _frozen("small_cnn", (1, 8, 8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    class_activation_maps(model, "block2", torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no BatchNorm statistics moved


@pytest.mark.parametrize("name", [n for n in list_models() if n != "mlp"])
def test_every_registered_convolutional_architecture_has_maps(name):
    shape = (3, 32, 32) if name not in {"small_cnn"} else (1, 8, 8)
    model = _frozen(name, shape)
    layers = cam_layers(model, shape)
    assert layers, name
    maps = class_activation_maps(model, layers[-1], torch.randn(2, *shape), torch.tensor([0, 1]))
    assert maps.shape == (2, *shape[1:])
    assert torch.isfinite(maps).all()


def test_an_mlp_has_no_layer_to_map():
    model = _frozen("mlp", (1, 8, 8))
    assert cam_layers(model, (1, 8, 8)) == []
    with pytest.raises(ConfigError, match="no spatial feature map|no layer"):
        class_activation_maps(model, "layer1", torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))


def test_unknown_layer_and_bad_targets_are_clear_errors():
    model = _frozen("small_cnn", (1, 8, 8))
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        class_activation_maps(model, "nope", torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="one target per image"):
        class_activation_maps(model, "block1", torch.randn(2, 1, 8, 8), torch.tensor([0]))


def test_without_captum_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import fails as if not installed
    model = _frozen("small_cnn", (1, 8, 8))
    with pytest.raises(ConfigError, match=r"pip install -e \"\.\[cam\]\""):
        class_activation_maps(model, "block1", torch.randn(1, 1, 8, 8), torch.tensor([0]))
