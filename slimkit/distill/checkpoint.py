"""Training checkpoints without pickle: every tensor in safetensors, everything else as JSON.

A training state is a tree of dicts, lists and tuples (optimizer and scheduler `state_dict()`s, RNG
states, counters). `encode` moves each tensor leaf into a flat safetensors table and leaves a
reference in a JSON skeleton that also records dict-key and tuple types, so `decode` rebuilds the
tree exactly (the optimizer's integer state keys stay integers). The file is written to a temporary
name, fsynced and renamed, so a kill at any moment leaves the previous checkpoint intact.
"""

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from slimkit.errors import SlimkitError
from slimkit.io.outputs import atomic_write_bytes

CHECKPOINT_FORMAT = 1
_META_KEY = "slimkit_train_state"


def encode(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-able skeleton of `obj`; tensor leaves go into `tensors` under keys derived from `prefix`."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        while key in tensors:
            key += "_"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__t__": key}
    if isinstance(obj, np.ndarray):
        key = prefix
        tensors[key] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind in "iu" else obj.astype(np.float64))
        return {"__np__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__d__": [[encode(k, tensors, f"{prefix}.k"), encode(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise SlimkitError(f"cannot checkpoint a {type(obj).__name__} at {prefix!r}: only tensors, numbers, strings and containers")


def decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode`."""
    if isinstance(node, list):
        return [decode(v, tensors) for v in node]
    if isinstance(node, dict):
        if "__t__" in node:
            return tensors[node["__t__"]]
        if "__np__" in node:
            return tensors[node["__np__"]].numpy().astype(node["dtype"])
        if "__d__" in node:
            return {decode(k, tensors): decode(v, tensors) for k, v in node["__d__"]}
        if "__tuple__" in node:
            return tuple(decode(v, tensors) for v in node["__tuple__"])
        raise SlimkitError(f"corrupt checkpoint skeleton: unexpected object with keys {sorted(node)[:5]}")
    return node


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, and CUDA when present) generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state tree to one .safetensors file, atomically; returns the path."""
    out = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode(state, tensors, "s")
    payload = json.dumps({"format": CHECKPOINT_FORMAT, "state": skeleton})
    return atomic_write_bytes(out, st_save(tensors, metadata={_META_KEY: payload}))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training state written by `save_checkpoint` (no pickle involved)."""
    p = Path(path)
    if not p.is_file():
        raise SlimkitError(f"checkpoint {p} does not exist")
    data = p.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        payload = json.loads(meta[_META_KEY])
    except (SafetensorError, KeyError, ValueError) as exc:
        raise SlimkitError(f"{p} is not a slimkit training checkpoint ({type(exc).__name__}: {exc})") from None
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise SlimkitError(f"{p} has checkpoint format {payload.get('format')}, this slimkit reads {CHECKPOINT_FORMAT}")
    return decode(payload["state"], tensors)
