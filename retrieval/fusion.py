"""Fold inference-mode BatchNorm layers into the convolutions that feed them.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` is one convolution with rescaled weights
and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). Folding removes a full pass over every feature map: with
channels_last it is what makes the CPU forward of EfficientNet-Lite0 ~2.5x faster (bench/README.md). Descriptors
change only by float rounding (~1e-6 after pooling).

Which conv feeds which BatchNorm is found by running the model once on a sample with forward hooks (a BatchNorm
whose input *is* a conv's output tensor), so it works on any module tree, including forwards that index, slice or
pad in Python where ``torch.fx`` cannot trace. The folded model is checked against the original on that sample
and the folding is undone if they differ (a conv output used by something besides its BatchNorm would be changed).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _pairs(model: nn.Module, sample: torch.Tensor) -> tuple[list[tuple[nn.Module, nn.Module]], torch.Tensor]:
    """(conv, batchnorm) pairs where the BatchNorm's input is the conv's output on ``sample``; and the output."""
    made_by: dict[int, nn.Module] = {}
    outputs: list[torch.Tensor] = []  # kept alive so that no tensor id is reused during the pass
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def conv_hook(m, _inputs, out):
        made_by[id(out)] = m
        outputs.append(out)

    def norm_hook(m, inputs, _out):
        conv = made_by.get(id(inputs[0]))
        if conv is not None and not m.training and m.track_running_stats:
            pairs.append((conv, m))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, _CONVS)]
    hooks += [m.register_forward_hook(norm_hook) for m in model.modules() if isinstance(m, _NORMS)]
    try:
        with torch.inference_mode():
            out = model(sample)
    finally:
        for h in hooks:
            h.remove()
    # A conv feeding two BatchNorms, or a BatchNorm called twice, cannot be folded: keep pairs used exactly once.
    convs = [c for c, _ in pairs]
    norms = [b for _, b in pairs]
    return [(c, b) for c, b in pairs if convs.count(c) == 1 and norms.count(b) == 1], out


def fold_batchnorm(model: nn.Module, sample: torch.Tensor, rtol: float = 1e-3) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place; returns how many.

    model: in eval mode. sample: one input batch for the model (e.g. ``(1, 3, 224, 224)`` float32), on its device.
    The folded model must reproduce the original output on ``sample`` within ``rtol`` x its largest magnitude,
    otherwise every change is undone and 0 is returned.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (training BatchNorms use batch statistics)")
    pairs, before = _pairs(model, sample)
    if not pairs:
        return 0
    owner = {m: name for name, m in model.named_modules()}
    undo: list[tuple[nn.Module, str, nn.Module]] = []

    def replace(old: nn.Module, new: nn.Module) -> None:
        parent_name, _, attr = owner[old].rpartition(".")
        parent = model.get_submodule(parent_name)
        undo.append((parent, attr, old))
        setattr(parent, attr, new)

    for conv, bn in pairs:
        replace(conv, fuse_conv_bn_eval(conv, bn))
        replace(bn, nn.Identity())
    with torch.inference_mode():
        after = model(sample)
    scale = before.abs().max().clamp_min(1e-12)
    if before.shape != after.shape or ((after - before).abs().max() / scale).item() > rtol:
        for parent, attr, old in reversed(undo):
            setattr(parent, attr, old)
        return 0
    return len(pairs)
