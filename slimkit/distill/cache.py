"""Teacher-output cache: run the teacher once over the training set, then train from its logits.

Without augmentation a teacher's output for a training sample never changes, so a KD epoch need
not pay for the teacher's forward pass. Logits are stored as .npy files (numpy's format for plain
numeric arrays, opened with allow_pickle=False and memory-mapped) in a folder named by a hash of the
teacher's weights, the data and the augmentation settings: change any of them and a new cache is
built instead of a stale one being read. For large vocabularies only the top-k values and their
indices are kept. Caches are written to a temporary folder and renamed into place.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import SlimkitError

CACHE_FORMAT = 1


def _hash_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def cache_key(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor | None, settings: dict[str, Any]) -> str:
    """sha256 over the teacher's class and weights, the inputs (and labels) and the settings."""
    h = hashlib.sha256()
    h.update(type(teacher).__name__.encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, tensor)
    _hash_tensor(h, x)
    if y is not None:
        _hash_tensor(h, y)
    h.update(json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


@dataclass
class TeacherOutputs:
    """Cached teacher logits for N samples: dense (N, ..., V), or top-k `values` and `indices`."""

    values: np.ndarray | torch.Tensor
    indices: np.ndarray | torch.Tensor | None = None
    folder: Path | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def topk(self) -> bool:
        return self.indices is not None

    def lookup(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(values, indices) rows for sample indices `idx`; indices is None for dense logits."""
        if isinstance(self.values, torch.Tensor):
            vals = self.values[idx]
            ind = self.indices[idx] if isinstance(self.indices, torch.Tensor) else None
        else:
            rows = idx.cpu().numpy()
            vals = torch.from_numpy(np.ascontiguousarray(self.values[rows]))
            ind = torch.from_numpy(np.ascontiguousarray(self.indices[rows])) if self.indices is not None else None
        vals = vals.to(device, torch.float32, non_blocking=True)
        return vals, (ind.to(device, torch.long, non_blocking=True) if ind is not None else None)


@torch.no_grad()
def _run_teacher(teacher: nn.Module, x: torch.Tensor, batch_size: int, topk: int | None, device: torch.device,
                 write) -> None:
    was_training = teacher.training
    teacher.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            out = teacher(x[start:start + batch_size].to(device))
            logits = out if isinstance(out, torch.Tensor) else out["logits"]
            logits = logits.float()
            if topk:
                v, i = logits.topk(min(topk, logits.shape[-1]), dim=-1)
                write(start, v.cpu().numpy(), i.cpu().numpy().astype(np.int32))
            else:
                write(start, logits.cpu().numpy(), None)
    finally:
        teacher.train(was_training)


def compute_teacher_outputs(teacher: nn.Module, x: torch.Tensor, batch_size: int = 512, topk: int | None = None,
                            device: torch.device | str = "cpu") -> TeacherOutputs:
    """The teacher's outputs over `x`, kept in memory (the cache for runs without a cache folder)."""
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    _run_teacher(teacher, x, batch_size, topk, torch.device(device), lambda _s, v, i: parts.append((v, i)))
    if not parts:
        raise SlimkitError("cannot cache teacher outputs for an empty training split")
    values = torch.from_numpy(np.concatenate([v for v, _ in parts]))
    indices = torch.from_numpy(np.concatenate([i for _, i in parts])) if topk else None
    return TeacherOutputs(values, indices)


def build_or_load(teacher: nn.Module, x: torch.Tensor, folder: str | Path, settings: dict[str, Any],
                  y: torch.Tensor | None = None, batch_size: int = 512, topk: int | None = None,
                  device: torch.device | str = "cpu") -> TeacherOutputs:
    """Memory-mapped teacher outputs under `folder/<key>`, computing them first if absent.

    `settings` must describe everything else that changes the outputs (augmentation, dataset
    transforms); it is part of the key.
    """
    key = cache_key(teacher, x, y, {**settings, "topk": topk})
    target = Path(folder) / key
    if not (target / "meta.json").is_file():
        _write_cache(teacher, x, target, batch_size, topk, torch.device(device), key)
    return open_cache(target)


def _write_cache(teacher: nn.Module, x: torch.Tensor, target: Path, batch_size: int, topk: int | None,
                 device: torch.device, key: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        with torch.no_grad():
            probe = teacher.eval()(x[:1].to(device))
        probe = probe if isinstance(probe, torch.Tensor) else probe["logits"]
        width = min(topk, probe.shape[-1]) if topk else probe.shape[-1]
        shape = (x.shape[0], *probe.shape[1:-1], width)
        vals = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float32, shape=shape)
        inds = np.lib.format.open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int32, shape=shape) if topk else None

        def write(start: int, v: np.ndarray, i: np.ndarray | None) -> None:
            vals[start:start + v.shape[0]] = v
            if inds is not None:
                inds[start:start + i.shape[0]] = i

        _run_teacher(teacher, x, batch_size, topk, device, write)
        vals.flush()
        if inds is not None:
            inds.flush()
        del vals, inds
        meta = {"format": CACHE_FORMAT, "key": key, "samples": int(x.shape[0]), "shape": list(shape), "topk": topk}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():  # another process may have won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_cache(folder: str | Path) -> TeacherOutputs:
    """Open a cache folder read-only and memory-mapped (never unpickles)."""
    p = Path(folder)
    try:
        meta = json.loads((p / "meta.json").read_text())
        values = np.load(p / "values.npy", mmap_mode="r", allow_pickle=False)
        indices = np.load(p / "indices.npy", mmap_mode="r", allow_pickle=False) if meta.get("topk") else None
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"teacher cache {p} is unreadable ({exc}); delete the folder to rebuild it") from None
    if meta.get("format") != CACHE_FORMAT:
        raise SlimkitError(f"teacher cache {p} has format {meta.get('format')}; delete it to rebuild")
    return TeacherOutputs(values, indices, p)
