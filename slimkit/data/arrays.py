"""Tensor splits, seeded train/val splitting and a shuffled batch iterator."""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from slimkit.errors import SlimkitError


@dataclass(frozen=True)
class Split:
    """Inputs `x` (N, C, H, W) float32 and integer labels `y` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise SlimkitError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}; they must match")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, n: int) -> "Split":
        """The first n samples (all if n <= 0 or n >= len)."""
        return self if n <= 0 or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    """A named dataset with train/val/test splits; val is carved from train, test is untouched."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.x.shape[-1])


def split_train_val(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Seeded random split of `train` into (train, val); the same seed gives the same split."""
    if not 0.0 <= val_fraction < 1.0:
        raise SlimkitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(train)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])


def batches(
    split: Split,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (x, y, index) batches; `index` lets callers look up cached per-sample teacher outputs.

    With shuffle, the order is a pure function of `seed`, so a resumed run can replay it.
    """
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        if shuffle:
            yield split.x[idx], split.y[idx], idx
        else:
            yield split.x[start:start + batch_size], split.y[start:start + batch_size], idx
