"""One-shot pruning streamed from a checkpoint folder, one decoder block in memory at a time.

`prune_oneshot` needs the whole model in memory: for SmolLM2-135M that is 2.3x the fp32 weights
once the process itself is counted, and a model larger than RAM (or GPU memory) cannot be pruned
at all. Sequential calibration only ever needs one block, though: block i is calibrated on the
outputs of the already-pruned blocks before it. So this module

1. builds a skeleton of the model whose non-block parts (embeddings, final norm, rotary buffers,
   tied lm_head) are real CPU tensors read from the checkpoint, while the decoder blocks exist only
   on the meta device (shapes, no storage);
2. captures the inputs of block 0 with `capture_block_inputs` (its pre-hook stops the forward
   before any meta weight is touched), then drops the skeleton's weights;
3. for each block: reads that block's tensors from the safetensors files, prunes it with the very
   same `sparsify_block` as the in-memory path, runs it to produce the next block's inputs, writes
   it (original dtype and names) to its own shard and sends it back to the meta device.

Peak memory is therefore the process, the larger of (non-block tensors) and (one block), and the
calibration activations. The output is a sharded HF folder (`model.safetensors.index.json`) with
the source's config and tokenizer files, written atomically; it loads with `from_pretrained` and
holds the same weights as `prune_oneshot` on the fully loaded model.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from slimkit.errors import SlimkitError
from slimkit.io.outputs import output_folder
from slimkit.llm.calibration import advance, capture_block_inputs, decoder_layers
from slimkit.llm.oneshot import check_oneshot_args, compute_device, oneshot_result, sparsify_block
from slimkit.prune.result import PruneResult

INDEX = "model.safetensors.index.json"
# files of a HF folder that hold weights in some format; everything else (config, tokenizer,
# generation config, chat template, README) is copied to the output unchanged
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


class Checkpoint:
    """The tensors of a HF safetensors checkpoint: one `model.safetensors` or shards with an index.

    Nothing is read until `read`, and each file is opened only for the duration of a read: a
    safetensors file is memory-mapped, and pages of a mapping that stays open count in the
    process's resident set, which would grow to the whole checkpoint by the last block.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise SlimkitError(f"model folder {self.folder} does not exist")
        if not (self.folder / "config.json").is_file():
            raise SlimkitError(f"{self.folder} is not a Hugging Face model folder (no config.json)")
        self.files: dict[str, Path] = {}
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SlimkitError(f"{index} is not a safetensors index ({exc})") from None
            self.files = {name: self.folder / file for name, file in weight_map.items()}
            lost = sorted({str(p.name) for p in self.files.values() if not p.is_file()})
            if lost:
                raise SlimkitError(f"{index} names shards that are missing: {', '.join(lost[:3])}")
            return
        single = sorted(self.folder.glob("*.safetensors"))
        if not single:
            raise SlimkitError(f"{self.folder} has no safetensors weights; streaming reads model.safetensors "
                               f"or a sharded {INDEX} (save the model with save_pretrained)")
        if len(single) > 1:
            raise SlimkitError(f"{self.folder} has {len(single)} safetensors files but no {INDEX} "
                               "saying which tensor is where")
        with self._open(single[0]) as f:
            self.files = {name: single[0] for name in f.keys()}

    @staticmethod
    def _open(path: Path):
        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError, ValueError) as exc:
            raise SlimkitError(f"cannot read {path} as safetensors: {exc}") from None

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors, in their stored dtype, on the CPU; each file opened once and closed."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        for path, group in by_file.items():
            with self._open(path) as f:
                for name in group:
                    out[name] = f.get_tensor(name)
        return out


