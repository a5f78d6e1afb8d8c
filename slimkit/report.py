"""Profile rows for a set of models, and their rendering as a table, JSON and Markdown.

Speed claims in a report come only from `measure_latency_interleaved` run on this machine; the notes say so
plainly when a smaller model is not faster.
"""

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from slimkit.data.arrays import Split
from slimkit.outputs import atomic_write_bytes
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


def render_markdown(rows: list[ProfileRow], notes: list[str], header: str = "") -> str:
    lines = [header, ""] if header else []
    lines.append("| " + " | ".join(c for c, _ in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        lines.append("| " + " | ".join(fmt(r) for _, fmt in COLUMNS) + " |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def print_table(rows: list[ProfileRow], notes: list[str], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for col, _ in COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(*(fmt(r) for _, fmt in COLUMNS))
    # Off a terminal rich assumes 80 columns and squeezes the numbers; logs get a readable width.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    for n in notes:
        console.print(f"- {n}", soft_wrap=True)


def write_reports(folder: Path, rows: list[ProfileRow], notes: list[str], header: str, details: dict) -> None:
    """report.json and report.md, each written atomically."""
    payload = {"header": header, "rows": [asdict(r) for r in rows], "notes": notes, **details}
    atomic_write_bytes(folder / "report.json", json.dumps(payload, indent=2).encode())
    atomic_write_bytes(folder / "report.md", render_markdown(rows, notes, header).encode())
