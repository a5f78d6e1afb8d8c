"""Plotly figures of a run's report.json: the search, the cut, the training curves, the KD-vs-CE headline and
the deployment timings.

Every figure is drawn from the report's own numbers only; where the report has no number for a
point (a mix never recovered has no validation score), the point goes where no metric is implied
(a strip below the plot) instead of a made-up position. Traces carry `meta` tags ("mix", "chosen",
"compressed", "dense") so the page's tests can read the plotted data back from the browser.
"""

from __future__ import annotations

import re
from typing import Any

HOVER = "%{customdata}<extra></extra>"


def _go():
    import plotly.graph_objects as go

    return go


def target_share(target: str) -> tuple[str, float | None]:
    """(kind, share of dense) of a target such as latency=0.5x or macs=2x, as compress reads it."""
    m = re.fullmatch(r"\s*(latency|macs|params)\s*=\s*([0-9.eE+-]+)\s*x\s*", str(target), re.IGNORECASE)
    if not m:
        return "", None
    kind, value = m.group(1).lower(), float(m.group(2))
    return kind, value if value < 1 or kind == "latency" else 1 / value


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def mix_reason(report: dict, i: int) -> str:
    """Why mix i was chosen, refused or never tried, in words, from the report's fields."""
    c, chosen = report["candidates"][i], report.get("chosen")
    op = ">=" if report["higher_is_better"] else "<="
    floor = f"the floor {report['metric']} {op} {_num(report['floor_value'])}"
    steps = report["settings"].get("search_steps", "?")
    if c["val"] is None:
        return ("not tried: a faster mix held the floor first" if chosen is not None
                else "not tried: the search stopped before it")
    if i == chosen:
        return f"chosen: the fastest mix that held {floor} after {steps} steps"
    if c["held"]:
        return f"held {floor}, but a faster mix was chosen"
    return f"refused: val {report['metric']} {_num(c['val'])} misses {floor} after {steps} steps"


def _mix_text(report: dict, i: int) -> str:
    c = report["candidates"][i]
    removed = ", ".join(c["removed"]) or "none"
    return (f"mix {i}: {c['blocks']} blocks removed ({removed}), channel ratio {c['ratio']:g}<br>"
            f"{c['ms']:.4g} ms in the search = {c['latency_share']:.3f}x dense"
            + (f", {c['confirmed_share']:.3f}x timed again alone with it" if c.get("confirmed_share") is not None else "")
            + f"; {c['macs']:,} MACs; "
            f"{c['params']:,} params<br>val {report['metric']} {_num(c['val'])}<br>{mix_reason(report, i)}")


def trade_figure(report: dict):
    """Every mix tried: measured latency share against the validation metric; floor and target lines;
    the chosen mix, the compressed model after full recovery and the dense model marked."""
    from plotly.subplots import make_subplots

    go = _go()
    m, cands, chosen = report["metric"], report["candidates"], report.get("chosen")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.86, 0.14], vertical_spacing=0.04)
    groups = [("held the floor", "#2b8a3e", "circle", lambda i, c: c["val"] is not None and c["held"]),
              ("refused: missed the floor", "#c92a2a", "x", lambda i, c: c["val"] is not None and not c["held"])]
    for name, color, symbol, keep in groups:
        idx = [i for i, c in enumerate(cands) if keep(i, c)]
        fig.add_trace(go.Scatter(x=[cands[i]["latency_share"] for i in idx], y=[cands[i]["val"] for i in idx],
                                 mode="markers", name=name, meta="mix", marker=dict(color=color, symbol=symbol, size=10),
                                 customdata=[_mix_text(report, i) for i in idx], hovertemplate=HOVER), row=1, col=1)
    idx = [i for i, c in enumerate(cands) if c["val"] is None]
    fig.add_trace(go.Scatter(x=[cands[i]["latency_share"] for i in idx], y=[0] * len(idx), mode="markers",
                             name="not tried (no val score)", meta="mix", showlegend=bool(idx),
                             marker=dict(color="#868e96", symbol="line-ns-open", size=14, line=dict(width=2)),
                             customdata=[_mix_text(report, i) for i in idx], hovertemplate=HOVER), row=2, col=1)
    dense_val = report["dense"]["val"].get(m)
    fig.add_trace(go.Scatter(x=[1.0], y=[dense_val], mode="markers", name="dense model", meta="dense",
                             marker=dict(color="black", symbol="square", size=11),
                             customdata=[f"dense: 1.0x its own latency; val {m} {_num(dense_val)}"],
                             hovertemplate=HOVER), row=1, col=1)
    if chosen is not None:
        c = cands[chosen]
        fig.add_trace(go.Scatter(x=[c["latency_share"]], y=[c["val"]], mode="markers", name="chosen mix (search)",
                                 meta="chosen", marker=dict(color="#e8590c", symbol="star", size=20),
                                 customdata=[_mix_text(report, chosen)], hovertemplate=HOVER), row=1, col=1)
    r = report.get("result")
    if r:
        fig.add_trace(go.Scatter(x=[r["latency_share"]], y=[r["val"].get(m)], mode="markers", meta="compressed",
                                 name="compressed (full recovery, final timing)",
                                 marker=dict(color="#1864ab", symbol="diamond", size=13),
                                 customdata=[f"compressed after full recovery: {r['ms']:.4g} ms = "
                                             f"{r['latency_share']:.3f}x dense (final timing); val {m} "
                                             f"{_num(r['val'].get(m))}"], hovertemplate=HOVER), row=1, col=1)
    op = ">=" if report["higher_is_better"] else "<="
    fig.add_hline(y=report["floor_value"], line_dash="dash", line_color="#495057", row=1, col=1,
                  annotation_text=f"floor {op} {_num(report['floor_value'])} ({report['floor']})")
    kind, share = target_share(report["target"])
    title = f"every mix tried ({report['target']}; {report['cutter']} cutter)"
    if kind == "latency" and share is not None:
        fig.add_vline(x=share, line_dash="dot", line_color="#e8590c", row=1, col=1,
                      annotation_text=f"target {report['target']}")
        fig.add_vline(x=share, line_dash="dot", line_color="#e8590c", row=2, col=1)
    elif kind:
        title += f"<br><sub>the target is on {kind}: every mix reaches it by construction</sub>"
    fig.update_xaxes(title_text="measured latency / dense (search timing)", row=2, col=1)
    fig.update_yaxes(title_text=f"validation {m}", row=1, col=1)
    fig.update_yaxes(visible=False, row=2, col=1)
    fig.update_layout(title=title, height=520, legend=dict(orientation="h", y=-0.18), margin=dict(t=60))
    return fig


