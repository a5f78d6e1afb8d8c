"""The compress report: JSON, Markdown and one PNG of every mix tried, written with the model.

The PNG has two panels: measured latency (share of dense) against the validation metric of every
mix recovered, the dense model and the floor drawn in and the chosen mix marked; and the kept
width of every channel group in the chosen mix. Everything goes through
slimkit.io.outputs.output_folder: staged, fsynced, renamed in, with a manifest, and an existing
folder is replaced only when slimkit wrote it and --overwrite is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.compression.result import CompressReport, CompressResult

if TYPE_CHECKING:
    from slimkit.compression.rebuild import Rebuild


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _beside(report: dict) -> list[str]:
    """A line for what the timer measured beside the deciding time (an LM's prefill), when it did."""
    b = report.get("timing_beside") or {}
    if not b.get("prefill_ms"):
        return []
    dense, comp = b["prefill_ms"][:2]
    return [f"- prefill of a {b.get('prompt_tokens', '?')}-token prompt (beside, not deciding): dense {dense:.3f} ms, "
            f"compressed {comp:.3f} ms"]


def to_markdown(typed: CompressReport) -> str:
    """The report as a Markdown page: summary, the dense and compressed rows, every mix tried."""
    report = typed.to_json()  # rendered from what report.json holds, as report.html is
    d, r, m = report["dense"], report["result"], report["metric"]
    direction = ">=" if report["higher_is_better"] else "<="
    lines = [
        "# slimkit compress", "",
        (f"- task: {report['task']}; metric: validation {m} (floor {direction} {report['floor_value']:.4g}, "
         f"from {report['floor']})"),
        (f"- target: {report['target']}; cutter: {report['cutter']}; recovery: "
         f"{report['settings'].get('recovery', 'kd')}"),
        f"- timing: {report['timing']}",
        *_beside(report),
        (f"- result: {'measured faster' if r['faster'] else 'NOT measured faster'} "
         f"({r['ms']:.3f} ms vs dense {d['ms']:.3f} ms, {r['speedup']:.2f}x), {typed.target_verdict}; "
         f"{report['candidates_tried']} of "
         f"{len(report['candidates'])} mixes recovered; wall {_fmt(report.get('wall_seconds'))} s"),
        *([f"- chosen: {report['choice']}"] if report.get("choice") else []),
        "", "| model | MMACs | params | ms | val " + m + " | test " + m + " |", "|---|---|---|---|---|---|",
        (f"| dense | {d['macs'] / 1e6:.2f} | {d['params']} | {d['ms']:.3f} | {_fmt(d['val'].get(m))} | "
         f"{_fmt(d['test'].get(m))} |"),
        (f"| compressed | {r['macs'] / 1e6:.2f} | {r['params']} | {r['ms']:.3f} | {_fmt(r['val'].get(m))} | "
         f"{_fmt(r['test'].get(m))} |"),
        "", "## Mixes (fastest first)", "",
        "| # | blocks removed | channel ratio | MMACs | ms (search) | x dense (search) | x dense (timed again) "
        "| val after short KD | holds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(report["candidates"]):
        mark = " (chosen)" if i == report["chosen"] else ""
        again = c.get("confirmed_share")
        lines.append(f"| {i}{mark} | {c['blocks']} {', '.join(c['removed'])} | {c['ratio']:g} | {c['macs'] / 1e6:.2f} "
                     f"| {c['ms']:.3f} | {c['latency_share']:.2f} | {'-' if again is None else format(again, '.2f')} "
                     f"| {_fmt(c['val'])} | {_fmt(c['held'])} |")
    chosen = report["candidates"][report["chosen"]]
    lines += ["", "## Kept widths of the chosen mix", "", "| group | kept | of |", "|---|---|---|"]
    lines += [f"| {g} | {k} | {n} |" for g, (k, n) in chosen["kept"].items()]
    intact = report.get("kept_intact") or {}
    if intact.get("modules") or intact.get("groups"):
        lines += ["", "## Kept intact", "", "| module or channel group | why |", "|---|---|"]
        lines += [f"| {n} | {why} |" for n, why in intact.get("modules", {}).items()]
        lines += [f"| {n} (channels) | {why} |" for n, why in intact.get("groups", {}).items()]
    lines += deployment_markdown(report)
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report.get("saved"):
        s = report["saved"]
        lines += ["", f"Saved: `{s['path']}` ({s['format']}); reload: {s['reload']}."]
    return "\n".join(lines) + "\n"


def deployment_markdown(report: dict) -> list[str]:
    """The deployment section: the ONNX rows (slimkit.measure.rows's table), the efficiencies and notes, or the
    export's failure."""
    onnx = report.get("onnx")
    if not onnx:
        return []
    if "error" in onnx:
        return ["", "## Deployment (ONNX Runtime)", "", f"Export failed, model.onnx not written: {onnx['error']}"]
    from slimkit.measure.rows import DeployRow, deploy_table

    rows = report["deployment"]
    cols, cells = deploy_table([DeployRow(**r) for r in rows])
    lines = ["", "## Deployment (ONNX Runtime)", "",
             (f"Timed: {rows[0]['timing']}; graph optimisation level {onnx['optimisation_level']}. "
              f"Metric on the {onnx['split']} split through ONNX Runtime (PyTorch's within 0.1 pt)."), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c) + " |" for c in cells] + [""]
    return lines + [f"- {n}" for n in onnx["notes"]]


def plot(report: dict, path: Path) -> None:
    """The two-panel PNG (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["metric"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    tried = [c for c in report["candidates"] if c["val"] is not None]
    ax.scatter([c["latency_share"] for c in tried], [c["val"] for c in tried], c="tab:blue", label="mix (short KD)")
    for c in tried:
        ax.annotate(f"{c['blocks']}b r{c['ratio']:g}", (c["latency_share"], c["val"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ch = report["candidates"][report["chosen"]]
    ax.scatter([ch["latency_share"]], [ch["val"]], marker="*", s=250, c="tab:red", label="chosen", zorder=3)
    ax.scatter([1.0], [report["dense"]["val"][m]], marker="s", c="black", label="dense")
    ax.axhline(report["floor_value"], ls="--", c="gray", label=f"floor {report['floor']}")
    ax.set_xlabel("measured latency / dense (batch 1)")
    ax.set_ylabel(f"validation {m}")
    ax.set_title(f"mixes tried ({report['target']})")
    ax.legend(fontsize=8)
    kept = ch["kept"]
    names = list(kept)
    bx.bar(range(len(names)), [n for _, n in kept.values()], color="lightgray", label="dense width")
    bx.bar(range(len(names)), [k for k, _ in kept.values()], color="tab:red", label="kept")
    bx.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    bx.set_ylabel("channels")
    bx.set_title(f"kept width per group ({ch['blocks']} blocks removed)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(out: str | Path, result: CompressResult, example: Any, plan: Rebuild, overwrite: bool = False,
                 inputs: tuple = (), command: str = "slimkit compress", onnx: bytes | None = None,
                 recipe: dict | None = None) -> Path:
    """Model (saved as `plan` says) + report.json + report.md + candidates.png + recipe.yaml + report.html
    (slimkit.report_html: the same report as one self-contained page) (+ `onnx`, the
    checked export's bytes, as model.onnx) into `out`, atomically. `recipe` is the command line's
    (slimkit.cli.recipe); without one the settings are written and the model named as a Python object."""
    from slimkit.compression.rebuild import save_compressed
    from slimkit.io.outputs import output_folder

    from slimkit.report_html import page_bytes

    with output_folder(out, overwrite=overwrite, inputs=inputs, command=command) as stage:
        saved = save_compressed(result.model, stage, plan)
        result.report.saved = {**saved, "bytes": _size(stage / saved["path"])}
        if onnx is not None:
            (stage / "model.onnx").write_bytes(onnx)
        report = result.report.to_json()
        (stage / "report.json").write_text(json.dumps(report, indent=1, default=str))
        (stage / "report.md").write_text(to_markdown(result.report))
        recipe_yaml = recipe_text(result, out, recipe)
        (stage / "recipe.yaml").write_text(recipe_yaml)
        plot(report, stage / "candidates.png")
        (stage / "report.html").write_bytes(page_bytes(report, recipe_yaml))
    return Path(out)


def _size(path: Path) -> int:
    """Bytes of the saved model: its file, or every file of its folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def recipe_text(result: CompressResult, out: str | Path, recipe: dict | None) -> str:
    """recipe.yaml: the command line's recipe, or the run's settings when compress() was called from Python."""
    import yaml

    head = "# replay with: slimkit run recipe.yaml --overwrite (or copy and edit)\n"
    if recipe is not None:
        return head + yaml.safe_dump(recipe, sort_keys=False)
    s = result.settings
    settings = {"command": "compress", "model": None, "data": None, "target": s.target, "floor": result.report.floor,
                "out": str(out), "seed": s.seed, "search_steps": s.search_steps, "recover_steps": s.recover_steps,
                "recovery": s.recovery, "batch_size": s.batch_size, "max_blocks": s.max_blocks, "round_to": s.round_to}
    return (head + "# this run was given its model and data as Python objects (slimkit.compress()): set model: and "
            "data: to replay it from the command line\n" + yaml.safe_dump(settings, sort_keys=False))
