"""Class-activation maps: where a model looks when it predicts a class (issue 21 item 6).

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017). For a layer with feature maps ``A^k`` (``[K, h, w]``)
and the score ``y^c`` of class ``c`` (the logit, before the softmax)::

    alpha_k^c = (1 / (h w)) sum_ij  d y^c / d A^k_ij        (global-average-pooled gradients)
    L^c       = ReLU( sum_k alpha_k^c A^k )                  ([h, w])

then ``L^c`` is upsampled (bilinear) to the input's ``H x W`` and divided by its maximum, so
each map lies in ``[0, 1]`` (an all-zero map stays zero: nothing in the layer argues for ``c``).

The maps come from Captum's ``LayerGradCam`` (``captum.attr``), an optional dependency
(``pip install -e ".[cam]"``). Captum was chosen over pytorch-grad-cam because it hooks any
``nn.Module`` by its path with no per-architecture reshape code and pulls no OpenCV; it is kept
by the PyTorch team. Without it installed, ``class_activation_maps`` raises a ConfigError that
says what to install.

``cam_layers`` offers the layers that have a spatial map: the model's feature-distillation
candidates (``workbench.models.registry.feature_layers``) whose output is ``[B, C, h, w]`` with
``h * w > 1``. An MLP has none, so it gets an empty list, and callers refuse it with a note.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.errors import ConfigError
from workbench.models.registry import feature_layers

__all__ = ["cam_layers", "class_activation_maps"]

INSTALL = 'pip install -e ".[cam]"'


def cam_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Module paths of ``model`` with a spatial feature map, shallow to deep (may be empty)."""
    return [
        info.path
        for info in feature_layers(model, tuple(input_shape))
        if len(info.shape) == 3 and info.shape[1] * info.shape[2] > 1
    ]


def _layer_grad_cam():
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        raise ConfigError(
            f"class-activation maps need Captum, which is not installed: run `{INSTALL}`"
        ) from None
    return LayerGradCam


def class_activation_maps(
    model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM of ``model`` at module ``layer`` for class ``targets[i]`` of ``images[i]``.

    ``images`` is ``[N, C, H, W]`` (normalised like the training data), ``targets`` ``[N]``
    class indices. Returns ``[N, H, W]`` float32 on the CPU, each map in ``[0, 1]``. The model
    is run in eval mode; its train/eval flags and its parameters are left as they were."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ConfigError(
            f"the model has no layer {layer!r}; pick one of {cam_layers(model, tuple(images.shape[1:]))}"
        )
    if images.ndim != 4 or targets.shape != (images.shape[0],):
        raise ConfigError("class-activation maps need images [N, C, H, W] and one target per image")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        cam = _layer_grad_cam()(model, modules[layer])
        with torch.enable_grad():
            raw = cam.attribute(
                images, target=targets.tolist(), relu_attributions=True
            )  # [N, 1, h, w]
    finally:
        for m, training in modes.items():
            m.training = training
    if raw.ndim != 4:
        raise ConfigError(f"layer {layer!r} has no spatial feature map; pick a convolutional one")
    maps = nn.functional.interpolate(
        raw.detach().float().sum(dim=1, keepdim=True),
        size=images.shape[-2:],
        mode="bilinear",
        align_corners=False,
    )[:, 0]  # [N, H, W]
    maps = maps.clamp_min(0)  # bilinear keeps ReLU'd maps >= 0 up to rounding
    peak = maps.flatten(1).amax(dim=1)  # [N]
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero map stays zero
    return (maps / peak[:, None, None]).cpu()
