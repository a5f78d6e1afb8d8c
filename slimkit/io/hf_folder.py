"""Hugging Face models, pruned or not, saved as folders that `from_pretrained` reads.

A pruned transformer's config still describes the dense model. `save_hf` writes the folder with
`save_pretrained` and a config that carries the new widths:
- widths the config can express (every layer cut alike, e.g. `intermediate_size` for a uniform FFN
  cut) are set in it, so plain `AutoModel.from_pretrained(folder)` rebuilds the model;
- what it cannot express (per-layer FFN widths, head counts in models whose head size is derived
  from `hidden_size / num_attention_heads`, such as BERT and ViT) is recorded under the config key
  `slimkit_layout` (slimkit.io.layout: shapes, removed blocks, changed module attributes), and
  `load_hf` restores it. Plain `from_pretrained` then refuses the size mismatch (transformers 5
  raises rather than loading re-initialised weights), and the config's `slimkit_note` says to use
  `load_hf`.

Which config keys to change is not hard-coded per architecture: every integer field whose dense
value a changed tensor dimension or module attribute had is tried at the new value, on the meta
device, and kept when it leaves less to record. transformers 5 no longer supports `config.pruned_heads` (BERT and ViT lost
`prune_heads`), so head counts go through the recorded layout.

The folder is written through slimkit.io.outputs.output_folder: staged, fsynced, renamed, with a
manifest; nothing slimkit did not write is replaced. `load_pretrained` is the one way slimkit
reads a model with its tokenizer or processor from a local folder (the LLM, encoder and Whisper
loaders all go through it), so a folder save_hf wrote reloads wherever a folder is accepted.
"""

import copy
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io.header import build_checked, build_dense
from slimkit.io.checkpoint import load_state, read_header, tensors_for_file
from slimkit.io.layout import record_layout
from slimkit.io.outputs import output_folder

LAYOUT_KEY = "slimkit_layout"
NOTE_KEY = "slimkit_note"
NOTE = "per-layer widths differ from this config; load with slimkit.io.hf_folder.load_hf(folder)"


def is_hf(model: Any) -> bool:
    """A transformers PreTrainedModel; transformers is not imported when nothing has imported it
    (then no model can be one)."""
    import sys

    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, tf.PreTrainedModel)


def _check_hf(model: Any) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise SlimkitError(f"save_hf takes a transformers PreTrainedModel, got {type(model).__name__}; save other "
                           f"models with slimkit.io.save_model(model, path, builder=...)")


def _build(cls: type, config: Any) -> nn.Module:
    return build_dense(cls, {"config": config})


def _size(layout: dict[str, Any], dense: nn.Module) -> int:
    """How much a layout records beyond `dense`: removed blocks, changed attributes and resized tensors."""
    dense_shapes = {k: list(v.shape) for k, v in dense.state_dict().items()}
    resized = sum(dense_shapes.get(k) != s for k, s in layout["shapes"].items())
    return len(layout["removed_blocks"]) + sum(map(len, layout["attributes"].values())) + resized


def fit_config(model: nn.Module) -> tuple[Any, dict[str, Any], bool]:
    """(config with the widths it can express, layout against it, whether the layout is needed to load)."""
    cls, config = type(model), copy.deepcopy(model.config)
    config.__dict__.pop(LAYOUT_KEY, None)
    config.__dict__.pop(NOTE_KEY, None)
    dense = _build(cls, config)
    layout = record_layout(model, dense)
    size = _size(layout, dense)
    dense_shapes = {k: list(v.shape) for k, v in dense.state_dict().items()}
    pairs = {(d, p) for k, shape in layout["shapes"].items() if k in dense_shapes
             for d, p in zip(dense_shapes[k], shape) if d != p}
    pairs |= {(vars(dense.get_submodule(name))[k], v) for name, changes in layout["attributes"].items()
              for k, v in changes.items() if isinstance(v, int) and not isinstance(v, bool)}
    for key, value in sorted(config.to_dict().items()):
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        for new in sorted({p for d, p in pairs if d == value}):
            for pinned in _pins(config, key):
                trial = copy.deepcopy(config)
                for k, v in {key: new, **pinned}.items():
                    setattr(trial, k, v)
                try:
                    dense = _build(cls, trial)
                    trial_layout = record_layout(model, dense)
                except SlimkitError:
                    continue
                trial_size = _size(trial_layout, dense)
                if trial_size < size:
                    config, layout, size = trial, trial_layout, trial_size
                    break
    return config, layout, size > 0


