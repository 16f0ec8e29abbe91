"""The CIFAR zoo (workbench.models.cifar_zoo, cifar_mobile): the reference sizes, any input,
taps at every stage (post- and pre-activation), and a short distillation run on digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.config.run_config import RunConfig
from workbench.models.cifar_mobile import channel_shuffle
from workbench.models.registry import build_model, count_params, feature_layers
from workbench.training.loop import run
from workbench.training.teachers import import_teacher

# Parameters for input (3, 32, 32) and 100 classes, counted on a transcription of the reference
# definitions (RepDistiller, github.com/HobbitLong/RepDistiller, models/resnet.py, wrn.py, vgg.py,
# mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py; mdistiller's are the same files). The CRD
# paper's table rounds them: 0.28M, 0.47M, 0.86M, 1.74M, 0.57M, 3.96M, 9.46M, 0.81M, 0.95M, 1.36M.
REFERENCE_PARAMS = {
    "resnet20": 278_324,  # ResNet(20, [16, 16, 32, 64], 'basicblock')
    "resnet32": 472_756,  # ResNet(32, [16, 16, 32, 64])
    "resnet56": 861_620,  # ResNet(56, [16, 16, 32, 64])
    "resnet110": 1_736_564,  # ResNet(110, [16, 16, 32, 64])
    "wrn_40_1": 569_780,  # WideResNet(depth=40, widen_factor=1)
    "vgg8": 3_965_028,  # VGG(cfg['S'], batch_norm=True): vgg8_bn
    "vgg13": 9_462_180,  # VGG(cfg['B'], batch_norm=True): vgg13_bn
    "mobilenet_v2_cifar": 812_836,  # mobile_half = mobilenetv2_T_w(6, 0.5)
    "shufflenet_v1_cifar": 949_258,  # ShuffleV1: out_planes [240, 480, 960], [4, 8, 4], g=3
    "shufflenet_v2_cifar": 1_355_528,  # ShuffleV2: net_size 1
}
ZOO = list(REFERENCE_PARAMS)


def test_vgg8_count_by_hand():
    # Five conv(3x3, bias)+BN stages 3->64->128->256->512->512, then Linear(512, 100).
    widths = [3, 64, 128, 256, 512, 512]
    convs = sum(9 * a * b + b + 2 * b for a, b in zip(widths, widths[1:], strict=False))
    assert convs + 512 * 100 + 100 == REFERENCE_PARAMS["vgg8"]


@pytest.mark.parametrize("name", ZOO)
def test_reference_parameter_count(name):
    assert count_params(build_model(name, (3, 32, 32), 100)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", ZOO)
def test_small_grey_inputs_give_logits(name):
    torch.manual_seed(0)
    for shape in ((1, 8, 8), (1, 28, 28)):
        model = build_model(name, shape, 10).train()  # batch statistics down to 1x1 maps
        logits = model(torch.randn(2, *shape))
        assert logits.shape == (2, 10) and torch.isfinite(logits).all(), shape


# The last block of every stage and its output shape for a 3x32x32 input (the reference's
# features f1, f2, ... and the shapes noted in its forward()), and the number of candidates.
STAGE_ENDS = {
    "resnet20": (
        [("layer1.2", (16, 32, 32)), ("layer2.2", (32, 16, 16)), ("layer3.2", (64, 8, 8))],
        9,
    ),
    "resnet32": (
        [("layer1.4", (16, 32, 32)), ("layer2.4", (32, 16, 16)), ("layer3.4", (64, 8, 8))],
        15,
    ),
    "resnet56": (
        [("layer1.8", (16, 32, 32)), ("layer2.8", (32, 16, 16)), ("layer3.8", (64, 8, 8))],
        27,
    ),
    "resnet110": (
        [("layer1.17", (16, 32, 32)), ("layer2.17", (32, 16, 16)), ("layer3.17", (64, 8, 8))],
        54,
    ),
    "wrn_40_1": (
        [("block1.5", (16, 32, 32)), ("block2.5", (32, 16, 16)), ("block3.5", (64, 8, 8))],
        18,
    ),
    "vgg8": (
        [("block0", (64, 32, 32)), ("block1", (128, 16, 16)), ("block2", (256, 8, 8))]
        + [("block3", (512, 4, 4)), ("block4", (512, 4, 4))],
        5,
    ),
    "vgg13": (
        [("block0", (64, 32, 32)), ("block1", (128, 16, 16)), ("block2", (256, 8, 8))]
        + [("block3", (512, 4, 4)), ("block4", (512, 4, 4))],
        5,
    ),
    "mobilenet_v2_cifar": (
        [("blocks.0.0", (8, 16, 16)), ("blocks.1.1", (12, 16, 16)), ("blocks.2.2", (16, 8, 8))]
        + [("blocks.3.3", (32, 4, 4)), ("blocks.4.2", (48, 4, 4)), ("blocks.5.2", (80, 2, 2))]
        + [("blocks.6.0", (160, 2, 2)), ("conv2", (1280, 2, 2))],
        18,
    ),
    "shufflenet_v1_cifar": (
        [("layer1.3", (240, 16, 16)), ("layer2.7", (480, 8, 8)), ("layer3.3", (960, 4, 4))],
        16,
    ),
    "shufflenet_v2_cifar": (
        [("layer1.3", (116, 16, 16)), ("layer2.7", (232, 8, 8)), ("layer3.3", (464, 4, 4))]
        + [("relu2", (1024, 4, 4))],
        17,
    ),
}


@pytest.mark.parametrize("name", ZOO)
def test_feature_layers_tap_every_stage_end(name):
    ends, count = STAGE_ENDS[name]
    layers = feature_layers(build_model(name, (3, 32, 32), 100), (3, 32, 32))
    shapes = {li.path: li.shape for li in layers}
    assert len(layers) == count
    assert [(path, shapes.get(path)) for path, _ in ends] == ends
    assert layers[-1].path == ends[-1][0]  # the deepest candidate ends the last stage
    on_digits = feature_layers(build_model(name, (1, 8, 8), 10), (1, 8, 8))
    assert [li.path for li in on_digits] == [li.path for li in layers]


# Pre-activation taps (the reference's preact=True features) and the post-activation output they
# become: post = ReLU(pre), after the channel shuffle for ShuffleNet V2.
PREACT = {
    "resnet20": [("layer1.2.preact", "layer1.2"), ("layer3.2.preact", "layer3.2")],
    "resnet110": [("layer2.17.preact", "layer2.17")],
    "wrn_40_1": [("block2.0.bn1", "block2.0.relu1"), ("bn1", "relu")],
    "vgg8": [(f"block{s}.1", f"block{s}") for s in range(5)],
    "vgg13": [("block2.4", "block2"), ("block4.4", "block4")],
    "shufflenet_v1_cifar": [
        (f"layer{s}.{b}.preact", f"layer{s}.{b}") for s, b in ((1, 3), (2, 7), (3, 3))
    ],
    "shufflenet_v2_cifar": [("layer1.3.preact", "layer1.3"), ("layer3.3.preact", "layer3.3")],
}


@pytest.mark.parametrize("name", list(PREACT))
def test_pre_activation_taps(name):
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 100).eval()
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    paths = [p for pair in PREACT[name] for p in pair]
    hooks = [
        modules[p].register_forward_hook(lambda _m, _i, out, p=p: outputs.setdefault(p, out))
        for p in paths
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    for pre, post in PREACT[name]:
        expected = F.relu(outputs[pre])
        if name == "shufflenet_v2_cifar":
            expected = channel_shuffle(expected, 2)
        assert (outputs[pre] < 0).any(), pre  # really before the ReLU
        torch.testing.assert_close(outputs[post], expected, rtol=0, atol=0)


def test_channel_shuffle_by_hand():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    # groups of 3: [[0, 1], [2, 3], [4, 5]] -> take one from each group in turn
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_vgg_pools_fit_the_input():
    def pools(shape):
        model = build_model("vgg8", shape, 10)
        return [isinstance(getattr(model, f"pool{i}"), nn.MaxPool2d) for i in range(4)]

    assert pools((3, 32, 32)) == [True, True, True, False]  # the reference: pool3 only at 64
    assert pools((3, 64, 64)) == [True, True, True, True]
    assert pools((1, 8, 8)) == [True, True, True, False]  # 8 -> 4 -> 2 -> 1
    assert pools((1, 4, 4)) == [True, True, False, False]


@pytest.mark.parametrize(
    "teacher,student,trained",
    [("resnet32", "resnet20", True), ("vgg8", "shufflenet_v1_cifar", False)],
)
def test_a_short_distillation_on_digits(store, tmp_path, teacher, student, trained):
    """One epoch on a quarter of digits with every loss term on, so the zoo's taps are paired,
    hooked and adapted; the second teacher is imported untrained (its forward is what counts)."""
    config = RunConfig(
        teacher=teacher,
        student=student,
        epochs=1,
        teacher_epochs=1,
        batch_size=128,
        train_fraction=0.25,
        device="cpu",
        log_every=2,
    )
    if not trained:
        torch.manual_seed(0)
        path = tmp_path / "teacher.pt"
        torch.save(build_model(teacher, (1, 8, 8), 10).state_dict(), path)
        config = config.replace(
            teacher_run=import_teacher(store, str(path), teacher=teacher, dataset="digits")
        )
    assert min(config.weights.feature, config.weights.relation) > 0
    record = run(config, store)
    assert record["status"] == "completed", record.get("error")
    losses = record["metrics"]["final_losses"]
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert all(math.isfinite(r["total"]) for r in store.history(record["id"]))
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0
    pairs = store.probe(record["id"])["pairs"]
    student_taps = {
        li.path for li in feature_layers(build_model(student, (1, 8, 8), 10), (1, 8, 8))
    }
    assert pairs and all(tuple(p)[0] in student_taps for p in pairs)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store for the zoo's students: their one small teacher is trained once."""
    from workbench.storage.store import Store

    store = Store(tmp_path_factory.mktemp("zoo"))
    yield store
    store.close()


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_trains_one_epoch_as_a_distilled_student(shared_store, name):
    """Each new model, as the student of a small teacher with every loss term on: built,
    tapped, paired, adapted and trained for one epoch on a tenth of digits."""
    store = shared_store
    config = RunConfig(
        teacher="small_cnn",
        student=name,
        epochs=1,
        teacher_epochs=1,
        batch_size=32,
        train_fraction=0.1,
        device="cpu",
        log_every=2,
    )
    record = run(config, store)
    assert record["status"] == "completed", record.get("error")
    assert record["progress"]["epoch"] == 1
    losses = record["metrics"]["final_losses"]
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
