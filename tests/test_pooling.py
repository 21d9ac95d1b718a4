"""Pooling: hand-computed values on tiny feature maps."""

import math

import pytest
import torch

from retr.retrieval.errors import ConfigError
from retr.retrieval.pooling import POOLINGS, Pooling, gem, l2n, mac, multiscale, rmac, rmac_regions, spoc


@pytest.fixture
def x() -> torch.Tensor:
    """(1, 2, 2, 2): channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 8], [0, 0]]."""
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 8.0], [0.0, 0.0]]]])


def test_mac_spoc(x):
    assert mac(x).tolist() == [[4.0, 8.0]]
    assert spoc(x).tolist() == [[2.5, 2.0]]


def test_gem(x):
    # p = 3: (mean of cubes)^(1/3) = (100 / 4)^(1/3) and (512 / 4)^(1/3)
    torch.testing.assert_close(gem(x, p=3.0), torch.tensor([[25 ** (1 / 3), 128 ** (1 / 3)]]))
    # p = 1 is SPoC (zeros are clamped to eps = 1e-6, which moves channel 1 by 3e-6 / 4)
    torch.testing.assert_close(gem(x, p=1.0), spoc(x), atol=1e-6, rtol=0)
    # large p tends to MAC: (max^p / 4)^(1/p) = max * 4^(-1/p); float64 because 8^200 overflows float32
    expected = torch.tensor([[4.0, 8.0]], dtype=torch.float64) * 4 ** (-1 / 200)
    torch.testing.assert_close(gem(x.double(), p=200.0), expected)


def test_l2n():
    v = l2n(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(v, torch.tensor([[0.6, 0.8], [0.0, 0.0]]), atol=1e-6, rtol=0)


def test_rmac_regions_square():
    # 7 x 7: level 1 one 7-square; level 2 side 14 // 3 = 4 at 0 and 3; level 3 side 14 // 4 = 3 at 0, 2, 4
    assert rmac_regions(7, 7) == [(0, 0, 7)] + [(t, left, 4) for t in (0, 3) for left in (0, 3)] + [
        (t, left, 3) for t in (0, 2, 4) for left in (0, 2, 4)
    ]


def test_rmac_regions_wide():
    # 3 x 5: the overlap |1 - (5 - 3) / (3 (k - 1)) - 0.4| is smallest (1/15) for k = 2: one extra region
    # along the width. Level 1: side 3, lefts 0, 2; level 2: side 2, tops 0, 1 x lefts i * 3 // 2 = 0, 1, 3;
    # level 3: side 1, tops 0, 1, 2 x lefts i * 4 // 3 = 0, 1, 2, 4.
    expected = [(0, 0, 3), (0, 2, 3)]
    expected += [(t, left, 2) for t in (0, 1) for left in (0, 1, 3)]
    expected += [(t, left, 1) for t in (0, 1, 2) for left in (0, 1, 2, 4)]
    assert rmac_regions(3, 5) == expected
    # tall maps are the transpose
    transposed = sorted([(left, t, s) for t, left, s in expected], key=lambda r: (-r[2], r[0], r[1]))
    assert rmac_regions(5, 3) == transposed


def test_rmac_constant_map():
    # every one of the 1 + 14 regions of a 7 x 7 map has MAC (3, 4), normalised (0.6, 0.8): sum = 15 * that
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 7, 7)
    torch.testing.assert_close(rmac(x), torch.tensor([[9.0, 12.0]]))


def test_rmac_spike():
    # 3 x 5 map, channel 0 all ones, channel 1 a single 1 at (0, 0): the whole map and the 3 regions starting
    # at (0, 0) have MAC (1, 1) -> (1, 1) / sqrt(2); the other 17 of the 20 regions have MAC (1, 0).
    x = torch.zeros(1, 2, 3, 5)
    x[0, 0] = 1.0
    x[0, 1, 0, 0] = 1.0
    expected = torch.tensor([[17 + 4 / math.sqrt(2), 4 / math.sqrt(2)]])
    torch.testing.assert_close(rmac(x), expected)


@pytest.mark.parametrize("method", sorted(POOLINGS))
def test_pooling_module_normalises(x, method):
    v = Pooling(method)(x)
    functional = {"mac": mac, "spoc": spoc, "gem": gem, "rmac": rmac}[method](x)
    torch.testing.assert_close(v, functional / functional.norm(dim=1, keepdim=True))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(1))


def test_pooling_module_gem_p(x):
    torch.testing.assert_close(Pooling("gem", p=1.0)(x), l2n(gem(x, p=1.0)))


def test_pooling_unknown_method():
    with pytest.raises(ConfigError, match="choose one of gem, mac, rmac, spoc"):
        Pooling("max")


def test_multiscale_sizes_and_sum():
    seen = []

    def fn(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape))
        return torch.tensor([[images.shape[-2], images.shape[-1]]], dtype=torch.float32)

    v = multiscale(fn, torch.rand(1, 3, 8, 12), scales=(1.0, 0.5, 2.0))
    assert seen == [(1, 3, 8, 12), (1, 3, 4, 6), (1, 3, 16, 24)]
    # sum (28, 42), normalised by sqrt(28^2 + 42^2) = sqrt(2548)
    torch.testing.assert_close(v, torch.tensor([[28 / 2548**0.5, 42 / 2548**0.5]]))


def test_multiscale_default_scales_round_sizes():
    seen = []
    multiscale(lambda images: seen.append(images.shape[-2:]) or spoc(images), torch.rand(2, 3, 224, 100))
    # 224 * 0.707 = 158.37, 100 * 0.707 = 70.7, 224 * 1.414 = 316.74, 100 * 1.414 = 141.4
    assert seen == [(224, 100), (158, 71), (317, 141)]


def test_multiscale_of_constant_image_is_scale_invariant():
    # resizing a constant image keeps it constant, so every scale gives the same SPoC
    images = torch.tensor([1.0, 2.0, 2.0]).view(1, 3, 1, 1).expand(1, 3, 20, 30).contiguous()
    torch.testing.assert_close(multiscale(spoc, images), torch.tensor([[1 / 3, 2 / 3, 2 / 3]]))
