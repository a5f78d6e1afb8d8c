"""The HTML sections of a run's page, one builder per kind of report.json slimkit writes: compress (and a
refused compress), the demo (its rows, students and KD-vs-CE headline, whose compress run is drawn as a
compress page), and export (deployment rows).

Every figure and number comes from the report dict; numbers are only formatted, never computed
from anything but the report's own fields (a ratio of two of them at most).
"""

from __future__ import annotations

import html
import json
from typing import Any, Callable

from slimkit.report_html import figures

Fig = Callable[[Any, str], str]  # (plotly figure, div id) -> HTML


def esc(v: Any) -> str:
    return html.escape(str(v))


def num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(cols: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def bullets(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in lines) + "</ul>" if lines else ""


def h(level: int, text: str, cls: str = "") -> str:
    return f'<h{level} class="{cls}">{esc(text)}</h{level}>'


# -- compress ---------------------------------------------------------------------------------------
def compress_headline(r: dict) -> tuple[str, str]:
    """(headline, css class): the refusal, 'not measured faster', or the measured gain."""
    if r.get("refused"):
        return f"Refused: {r['refused']}", "refused"
    res, d, m = r["result"], r["dense"], r["metric"]
    if not res["faster"]:
        return (f"NOT measured faster: {res['ms']:.4g} ms against the dense {d['ms']:.4g} ms (kept only because "
                f"keep_slower was set)", "refused")
    test = f", test {m} {num(res['test'].get(m))} (dense {num(d['test'].get(m))})" if res.get("test") else ""
    return (f"{res['speedup']:.2f}x faster ({res['ms']:.4g} vs {d['ms']:.4g} ms), {res['macs_reduction']:.2f}x "
            f"fewer MACs, val {m} {num(res['val'].get(m))}{test}; target {r['target']} "
            f"{'met' if res['meets_target'] else 'missed'}, floor {'held' if res['val_holds_floor'] else 'NOT held'}",
            "gained")


def compress_summary(r: dict) -> str:
    s = r.get("settings", {})
    op = ">=" if r["higher_is_better"] else "<="
    lines = [f"task {r['task']}; metric: validation {r['metric']}, floor {op} {num(r['floor_value'])} (from "
             f"{r['floor']})", f"target {r['target']}; cutter {r['cutter']}; recovery {s.get('recovery', 'kd')} "
             f"({s.get('search_steps', '?')} steps per mix, {s.get('recover_steps', '?')} more for the chosen one, "
             f"batch {s.get('batch_size', '?')})", f"timing: {r['timing']}", f"data: {r.get('data', '-')}",
             f"{r['candidates_tried']} of {len(r['candidates'])} mixes recovered; wall {num(r.get('wall_seconds'))} s"]
    if r.get("choice"):
        lines.append(f"chosen: {r['choice']}")
    beside = r.get("timing_beside") or {}
    if beside.get("prefill_ms"):
        lines.append(f"prefill of a {beside.get('prompt_tokens', '?')}-token prompt (beside, not deciding): dense "
                     f"{num(beside['prefill_ms'][0])} ms, compressed {num(beside['prefill_ms'][1])} ms")
    return bullets(lines)


def compress_cut(r: dict, fig: Fig, key: str) -> str:
    """Kept width per group, removed blocks, the block ranking, and what was kept intact and why."""
    out = [h(2, "The cut")]
    chosen = r.get("chosen")
    if chosen is not None:
        c = r["candidates"][chosen]
        out.append(f"<p>Chosen mix {chosen}: blocks removed: {esc(', '.join(c['removed']) or 'none')}; channel "
                   f"ratio {c['ratio']:g}.</p>")
        if c.get("kept"):
            out.append(fig(figures.widths_figure(c), f"{key}-widths"))
    else:
        out.append("<p>No mix was chosen, so no cut was kept; the mixes tried are in the plot above.</p>")
    if r.get("block_ranking"):
        out += [h(3, "Blocks ranked for removal (least influence first)"),
                table(["block", "influence", "saving ms"],
                      [[b.get("block"), num(b.get("influence")), num(b.get("saving_ms"))] for b in r["block_ranking"]])]
    intact = r.get("kept_intact") or {}
    rows = [[n, why] for n, why in intact.get("modules", {}).items()]
    rows += [[f"{n} (channels)", why] for n, why in intact.get("groups", {}).items()]
    out += [h(3, "Kept intact"), table(["module or channel group", "why"], rows) if rows else "<p>nothing</p>"]
    return "".join(out)


def compress_numbers(r: dict, fig: Fig, key: str) -> str:
    m, d, res = r["metric"], r["dense"], r.get("result")
    cols = ["model", f"val {m}", f"test {m}", "ms (final timing)", "MACs", "params", "file bytes"]
    rows = [["dense", num(d["val"].get(m)), num((d.get("test") or {}).get(m)), num(d.get("ms")), num(d["macs"]),
             num(d["params"]), "-"]]
    if res:
        saved = r.get("saved") or {}
        rows.append(["compressed", num(res["val"].get(m)), num((res.get("test") or {}).get(m)), num(res["ms"]),
                     num(res["macs"]), num(res["params"]), num(saved.get("bytes"))])
    out = [h(2, "The numbers"), table(cols, rows), f"<p>Timing: {esc(r['timing'])}.</p>"]
    if res is None:
        out.append(f"<p>The dense model measured {num(d.get('ms_search'))} ms in the search timing; nothing was "
                   f"recovered fully, tested or timed after the refusal.</p>")
    if r.get("saved"):
        s = r["saved"]
        out.append(f"<p>Saved: <code>{esc(s['path'])}</code> ({esc(s['format'])}); reload: {esc(s['reload'])}.</p>")
    out.append(deployment(r, fig, key))
    if r.get("notes"):
        out += [h(3, "Notes"), bullets(r["notes"])]
    return "".join(out)


def deployment(r: dict, fig: Fig, key: str) -> str:
    onnx = r.get("onnx") or {}
    if "error" in onnx:
        return h(3, "Deployment (ONNX Runtime)") + f"<p>Export failed, model.onnx not written: {esc(onnx['error'])}</p>"
    rows = r.get("deployment") or []
    if not rows:
        return ""
    settings = list(dict.fromkeys(k for x in rows for k in x["latency_ms"]))
    cells = [[x["name"], x["runtime"], x["precision"], f"{x['metric']} {num(x['value'])}", num(x.get("file_bytes"))]
             + [num(x["latency_ms"].get(k)) for k in settings] for x in rows]
    out = [h(3, "Deployment"), table(["variant", "runtime", "precision", "metric", "file bytes"]
                                     + [f"{k} ms" for k in settings], cells),
           f"<p>Timing: {esc(rows[0].get('timing', '-'))}.</p>", fig(figures.deploy_figure(rows), f"{key}-deploy")]
    return "".join(out) + bullets(onnx.get("notes") or [])


def training(records: list[tuple[str, dict]], fig: Fig, key: str, refused: bool = False) -> str:
    records = [(label, rec) for label, rec in records if rec and (rec.get("loss") or rec.get("val"))]
    if not records:
        why = ("no mix held the floor, so none was recovered fully" if refused else
               "this report.json was written before slimkit recorded the curve, or no recovery ran")
        return h(2, "Training") + f"<p>No recovery curve: {why}.</p>"
    return h(2, "Training") + fig(figures.training_figure(records), f"{key}-training")


def compress_sections(r: dict, fig: Fig, key: str, extra_training: list | None = None) -> str:
    head, cls = compress_headline(r)
    label = (r.get("training") or {}).get("recovery", "kd").upper()
    return "".join([h(1, head, f"headline {cls}"), compress_summary(r), h(2, "The trade"),
                    fig(figures.trade_figure(r), f"{key}-trade"), compress_cut(r, fig, key),
                    compress_numbers(r, fig, key),
                    training([(label, r.get("training") or {}), *(extra_training or [])], fig, key,
                             bool(r.get("refused")))])


# -- the demo ---------------------------------------------------------------------------------------
def demo_sections(r: dict, fig: Fig, key: str) -> str:
    hl = r.get("headline")
    out = []
    if hl and hl.get("refused"):
        out.append(h(1, f"Refused: compress refused the teacher: {hl['refused']}", "headline refused"))
    elif hl and hl.get("rows"):
        kd, ce = hl["rows"][1], hl["rows"][2]
        out.append(h(1, f"KD against CE on the same cut: test accuracy {kd['accuracy']:.4f} (KD) vs "
                        f"{ce['accuracy']:.4f} (CE), {kd['latency_share']:.2f}x the dense latency",
                     "headline gained" if kd["ms"] < hl["rows"][0]["ms"] else "headline refused"))
    else:
        out.append(h(1, r.get("header", "slimkit demo"), "headline"))
    out.append(f"<p>{esc(r.get('header', ''))}</p>")
    if hl and hl.get("rows"):
        cols = ["model", "recovery", "test accuracy", "ms", "x dense latency", "MACs", "MACs reduction", "params",
                "wall s", "wall covers"]
        out += [h(2, "Headline: KD against CE"), fig(figures.headline_figure(hl["rows"]), f"{key}-headline"),
                table(cols, [[x["name"], x["recovery"], num(x["accuracy"]), num(x["ms"]), num(x["latency_share"]),
                              num(x["macs"]), num(x["macs_reduction"]), num(x["params"]), num(x["wall_s"], 3),
                              x["wall_covers"]] for x in hl["rows"]]), f"<p>Timing: {esc(hl.get('timing'))}.</p>"]
    if hl:
        out.append(bullets(hl.get("notes") or []))
    out += [h(2, "The numbers"), profile_rows(r.get("rows") or []), bullets(r.get("notes") or [])]
    if r.get("history"):
        out += [h(2, "Students"), fig(figures.epochs_figure(r["history"]), f"{key}-epochs")]
    if hl and hl.get("compress"):
        ce = [("CE control", hl["ce_training"])] if hl.get("ce_training") else []
        out += [h(2, "The headline's compress run"),
                f'<div class="nested">{compress_sections(hl["compress"], fig, key + "-c", ce)}</div>']
    return "".join(out)


def profile_rows(rows: list[dict]) -> str:
    cols = ["model", "accuracy", "macro-F1", "params", "non-zero", "MACs", "batch 1 ms", "batch 256 ms",
            "checkpoint bytes", "threads"]
    return table(cols, [[x["name"], num(x["accuracy"]), num(x["macro_f1"]), num(x["params_total"]),
                         num(x["params_nonzero"]), num(x["macs"]), num(x["latency_b1_ms"]), num(x["latency_b256_ms"]),
                         num(x["checkpoint_bytes"]), num(x["threads"])] for x in rows])


# -- export and the rest ----------------------------------------------------------------------------
def export_sections(r: dict, fig: Fig, key: str) -> str:
    e = r.get("export") or {}
    return "".join([h(1, f"Exported: {r.get('header', '')}", "headline gained"),
                    bullets([f"exporter {e.get('exporter', '-')}, opset {e.get('opset', '-')}"]),
                    profile_rows(r["rows"]) if r.get("rows") else "", deployment(r, fig, key),
                    bullets(r.get("notes") or [])])


def measured_sections(r: dict) -> str:
    """A prune or distill run: its header, the measured rows as the command printed them, its notes."""
    t = r["table"]
    return "".join([h(1, r.get("header", "slimkit run"), "headline"),
                    table(t["columns"], [[num(v) if isinstance(v, (int, float)) else esc(v) for v in row]
                                         for row in t["rows"]]),
                    bullets(r.get("notes") or [])])


def other_sections(r: dict) -> str:
    """A report of a kind no figure is drawn for: its header, notes and its JSON as written."""
    return "".join([h(1, r.get("header", "slimkit report"), "headline"), bullets(r.get("notes") or []),
                    f"<pre>{esc(json.dumps(r, indent=1)[:200_000])}</pre>"])


def kind_of(r: dict) -> str:
    if "candidates" in r and "dense" in r:
        return "compress"
    if "history" in r or "headline" in r:
        return "demo"
    if "export" in r or "deployment" in r:
        return "export"
    if isinstance(r.get("table"), dict) and {"columns", "rows"} <= set(r["table"]):
        return "measured"
    return "other"


def run_sections(r: dict, fig: Fig, key: str) -> str:
    kind = kind_of(r)
    if kind == "compress":
        return compress_sections(r, fig, key)
    if kind == "demo":
        return demo_sections(r, fig, key)
    if kind == "export":
        return export_sections(r, fig, key)
    if kind == "measured":
        return measured_sections(r)
    return other_sections(r)
