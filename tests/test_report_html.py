"""report.html in a real browser: Debian's chromium driven by playwright (no browser download), on a tiny
compress run (the ResNet on 8x8 digits of test_compress.py, MACs as the timer: seconds).

The page must open from file:// with no console error and no request but its own file, plot every
mix report.json lists, show the chosen mix's numbers exactly as the JSON has them, and render a
refused run with the refusal as its headline. Skipped in one line where chromium or playwright
is missing (scripts/install.sh installs both).
"""

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slimkit
from slimkit.cli.main import app
from slimkit.compression import RefusedError
from slimkit.compression import run as run_mod
from slimkit.report_html import render_page, write_page
from tests.test_compress import TINY, data, macs_timer, tiny_resnet  # noqa: F401  (data: the shared fixture)

CHROMIUM = Path("/usr/bin/chromium")
runner = CliRunner()


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A finished compress run folder and its report.json."""
    train, val, test = data
    out = tmp_path_factory.mktemp("html") / "run"
    slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=0.0, out=out, seed=3,
                     timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", **TINY)
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def refused(data, tmp_path_factory):
    """A refused compress: every mix misses the floor. Its report (RefusedError.report) as report.json in a
    folder of its own, and the page drawn from it."""
    train, val, test = data
    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod, "recover", lambda student, *a, **k: student)  # no training: scores are parameter counts
    mp.setattr(run_mod, "_score", lambda model, *a: {"accuracy": sum(p.numel() for p in model.parameters()) / 1e6,
                                                      "macro_f1": 0.0})
    try:
        with pytest.raises(RefusedError) as err:  # the dense model (most parameters) scores above the floor
            slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=lambda d: d["accuracy"] - 1e-9,
                             timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", **TINY)
    finally:
        mp.undo()
    folder = tmp_path_factory.mktemp("refused")
    (folder / "report.json").write_text(json.dumps(err.value.report.to_json()))
    write_page(err.value.report.to_json(), folder / "report.html")
    return folder, err.value.report.to_json()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: run scripts/install.sh (apt chromium) for the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: run scripts/install.sh (the dev extra) for the browser tests")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page loaded from file://, with every console error and every request it made."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = {"errors": [], "requests": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_selector(".plotly-graph-div .main-svg")
    return page, seen


def figure(page, div_id: str) -> list[dict]:
    """The traces Plotly drew in div `div_id`: meta tag, x, y and hover text."""
    return page.evaluate("""id => document.getElementById(id).data.map(t => (
        {meta: t.meta || null, name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
         customdata: Array.from(t.customdata || [])}))""", div_id)


def remote_sources(html: str) -> list[str]:
    return re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?((?:https?:)?//[^\"' >]+)",
                      html, flags=re.I)


# -- without a browser ----------------------------------------------------------------------------------
def test_the_page_fetches_nothing_from_the_network(run):
    out, _ = run
    page = (out / "report.html").read_text()
    assert remote_sources(page) == [] and not re.search(r"<script[^>]*\bsrc=", page)  # every script inline
    assert page.count("<script") >= 2 and "Plotly.newPlot" in page  # the library inlined, then the figures
    assert remote_sources('<script src="https://cdn.plot.ly/plotly.js"></script><link href=//x.org/a.css>') == [
        "https://cdn.plot.ly/plotly.js", "//x.org/a.css"]  # the check finds what it looks for


def test_a_refused_demo_headline_is_the_page_headline():
    report = {"header": "slimkit demo on digits", "rows": [], "notes": [], "history": {},
              "headline": {"refused": "no cut that reaches latency=0.5x holds the floor", "rows": [], "notes": [],
                           "settings": {}, "timing": "t"}}
    page = render_page([(report, None)])
    assert re.search(r'<h1 class="headline refused">Refused: compress refused the teacher: no cut', page)


# -- in chromium ------------------------------------------------------------------------------------------
def test_page_loads_from_file_with_no_console_error_and_no_request(browser, run):
    out, _ = run
    page, seen = open_page(browser, out / "report.html")
    assert seen["errors"] == []
    assert seen["requests"] and all(u.startswith("file://") for u in seen["requests"]), seen["requests"]
    shot = out / "report.png"  # next to the page: CI keeps it as an artefact
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    page.close()


def test_the_plot_holds_every_mix_and_the_chosen_numbers_of_the_json(browser, run):
    out, report = run
    page, _ = open_page(browser, out / "report.html")
    traces = figure(page, "run0-trade")
    page.close()
    mixes = [t for t in traces if t["meta"] == "mix"]
    assert sum(len(t["x"]) for t in mixes) == len(report["candidates"]) >= 1
    plotted = sorted(x for t in mixes for x in t["x"])
    assert plotted == sorted(c["latency_share"] for c in report["candidates"])
    chosen = report["candidates"][report["chosen"]]
    [star] = [t for t in traces if t["meta"] == "chosen"]
    assert (star["x"][0], star["y"][0]) == (chosen["latency_share"], chosen["val"])
    [final] = [t for t in traces if t["meta"] == "compressed"]
    assert (final["x"][0], final["y"][0]) == (report["result"]["latency_share"], report["result"]["val"]["accuracy"])
    [dense] = [t for t in traces if t["meta"] == "dense"]
    assert dense["y"][0] == report["dense"]["val"]["accuracy"]


def test_a_refused_run_renders_with_the_refusal_as_headline(browser, refused):
    folder, report = refused
    page, seen = open_page(browser, folder / "report.html")
    headline = page.inner_text("h1.headline")
    traces = figure(page, "run0-trade")
    page.close()
    assert seen["errors"] == []
    assert headline.startswith("Refused: no cut that reaches macs=2x holds the floor")
    assert report["chosen"] is None and not any(t["meta"] == "chosen" for t in traces)
    hovers = [h for t in traces if t["meta"] == "mix" for h in t["customdata"]]
    assert len(hovers) == len(report["candidates"]) and all("refused: val accuracy" in h for h in hovers)


def test_slimkit_report_puts_two_runs_in_one_page(browser, run, refused, tmp_path):
    (out, report), (folder, refused_report) = run, refused
    page_path = tmp_path / "compare.html"
    result = runner.invoke(app, ["report", str(out), str(folder / "report.json"), "--out", str(page_path)])
    assert result.exit_code == 0, result.output
    page, seen = open_page(browser, page_path)
    assert seen["errors"] == []
    assert page.locator("section.run").count() == 2
    heads = page.locator("h1.headline").all_inner_texts()
    counts = [sum(len(t["x"]) for t in figure(page, f"run{i}-trade") if t["meta"] == "mix") for i in (0, 1)]
    page.close()
    assert heads[0].endswith("floor held") and heads[1].startswith("Refused:")
    assert counts == [len(report["candidates"]), len(refused_report["candidates"])]


# -- the command's refusals -------------------------------------------------------------------------------
def test_slimkit_report_rerenders_into_the_run_and_keeps_its_manifest(run, tmp_path):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = runner.invoke(app, ["report", str(copy)])
    assert result.exit_code == 2 and "pass --overwrite" in result.stderr
    result = runner.invoke(app, ["report", str(copy), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "report.html" in json.loads((copy / ".slimkit-run.json").read_text())["files"]


@pytest.mark.parametrize("args,needle", [
    (["nope"], "does not exist"),
    (["EMPTY"], "holds no report.json"),
    (["RUN", "RUN"], "name it with --out"),
    (["BAD"], "cannot read"),
    (["RUN", "--out", "page.txt"], "should name an .html page"),
])
def test_slimkit_report_refuses_bad_input_in_one_line(run, tmp_path, args, needle):
    out, _ = run
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    names = {"nope": str(tmp_path / "nope"), "EMPTY": str(tmp_path / "empty"), "RUN": str(out),
             "BAD": str(tmp_path / "bad.json"), "page.txt": str(tmp_path / "page.txt")}
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["report", *[names.get(a, a) for a in args]])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
