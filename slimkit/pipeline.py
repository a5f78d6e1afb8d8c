"""The whole pipeline on one data set: train (or reuse) a teacher, prune it, distill a student,
train the same student from scratch as the control, then profile all of them on the test split.
Then the headline (slimkit.headline): `compress` the teacher to a measured-faster cut within the
floor with KD recovery, against CE recovery of the same cut.

`DemoConfig` is both the CLI's option set and the YAML recipe's schema (pydantic validates it), so
the command line, a recipe and the Python API drive exactly the same code.
"""

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimkit.compression.settings import FloorText, TargetText
from slimkit.data import Dataset, load_dataset
from slimkit.distill import TrainConfig, teacher_logits, train_classifier
from slimkit.errors import SlimkitError, check_sparsity
from slimkit.headline import check_headline, headline_markdown, print_headline, run_headline
from slimkit.io import cache_root, load_model, save_model
from slimkit.models import MODEL_CLASSES, MODEL_NAMES, build_model
from slimkit.outputs import check_output_folder, output_folder
from slimkit.prune import bake, magnitude_prune
from slimkit.prune.recovery import fine_tune
from slimkit.report import print_table, profile_classifiers, speed_notes, write_reports


class DemoConfig(BaseModel):
    """Settings of the prune-and-distill pipeline (CLI options and YAML recipe alike)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    teacher: str = "source"
    student: str = "target"
    teacher_epochs: int = Field(3, ge=1)
    student_epochs: int = Field(2, ge=1)
    finetune_epochs: float = Field(0.25, ge=0, description="passes over the training split; may be fractional")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    student_lr: float = Field(3e-3, gt=0)
    finetune_lr: float = Field(3e-4, gt=0)
    sparsity: float | None = 0.5
    theta: float | None = Field(None, ge=0, description="remove |w| <= theta; overrides sparsity")
    prune_scope: Literal["global", "layer"] = "global"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)
    seed: int = 0
    val_fraction: float = Field(0.1, ge=0, lt=1)
    out: str = "runs/demo"
    overwrite: bool = Field(False, description="replace an earlier slimkit result in `out`")
    reuse_teacher: bool = True
    latency_runs: int = Field(50, ge=5)
    train_subset: int = Field(0, ge=0, description="use only the first N training samples (0 = all)")
    headline: bool = Field(True, description="compress the teacher, KD recovery against CE on the same cut")
    headline_target: TargetText = Field("latency=0.5x", description="compress target: latency=0.5x, macs=2x or params=2x")
    headline_floor: FloorText = Field("-1pt", description="validation floor: -1pt relative to the teacher, or "
                                                            "an absolute accuracy such as 0.9")
    headline_search_steps: int = Field(200, ge=0, description="recovery steps of each mix compress tries")
    headline_recover_steps: int = Field(400, ge=0, description="further recovery steps of the chosen mix (KD and "
                                                                "CE alike)")
    headline_batch_size: int = Field(64, ge=1, description="batch size of the headline's recoveries")

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: float | None) -> float | None:
        return None if v is None else check_sparsity(v)

    @field_validator("teacher", "student")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODEL_NAMES and v not in MODEL_CLASSES:
            raise ValueError(f"unknown model {v!r}; choose one of: {', '.join(sorted(MODEL_NAMES))}")
        return v

    @model_validator(mode="after")
    def _headline_needs_validation(self) -> "DemoConfig":
        if self.headline and self.val_fraction == 0:
            raise ValueError("the headline checks its floor on the validation split: set val_fraction > 0, or "
                             "headline: false")
        return self

    @model_validator(mode="after")
    def _one_pruning_knob(self) -> "DemoConfig":
        if self.theta is not None:
            self.sparsity = None
        elif self.sparsity is None:
            raise ValueError("give sparsity or theta")
        return self


def read_recipe_file(path: str | Path) -> dict:
    """A YAML recipe's mapping (safe_load) with text keys, or one error line."""
    p = Path(path)
    if p.is_dir():
        raise SlimkitError(f"recipe {p} is a folder; pass a YAML file such as recipes/demo.yaml or a run's recipe.yaml")
    if not p.is_file():
        raise SlimkitError(f"recipe {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise SlimkitError(f"recipe {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise SlimkitError(f"recipe {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SlimkitError(f"recipe {p} must be a mapping of settings, got {type(raw).__name__}")
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        raise SlimkitError(f"recipe {p} has setting names that are not text: {odd[:3]}; write each key as a name "
                           f"such as 'dataset'")
    return raw


def load_recipe(path: str | Path) -> DemoConfig:
    """Read a YAML recipe (safe_load) into a validated DemoConfig whose data paths exist.

    Relative data paths are read from the current folder, as on the command line.
    """
    p = Path(path)
    raw = read_recipe_file(p)
    cfg = make_config(**raw)
    check_data_paths(cfg, f"recipe {p}")
    return cfg


def check_data_paths(cfg: DemoConfig, source: str = "settings") -> None:
    """Refuse a data file or folder that does not exist, before anything is loaded or trained."""
    if cfg.dataset.endswith(".npz") and not Path(cfg.dataset).is_file():
        raise SlimkitError(f"{source} names data file {cfg.dataset}, which is not a file (relative paths are read "
                           f"from {Path.cwd()}); fix 'dataset'")
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise SlimkitError(f"{source} names data folder {cfg.data_dir}, which does not exist (relative paths are read "
                           f"from {Path.cwd()}); fix 'data_dir'")


def make_config(**settings) -> DemoConfig:
    """DemoConfig from keyword settings, with pydantic's complaint condensed to one line."""
    try:
        return DemoConfig(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "settings"
        raise SlimkitError(f"invalid setting {where}: {first['msg'].removeprefix('Value error, ')}") from None


def _teacher_key(cfg: DemoConfig, data: Dataset) -> str:
    settings = {
        "teacher": cfg.teacher, "dataset": data.name, "n_train": len(data.train), "shape": data.sample_shape,
        "epochs": cfg.teacher_epochs, "batch": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
        "val_fraction": cfg.val_fraction, "first": float(data.train.x[:64].sum()), "version": 1,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _model_kwargs(data: Dataset) -> dict:
    return {"in_channels": data.in_channels, "input_size": data.input_size, "num_classes": data.num_classes}


def get_teacher(cfg: DemoConfig, data: Dataset, train: TrainConfig, progress: bool = True) -> tuple[torch.nn.Module, str]:
    """Train the teacher, or reuse the cached one trained with the same settings."""
    cached = cache_root() / "teachers" / f"{cfg.teacher}-{_teacher_key(cfg, data)}.safetensors"
    if cfg.reuse_teacher and cached.is_file():
        return load_model(cached), f"reused from cache {cached}"
    torch.manual_seed(cfg.seed)
    teacher = build_model(cfg.teacher, **_model_kwargs(data))
    train_classifier(teacher, data, train, desc="teacher", progress=progress)
    try:
        save_model(teacher, cached)
    except SlimkitError:
        pass  # an unwritable cache only costs retraining next time
    return teacher, "trained"


def run_demo(cfg: DemoConfig, progress: bool = True, inputs: tuple = (), timer: Any = None,
             timing_method: str | None = None) -> dict:
    """Run the pipeline and write checkpoints plus report.json/report.md into `cfg.out`.

    The output folder is checked first (slimkit.outputs: never a folder slimkit did not write, an
    earlier result only with `overwrite`, never one holding an input such as the recipe or the
    data file), then the data and whether the headline can cut the teacher; work happens in a
    staging folder that replaces `cfg.out` only when everything succeeded. `timer` and
    `timing_method` replace the headline's deciding timer (as in `compress`).
    """
    t_start = time.perf_counter()
    inputs = (*inputs, cfg.dataset if cfg.dataset.endswith(".npz") else None, cfg.data_dir)
    check_output_folder(cfg.out, cfg.overwrite, inputs, what="out")
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed, val_fraction=cfg.val_fraction)
    if cfg.train_subset:
        data = Dataset(data.name, data.train.subset(cfg.train_subset), data.val, data.test, data.num_classes)
    if cfg.headline:
        check_headline(cfg, data)
    with output_folder(cfg.out, cfg.overwrite, inputs, command="demo") as stage:
        teacher, logits, result = _run_stages(cfg, data, stage, progress)
        if cfg.headline:
            t = time.perf_counter()
            result["headline"] = run_headline(cfg, data, teacher, logits, result["timings_s"]["teacher"],
                                              result["teacher_origin"], stage, progress, timer, timing_method)
            result["timings_s"]["headline"] = time.perf_counter() - t
            if progress:
                print_headline(result["headline"])
        result["seconds"] = time.perf_counter() - t_start
        appendix = headline_markdown(result["headline"]) if cfg.headline else ""
        write_reports(stage, result.pop("rows"), result["notes"], result["header"], result, appendix=appendix)
    if progress:
        print(f"wrote {cfg.out}/report.json, {cfg.out}/report.md and checkpoints in {result['seconds']:.0f} s")
    return result


def _run_stages(cfg: DemoConfig, data: Dataset, stage: Path,
                progress: bool) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """The teacher -> student rows; returns the teacher and its logits over the training split (the
    headline compresses that teacher and its KD reuses the logits), and the JSON-ready result."""
    base = TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    teacher, teacher_origin = get_teacher(cfg, data, base, progress)
    teacher.eval()
    timings["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    pruned = copy.deepcopy(teacher)
    prune = magnitude_prune(pruned, sparsity=cfg.sparsity, theta=cfg.theta, scope=cfg.prune_scope)
    if cfg.finetune_epochs:
        fine_tune(pruned, data.train, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=cfg.batch_size,
                  seed=cfg.seed, masks=prune.masks, desc="pruned fine-tune", progress=progress)
    bake(pruned, prune.masks)
    timings["prune+finetune"] = time.perf_counter() - t
    if progress:
        per_layer = ", ".join(f"{name} {ratio:.3f}" for name, ratio in prune.kept_per_layer.items())
        print(f"magnitude prune: kept ratio P_r per layer: {per_layer}; total P_r {prune.kept_total:.3f}")

    student_cfg = TrainConfig(epochs=cfg.student_epochs, batch_size=cfg.batch_size, lr=cfg.student_lr, seed=cfg.seed)
    t = time.perf_counter()
    cache = teacher_logits(teacher, data.train)
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.student, **_model_kwargs(data))
    kd_log = train_classifier(student, data, student_cfg, teacher=cache, temperature=cfg.temperature,
                              alpha=cfg.alpha, desc="student KD", progress=progress)
    timings["student KD"] = time.perf_counter() - t

    t = time.perf_counter()
    torch.manual_seed(cfg.seed)
    scratch = build_model(cfg.student, **_model_kwargs(data))
    scratch_log = train_classifier(scratch, data, student_cfg, desc="student scratch", progress=progress)
    timings["student scratch"] = time.perf_counter() - t

    models = {"teacher": teacher, f"pruned teacher ({1 - prune.kept_total:.0%} unstructured)": pruned,
              "student KD": student, "student scratch": scratch}
    files = {"teacher": "teacher", "student KD": "student_kd", "student scratch": "student_scratch"}
    t = time.perf_counter()
    saved = {name: (model, save_model(model, stage / "checkpoints" / f"{files.get(name, 'pruned_teacher')}.safetensors"))
             for name, model in models.items()}
    rows = profile_classifiers(saved, data.test, data.num_classes, latency_runs=cfg.latency_runs)
    timings["evaluate"] = time.perf_counter() - t

    header = (f"slimkit demo on {data.name}: test split {len(data.test)} samples; teacher {teacher_origin}; "
              f"latency = median of {cfg.latency_runs} CPU runs with {rows[0].threads} threads")
    if progress:
        print_table(rows, speed_notes(rows, "teacher"), title=header)
    return teacher, cache, {
        "header": header,
        "rows": rows,
        "notes": speed_notes(rows, "teacher"),
        "config": cfg.model_dump(),
        "prune": prune.as_dict(),
        "history": {"student_kd": [h.as_dict() for h in kd_log], "student_scratch": [h.as_dict() for h in scratch_log]},
        "timings_s": timings,
        "teacher_origin": teacher_origin,
    }
