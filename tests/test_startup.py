"""Defect 10, startup: the light floors (backbone registry, EncoderConfig, index configuration and file headers, codec,
store) import without torch or Faiss, so ``retr --help`` and ``retr info`` need not load them; the preprocessing the
registry writes out still equals torchvision's weights' transforms."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "faiss", "efficientnet_lite_pytorch")

LIGHT_IMPORTS = """
import json, sys
import retr.retrieval.backbone_specs, retr.retrieval.encoder_config, retr.retrieval.names
import retr.indexes, retr.indexes.io, retr.indexes.config
import retr.retrieval.codec, retr.retrieval.store
from retr.retrieval.backbone_specs import get_spec, list_backbones
from retr.retrieval.encoder_config import EncoderConfig
c = EncoderConfig()
print(json.dumps({"dim": c.dim, "describe": c.describe(), "backbones": list_backbones(),
                  "fc7": EncoderConfig.create("vgg16", weights="none", layer="fc7").dim,
                  "header": retr.indexes.read_header(sys.argv[1]), "kinds": list(retr.indexes.KINDS),
                  "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def test_light_modules_import_without_torch_or_faiss(tmp_path):
    out = subprocess.run([sys.executable, "-c", LIGHT_IMPORTS, str(tmp_path / "absent.idx")],
                         capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    assert got["heavy"] == []
    assert got["dim"] == 1280 and got["describe"] == "efficientnet_lite0/conv+gem (imagenet weights, d=1280)"
    assert got["fc7"] == 4096 and got["header"] is None
    assert "efficientnet_lite0" in got["backbones"] and "ivf-fastscan" in got["kinds"]


def test_reexports_are_the_same_objects():
    from retr import indexes
    from retr.indexes import build, fastscan
    from retr.retrieval import backbone_specs, backbones, encoder, encoder_config, names, pooling

    assert backbones.get_spec is backbone_specs.get_spec and backbones.BackboneSpec is backbone_specs.BackboneSpec
    assert backbones.DEFAULT_BACKBONE == backbone_specs.DEFAULT_BACKBONE
    assert encoder.EncoderConfig is encoder_config.EncoderConfig
    assert pooling.POOLINGS is names.POOLINGS and pooling.LEARNT_POOLINGS is names.LEARNT_POOLINGS
    assert indexes.build_index is build.build_index and indexes.FastScanIndex is fastscan.FastScanIndex
    assert indexes.fastscan is fastscan
    with pytest.raises(AttributeError):
        indexes.no_such_name


def test_written_out_preprocessing_matches_torchvision_weights():
    # backbone_specs.py spells out each torchvision weights' transform preset so that reading it needs no torchvision
    import torchvision

    from retr.retrieval.backbone_specs import get_spec, list_backbones

    for name in list_backbones():
        if name.startswith("efficientnet_lite"):
            continue  # Google's own preprocessing, not a torchvision preset
        spec = get_spec(name)
        t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        assert (spec.input_size, spec.resize_size, spec.mean, spec.std, spec.interpolation) == (
            t.crop_size[0], t.resize_size[0], tuple(t.mean), tuple(t.std), t.interpolation.value), name
