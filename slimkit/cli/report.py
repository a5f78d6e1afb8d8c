"""`slimkit report RUN [RUN ...]`: re-render a run's report.html from its report.json, or put several runs
side by side in one page (slimkit.report_html).

Pages are written when a run is made; this command redraws them after slimkit's renderer changed,
for a run written before pages existed, or to compare runs (e.g. two compress targets, or KD
against CE). It reads JSON and the run's recipe.yaml only, never a model or a pickle.
"""

import json
from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app
from slimkit.errors import SlimkitError


def read_run(run: Path) -> tuple[Path, dict, str | None]:
    """(report.json path, its dict, the recipe.yaml beside it or None) of a run folder or report.json."""
    path = run / "report.json" if run.is_dir() else run
    if not run.exists():
        raise SlimkitError(f"{run} does not exist; give a run folder slimkit wrote (it holds report.json) or its "
                           f"report.json")
    if not path.is_file():
        raise SlimkitError(f"{run} holds no report.json; give a folder written by slimkit compress, demo or export "
                           f"--report")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SlimkitError(f"cannot read {path} as JSON ({str(exc).splitlines()[0]}); re-run the command that wrote "
                           f"it") from None
    if not isinstance(report, dict):
        raise SlimkitError(f"{path} is not a slimkit report (a JSON object); re-run the command that wrote it")
    recipe = path.parent / "recipe.yaml"
    return path, report, recipe.read_text(encoding="utf-8") if recipe.is_file() else None


@app.command()
@clean_errors
def report(
    runs: list[Path] = typer.Argument(..., help="run folders (or their report.json files): one to re-render, "
                                                "several to compare side by side"),
    out: Optional[Path] = typer.Option(None, help="the page to write (default for one run: RUN/report.html; "
                                                  "required for several), e.g. compare.html"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing page"),
) -> None:
    """Draw report.html from report.json: the search, the cut, the numbers, training curves, provenance."""
    from slimkit.io.outputs import add_to_run
    from slimkit.report_html import render_page

    read = [read_run(run) for run in runs]
    if out is None:
        if len(runs) > 1:
            raise SlimkitError(f"{len(runs)} runs go into one page: name it with --out, e.g. --out compare.html")
        out = read[0][0].parent / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise SlimkitError(f"--out {out} should name an .html page, e.g. --out compare.html")
    try:
        page = render_page([(rep, recipe) for _, rep, recipe in read], labels=[str(p) for p, _, _ in read])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        which = next((str(p) for p, rep, _ in read if not _draws(rep)), ", ".join(str(p) for p, _, _ in read))
        raise SlimkitError(f"{which} is not a report slimkit can draw (a missing or malformed field: {exc!r}); "
                           f"re-run the command that wrote it") from None
    add_to_run(out, page.encode("utf-8"), overwrite, inputs=[p for p, _, _ in read])
    typer.echo(f"wrote {out}")


def _draws(report: dict) -> bool:
    """Whether one report renders on its own (to name the broken one of several)."""
    from slimkit.report_html import render_page

    try:
        render_page([(report, None)])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return False
    return True
