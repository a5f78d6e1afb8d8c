"""Fully sharded training (`TrainConfig(parallel="fsdp")`): FSDP2 sharding and sharded checkpoints.

Why: under DDP every rank holds the whole student, its gradients, its AdamW state and the teacher.
With FSDP2 (`torch.distributed.fsdp.fully_shard`) each rank keeps 1/W of each, and a block's full
weights exist only while that block runs. The student is sharded block by block (the largest run of
identical layers: a decoder's or encoder's layers, or slimkit's residual blocks), then as a whole,
so the embeddings and heads share the root group. A live teacher is sharded the same way, frozen.

Checkpoints go through torch.distributed.checkpoint (DCP), with its safetensors storage
(`HuggingFaceStorageWriter(save_distributed=True)` / `HuggingFaceStorageReader`). Why that storage,
from torch 2.13's source: DCP's default `FileSystemWriter` pickles its `.metadata` file
(`pickle.dump` in filesystem.py; the reader `pickle.load`s it), `torch.save`s non-tensor items that
the default load planner reads with `torch.load(weights_only=False)`, and offers no pickle-free
metadata option; slimkit never unpickles from disk. The safetensors storage writes one
`shard-0000r-model-00001-of-00001.safetensors` per rank whose JSON header holds each shard's offsets,
and its reader rebuilds DCP's metadata from those headers, so nothing is pickled. It stores tensors
only: the rest of the training state (optimizer hyper-parameters, scheduler, RNG, position, history)
goes beside the shards in rank 0's `state.safetensors` (slimkit's own checkpoint format).

Atomicity: every rank writes into `.tmp-step-N/`; after a barrier rank 0 adds `state.safetensors` and
renames the folder to `step-N/`, then removes older ones. A kill at any moment leaves the last
complete `step-*` folder, and only complete folders carry that name.
"""

import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.distill import ddp
from slimkit.distill.checkpoint import load_checkpoint, save_checkpoint
from slimkit.errors import SlimkitError

STATE_FILE = "state.safetensors"
SHARDS = "shards"


def require_group(world_size: int | None = None) -> None:
    """Refuse `parallel="fsdp"` outside a torchrun launch of 2 or more processes, before any work."""
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "0") or 0)
    if world < 2:
        raise SlimkitError("parallel 'fsdp' shards over a process group, and "
                           + ("WORLD_SIZE is unset" if world == 0 else f"WORLD_SIZE is {world}")
                           + ": launch with `torchrun --nproc-per-node 2 ...` (2 or more processes), or use 'ddp'")


def check_setup(info: ddp.DistInfo, masks: Any, amp: str, early_stop_patience: int) -> None:
    """What FSDP training does not cover, refused in one line each before any work."""
    require_group(info.world_size if info.enabled else None)
    if masks:
        raise SlimkitError("held zeros (masks) are not supported with parallel 'fsdp': each rank holds only a "
                           "shard of every weight; pass --no-hold-zeros (or masks=None), or use 'ddp'")
    if amp == "fp16":
        raise SlimkitError("amp 'fp16' needs a sharded loss scaler that slimkit does not use with 'fsdp'; "
                           "use amp 'bf16' (or 'auto'), or parallel 'ddp'")
    if early_stop_patience:
        raise SlimkitError("early stopping keeps a whole copy of the best weights, which 'fsdp' avoids; "
                           "set early_stop_patience=0, or use parallel 'ddp'")


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]] | None:
    """(path, blocks) to shard one by one, or None when the model has no repeated layers.

    Modules marked `removable = True` (slimkit's residual blocks) come first; otherwise the
    nn.ModuleList or nn.Sequential of two or more same-type children holding the most parameters
    (a decoder's `model.layers`, an encoder's `encoder.layer`).
    """
    marked = [(n, m) for n, m in model.named_modules() if getattr(m, "removable", False) is True]
    if len(marked) >= 2:  # innermost first: fully_shard goes bottom-up when blocks nest
        return "residual blocks", [m for _, m in reversed(marked)]
    best: tuple[int, str, list[nn.Module]] | None = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2 and len({type(c) for c in m}) == 1:
            size = sum(p.numel() for p in m.parameters())
            if size and (best is None or size > best[0]):
                best = (size, name, list(m))
    return (best[1], best[2]) if best else None


