"""Profile rows for a set of models, deployment rows for their exported variants, and the rendering of
both as a table, JSON and Markdown.

Speed claims in a report come only from `measure_latency_interleaved` run on this machine (for ONNX
Runtime, through `slimkit.export.time_onnx`, which uses it); the notes say so plainly when a smaller
or quantized model is not faster, and when quantization costs too much of the task metric.
"""

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from slimkit.data.arrays import Split
from slimkit.io.outputs import atomic_write_bytes
from slimkit.measure import count_macs, count_params, evaluate_classifier, file_size_bytes, measure_latency_interleaved


@dataclass
class ProfileRow:
    """One model's measured profile on a test split."""

    name: str
    accuracy: float
    macro_f1: float
    params_total: int
    params_nonzero: int
    macs: int
    latency_b1_ms: float
    latency_b256_ms: float
    checkpoint_bytes: int
    threads: int
    extra: dict = field(default_factory=dict)


def profile_classifiers(
    models: dict[str, tuple[nn.Module, str | Path]],
    test: Split,
    num_classes: int,
    latency_runs: int = 50,
    threads: int | None = None,
) -> list[ProfileRow]:
    """Profile {name: (model, checkpoint)}: accuracy, macro-F1, params, MACs, size, and batch-1 and
    batch-256 latency timed with the models interleaved so their ratios are fair."""
    nets = [m for m, _ in models.values()]
    one, big = test.x[:1], test.x[:256]
    lat1 = measure_latency_interleaved(nets, one, runs=latency_runs, warmup=10, threads=threads)
    # a batch of 256 moves far more activation memory than weights: no warm-up burst needed
    lat256 = measure_latency_interleaved(nets, big, runs=max(5, latency_runs // 5), warmup=3, threads=threads,
                                         burst=1)
    rows = []
    for (name, (model, ckpt)), l1, l256 in zip(models.items(), lat1, lat256):
        metrics = evaluate_classifier(model, test, num_classes)
        total, nonzero = count_params(model)
        rows.append(ProfileRow(
            name=name, accuracy=metrics.accuracy, macro_f1=metrics.macro_f1, params_total=total,
            params_nonzero=nonzero, macs=count_macs(model, one), latency_b1_ms=l1.median_ms,
            latency_b256_ms=l256.median_ms, checkpoint_bytes=file_size_bytes(ckpt), threads=l1.threads,
            extra={"confusion": metrics.confusion},
        ))
    return rows


def profile_classifier(name: str, model: nn.Module, test: Split, num_classes: int, checkpoint: str | Path,
                       latency_runs: int = 50, threads: int | None = None) -> ProfileRow:
    """Profile one model (see profile_classifiers)."""
    return profile_classifiers({name: (model, checkpoint)}, test, num_classes, latency_runs, threads)[0]


@dataclass
class DeployRow:
    """One deployed variant of a model: how it runs, its file, its task metric and its measured latency.

    `metric` names what `value` is ("accuracy" on the test split, or "cosine" of embeddings to the
    PyTorch model); `latency_ms` maps a setting ("batch 1", "batch 32", "seq 128") to a time measured
    here, and `timing` says how. `baseline` names the row this one is compared with in the notes
    (an int8 model with its fp32 export, an export with its PyTorch model).
    """

    name: str
    runtime: str
    precision: str
    metric: str
    value: float
    latency_ms: dict[str, float]
    file: str = ""
    file_bytes: int = 0
    timing: str = ""
    baseline: str | None = None
    extra: dict = field(default_factory=dict)


# Where int8 is said to cost too much: more than this many accuracy points below its fp32 model, or an
# embedding cosine to the PyTorch model below this.
INT8_MAX_DROP_PT = 0.5
INT8_MIN_COSINE = 0.99


def _metric(r: DeployRow) -> str:
    return f"{100 * r.value:.2f}%" if r.metric == "accuracy" else f"{r.value:.4f}"


def deploy_table(rows: list[DeployRow]) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of the deployment table; one latency column per setting measured."""
    settings = list(dict.fromkeys(k for r in rows for k in r.latency_ms))
    cols = ["variant", "runtime", "precision", "metric", "file MB"] + [f"{k} ms" for k in settings]
    cells = [[r.name, r.runtime, r.precision, f"{r.metric} {_metric(r)}",
              f"{r.file_bytes / 1e6:.2f}" if r.file_bytes else "-"]
             + [f"{r.latency_ms[k]:.3f}" if k in r.latency_ms else "-" for k in settings] for r in rows]
    return cols, cells


def deploy_notes(rows: list[DeployRow]) -> list[str]:
    """Per row with a baseline: the metric change and the measured speed-up at each setting both were timed
    at, saying when a variant is not faster and when int8 costs more than INT8_MAX_DROP_PT / INT8_MIN_COSINE."""
    by_name = {r.name: r for r in rows}
    notes = []
    for r in rows:
        base = by_name.get(r.baseline or "")
        if base is None:
            continue
        both = [k for k in r.latency_ms if k in base.latency_ms]
        speed = ", ".join(f"{base.latency_ms[k] / r.latency_ms[k]:.2f}x at {k}" for k in both)
        if r.metric == "accuracy" and base.metric == "accuracy":
            change = f"{100 * (r.value - base.value):+.2f} pt accuracy"
        else:
            change = f"{r.metric} {_metric(r)} (baseline {base.metric} {_metric(base)})"
        line = f"{r.name} vs {base.name}: {change}" + (f"; measured speed-up {speed}" if speed else "")
        slower = [k for k in both if r.latency_ms[k] >= base.latency_ms[k]]
        if slower:
            line += f". Not faster at {', '.join(slower)} on this machine"
        if r.precision.startswith("int8"):
            drop = 100 * (base.value - r.value) if r.metric == base.metric == "accuracy" else None
            if drop is not None and drop > INT8_MAX_DROP_PT:
                line += f". int8 costs {drop:.2f} pt (> {INT8_MAX_DROP_PT} pt): too much; deploy the fp32 model"
            elif r.metric == "cosine" and r.value < INT8_MIN_COSINE:
                line += f". int8 keeps cosine {r.value:.4f} (< {INT8_MIN_COSINE}): too much; deploy the fp32 model"
        notes.append(line)
    return notes


COLUMNS = [
    ("model", lambda r: r.name),
    ("acc %", lambda r: f"{100 * r.accuracy:.2f}"),
    ("macro-F1", lambda r: f"{r.macro_f1:.4f}"),
    ("params", lambda r: f"{r.params_total:,}"),
    ("non-zero", lambda r: f"{r.params_nonzero:,}"),
    ("MMACs", lambda r: f"{r.macs / 1e6:.2f}"),
    ("lat b1 ms", lambda r: f"{r.latency_b1_ms:.3f}"),
    ("lat b256 ms", lambda r: f"{r.latency_b256_ms:.2f}"),
    ("ckpt MB", lambda r: f"{r.checkpoint_bytes / 1e6:.2f}"),
]


def speed_notes(rows: list[ProfileRow], reference: str) -> list[str]:
    """Plain statements of measured speed against `reference`, including when there is none."""
    ref = next(r for r in rows if r.name == reference)
    notes = []
    for r in rows:
        if r.name == reference:
            continue
        s1 = ref.latency_b1_ms / r.latency_b1_ms
        s256 = ref.latency_b256_ms / r.latency_b256_ms
        mac_ratio = ref.macs / max(r.macs, 1)
        line = (f"{r.name}: {mac_ratio:.2f}x fewer MACs; measured speed-up {s1:.2f}x at batch 1, "
                f"{s256:.2f}x at batch 256 ({r.threads} threads)")
        if r.params_nonzero < r.params_total and mac_ratio < 1.05:
            line += (f". Its {100 * (1 - r.params_nonzero / r.params_total):.0f}% zeros are unstructured: dense CPU "
                     "kernels still do every multiply, so sparsity alone gives no speed-up here")
        elif min(s1, s256) < 1.0:
            line += ". Not faster than the reference at every batch size on this machine"
        notes.append(line)
    return notes


def column_cells(columns: list, rows: list) -> tuple[list[str], list[list[str]]]:
    """Column names and cells from (name, format(row)) pairs such as COLUMNS."""
    return [name for name, _ in columns], [[fmt(r) for _, fmt in columns] for r in rows]


def markdown_table(columns: list[str], cells: list[list[str]]) -> list[str]:
    """A Markdown table's lines: header, rule, one line per row of cells."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(c) + " |" for c in cells]


def rich_table(columns: list[str], cells: list[list[str]], title: str = "", left: tuple[str, ...] = ()):
    """The same table for the terminal: the `left` columns (names, labels) left-aligned, numbers right."""
    from rich.table import Table

    table = Table(title=title or None)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    for c in cells:
        table.add_row(*c)
    return table


def table_console():
    """A rich Console; off a terminal rich assumes 80 columns and squeezes the numbers, so logs get 160."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def render_markdown(rows: list[ProfileRow], notes: list[str], header: str = "",
                    deploy: list[DeployRow] | None = None, appendix: str = "") -> str:
    """The table, the deployment table and the notes; `appendix` (Markdown) follows them."""
    lines = [header, ""] if header else []
    if rows:
        lines += markdown_table(*column_cells(COLUMNS, rows)) + [""]
    if deploy:
        lines += ["Deployment:", ""] + markdown_table(*deploy_table(deploy)) + [""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n" + appendix


def print_table(rows: list[ProfileRow], notes: list[str], title: str = "",
                deploy: list[DeployRow] | None = None) -> None:
    console = table_console()
    tables = []
    if rows:
        tables.append(rich_table(*column_cells(COLUMNS, rows), title, left=("model",)))
    if deploy:
        tables.append(rich_table(*deploy_table(deploy), title if not rows else "deployment",
                                 left=("variant", "runtime", "file")))
    for table in tables:
        console.print(table)
    for n in notes:
        console.print(f"- {n}", soft_wrap=True)


def report_files(rows: list[ProfileRow], notes: list[str], header: str, details: dict,
                 deploy: list[DeployRow] | None = None, appendix: str = "") -> dict[str, bytes]:
    """{"report.json": ..., "report.md": ...}: the bytes of both reports, for the caller to write."""
    payload = {"header": header, "rows": [asdict(r) for r in rows], "notes": notes, **details}
    if deploy:
        payload["deployment"] = [asdict(r) for r in deploy]
    return {"report.json": json.dumps(payload, indent=2).encode(),
            "report.md": render_markdown(rows, notes, header, deploy, appendix).encode()}


def write_reports(folder: Path, rows: list[ProfileRow], notes: list[str], header: str, details: dict,
                  deploy: list[DeployRow] | None = None, appendix: str = "") -> None:
    """report.json and report.md (with `appendix`, Markdown, at its end), each written atomically."""
    for name, data in report_files(rows, notes, header, details, deploy, appendix).items():
        atomic_write_bytes(folder / name, data)
