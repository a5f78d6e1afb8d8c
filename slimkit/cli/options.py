"""What the verbs share: option help, the family's defaults, and the refusal of
options that mean nothing to that family.

`slimkit compress | prune | distill | eval MODEL` find the family from MODEL alone, with
slimkit.families.model_family (no weights are read): a file is a slimkit checkpoint; a folder is the
family its config.json names; `smollm2`, `minilm` and `whisper-tiny.en` are the built-ins. One
option name means one thing on every verb (`--ratio`, `--blocks`, `--heads`, `--ffn`, `--data`, `--out`, `--seed`...); an option
the family does not read is one error line naming the family, not silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slimkit.errors import SlimkitError

MODEL_HELP = ("a slimkit .safetensors checkpoint, a Hugging Face folder (its config names the family), or a built-in: "
              "smollm2, minilm, whisper-tiny.en")
OUT_HELP = "where the result goes: a new path, or an earlier slimkit result with --overwrite"
OVERWRITE_HELP = "replace an earlier slimkit result in --out (never a file or folder slimkit did not write)"
CHECKPOINT_HELP = ("folder for the training state; a run killed at any point resumes from it when started again "
                   "with the same settings")
AMP_HELP = "autocast: auto (bf16/fp16 on CUDA, off on CPU), off, bf16 or fp16 (CUDA only)"


def refuse_unused(verb: str, family: str, given: dict[str, Any]) -> None:
    """One line for the first option given (not None, not False) that `family` does not read.

    `given` maps option names (--blocks) to the values passed; the caller lists only the options
    the family ignores."""
    for name, value in given.items():
        if value is not None and value is not False:
            raise SlimkitError(f"{name} does not apply to a {family} model on `slimkit {verb}`; leave it out "
                               f"(slimkit {verb} --help says which family reads which option)")


def pick(value: Any, default: Any) -> Any:
    """The option as given, else the family's default."""
    return default if value is None else value


def recipe_yaml(recipe: dict[str, Any]) -> bytes:
    """The recipe.yaml that `slimkit run` replays, as bytes for a result folder."""
    return yaml.safe_dump(recipe, sort_keys=False).encode("utf-8")


def result_files(recipe: dict[str, Any], header: str, columns: list[str], rows: list[list[Any]],
                 notes: list[str] = (), **extra: Any) -> dict[str, bytes]:
    """What a prune or distill result folder holds beside the model: recipe.yaml (replayed by `slimkit
    run`), report.json (the rows the command printed, measured in this run, and where) and
    report.html (the same, as a page)."""
    import json

    from slimkit.report_html import page_bytes, provenance

    report = {"command": recipe.get("command"), "header": header, "table": {"columns": columns, "rows": rows},
              "notes": list(notes), **extra, "provenance": provenance()}
    text = recipe_yaml(recipe)
    return {"recipe.yaml": text, "report.json": json.dumps(report, indent=1, default=str).encode("utf-8"),
            "report.html": page_bytes(report, text.decode("utf-8"))}


def check_train_state(checkpoint_dir: Path | None, every: int, amp: str):
    """The engine's checkpoint settings, with --amp and --checkpoint-every checked before any model loads."""
    from slimkit.distill.config import CheckpointConfig

    if amp not in ("auto", "off", "bf16", "fp16"):
        raise SlimkitError(f"--amp must be auto, off, bf16 or fp16, got {amp!r}")
    if every < 1:
        raise SlimkitError(f"--checkpoint-every must be >= 1, got {every}")
    if checkpoint_dir is not None and checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise SlimkitError(f"--checkpoint-dir {checkpoint_dir} exists and is not a folder")
    return CheckpointConfig(checkpoint_dir, every_steps=every) if checkpoint_dir is not None else None


def check_out(out: Path, overwrite: bool, *models: str | None) -> None:
    """Refuse --out before any model loads (slimkit.io.outputs' rules); model paths count as inputs."""
    from slimkit.io.outputs import check_output_folder

    check_output_folder(out, overwrite, [m for m in models if m and Path(m).expanduser().exists()])