def policy(amp: torch.dtype | None, device: torch.device):
    """bf16 parameters with fp32 gradient reduction on a bf16 device; full fp32 otherwise (CPU)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if amp == torch.bfloat16 and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: nn.Module, mp, role: str, say: bool) -> nn.Module:
    """fully_shard each block of `model`, then `model` itself (embeddings, norms, heads, adapters);
    with no blocks that can be named, the whole model is one unit, said in one line."""
    from torch.distributed.fsdp import fully_shard

    found = find_blocks(model)
    if found is None:
        if say:  # one line, on rank 0
            print(f"note: fsdp found no repeated blocks in the {role} ({type(model).__name__}); it is sharded as one "
                  f"unit, so each rank gathers all its weights at once in forward", file=sys.stderr, flush=True)
    else:
        for block in found[1]:
            fully_shard(block, mp_policy=mp)
    return fully_shard(model, mp_policy=mp)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_teacher(teacher: nn.Module, mp, say: bool) -> None:
    """A teacher is sharded like the student, with no gradients (and so no optimizer state)."""
    teacher.requires_grad_(False)
    shard(teacher, mp, "teacher", say)


@contextmanager
def no_sync(model: nn.Module):
    """Accumulate gradients locally (no reduce-scatter) for all but a step's last micro-batch."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextmanager
def root_gathered(model: nn.Module):
    """The outer group's weights gathered, so that a submodule (the student inside its bundle) can be
    called directly, as validation does; the blocks gather their own weights as they run."""
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


# -- sharded checkpoints ------------------------------------------------------------------------
def latest(folder: str | Path) -> Path | None:
    """The newest complete `step-N` checkpoint in `folder`, or None."""
    done = sorted(Path(folder).glob("step-*"), key=lambda p: p.name)
    done = [p for p in done if (p / STATE_FILE).is_file()]
    return done[-1] if done else None


def aliases(model: nn.Module) -> dict[str, str]:
    """{second name: first name} of parameters reachable under two names (a head tied to the embedding).
    Decided by object identity, so every rank agrees; safetensors refuses to store shared memory twice."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def check_kind(folder: str | Path, sharded: bool, single: str = "last.safetensors") -> None:
    """Refuse to resume from a checkpoint folder the other strategy wrote (it would start afresh silently)."""
    root = Path(folder)
    if sharded and (root / single).is_file():
        raise SlimkitError(f"{root} holds a 'ddp' checkpoint ({single}); resume it with parallel 'ddp', or give "
                           f"parallel 'fsdp' another checkpoint folder")
    if not sharded and latest(root) is not None:
        raise SlimkitError(f"{root} holds a sharded 'fsdp' checkpoint ({latest(root).name}); resume it under torchrun "
                           f"with parallel 'fsdp', or turn it into weights with `slimkit export {root} --safetensors ...`")


def _flat(model_sd: dict, optim_sd: dict, tied: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of both state dicts under one flat name (each tied weight once); the optimizer's
    non-tensor rest as a tree."""
    tensors = {f"model/{k}": v for k, v in model_sd.items() if isinstance(v, torch.Tensor) and k not in tied}
    rest: dict[str, Any] = {"param_groups": optim_sd.get("param_groups", []), "state": {}}
    for fqn, st in optim_sd.get("state", {}).items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{fqn}/{k}"] = v
            else:
                rest["state"].setdefault(fqn, {})[k] = v
    return tensors, rest


