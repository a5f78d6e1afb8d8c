"""CIFAR-style ResNet (ResNet-20/56 shapes) sized for 1x28x28 Fashion-MNIST.

Three stages of BasicBlocks (widths w, 2w, 4w; strides 1, 2, 2 so 28 -> 14 -> 7), BatchNorm after
every conv, residual adds, global average pool and a linear classifier. Depth is 6n + 2 as in the
original paper. When a block changes width or stride its shortcut is a 1x1 conv + BN (option B),
so every residual add is a real channel coupling that structured pruning must respect.
"""

import torch
from torch import nn

from slimkit.errors import SlimkitError


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    @property
    def removable(self) -> bool:
        """A block with an identity shortcut can be dropped whole: the stream passes unchanged."""
        return isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for small images; `config()` returns the constructor arguments."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 1,
                 input_size: int = 28) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise SlimkitError(f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        if width < 1:
            raise SlimkitError(f"ResNet width must be >= 1, got {width}")
        n = (depth - 2) // 6
        self._config = {"depth": int(depth), "width": int(width), "num_classes": int(num_classes),
                        "in_channels": int(in_channels), "input_size": int(input_size)}
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages = []
        c_in = width
        for i, stride in enumerate((1, 2, 2)):
            c_out = width * 2**i
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(**kwargs) -> ResNetCifar:
    return ResNetCifar(depth=20, **kwargs)


def resnet56(**kwargs) -> ResNetCifar:
    return ResNetCifar(depth=56, **kwargs)
