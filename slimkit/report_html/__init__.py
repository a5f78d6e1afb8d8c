"""report.html: a run's report.json as one self-contained page: the search, the cut, the numbers, the training
curves and the provenance, drawn with Plotly.

A run is a trade between speed, size and quality, and a picture of it reads faster than tables.
The page must open anywhere (a mail attachment, a CI artefact, an offline machine), so Plotly's
script is inlined once in the page's head and nothing is fetched: no CDN, no fonts, no MathJax.
It holds only numbers that are in report.json; provenance (versions, CPU, threads, date) is
recorded into report.json when the run is made (`provenance()`), so a page re-rendered later
on another machine still describes the machine that measured.

`render_page([(report, recipe_text)])` draws one run or several side by side; `page_bytes` is
what the run folders write; slimkit.cli.report re-renders from report.json files.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:0;color:#212529;background:#f8f9fa}
main{display:grid;gap:16px;padding:16px;align-items:start}
section.run{min-width:0;background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:16px 20px}
h1.headline{font-size:1.25rem;padding:10px 14px;border-radius:4px;background:#e7f5ff}
h1.refused{background:#fff5f5;color:#c92a2a}
h1.gained{background:#ebfbee;color:#2b8a3e}
.nested h1.headline{font-size:1.05rem}
table{border-collapse:collapse;margin:8px 0;font-size:.85rem}
th,td{border:1px solid #dee2e6;padding:3px 8px;text-align:left}
th{background:#f1f3f5}
pre{background:#f1f3f5;padding:8px;overflow:auto;font-size:.8rem}
.run-path{color:#868e96;font-size:.8rem}
"""


def provenance(timing_threads: int | None = None) -> dict[str, Any]:
    """Where and when a run was measured: slimkit, torch and Python versions, the CPU's model, its logical
    cores, torch's thread count (training and evaluation) and the timing threads, and the date."""
    import torch

    from slimkit.version import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"slimkit": __version__, "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "timing_threads": timing_threads,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _provenance_html(report: dict, recipe: str | None) -> str:
    from slimkit.report_html.sections import bullets, esc, h

    p = report.get("provenance")
    lines = ([f"slimkit {p['slimkit']}, torch {p['torch']}, Python {p.get('python', '-')}",
              f"CPU: {p['cpu']} ({p.get('cpu_count', '?')} logical cores); torch threads {p.get('torch_threads', '?')}"
              f"; timing threads {p.get('timing_threads') or '-'}", f"date: {p['date']}"] if p else
             ["not recorded: this report.json was written before slimkit recorded its provenance"])
    if recipe is None:
        settings = report.get("settings") or report.get("config")
        recipe = ("# no recipe.yaml beside this report.json; its settings:\n" + json.dumps(settings, indent=1)
                  if settings else None)
    return (h(2, "Provenance") + bullets(lines)
            + (f"<h3>Recipe</h3><pre>{esc(recipe)}</pre>" if recipe else "<p>no recipe recorded</p>"))


def _figure_html(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def render_page(runs: list[tuple[dict, str | None]], labels: list[str] | None = None, title: str = "") -> str:
    """The page: one column per run (report dict, recipe text or None), side by side when several."""
    from plotly.offline import get_plotlyjs

    from slimkit.report_html.sections import esc, run_sections

    columns = []
    for i, (report, recipe) in enumerate(runs):
        label = labels[i] if labels else ""
        path = f'<p class="run-path">{esc(label)}</p>' if label else ""
        columns.append(f'<section class="run" id="run{i}">{path}{run_sections(report, _figure_html, f"run{i}")}'
                       f"{_provenance_html(report, recipe)}</section>")
    title = title or ("slimkit run" if len(runs) == 1 else f"slimkit: {len(runs)} runs side by side")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}'
            # the columns are fixed before any figure is drawn: each plot sizes itself to its column as it is parsed
            f'main{{grid-template-columns:repeat({len(runs)},minmax(0,1fr))}}</style>'
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
            f'<body><main>{"".join(columns)}</main></body></html>\n')


def page_bytes(report: dict, recipe: str | None = None) -> bytes:
    """One run's report.html, from the report as report.json holds it (a JSON round trip, so the page
    shows exactly what the file says)."""
    return render_page([(json.loads(json.dumps(report, default=str)), recipe)]).encode("utf-8")


def write_page(report: dict, path: str | os.PathLike, recipe: str | None = None) -> Path:
    """Write one run's page to `path` atomically (slimkit.io.outputs); the caller has checked `path`."""
    from slimkit.io.outputs import atomic_write_bytes

    return atomic_write_bytes(path, page_bytes(report, recipe))
