"""BatchNorm folding: the folded network computes what the original did, and what cannot be folded is left alone."""

import pytest
import torch
from torch import nn

from retr.retrieval.fusion import fold_batchnorm


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


class Residual(nn.Module):
    """conv -> bn, and the conv's output also added back: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.fixture
def x():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_folds_sequential_pairs_and_keeps_the_output(x):
    torch.manual_seed(0)
    net = _randomise_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4),
        nn.BatchNorm2d(4),  # follows a BatchNorm, not a conv: stays
    ))
    with torch.inference_mode():
        want = net(x)
    assert fold_batchnorm(net, x[:1]) == 2
    assert [type(m).__name__ for m in net] == ["Conv2d", "Identity", "ReLU", "Conv2d", "Identity", "BatchNorm2d"]
    assert net[0].bias is not None  # the folded BatchNorm's shift became a bias
    with torch.inference_mode():
        torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


def test_undoes_a_fold_that_changes_the_output(x):
    torch.manual_seed(0)
    net = _randomise_bn(Residual())
    conv, bn = net.conv, net.bn
    with torch.inference_mode():
        want = net(x)
    assert fold_batchnorm(net, x[:1]) == 0
    assert net.conv is conv and net.bn is bn
    with torch.inference_mode():
        torch.testing.assert_close(net(x), want, atol=0, rtol=0)


def test_refuses_training_mode(x):
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train(), x)


def test_nothing_to_fold(x):
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()).eval()
    assert fold_batchnorm(net, x) == 0

