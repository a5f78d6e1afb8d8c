"""The demo's headline: `compress` on the demo's teacher, and the control that shows what KD adds.

After the teacher -> student rows, the trained teacher goes through `slimkit.compress` at the
demo's target and floor, recovered by KD from the teacher (the product's default). The chosen cut
is then recovered again from the same structure and starting weights, for the same steps and
schedule, with plain cross-entropy on the labels (`recover_chosen(..., recovery="ce")`), so the
loss is the only difference. The dense teacher and both recovered cuts are timed together in one
run of the deciding timer (fresh processes for slimkit's models), so their latency shares compare
like with like, and each is tested once on the test split.

Nothing here is decided in advance: a cut not measured faster is kept (`keep_slower`) so its
numbers can be shown, and the notes say plainly when it is not faster or when KD does not beat CE.
When compress refuses (no cut holds the floor), the headline records its one-line reason.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from slimkit.errors import SlimkitError
from slimkit.measure.rows import column_cells, markdown_table, rich_table, table_console

if TYPE_CHECKING:
    from slimkit.compression.result import CompressReport
    from slimkit.data import Dataset
    from slimkit.demo.config import DemoConfig

KD_ROW, CE_ROW = "compress + KD", "same cut + CE"


@dataclass
class HeadlineRow:
    """One model of the headline, every number measured in this run."""

    name: str
    recovery: str
    accuracy: float
    ms: float
    latency_share: float  # ms / the dense teacher's ms, from the same timing run
    macs: int
    macs_reduction: float
    params: int
    wall_s: float
    wall_covers: str


def check_headline(cfg: DemoConfig, data: Dataset) -> None:
    """Refuse, before any training, a teacher the structured cutter cannot cut (one error line)."""
    import torch

    from slimkit.compression.cutters import StructuredCutter, check_cuttable
    from slimkit.models import build_model

    torch.manual_seed(cfg.seed)
    probe = build_model(cfg.teacher, in_channels=data.in_channels, input_size=data.input_size,
                        num_classes=data.num_classes).eval()
    example = data.val.x[:1]
    try:
        check_cuttable(StructuredCutter(example), probe, [data.train.x[:8]])
    except SlimkitError as exc:
        raise SlimkitError(f"the headline compresses the teacher, and {exc}; choose another teacher or set "
                           f"headline: false (--no-headline)") from None


def run_headline(cfg: DemoConfig, data: Dataset, teacher: nn.Module, logits: Any, teacher_wall: float,
                 teacher_origin: str, stage: Path, progress: bool, timer: Any = None,
                 timing_method: str | None = None) -> dict:
    """Compress the teacher (KD), recover the same cut with CE, time and test all three; JSON-ready.

    `logits` are the teacher's over `data.train` in index order (computed for the KD student
    already; compress's KD reuses them). `timer` (with `timing_method` in words) replaces the
    deciding timer, as in `compress`.
    """
    from slimkit.compression import compress, deciding_timer, recover_chosen
    from slimkit.distill import classification, evaluate
    from slimkit.io import save_model
    from slimkit.measure import count_macs, count_params

    task = classification()
    example = data.val.x[:1]
    base = {"target": cfg.headline_target, "floor": cfg.headline_floor, "recovery": "kd",
            "search_steps": cfg.headline_search_steps, "recover_steps": cfg.headline_recover_steps,
            "batch_size": cfg.headline_batch_size}
    if timer is None:
        timer, timing_method = deciding_timer(teacher, example)
    t = time.perf_counter()
    try:
        result = compress(teacher, data.train, data.val, data.test, task=task, target=cfg.headline_target,
                          floor=cfg.headline_floor, example=example, seed=cfg.seed, timer=timer,
                          timing_method=timing_method, keep_slower=True, progress=progress, teacher_outputs=logits,
                          search_steps=cfg.headline_search_steps, recover_steps=cfg.headline_recover_steps,
                          batch_size=cfg.headline_batch_size)
    except SlimkitError as exc:
        return {"settings": base, "refused": str(exc), "timing": timing_method, "rows": [],
                "notes": [f"compress refused the teacher at {cfg.headline_target}, floor {cfg.headline_floor}: {exc}"]}
    kd_wall = time.perf_counter() - t
    t = time.perf_counter()
    ce_training: dict = {}  # the CE control's curve, drawn beside KD's (report.training) on the page
    ce_model = recover_chosen(result, teacher, data.train, task, progress=progress, recovery="ce", val=data.val,
                              training=ce_training)
    ce_test = evaluate(ce_model, data.test, task)["accuracy"]
    ce_wall = time.perf_counter() - t
    save_model(result.model, stage / "checkpoints" / "compressed_kd.safetensors")
    save_model(ce_model, stage / "checkpoints" / "compressed_ce.safetensors")

    dense_ms, kd_ms, ce_ms = timer([teacher, result.model, ce_model])
    rep = result.report
    dense_macs = rep.dense.macs
    kd_macs, ce_macs = rep.result.macs, count_macs(ce_model, example)
    rows = [
        HeadlineRow("dense teacher", "-", rep.dense.test["accuracy"], dense_ms, 1.0, dense_macs, 1.0,
                    rep.dense.params, teacher_wall, f"teacher {teacher_origin}"),
        HeadlineRow(KD_ROW, "kd", rep.result.test["accuracy"], kd_ms, kd_ms / dense_ms, kd_macs,
                    dense_macs / max(1, kd_macs), rep.result.params, kd_wall,
                    "the whole compress call: search, recoveries, test, timing"),
        HeadlineRow(CE_ROW, "ce", ce_test, ce_ms, ce_ms / dense_ms, ce_macs, dense_macs / max(1, ce_macs),
                    count_params(ce_model)[0], ce_wall, "the same recovery steps with CE, and its test"),
    ]
    return {"settings": base, "timing": timing_method, "rows": [asdict(r) for r in rows],
            "notes": headline_notes(rows, rep, cfg), "compress": rep.to_json(), "ce_training": ce_training}


def headline_notes(rows: list[HeadlineRow], report: CompressReport, cfg: DemoConfig) -> list[str]:
    """Plain statements of what the headline measured, including what did not work out."""
    dense, kd, ce = rows
    r = report.result
    steps = f"{cfg.headline_search_steps} + {cfg.headline_recover_steps} steps"
    line = (f"{KD_ROW}: {kd.latency_share:.2f}x the dense latency ({kd.ms:.3f} vs {dense.ms:.3f} ms), "
            f"{kd.macs_reduction:.2f}x fewer MACs, test accuracy {100 * (kd.accuracy - dense.accuracy):+.2f} pt "
            f"against the dense teacher")
    if kd.ms >= dense.ms:
        line += ". It is NOT measured faster here: compress would refuse it (the demo keeps it to show the numbers)"
    elif kd.latency_share > report_share(report):
        line += f". Faster, but it misses the target {report.target} in this timing run"
    notes = [line]
    notes.append(f"compress's own check (the same timer, its own run): {r.ms:.3f} vs {report.dense.ms:.3f} ms, "
                 f"{'faster' if r.faster else 'NOT faster'}; {report.target_verdict}; "
                 f"validation floor {report.floor} {'held' if r.val_holds_floor else 'NOT held'} after full recovery")
    gap = 100 * (kd.accuracy - ce.accuracy)
    if gap > 0:
        notes.append(f"KD against CE on the same cut, same start and {steps}: KD is {gap:.2f} pt better on test")
    else:
        notes.append(f"KD against CE on the same cut, same start and {steps}: KD does NOT beat CE here "
                     f"({gap:+.2f} pt on test)")
    return notes


def report_share(report: CompressReport) -> float:
    """The latency share a latency target allows (1.0 for a MACs or parameter target)."""
    from slimkit.compression.settings import parse_target

    t = parse_target(report.target)
    return t.share if t.kind == "latency" else 1.0


COLUMNS = [
    ("model", lambda r: r["name"]),
    ("recovery", lambda r: r["recovery"]),
    ("test acc %", lambda r: f"{100 * r['accuracy']:.2f}"),
    ("ms b1", lambda r: f"{r['ms']:.3f}"),
    ("x dense latency", lambda r: f"{r['latency_share']:.2f}"),
    ("MACs reduction", lambda r: f"{r['macs_reduction']:.2f}x"),
    ("params", lambda r: f"{r['params']:,}"),
    ("wall s", lambda r: f"{r['wall_s']:.0f}"),
]


def headline_title(h: dict) -> str:
    s = h["settings"]
    return (f"headline: compress the teacher at {s['target']}, floor {s['floor']}, KD recovery against CE on the same "
            f"cut ({s['search_steps']} + {s['recover_steps']} steps of batch {s['batch_size']}); timing: {h['timing']}")


def headline_markdown(h: dict) -> str:
    """The headline's section of report.md: title, table (when compress gave a result), notes."""
    lines = ["", "## Headline", "", headline_title(h), ""]
    if h["rows"]:
        lines += markdown_table(*column_cells(COLUMNS, h["rows"]))
        lines += ["", "wall s: " + "; ".join(f"{r['name']}: {r['wall_covers']}" for r in h["rows"]), ""]
    lines += [f"- {n}" for n in h["notes"]]
    return "\n".join(lines) + "\n"


def print_headline(h: dict) -> None:
    console = table_console()
    if h["rows"]:
        console.print(rich_table(*column_cells(COLUMNS, h["rows"]), headline_title(h), left=("model", "recovery")))
    for n in h["notes"]:
        console.print(f"- {n}", soft_wrap=True)
