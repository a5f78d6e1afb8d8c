"""Training data for the engine: tensors it indexes itself, or any iterable of batches.

Two kinds, because they allow different things:

- `InMemory`: tensors sharing their first dimension (a `Split`, a tensor, a tuple, list or dict of
  tensors, a `TensorDataset`; a list `[x, y, ...]` means what the tuple `(x, y, ...)` does). The
  engine draws the sample indices of every batch itself, as a pure function of (seed, epoch),
  shards them under torchrun, and can look up cached teacher outputs by sample index.
- `Loader`: a re-iterable of batches (a `DataLoader`, a list of batches) or a function
  `epoch -> iterable`. Batches may be tensors, tuples, lists (read as tuples) or dicts. A list
  whose items are all tensors is in-memory data, not a list of batches: input-only batches in a
  list are written as 1-tuples, `[(x1,), (x2,), ...]`. The loader decides the order, so
  for a resumed run to replay it, iterating epoch e must give the same batches every time. Before
  each epoch the engine seeds torch's global generator and the loader's own `generator` (when it
  has one) from (seed, epoch) and calls `sampler.set_epoch(epoch)` (DistributedSampler), which makes
  a `DataLoader(shuffle=True)` replayable; on resume it re-creates the epoch's iterator and skips
  the batches already trained on. The teacher always runs live on loader batches.

A plain generator object can be read once: it trains one epoch without checkpoints.
"""

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import TensorDataset

from slimkit.data.arrays import Split
from slimkit.errors import SlimkitError

Batch = Any  # a tensor, a tuple/list of batches' parts, or a dict of named parts


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order (distinct per epoch, fixed per run)."""
    return seed * 1_000_003 + epoch * 7_919


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor moved to `device`, structure kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def first_tensor_of(batch: Batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    for v in values:
        try:
            return first_tensor_of(v)
        except SlimkitError:
            continue
    raise SlimkitError(f"a batch must hold at least one tensor, got {type(batch).__name__}")


def batch_len(batch: Batch) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    return int(first_tensor_of(batch).shape[0])


def head(batch: Batch, n: int) -> Batch:
    """The first n samples of a batch (tensors with the batch's first dimension are sliced)."""
    size = batch_len(batch)
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.dim() and batch.shape[0] == size else batch
    if isinstance(batch, dict):
        return {k: head(v, n) if isinstance(v, (torch.Tensor, tuple, list, dict)) else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(head(v, n) if isinstance(v, (torch.Tensor, tuple, list, dict)) else v for v in batch)
    return batch


class InMemory:
    """Tensors with a common first dimension; batches are taken by sample index."""

    def __init__(self, data: Any) -> None:
        if isinstance(data, Split):
            data = (data.x, data.y)
        elif isinstance(data, TensorDataset):
            data = tuple(data.tensors)
        elif isinstance(data, torch.Tensor):
            data = (data,)
        elif isinstance(data, list):
            data = tuple(data)  # [x, y, ...] means what (x, y, ...) does
        self.structure = data
        tensors = list(data.values()) if isinstance(data, dict) else list(data)
        if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in tensors):
            raise SlimkitError("in-memory data must be tensors sharing their first dimension (samples), e.g. "
                               "(x, y, ...) or {name: tensor}")
        sizes = {int(t.shape[0]) for t in tensors}
        if len(sizes) != 1:
            raise SlimkitError(f"in-memory tensors differ in their first dimension: {sorted(sizes)}; they must match")
        self.n = sizes.pop()
        self.single = isinstance(data, tuple) and len(data) == 1

    def __len__(self) -> int:
        return self.n

    def tensors(self) -> list[torch.Tensor]:
        return list(self.structure.values()) if isinstance(self.structure, dict) else list(self.structure)

    def take(self, idx: torch.Tensor) -> Batch:
        if isinstance(self.structure, dict):
            return {k: v[idx] for k, v in self.structure.items()}
        parts = tuple(t[idx] for t in self.structure)
        return parts[0] if self.single else parts

    def chunks(self, size: int) -> Iterator[Batch]:
        """Batches in sample order (for the teacher cache and validation)."""
        for start in range(0, self.n, size):
            yield self.take(torch.arange(start, min(start + size, self.n)))


class Loader:
    """A re-iterable of batches or a function epoch -> iterable; see the module docstring."""

    def __init__(self, data: Iterable | Callable[[int], Iterable]) -> None:
        self.data = data
        self.factory = callable(data) and not hasattr(data, "__iter__")
        self.once = isinstance(data, Iterator)  # a generator object: one pass only

    def length(self) -> int | None:
        """Batches per epoch when the loader knows it (DataLoader, list), else None."""
        try:
            return len(self.data)  # type: ignore[arg-type]
        except TypeError:
            return None

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        """The epoch's batches, with every random source the loader reads seeded from (seed, epoch)."""
        s = epoch_seed(seed, epoch)
        torch.manual_seed(s)
        if self.factory:
            return iter(self.data(epoch))
        sampler = getattr(self.data, "sampler", None)
        batch_sampler = getattr(self.data, "batch_sampler", None)
        for obj in (self.data, sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
            gen = getattr(obj, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(s)
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        return iter(self.data)

    def once_through(self) -> Iterator[Batch]:
        """One pass in the loader's own order (validation)."""
        return iter(self.data(0) if self.factory else self.data)

    def first(self) -> Batch:
        """The first batch, without losing it from a generator that can be read only once."""
        batch = next(self.once_through(), None)
        if batch is None:
            raise SlimkitError("the training data gave no batches")
        if self.once:
            self.data = itertools.chain([batch], self.data)
        return batch


def as_train_data(data: Any) -> InMemory | Loader:
    """In-memory tensors (Split, tensor, tuple, list or dict of tensors, TensorDataset) or a loader.

    A list of tensors means what the tuple of the same tensors means (in-memory samples); a list
    holding no tensor at its top level is a list of batches (a loader)."""
    if isinstance(data, list) and any(isinstance(v, torch.Tensor) for v in data):
        sizes = {int(v.shape[0]) if isinstance(v, torch.Tensor) and v.dim() else -1 for v in data}
        if len(sizes) != 1 or -1 in sizes:
            raise SlimkitError("a list of tensors is in-memory data like a tuple, [x, y, ...] with one first "
                               "dimension (samples); a list of batches holds tuples or dicts: [(x1, y1), (x2, y2), "
                               "...], or [(x1,), (x2,), ...] for inputs alone")
        return InMemory(data)
    if isinstance(data, (Split, torch.Tensor, TensorDataset, tuple)) or (
            isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values())):
        return InMemory(data)
    if isinstance(data, (str, bytes)) or not (hasattr(data, "__iter__") or callable(data)):
        raise SlimkitError(f"training data must be tensors, a Split, a DataLoader, an iterable of batches or a "
                           f"function epoch -> iterable, got {type(data).__name__}")
    return Loader(data)


def batches_of(data: Any, batch_size: int) -> Iterator[Batch]:
    """Validation batches: in-memory data in order, a loader in its own order."""
    source = data if isinstance(data, (InMemory, Loader)) else as_train_data(data)
    return source.chunks(batch_size) if isinstance(source, InMemory) else source.once_through()


def is_empty(data: Any) -> bool:
    source = data if isinstance(data, (InMemory, Loader)) else as_train_data(data)
    return isinstance(source, InMemory) and len(source) == 0 or (isinstance(source, Loader) and source.length() == 0)


__all__ = ["Batch", "InMemory", "Loader", "as_train_data", "batch_len", "batches_of", "epoch_seed", "head",
           "is_empty", "to_device"]