def widths_figure(chosen: dict):
    """Kept width of every channel group in the chosen mix against its dense width."""
    go = _go()
    names = list(chosen["kept"])
    fig = go.Figure([go.Bar(x=names, y=[n for _, n in chosen["kept"].values()], name="dense width",
                            marker_color="#dee2e6"),
                     go.Bar(x=names, y=[k for k, _ in chosen["kept"].values()], name="kept", marker_color="#e8590c")])
    fig.update_layout(barmode="overlay", title=f"kept width per channel group (blocks removed: {chosen['blocks']})",
                      yaxis_title="channels", height=380, margin=dict(t=50))
    return fig


def training_figure(records: list[tuple[str, dict]]):
    """Loss at every recovery step (left axis) and the validation metric where measured (right axis),
    one pair of traces per recovery, e.g. KD and the CE control."""
    go = _go()
    fig = go.Figure()
    colors = ["#1864ab", "#c92a2a", "#2b8a3e", "#862e9c"]
    metric = None
    for k, (label, rec) in enumerate(records):
        color, metric = colors[k % len(colors)], rec.get("metric", metric)
        loss = rec.get("loss") or []
        fig.add_trace(go.Scatter(x=[s for s, _ in loss], y=[v for _, v in loss], mode="lines", name=f"{label} loss",
                                 meta="loss", line=dict(color=color, width=1.5)))
        val = rec.get("val") or []
        fig.add_trace(go.Scatter(x=[s for s, _ in val], y=[v for _, v in val], mode="markers+lines", yaxis="y2",
                                 name=f"{label} val {rec.get('metric', '')}", meta="val",
                                 line=dict(color=color, dash="dot"), marker=dict(size=10, symbol="diamond")))
    fig.update_layout(title="recovery: training loss per step, validation metric where measured", height=400,
                      xaxis_title="optimizer step", yaxis_title="training loss", margin=dict(t=50),
                      yaxis2=dict(title=f"validation {metric or ''}", overlaying="y", side="right"),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def epochs_figure(history: dict[str, list[dict]]):
    """Per-epoch training loss and validation accuracy of the demo's students (KD and from scratch)."""
    go = _go()
    fig = go.Figure()
    for k, (name, logs) in enumerate(history.items()):
        color = ["#1864ab", "#c92a2a"][k % 2]
        fig.add_trace(go.Scatter(x=[h["epoch"] for h in logs], y=[h["train_loss"] for h in logs], mode="lines+markers",
                                 name=f"{name} loss", line=dict(color=color)))
        fig.add_trace(go.Scatter(x=[h["epoch"] for h in logs], y=[h["metrics"].get("accuracy") for h in logs],
                                 mode="lines+markers", yaxis="y2", name=f"{name} val accuracy",
                                 line=dict(color=color, dash="dot")))
    fig.update_layout(title="students: training loss and validation accuracy per epoch", height=360,
                      xaxis_title="epoch", yaxis_title="training loss", margin=dict(t=50),
                      yaxis2=dict(title="validation accuracy", overlaying="y", side="right"),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def headline_figure(rows: list[dict]):
    """The demo's headline models: measured latency share against test accuracy (dense, KD, CE)."""
    go = _go()
    fig = go.Figure()
    for r, color in zip(rows, ["black", "#1864ab", "#c92a2a"]):
        fig.add_trace(go.Scatter(x=[r["latency_share"]], y=[r["accuracy"]], mode="markers+text", name=r["name"],
                                 meta="headline", text=[r["name"]], textposition="top center",
                                 marker=dict(size=14, color=color),
                                 customdata=[f"{r['name']}: {r['ms']:.4g} ms = {r['latency_share']:.3f}x dense; "
                                             f"test accuracy {r['accuracy']:.4f}; {r['macs']:,} MACs"],
                                 hovertemplate=HOVER))
    fig.update_layout(title="KD against CE on the same cut: latency share vs test accuracy", height=380,
                      xaxis_title="measured latency / dense (one timing run)", yaxis_title="test accuracy",
                      margin=dict(t=50))
    return fig


def deploy_figure(rows: list[dict]):
    """Measured latency of every deployment variant at every setting timed (batch or sequence length)."""
    go = _go()
    settings = list(dict.fromkeys(k for r in rows for k in r["latency_ms"]))
    fig = go.Figure([go.Bar(x=settings, y=[r["latency_ms"].get(k) for k in settings], name=r["name"]) for r in rows])
    fig.update_layout(barmode="group", title="deployment: measured latency per variant", yaxis_title="ms",
                      yaxis_type="log", height=360, margin=dict(t=50))
    return fig
