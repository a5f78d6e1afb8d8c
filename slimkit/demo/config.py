"""The demo's settings: `DemoConfig` is both the CLI's option set and the YAML recipe's schema (pydantic
validates it), so the command line, a recipe and the Python API drive exactly the same code. Kept apart
from the pipeline so the headline can name the settings without importing the pipeline that runs it.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimkit.compression.settings import FloorText, TargetText
from slimkit.errors import SlimkitError, check_sparsity
from slimkit.io.recipe import read_recipe_file
from slimkit.models import MODEL_CLASSES, MODEL_NAMES


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


