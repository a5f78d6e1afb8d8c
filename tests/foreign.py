"""A model slimkit did not write: no config(), a constructor that takes a tuple and a flag, a block
that a cut may drop, and a mixer whose forward reads a plain attribute (its group count) rather
than a tensor shape. Used by tests/test_layout.py, and by the fresh-process timer's child as the
builder "tests.foreign:build"."""

import torch
from torch import nn


class GroupMixer(nn.Module):
    """Mixes features within `groups` equal groups: the group count is read at run time."""

    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.proj = nn.Linear(width // groups, width // groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.proj(x.reshape(b, self.groups, -1)).reshape(b, -1)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self, channels: tuple[int, int] = (8, 16), hidden: int = 32, classes: int = 5,
                 extra_block: bool = True) -> None:
        super().__init__()
        c0, c1 = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1), nn.BatchNorm2d(c0), nn.ReLU())
        self.extra = Residual(c0) if extra_block else nn.Identity()
        self.down = nn.Sequential(nn.Conv2d(c0, c1, 3, stride=2, padding=1), nn.BatchNorm2d(c1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c1, hidden)
        self.mix = GroupMixer(hidden, 4)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.down(self.extra(self.stem(x)))).flatten(1)
        return self.fc2(torch.relu(self.mix(self.fc1(h))))


def build(width: int = 16, classes: int = 5) -> Net:
    """The user's factory: the dense model at a given width."""
    return Net(channels=(width // 2, width), hidden=2 * width, classes=classes)


def _keep(layer: nn.Module, name: str, idx: torch.Tensor, dim: int) -> None:
    t = getattr(layer, name)
    setattr(layer, name, nn.Parameter(t.detach().index_select(dim, idx).clone()))


@torch.no_grad()
def cut_by_hand(net: Net) -> Net:
    """Narrow `net` in place as a structured pruner would: keep every other stem channel and three
    quarters of `down`'s, halve the hidden width and the mixer's groups, drop the extra block; fix
    the attributes the layers carry."""
    c0, c1, hidden = net.stem[0].out_channels, net.down[0].out_channels, net.fc1.out_features
    k0, k1 = torch.arange(0, c0, 2), torch.arange(c1 * 3 // 4)
    conv, bn = net.stem[0], net.stem[1]
    for name in ("weight", "bias"):
        _keep(conv, name, k0, 0)
        _keep(bn, name, k0, 0)
    bn.running_mean, bn.running_var = bn.running_mean[k0].clone(), bn.running_var[k0].clone()
    conv.out_channels = bn.num_features = len(k0)
    net.extra = nn.Identity()
    conv, bn = net.down[0], net.down[1]
    _keep(conv, "weight", k0, 1)
    conv.in_channels = len(k0)
    for name in ("weight", "bias"):
        _keep(conv, name, k1, 0)
        _keep(bn, name, k1, 0)
    bn.running_mean, bn.running_var = bn.running_mean[k1].clone(), bn.running_var[k1].clone()
    conv.out_channels = bn.num_features = len(k1)
    _keep(net.fc1, "weight", k1, 1)
    net.fc1.in_features = len(k1)
    kh = torch.arange(hidden // 2)  # the first two of four groups
    _keep(net.fc1, "weight", kh, 0)
    _keep(net.fc1, "bias", kh, 0)
    net.fc1.out_features = len(kh)
    net.mix.groups = 2
    _keep(net.fc2, "weight", kh, 1)
    net.fc2.in_features = len(kh)
    return net