def own_step_folder(path: Path) -> bool:
    """Whether `path` is a step folder this module writes (`step-N` or `.tmp-step-N`, holding only the
    shards folder and the state file): the only folders of --checkpoint-dir a save may delete, so a
    user's own files there are never touched."""
    import re

    if not path.is_dir() or not re.fullmatch(r"(\.tmp-)?step-\d{8}", path.name):
        return False
    return {p.name for p in path.iterdir()} <= {SHARDS, STATE_FILE}


def save_sharded(folder: str | Path, step: int, model: nn.Module, optimizer, payload: dict, info: ddp.DistInfo) -> Path:
    """Write this step's sharded state (every rank calls this); returns the final folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(folder)
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if info.is_main:
        for stale in root.glob(".tmp-step-*"):  # left by a kill during an earlier save; never resumed from
            if own_step_folder(stale):
                shutil.rmtree(stale, ignore_errors=True)
        (tmp / SHARDS).mkdir(parents=True)
    ddp.barrier(info)
    tensors, rest = _flat(*get_state_dict(model, optimizer), aliases(model))
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDS), save_distributed=True))
    ddp.barrier(info)  # every rank's shard is on disk (fsynced by DCP) before the folder gets its name
    if info.is_main:
        save_checkpoint(tmp / STATE_FILE, {**payload, "optimizer_rest": rest})
        if final.exists():  # an earlier save of this very step (an epoch end right after a periodic save)
            if not own_step_folder(final):
                raise SlimkitError(f"{final} holds files slimkit did not write; move them out of the checkpoint "
                                   f"folder, or give --checkpoint-dir a folder of its own")
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final and own_step_folder(old):
                shutil.rmtree(old, ignore_errors=True)
    ddp.barrier(info)
    return final


def load_sharded(path: str | Path, model: nn.Module, optimizer) -> dict:
    """Load a `save_sharded` folder into the sharded `model` and `optimizer`; returns the rest of the state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    p = Path(path)
    saved = load_checkpoint(p / STATE_FILE)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    tied = aliases(model)
    tensors, _ = _flat(model_sd, optim_sd, tied)
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(p / SHARDS)))
    rest = saved.pop("optimizer_rest")
    state = {fqn: {k: tensors[f"optim/{fqn}/{k}"] for k in st if f"optim/{fqn}/{k}" in tensors}
             for fqn, st in optim_sd["state"].items()}
    for fqn, extra in rest["state"].items():
        state.setdefault(fqn, {}).update(extra)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    weights.update({alias: weights[name] for alias, name in tied.items()})
    set_state_dict(model, optimizer, model_state_dict=weights,
                   optim_state_dict={"state": state, "param_groups": rest["param_groups"]})
    return saved


def gather_full(model: nn.Module) -> dict[str, torch.Tensor]:
    """The sharded `model`'s full weights on CPU, on rank 0 ({} on the other ranks; all must call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def consolidate(path: str | Path, prefix: str = "student.") -> dict[str, torch.Tensor]:
    """The full weights in a sharded checkpoint (a `step-N` folder or the folder holding them), in one
    process and without a process group: the student's state-dict names, `prefix` removed, a tied
    weight once under its first name (as Hugging Face's model.safetensors stores it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    p = Path(path)
    if not (p / STATE_FILE).is_file():
        found = latest(p) if p.is_dir() else None
        if found is None:
            raise SlimkitError(f"{p} is not a sharded slimkit checkpoint (no step-N folder with {STATE_FILE}); give "
                               f"the --checkpoint-dir of a run with parallel 'fsdp'")
        p = found
    reader = HuggingFaceStorageReader(str(p / SHARDS))
    meta = reader.read_metadata().state_dict_metadata
    full = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
            if k.startswith(f"model/{prefix}")}
    if not full:
        raise SlimkitError(f"{p} holds no weights under {prefix!r}")
    with warnings.catch_warnings():  # DCP notes that it loads in one process, which is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(full, storage_reader=HuggingFaceStorageReader(str(p / SHARDS)), no_dist=True)
    return {k[len("model/") + len(prefix):]: v for k, v in full.items()}
