"""Teacher-output cache: run the teacher once over the training set, then train from its outputs.

Without augmentation a teacher's output for an in-memory training sample never changes, so a KD
epoch need not pay for the teacher's forward pass. What is stored is the task's view of the
teacher's output (logits (N, C), per-position logits (N, L, V), a pooled embedding), and optionally
the teacher's features at named modules (e.g. a language model's final hidden states). For large
vocabularies only the top-k values and their indices per position are kept. Arrays are .npy files
(numpy's format for plain numeric arrays, opened with allow_pickle=False and memory-mapped) in a
folder named by a hash of the teacher's weights, every input tensor, the task and the settings:
change any of them and a new cache is built instead of a stale one being read. Caches are written to
a temporary folder and renamed into place.
"""

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.distill import ddp
from slimkit.distill.config import CacheConfig
from slimkit.distill.features import FeatureTap
from slimkit.distill.tasks import Task, classification
from slimkit.distill.train_data import InMemory, as_train_data, to_device
from slimkit.errors import SlimkitError

CACHE_FORMAT = 2


def _hash_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def cache_key(teacher: nn.Module, data: InMemory, settings: dict[str, Any]) -> str:
    """sha256 over the teacher's class and weights, every input tensor (labels too) and the settings."""
    h = hashlib.sha256()
    h.update(type(teacher).__name__.encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, tensor)
    for tensor in data.tensors():
        _hash_tensor(h, tensor)
    h.update(json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


@dataclass
class TeacherOutputs:
    """Cached teacher outputs for N samples: dense (N, ..., V) or top-k `values` and `indices`, and
    `features` by module path."""

    values: np.ndarray | torch.Tensor
    indices: np.ndarray | torch.Tensor | None = None
    folder: Path | None = None
    features: dict[str, np.ndarray | torch.Tensor] = field(default_factory=dict)
    reused: bool = False  # read from a cache folder built by an earlier run

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def topk(self) -> bool:
        return self.indices is not None

    def lookup(self, idx: torch.Tensor, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """(values, indices, features) rows for sample indices `idx`; indices is None for dense outputs."""
        def rows(a: np.ndarray | torch.Tensor) -> torch.Tensor:
            if isinstance(a, torch.Tensor):
                return a[idx]
            return torch.from_numpy(np.ascontiguousarray(a[idx.cpu().numpy()]))

        vals = rows(self.values).to(device, torch.float32, non_blocking=True)
        ind = rows(self.indices).to(device, torch.long, non_blocking=True) if self.indices is not None else None
        feats = {k: rows(v).to(device, torch.float32, non_blocking=True) for k, v in self.features.items()}
        return vals, ind, feats


@torch.no_grad()
def _run_teacher(teacher: nn.Module, data: InMemory, task: Task, batch_size: int, topk: int | None,
                 device: torch.device, features: list[str], write, progress: bool = False) -> None:
    """Call `write(start, values, indices, features)` for consecutive batches of the teacher's outputs."""
    was_training = teacher.training
    teacher.eval()
    tap = FeatureTap(teacher, features, "teacher") if features else None
    try:
        start = 0
        for batch in tqdm(data.chunks(batch_size), total=-(-len(data) // batch_size), desc="teacher cache",
                          disable=not progress, leave=False, dynamic_ncols=True):
            inputs, _ = task.split(to_device(batch, device))
            view = task.view(task.call(teacher, inputs), inputs).float()
            feats = {p: tap.features[p].float().cpu().numpy() for p in features} if tap else {}
            if tap:
                tap.clear()
            if topk:
                v, i = view.topk(min(topk, view.shape[-1]), dim=-1)
                write(start, v.cpu().numpy(), i.cpu().numpy().astype(np.int32), feats)
            else:
                write(start, view.cpu().numpy(), None, feats)
            start += view.shape[0]
    finally:
        if tap:
            tap.remove()
        teacher.train(was_training)


def compute_teacher_outputs(teacher: nn.Module, data: Any, batch_size: int = 512, topk: int | None = None,
                            device: torch.device | str = "cpu", task: Task | None = None,
                            features: tuple[str, ...] = (), progress: bool = False) -> TeacherOutputs:
    """The teacher's outputs over in-memory `data`, kept in memory (the cache for runs without a folder)."""
    data = data if isinstance(data, InMemory) else as_train_data(data)
    parts: list[tuple] = []
    _run_teacher(teacher, data, task or classification(), batch_size, topk, torch.device(device), list(features),
                 lambda _s, v, i, f: parts.append((v, i, f)), progress)
    if not parts:
        raise SlimkitError("cannot cache teacher outputs for an empty training split")
    values = torch.from_numpy(np.concatenate([v for v, _, _ in parts]))
    indices = torch.from_numpy(np.concatenate([i for _, i, _ in parts])) if topk else None
    feats = {p: torch.from_numpy(np.concatenate([f[p] for _, _, f in parts])) for p in features}
    return TeacherOutputs(values, indices, features=feats)


def build_or_load(teacher: nn.Module, data: Any, folder: str | Path, settings: dict[str, Any],
                  batch_size: int = 512, topk: int | None = None, device: torch.device | str = "cpu",
                  task: Task | None = None, features: tuple[str, ...] = (), progress: bool = False) -> TeacherOutputs:
    """Memory-mapped teacher outputs under `folder/<key>`, computing them first if absent.

    `data` is in-memory (a tensor, a Split, a tuple or dict of tensors). `settings` must describe
    everything else that changes the outputs (augmentation, dataset transforms); it is part of the
    key, as are the task, `topk` and the feature paths.
    """
    data = data if isinstance(data, InMemory) else as_train_data(data)
    task = task or classification()
    key = cache_key(teacher, data, {**settings, "topk": topk, "task": task.name, **task.settings,
                                    "features": list(features)})
    target = Path(folder) / key
    reused = (target / "meta.json").is_file()
    if not reused:
        _write_cache(teacher, data, task, target, batch_size, topk, torch.device(device), list(features), key, progress)
    out = open_cache(target)
    out.reused = reused
    return out


def _write_cache(teacher: nn.Module, data: InMemory, task: Task, target: Path, batch_size: int, topk: int | None,
                 device: torch.device, features: list[str], key: str, progress: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    arrays: dict[str, np.memmap] = {}

    def open_like(name: str, rows: np.ndarray, dtype) -> np.memmap:
        if name not in arrays:
            arrays[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype,
                                                     shape=(len(data), *rows.shape[1:]))
        elif arrays[name].shape[1:] != rows.shape[1:]:
            raise SlimkitError(f"teacher output {name} changes shape between batches ({arrays[name].shape[1:]} vs "
                               f"{rows.shape[1:]}); it cannot be cached: use CacheConfig(features=False) or mode='off'")
        return arrays[name]

    def write(start: int, v: np.ndarray, i: np.ndarray | None, feats: dict[str, np.ndarray]) -> None:
        open_like("values", v, np.float32)[start:start + v.shape[0]] = v
        if i is not None:
            open_like("indices", i, np.int32)[start:start + i.shape[0]] = i
        for n, path in enumerate(features):
            open_like(f"feature{n}", feats[path], np.float32)[start:start + v.shape[0]] = feats[path]

    try:
        _run_teacher(teacher, data, task, batch_size, topk, device, features, write, progress)
        if "values" not in arrays:
            raise SlimkitError("cannot cache teacher outputs for an empty training split")
        shape = list(arrays["values"].shape)
        for a in arrays.values():
            a.flush()
        arrays.clear()
        meta = {"format": CACHE_FORMAT, "key": key, "samples": len(data), "shape": shape, "topk": topk,
                "features": features}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():  # another process may have won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        arrays.clear()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_cache(folder: str | Path) -> TeacherOutputs:
    """Open a cache folder read-only and memory-mapped (never unpickles)."""
    p = Path(folder)
    try:
        meta = json.loads((p / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise SlimkitError(f"teacher cache {p} has format {meta.get('format')}; delete it to rebuild")
        values = np.load(p / "values.npy", mmap_mode="r", allow_pickle=False)
        indices = np.load(p / "indices.npy", mmap_mode="r", allow_pickle=False) if meta.get("topk") else None
        feats = {path: np.load(p / f"feature{n}.npy", mmap_mode="r", allow_pickle=False)
                 for n, path in enumerate(meta.get("features", []))}
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"teacher cache {p} is unreadable ({exc}); delete the folder to rebuild it") from None
    return TeacherOutputs(values, indices, p, feats)


def teacher_source(teacher: Any, data: Any, cfg: CacheConfig, task: Task, device: torch.device, dist: "ddp.DistInfo",
                   needs_teacher: bool, augmented: bool, features: tuple[str, ...] = (),
                   progress: bool = False) -> TeacherOutputs | None:
    """The engine's teacher outputs: precomputed ones as given, a cache where it is exact for the
    run (in-memory data, no augmentation, feature terms only with `cfg.features`), else None, and
    the teacher runs live. Under torchrun rank 0 builds a disk cache while the others wait."""
    if isinstance(teacher, torch.Tensor):
        teacher = TeacherOutputs(teacher)
    if isinstance(teacher, TeacherOutputs):
        if not isinstance(data, InMemory):
            raise SlimkitError("precomputed teacher outputs are looked up by sample index, so the training data "
                               "must be in-memory tensors, not a loader; pass the teacher model instead")
        if len(teacher) != len(data):
            raise SlimkitError(f"teacher outputs cover {len(teacher)} samples but the training data has {len(data)}")
        return teacher
    if teacher is None or cfg.mode == "off" or not needs_teacher or not isinstance(data, InMemory):
        return None  # a loader owns the order and the inputs: nothing is known to repeat
    if augmented:
        warnings.warn("data augmentation changes the teacher's inputs every epoch, so its outputs cannot be "
                      "cached; running the teacher live", stacklevel=4)
        return None
    if features and not cfg.features:
        return None  # features come from the same live forward pass unless caching them was asked for
    teacher.to(device)
    if cfg.dir is None:
        return compute_teacher_outputs(teacher, data, cfg.batch_size, cfg.topk, device, task, features, progress)
    settings = {"augment": None, **dict(cfg.settings)}
    built = None
    if dist.is_main:
        built = build_or_load(teacher, data, cfg.dir, settings, cfg.batch_size, cfg.topk, device, task, features, progress)
    ddp.barrier(dist)
    return built if built is not None else build_or_load(teacher, data, cfg.dir, settings, cfg.batch_size, cfg.topk,
                                                          device, task, features)
