"""Model families: each names its cuts, tasks, saving and data (slimkit.families.base).

`compress` (and the other verbs) find the family by what the model is, not by which command was
typed: a Hugging Face folder by the architecture its config names, anything else by type.

- `modules`: any torch module, cut through the dependency graph (slimkit.prune.structured);
- `hf-encoder`: BERT- and ViT-style Hugging Face encoders, as text or image classifiers or as
  sentence encoders (slimkit.families.hf_encoder);
- `causal-lm`: Llama-style Hugging Face *ForCausalLM models, and the built-in smollm2
  (slimkit.families.causal_lm);
- `whisper`: Hugging Face WhisperForConditionalGeneration, and the built-in whisper-tiny.en
  (slimkit.families.whisper).

`engine_parts` is where `compress` asks a family for its own cutter and timer, by the engine
task's name: one table, so the choice lives in one place.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError
from slimkit.families.base import Family, Prepared, Source

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("modules", "any torch nn.Module: slimkit checkpoints and package.module:factory",
           "whole removable blocks, and channels of coupled groups", ("classification", "ctc", "embeddings"),
           "a slimkit checkpoint (with the dense builder for modules slimkit did not write)",
           "fashion-mnist, digits, an .npz (x, y), an image folder, or the factory's data"),
    Family("hf-encoder", "Hugging Face BERT- and ViT-style encoders: *ForSequenceClassification, "
                         "*ForImageClassification, and bare encoders (sentence embeddings)",
           "FFN neurons (least-squares reconstruction) and the last layers", ("classification", "embeddings"),
           "a Hugging Face folder that plain from_pretrained reloads, with the tokenizer or image processor",
           "images: an image folder or fashion-mnist / digits; texts: CSV, TSV, JSONL, Parquet or a "
           "datasets save_to_disk folder; embeddings: a text file or 'sentences'"),
    Family("causal-lm", "Hugging Face *ForCausalLM models (Llama, Qwen, SmolLM2...) and the built-in smollm2",
           "decoder layers and FFN neurons (whole KV groups and one-shot sparsity: slimkit prune --heads | --method wanda)",
           ("causal-lm",), "a Hugging Face folder that plain from_pretrained reloads, with the tokenizer",
           "a plain UTF-8 text file or a built-in text (emma, prideprejudice), in windows of --seq-len tokens"),
    Family("whisper", "Hugging Face WhisperForConditionalGeneration and the built-in whisper-tiny.en",
           "decoder layers (the maximally spaced ones stay) and encoder FFN neurons", ("speech",),
           "a Hugging Face folder that plain from_pretrained reloads, with the processor (generate() transcribes)",
           "an audio folder with transcripts.tsv, or the built-ins synth (Piper-synthesised sentences) and real "
           "(synth for training, the pocketsphinx recordings as the test split)"),
)}
# Engine task name -> the family module whose engine_parts(model, example, settings) gives compress
# its (cutter, timer) for that task; tasks not here use compress's own choice.
ENGINE_PARTS = {"causal_lm": "slimkit.families.causal_lm", "speech": "slimkit.families.whisper"}


def engine_parts(task_name: str, model: Any, example: Any, settings: Any) -> tuple[Any, Any]:
    """(cutter, timer) of the family that owns the engine task `task_name` for `model`; (None, None)
    when no family does (the module is imported only then, so families stay lazy)."""
    module = ENGINE_PARTS.get(task_name)
    if module is None:
        return None, None
    return importlib.import_module(module).engine_parts(model, example, settings)


# The built-in models MODEL may name (a local path of that name wins): name -> family.
BUILTINS = {"smollm2": "causal-lm", "minilm": "hf-encoder", "whisper-tiny.en": "whisper"}
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory(text: str) -> bool:
    """Whether MODEL reads as `package.module:callable` (and is no existing path)."""
    return bool(_FACTORY.match(text)) and not Path(text).exists()


def model_family(model: str) -> str:
    """The family of a MODEL argument, from the path or name alone (no weights read); one line when
    it is none. Every verb and compress read MODEL here, so one name means one model everywhere."""
    p = Path(model).expanduser()
    if p.suffix == ".safetensors":
        return "modules"  # the checkpoint loader says what is wrong with it, if anything
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SlimkitError(f"{model} is a folder without config.json; pass a Hugging Face folder written by "
                               f"save_pretrained, a slimkit .safetensors checkpoint or a built-in "
                               f"({', '.join(BUILTINS)})")
        family = folder_family(p)
        if family is None:
            raise SlimkitError(f"{p / 'config.json'} is not a JSON object; re-save the model with save_pretrained")
        return family
    if p.is_file() or is_factory(model):
        return "modules"
    if model in BUILTINS:
        return BUILTINS[model]
    raise SlimkitError(f"MODEL {model!r} is neither a file, a folder, package.module:factory nor a built-in "
                       f"({', '.join(BUILTINS)}); check the path")


def family_module(family: str):
    """The module of a Hugging Face family (hf-encoder, causal-lm, whisper): its load, prepare, cutter."""
    return importlib.import_module(f"slimkit.families.{family.replace('-', '_')}")


def describe() -> str:
    """The families in one line, for errors."""
    return "; ".join(f"{f.name} ({f.takes})" for f in FAMILIES.values())


def hf_family(config) -> tuple[str, str, str]:
    """(family, task, modality) for a Hugging Face config, from the architecture it names.

    modality is "image" or "text" for the encoder family, "" otherwise. An architecture no family
    takes is one error line that names the families."""
    archs = list(getattr(config, "architectures", None) or [])
    arch = archs[0] if archs else ""
    model_type = getattr(config, "model_type", "")
    if arch.endswith("ForCausalLM"):
        return "causal-lm", "causal-lm", ""
    if arch.startswith("Whisper") or model_type == "whisper":
        return "whisper", "speech", ""
    if arch.endswith("ForImageClassification"):
        return "hf-encoder", "classification", "image"
    if arch.endswith("ForSequenceClassification"):
        return "hf-encoder", "classification", "text"
    if arch.endswith("Model") or not arch:
        return "hf-encoder", "embeddings", "image" if hasattr(config, "image_size") else "text"
    raise SlimkitError(f"slimkit has no family for the architecture {arch!r} (model_type {model_type!r}); the "
                       f"families are: {describe()}")


def folder_family(folder: Path) -> str | None:
    """The family a Hugging Face folder's config.json names, read as JSON (no weights, no transformers),
    so a command can check what the family needs before the model loads; None when the config cannot
    be read (the family's loader then says what is wrong with it)."""
    import json
    from types import SimpleNamespace

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return hf_family(SimpleNamespace(**config))[0] if isinstance(config, dict) else None


def check_task(family: str, task: str, requested: str | None, arch: str) -> str:
    """The task to run: the config's, or `requested` when the family has it; a contradiction is one line."""
    if requested is None or requested == task:
        return task
    if requested == "embeddings" and family == "hf-encoder":
        return requested  # a classifier's encoder still embeds sentences
    raise SlimkitError(f"--task {requested} contradicts the model: its config names {arch or 'a bare encoder'}, "
                       f"a {task} model (family {family}, tasks {', '.join(FAMILIES[family].tasks)}); "
                       f"leave --task out or pass a model of that task")


__all__ = ["BUILTINS", "ENGINE_PARTS", "FAMILIES", "Family", "Prepared", "Source", "check_task", "describe",
           "engine_parts", "family_module", "folder_family", "hf_family", "is_factory", "model_family"]
