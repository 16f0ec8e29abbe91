"""The model registry: every model builds, runs and reports its candidate layers truthfully."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.errors import ConfigError, UnknownNameError
from workbench.models.registry import (
    MODELS,
    LayerInfo,
    ModelSpec,
    build_model,
    count_params,
    feature_layers,
    list_models,
)

SHAPES = [((1, 8, 8), 10), ((1, 28, 28), 10), ((3, 32, 32), 100)]
CLASSIFIERS = ("fc", "classifier", "head")  # the classifier module of each family


def _hooked_outputs(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Outputs of every module (first call) and the order modules first ran, via plain hooks."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for path, module in model.named_modules():

        def record(_m, _i, out, path=path):
            if path not in outputs:
                outputs[path] = out

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs, list(outputs)


def test_registry_is_a_plain_dict_of_specs():
    assert isinstance(MODELS, dict) and list_models() == list(MODELS)
    assert {"resnet18", "resnet50", "vgg11_bn", "resnet8x4", "wrn_40_2", "small_cnn", "mlp"} <= set(
        MODELS
    )
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec) and spec.name == name
        assert spec.family in ("torchvision", "cifar", "small") and spec.description


def test_registry_refuses_a_model_missing_on_either_side():
    # names and descriptions come from workbench.config.choices (duplicates refused there:
    # tests/test_catalog.py); each needs exactly one builder here
    from workbench.models.registry import _registry

    builders = {name: spec.builder for name, spec in MODELS.items()}
    assert _registry(**builders) == MODELS
    without_mlp = {k: v for k, v in builders.items() if k != "mlp"}
    with pytest.raises(ValueError, match="not the catalog's"):
        _registry(**without_mlp)
    with pytest.raises(ValueError, match="not the catalog's"):
        _registry(**builders, extra=builders["mlp"])


@pytest.mark.parametrize("input_shape,num_classes", SHAPES, ids=["8x8", "28x28", "32x32"])
@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_gives_logits(name, input_shape, num_classes):
    torch.manual_seed(0)
    model = build_model(name, input_shape, num_classes)
    model.train()  # batch statistics on a batch of 2 must work down to 1x1 maps
    logits = model(torch.randn(2, *input_shape))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("input_shape,num_classes", [SHAPES[0], SHAPES[2]], ids=["8x8", "32x32"])
@pytest.mark.parametrize("name", list_models())
def test_feature_layers_report_the_hooked_shapes_in_forward_order(name, input_shape, num_classes):
    model = build_model(name, input_shape, num_classes).eval()
    layers = feature_layers(model, input_shape)
    assert layers and all(isinstance(li, LayerInfo) for li in layers)
    outputs, order = _hooked_outputs(model, torch.randn(3, *input_shape))
    modules = dict(model.named_modules())
    for li in layers:
        assert tuple(outputs[li.path].shape) == (3, *li.shape), li.path
        assert len(li.shape) in (1, 3)
        assert li.params == sum(p.numel() for p in modules[li.path].parameters())
        assert not any(li.path == c or li.path.startswith(c + ".") for c in CLASSIFIERS)
    positions = [order.index(li.path) for li in layers]
    assert positions == sorted(positions)
    assert len({li.path for li in layers}) == len(layers)


@pytest.mark.parametrize(
    "name,count",
    [
        ("resnet18", 8),
        ("resnet34", 16),
        ("resnet50", 16),
        ("mobilenet_v2", 18),
        ("mobilenet_v3_small", 12),
        ("shufflenet_v2_x0_5", 17),
        ("efficientnet_b0", 8),
        ("vgg11_bn", 5),
        ("resnet8x4", 3),
        ("resnet32x4", 15),
        ("wrn_16_2", 6),
        ("wrn_40_2", 18),
        ("small_cnn", 3),
        ("mlp", 2),
    ],
)
def test_candidate_counts_follow_the_family_rule(name, count):
    assert len(feature_layers(build_model(name, (1, 8, 8), 10), (1, 8, 8))) == count


def test_candidate_paths_of_the_small_students_and_resnet18():
    paths = [li.path for li in feature_layers(build_model("resnet18", (1, 8, 8), 10), (1, 8, 8))]
    assert paths == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    small = feature_layers(build_model("small_cnn", (1, 8, 8), 10), (1, 8, 8))
    assert [(li.path, li.shape) for li in small] == [
        ("block1", (16, 8, 8)),
        ("block2", (32, 4, 4)),
        ("block3", (64, 2, 2)),
    ]
    mlp = feature_layers(build_model("mlp", (1, 8, 8), 10), (1, 8, 8))
    assert [(li.path, li.shape) for li in mlp] == [("layer1", (256,)), ("layer2", (128,))]


@pytest.mark.parametrize("name", list_models())
def test_same_seed_gives_identical_weights(name):
    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name, (1, 8, 8), 10).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", list_models())
def test_count_params_and_mode_are_kept(name):
    model = build_model(name, (1, 8, 8), 10)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    for mode in (True, False):
        model.train(mode)
        feature_layers(model, (1, 8, 8))
        assert all(m.training is mode for m in model.modules())
    # A mixed state (a frozen BatchNorm inside a training model) survives too.
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.Linear)))
    frozen.eval()
    feature_layers(model, (1, 8, 8))
    assert model.training and not frozen.training


def test_torchvision_stems_are_adapted_to_small_inputs():
    resnet = build_model("resnet18", (1, 28, 28), 10)
    assert resnet.conv1.in_channels == 1 and resnet.conv1.kernel_size == (3, 3)
    assert resnet.conv1.stride == (1, 1) and isinstance(resnet.maxpool, nn.Identity)
    for name in ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"):
        stem = build_model(name, (1, 28, 28), 10).features[0][0]
        assert stem.in_channels == 1 and stem.stride == (1, 1), name
    shuffle = build_model("shufflenet_v2_x0_5", (3, 32, 32), 10)
    assert shuffle.conv1[0].stride == (1, 1) and isinstance(shuffle.maxpool, nn.Identity)


@pytest.mark.parametrize("input_shape,kept", [((1, 8, 8), 3), ((1, 28, 28), 4), ((3, 32, 32), 5)])
def test_vgg_keeps_only_the_pools_the_input_allows(input_shape, kept):
    model = build_model("vgg11_bn", input_shape, 10)
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model.features)
    assert pools == kept
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    assert feature_layers(model, input_shape)[-1].shape[0] == 512


def test_generic_fallback_for_a_model_not_in_the_registry():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    layers = feature_layers(model, (1, 8, 8))
    # The last module of each run of equal shapes; the classifier (the output) is left out.
    assert [(li.path, li.shape) for li in layers] == [
        ("2", (8, 8, 8)),
        ("4", (16, 4, 4)),
        ("5", (16, 1, 1)),
        ("6", (16,)),
    ]


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UnknownNameError) as info:
        build_model("resnet999", (1, 8, 8), 10)
    message = str(info.value)
    assert "resnet999" in message and "resnet18" in message and "small_cnn" in message
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("shape,classes", [((8, 8), 10), ((1, 0, 8), 10), ((1, 8, 8), 0)])
def test_bad_shapes_are_config_errors(shape, classes):
    with pytest.raises(ConfigError):
        build_model("small_cnn", shape, classes)
