"""MobileNetV2-style network for 1x28x28 inputs: inverted residuals with depthwise 3x3 convs.

Each block expands with a 1x1 conv (x t), filters with a depthwise 3x3 conv, and projects back with
a linear 1x1 conv; blocks with stride 1 and equal widths add their input (residual). Stage strides
bring 28 -> 14 -> 7. The default setting is a scaled-down MobileNetV2 (fewer, narrower stages) so
that it trains on two CPU cores; `width_mult` scales every width.
"""

import torch
from torch import nn

from slimkit.errors import SlimkitError

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper's table.
DEFAULT_SETTING: list[list[int]] = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 2, 1]]


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 -> 1x1 linear projection, with a residual add when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(c_in, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, c_out, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    @property
    def removable(self) -> bool:
        return self.use_res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Small(nn.Module):
    """MobileNetV2-style classifier; `config()` returns the constructor arguments."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width_mult: float = 1.0,
                 setting: list[list[int]] | None = None, last_channel: int = 256) -> None:
        super().__init__()
        setting = [list(map(int, row)) for row in (setting or DEFAULT_SETTING)]
        if width_mult <= 0 or any(len(row) != 4 for row in setting):
            raise SlimkitError("MobileNetV2Small needs width_mult > 0 and setting rows of [t, c, n, s]")
        self._config = {"num_classes": int(num_classes), "in_channels": int(in_channels), "input_size": int(input_size),
                        "width_mult": float(width_mult), "setting": setting, "last_channel": int(last_channel)}
        c = max(8, int(round(16 * width_mult)))
        self.stem = _conv_bn(in_channels, c, 3, 1)
        blocks = []
        for t, ch, n, s in setting:
            c_out = max(8, int(round(ch * width_mult)))
            for i in range(n):
                blocks.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        self.features = nn.Sequential(*blocks)
        self.head_conv = _conv_bn(c, last_channel, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channel, num_classes)

    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_conv(self.features(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