def _pins(config: Any, key: str) -> list[dict[str, int]]:
    """Config keys to hold fixed while `key` changes: none, and for a head count in a config without
    `head_dim`, also the dense head size (models that read config.head_dim then keep it when heads go)."""
    pins: list[dict[str, int]] = [{}]
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if "heads" in key and "head_dim" not in config.to_dict() and isinstance(hidden, int) and isinstance(heads, int) \
            and heads > 0:
        pins.append({"head_dim": hidden // heads})
    return pins


def save_hf(model: nn.Module, folder: str | os.PathLike, overwrite: bool = False, *, tokenizer: Any = None,
            inputs=(), command: str = "save_hf", extra_files: dict[str, bytes] | None = None) -> Path:
    """Write `model` (a transformers PreTrainedModel, pruned or not) as a from_pretrained folder.

    Returns the folder. Whether plain `from_pretrained` suffices or `load_hf` is needed is recorded
    in the config (see the module docstring). `tokenizer` (or processor), when given, is saved into
    the same folder, so `load_pretrained` reads both back. `overwrite` replaces an earlier slimkit
    folder only, never one holding any of `inputs`; `command` is what the folder's manifest names;
    `extra_files` (name -> bytes, e.g. the recipe) are written beside the model.
    """
    _check_hf(model)
    with output_folder(folder, overwrite, inputs, command) as stage:
        write_hf(model, stage)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        for name, data in (extra_files or {}).items():
            (stage / name).write_bytes(data)
    return Path(folder).expanduser()


def write_hf(model: nn.Module, folder: Path) -> bool:
    """Write the folder's files into `folder`, a new folder or one that holds none of them yet (a
    staging folder: save_hf, run folders that hold a model among other results); returns whether
    `load_hf` is needed. Paths the user gives go through save_hf, which never replaces their files."""
    _check_hf(model)
    folder = Path(folder)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    clash = sorted(p.name for p in before if p.name == "config.json" or p.name.startswith("model"))
    if folder.exists() and not folder.is_dir() or clash:
        raise SlimkitError(f"{folder} already holds {clash[:3] or 'a file by that name'}; write_hf fills new folders "
                           f"only (save_hf replaces an earlier slimkit folder with overwrite=True)")
    config, layout, needs_layout = fit_config(model)
    config.architectures = [type(model).__name__]  # what save_pretrained records; load_hf builds that class
    if needs_layout:
        setattr(config, LAYOUT_KEY, layout)
        setattr(config, NOTE_KEY, NOTE)
    model.save_pretrained(folder)
    config.save_pretrained(folder)  # the widths the model really has, over the dense config
    if needs_layout:
        # save_pretrained may write some architectures' weights under older names that only its own
        # loader maps back; the layout names the model's own tensors, so the weights are written
        # under those names, in one file
        for f in [*folder.glob("model*.safetensors"), *folder.glob("model.safetensors.index.json")]:
            if f not in before:  # only what save_pretrained just wrote
                f.unlink()
        save_file(tensors_for_file(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return needs_layout


def load_hf(folder: str | os.PathLike, model_class: type | None = None) -> nn.Module:
    """The model in a folder written by save_hf (or any from_pretrained folder), in eval mode, offline.

    `model_class` defaults to the class the config names in `architectures` (looked up among
    transformers' own classes, never imported from a path in the file).
    """
    import transformers
    from transformers import AutoConfig, PreTrainedModel

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise SlimkitError(f"{path} is not a Hugging Face model folder (no config.json); pass the folder save_hf wrote")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise SlimkitError(f"cannot read {path / 'config.json'}: {str(exc).splitlines()[0][:200]}") from None
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names and isinstance(names[0], str) else None
        if not (isinstance(model_class, type) and issubclass(model_class, PreTrainedModel)):
            raise SlimkitError(f"{path}'s config names no transformers model class (architectures={names!r}); pass "
                               f"model_class=, e.g. transformers.BertModel")
    layout = config.__dict__.get(LAYOUT_KEY)
    if layout is None:
        return model_class.from_pretrained(path, config=config, local_files_only=True).eval()
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise SlimkitError(f"{path} records a pruned layout but has no model.safetensors; save the model again with "
                           f"save_hf")
    # checked like a slimkit checkpoint: the config and layout must build, on the meta device first,
    # exactly the tensors the file holds before any memory is spent
    _, shapes = read_header(weights_file)
    model = build_checked(model_class, {"config": config}, layout, shapes, path)
    try:
        model.load_state_dict(load_state(weights_file), strict=True)
    except RuntimeError as exc:
        raise SlimkitError(f"{path} does not load into {model_class.__name__}: "
                           f"{' '.join(str(exc).split())[:300]}") from None
    return model.eval()


def offline() -> None:
    """No hub traffic from transformers, ever: slimkit loads local folders only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def records_layout(folder: str | os.PathLike) -> bool:
    """Whether the folder's config.json records a pruned layout, so that only `load_hf` rebuilds it."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # from_pretrained then says what is wrong with the folder
    return isinstance(config, dict) and LAYOUT_KEY in config


def load_pretrained(model_cls: Any, processor_cls: Any, folder: str | os.PathLike, kind: str) -> tuple[nn.Module, Any]:
    """(model in eval mode, fp32, processor or tokenizer) from a local from_pretrained folder, offline.

    `model_cls` is a transformers model or Auto class (its from_pretrained is used), `processor_cls`
    a tokenizer or processor class; `kind` names the model in the one-line error ("a causal LM").
    A folder whose config records a pruned layout is rebuilt by `load_hf`, as the class the config
    names, since no config key describes its widths.
    """
    offline()
    import torch

    path = Path(folder)
    try:
        if records_layout(path):
            model = load_hf(path)
        else:
            model = model_cls.from_pretrained(str(path), dtype=torch.float32)
        processor = processor_cls.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise SlimkitError(f"cannot load {kind} from {path}: {str(exc).splitlines()[0]}") from None
    return model.eval(), processor