def _no_init():
    """transformers' context that skips weight initialisation (its module moved between versions)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def build_skeleton(config) -> tuple[nn.Module, nn.ModuleList, str]:
    """(model with real non-block parts and meta decoder blocks, those blocks, the blocks' name).

    The non-block modules are built for real with zero layers so that buffers computed at
    construction (rotary inv_freq) are correct on the CPU; weight initialisation is skipped, so
    the embedding is allocated but never written (untouched pages cost no memory) until the
    checkpoint's tensors replace it. The blocks come from a meta-device build of the full config, so
    every block has its real class, shapes and layer_idx without any storage.
    """
    from transformers import AutoModelForCausalLM

    empty = copy.deepcopy(config)
    empty.num_hidden_layers = 0
    if hasattr(empty, "layer_types"):  # per-layer attention kinds (sliding/full) must match the count
        empty.layer_types = []
    try:
        with _no_init():
            model = AutoModelForCausalLM.from_config(empty, dtype=torch.float32)
        with torch.device("meta"):
            full = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32)
    except (ValueError, KeyError) as exc:
        raise SlimkitError(f"cannot build a causal LM from this config: {str(exc).splitlines()[0]}") from None
    layers = decoder_layers(full)
    prefix = next(name for name, module in full.named_modules() if module is layers)
    parent, _, attr = prefix.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, layers)
    # the forward reads the layer count (and mask kinds) from the config: give it the full one
    small_config = model.config
    for module in model.modules():
        if getattr(module, "config", None) is small_config:
            module.config = full.config
    return model.eval(), layers, prefix


def _load_non_block(model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Put the checkpoint's non-block tensors (as float32) into the skeleton and tie what is tied."""
    state = {n: t.float() if t.is_floating_point() else t for n, t in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise SlimkitError(f"checkpoint tensors do not match {type(model).__name__}: unexpected {unexpected[:3]}")
    model.tie_weights()
    loaded = {t.data_ptr() for t in state.values()}
    live = model.state_dict()
    untied = [n for n in missing if not n.startswith(prefix + ".") and live[n].data_ptr() not in loaded]
    if untied:
        raise SlimkitError(f"checkpoint lacks {untied[:3]} of {type(model).__name__}")


def _load_block(layers: nn.ModuleList, i: int, ckpt: Checkpoint, prefix: str,
                device: torch.device) -> tuple[nn.Module, dict[str, torch.dtype]]:
    """Give meta block i its checkpoint weights (float32, on `device`); returns it and the stored dtypes."""
    head = f"{prefix}.{i}."
    raw = ckpt.read([n for n in ckpt.names if n.startswith(head)])
    dtypes = {n[len(head):]: t.dtype for n, t in raw.items()}
    state = {n[len(head):]: (t.float() if t.is_floating_point() else t).to(device) for n, t in raw.items()}
    del raw
    block = layers[i]
    missing, unexpected = block.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SlimkitError(f"checkpoint block {i} does not match {type(block).__name__}: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    if any(b.is_meta for b in block.buffers()):
        raise SlimkitError(f"{type(block).__name__} holds buffers that the checkpoint does not store; "
                           "streaming needs blocks made of weights only (use prune_oneshot)")
    return block.eval(), dtypes


def _save_shard(tensors: dict[str, torch.Tensor], folder: Path, file: str, weight_map: dict[str, str]) -> int:
    """Write one shard and record its tensors in the index; returns its size in bytes."""
    save_file(tensors, str(folder / file), metadata={"format": "pt"})
    weight_map.update({name: file for name in tensors})
    return sum(t.numel() * t.element_size() for t in tensors.values())


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library is not glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Hand the pages of freed buffers back to the OS, so that memory stays at about one block.

    Every block allocates and frees buffers of the same few large sizes (weights, Hessians,
    activations). After the first such buffer is freed, glibc raises its mmap threshold and serves
    later ones from its heaps, whose freed pages stay resident and fragment: without trimming, the
    resident set crept up block after block (SmolLM2, sparsegpt on 32 x 512 tokens: peak 1.56x the
    fp32 model over its 30 blocks; 1.26x with this after each block). A no-op where the C library
    is not glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _copy_side_files(src: Path, dest: Path) -> None:
    """Config, tokenizer, generation config, chat template: everything in `src` that is not weights."""
    for path in src.iterdir():
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES) and not path.name.endswith(".index.json"):
            shutil.copyfile(path, dest / path.name)


@torch.no_grad()
def prune_oneshot_folder(src: str | Path, out: str | Path, windows: torch.Tensor | None, method: str = "sparsegpt",
                         sparsity: float = 0.5, nm: tuple[int, int] | str | None = None, batch_size: int = 2,
                         percdamp: float = 0.01, blocksize: int = 128, mask_scope: str = "row",
                         device: str | torch.device | None = None, progress: bool = True,
                         overwrite: bool = False, extra_files: dict[str, bytes] | None = None,
                         command: str = "slimkit prune --stream") -> PruneResult:
    """Prune the HF causal LM in folder `src` block by block into the new folder `out`.

    Same settings and the same result as `prune_oneshot` on the loaded model (every Linear of every
    decoder block; embeddings and lm_head dense), but only one block is materialised at a time, so
    a model larger than RAM or GPU memory can be pruned. Blocks are computed in float32 (Wanda and
    SparseGPT on the GPU when there is one, magnitude on the CPU, as in `prune_oneshot`) and stored
    back in the checkpoint's dtype. The result holds no model (it is on disk in `out`) and no masks
    (they would be the size of the model); the kept fractions are counted block by block.
    `out` appears only when everything is written; a failure leaves neither it nor a partial folder.
    It follows slimkit.io.outputs' rules (an existing folder is replaced only with `overwrite`);
    `extra_files` (name -> bytes, e.g. the recipe) are written beside the weights.
    """
    sparsity, nm = check_oneshot_args(method, sparsity, nm, mask_scope)
    if method != "magnitude" and windows is None:
        raise SlimkitError(f"{method} needs calibration windows")
    ckpt = Checkpoint(src)
    dest = Path(out).expanduser()
    from slimkit.io.hf_folder import offline

    offline()  # a local folder only: never ask the Hub
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(ckpt.folder))
    except (OSError, ValueError, KeyError) as exc:
        raise SlimkitError(f"cannot read the config of {ckpt.folder}: {str(exc).splitlines()[0]}") from None
    dev = compute_device(device)
    block_dev = dev if method != "magnitude" else torch.device("cpu")  # where prune_oneshot runs magnitude
    start = time.perf_counter()
    model, layers, prefix = build_skeleton(config)
    n_blocks = len(layers)
    shard = "model-{:05d}-of-" + f"{n_blocks + 1:05d}.safetensors"
    weight_map: dict[str, str] = {}
    counts: dict[str, tuple[int, int]] = {}
    with output_folder(dest, overwrite, inputs=[ckpt.folder], command=command) as stage:
        non_block = ckpt.read([n for n in ckpt.names if not n.startswith(prefix + ".")])
        size = _save_shard(non_block, stage, shard.format(1), weight_map)  # as stored, before float32 copies
        hidden = kwargs = None
        if method != "magnitude":
            _load_non_block(model, non_block, prefix)
            del non_block
            hidden, kwargs = capture_block_inputs(model, windows, batch_size, dev)
        non_block = model = None  # the blocks only need their inputs from here on
        _return_freed_memory()
        for i in tqdm(range(n_blocks), desc=f"{method} (streamed)", disable=not progress, leave=False):
            block, dtypes = _load_block(layers, i, ckpt, prefix, block_dev)
            masks = sparsify_block(block, method, sparsity, nm, hidden, kwargs, dev, blocksize, percdamp, mask_scope)
            names = {lin: name for name, lin in block.named_modules()}
            counts.update({f"{prefix}.{i}.{names[lin]}.weight": (int(m.sum()), m.numel()) for lin, m in masks.items()})
            del masks
            _return_freed_memory()  # the Hessians and SparseGPT's work buffers, before the forward below
            if hidden is not None and i + 1 < n_blocks:
                advance(block, hidden, kwargs)
            tensors = {f"{prefix}.{i}.{n}": t.detach().to("cpu", dtypes[n]).contiguous()
                       for n, t in block.state_dict().items()}
            size += _save_shard(tensors, stage, shard.format(i + 2), weight_map)
            del tensors
            block.to("meta")  # frees this block's storage: memory stays at one block
            _return_freed_memory()
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
        (stage / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        _copy_side_files(ckpt.folder, stage)
        for name, data in (extra_files or {}).items():
            (stage / name).write_bytes(data)
    calibration = "none" if method == "magnitude" else f"{windows.shape[0]} x {windows.shape[1]} tokens"
    return oneshot_result(None, method, sparsity, nm, counts, list(range(n_blocks)), start, calibration)
