"""The whole pipeline on one data set: train (or reuse) a teacher, prune it, distill a student,
train the same student from scratch as the control, then profile all of them on the test split.
Then the headline (slimkit.demo.headline): `compress` the teacher to a measured-faster cut within the
floor with KD recovery, against CE recovery of the same cut.

Its settings are `DemoConfig` (slimkit.demo.config).
"""

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from slimkit.data import Dataset, load_dataset
from slimkit.demo.config import DemoConfig, check_data_paths, load_recipe, make_config
from slimkit.demo.headline import check_headline, headline_markdown, print_headline, run_headline
from slimkit.distill import TrainConfig, teacher_logits, train_classifier
from slimkit.errors import SlimkitError
from slimkit.io import cache_root, load_model, save_model
from slimkit.io.outputs import atomic_write_bytes, check_output_folder, output_folder
from slimkit.measure.rows import print_table, profile_classifiers, speed_notes, write_reports
from slimkit.models import build_model
from slimkit.prune import bake, magnitude_prune
from slimkit.distill.finetune import fine_tune
from slimkit.report_html import page_bytes, provenance

# Re-exported: the demo's API is `make_config`, `load_recipe` and `run_demo` from this module.
__all__ = ["DemoConfig", "check_data_paths", "load_recipe", "make_config", "run_demo"]


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
    """Run the pipeline and write checkpoints plus report.json/.md/.html into `cfg.out`.

    The output folder is checked first (slimkit.io.outputs: never a folder slimkit did not write, an
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
        result["provenance"] = provenance()
        write_reports(stage, result.pop("rows"), result["notes"], result["header"], result, appendix=appendix)
        # the page is drawn from report.json as written, so it shows exactly what the file says
        atomic_write_bytes(stage / "report.html", page_bytes(json.loads((stage / "report.json").read_text())))
    if progress:
        print(f"wrote {cfg.out}/report.json, {cfg.out}/report.md and checkpoints in {result['seconds']:.0f} s")
        print(f"report: {Path(cfg.out) / 'report.html'}")
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
