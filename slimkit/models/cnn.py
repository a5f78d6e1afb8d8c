"""The seed CNN pair: a teacher ("source") and a half-width student ("target").

The source document's models apply `avg_pool2d(x, 7)` and then expect a 7x7 map, which is wrong for
a 28x28 input (it gives 4x4), and they run the 64->128 conv at full resolution (~58M MACs/image,
~280 s per Fashion-MNIST epoch on 2 cores). Here a 2x2 max-pool follows conv1 and a 2x2 average
pool follows conv2, so any input size H x W (divisible by 4) reaches the classifier as
(H/4) x (W/4): 7x7 for 28x28, 8x8 for 32x32. Widths are the document's: (64, 128, 1024) for the
source and (32, 64, 512) for the target.
"""

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import SlimkitError


class SeedCNN(nn.Module):
    """conv -> ReLU -> maxpool2 -> conv -> ReLU -> avgpool2 -> fc -> ReLU -> fc.

    `config()` returns the constructor arguments, which checkpoints store as JSON.
    """

    def __init__(
        self,
        in_channels: int = 1,
        input_size: int = 28,
        widths: tuple[int, int, int] = (64, 128, 1024),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if input_size % 4:
            raise SlimkitError(f"input_size must be divisible by 4 (two 2x2 pools), got {input_size}")
        c1, c2, hidden = (int(w) for w in widths)
        self._config = {
            "in_channels": int(in_channels),
            "input_size": int(input_size),
            "widths": [c1, c2, hidden],
            "num_classes": int(num_classes),
        }
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        side = input_size // 4
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self._config["in_channels"], self._config["input_size"], self._config["input_size"])
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise SlimkitError(
                f"{type(self).__name__} expects input of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(x.shape)}; build it with matching in_channels/input_size"
            )
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class SourceModel(SeedCNN):
    """The teacher: widths (64, 128, 1024)."""

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10,
                 widths: tuple[int, int, int] = (64, 128, 1024)) -> None:
        super().__init__(in_channels, input_size, widths, num_classes)


class TargetModel(SeedCNN):
    """The student: the source at half width, (32, 64, 512)."""

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10,
                 widths: tuple[int, int, int] = (32, 64, 512)) -> None:
        super().__init__(in_channels, input_size, widths, num_classes)
