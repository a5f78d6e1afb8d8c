"""Benchmark of slimkit's LLM compression on SmolLM2-135M and MiniLM: prints one table.

Stages (pick with --only, comma-separated): dense, oneshot, depthrules (perplexity right after
each depth rule's cut, no KD), depth (the --depth-rule cut, then KD recovery unless --kd-minutes 0;
--kd-layer-weight adds layer-wise hidden-state cosine at the cut's seams), sparsekd (one-shot sparsity, then KD with the zeros held: --sparse-kd), speed, encoder. Every finished row is appended to --json as it completes, so a
long run that is stopped keeps what it measured. Perplexity rows carry their protocol. KD recovery
(`slimkit.llm.recover`) and encoder distillation (`slimkit.llm.encoder`) run on the shared engine,
`slimkit.distill.Distiller`, with the causal-LM and embeddings tasks.

    PYTHONPATH=. python bench/llm.py                      # everything (long on 2 CPU cores)
    PYTHONPATH=. python bench/llm.py --only oneshot --methods sparsegpt --ratios 0.5,2:4
    PYTHONPATH=. python bench/llm.py --only oneshot --methods wanda,sparsegpt --ratios 0.5,0.7   # uniform vs OWL

The README's KD and encoder rows (full size; run one at a time, nothing else on the machine):

    PYTHONPATH=. python bench/llm.py --only depth --json runs/bench_llm_kd.jsonl      # 8 of 30 layers removed + 30 min KD
    PYTHONPATH=. python bench/llm.py --only depthrules                    # the depth study: which 8 layers (no KD)
    PYTHONPATH=. python bench/llm.py --only depth --kd-layer-weight 2     # ... and KD with layer-wise seam terms
    PYTHONPATH=. python bench/llm.py --only encoder --json runs/bench_llm_enc.jsonl   # MiniLM -50% FFN -25% heads, refit, 20 min
    PYTHONPATH=. python bench/llm.py --only sparsekd --sparse-kd sparsegpt:0.5 --json runs/bench_llm_skd.jsonl  # 50% + 30 min KD

Smoke test of the same paths (a minute or two each; the numbers mean nothing):

    PYTHONPATH=. python bench/llm.py --only depth --kd-minutes 1 --kd-samples 8 --calib-samples 8 --eval-tokens 2048
    PYTHONPATH=. python bench/llm.py --only encoder --encoder-minutes 0.5 --encoder-train 256 --encoder-calib 64
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from slimkit.data.text import check_text, text_windows
from slimkit.errors import SlimkitError
from slimkit.families.causal_lm import DecodeTimer
from slimkit.llm import (
    DEPTH_RULES,
    RecoveryConfig,
    calibration_windows,
    default_sentences,
    distill_encoder,
    eval_windows,
    fidelity,
    lm_cost,
    load_causal_lm,
    load_encoder,
    perplexity,
    prune_depth,
    prune_encoder,
    prune_oneshot,
    recover,
    seam_pairs,
)
from slimkit.measure.memory import peak_rss_mb, reset_peak_rss


class Rows:
    """Result rows, printed at the end and appended to a JSON-lines file as they arrive."""

    def __init__(self, path: Path | None) -> None:
        self.rows: list[dict] = []
        self.path = path

    def add(self, **row) -> None:
        self.rows.append(row)
        print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def table(self, dense: float | None) -> str:
        head = "| stage | model | ppl | x dense | time s | peak RSS MB | other |"
        lines = [head, "|" + "---|" * 7]
        for r in self.rows:
            ratio = f"{r['ppl'] / dense:.2f}" if dense and r.get("ppl") else "-"
            other = r.get("other", "")
            ppl = f"{r['ppl']:.2f}" if r.get("ppl") else "-"
            lines.append(f"| {r['stage']} | {r['model']} | {ppl} | {ratio} | {r.get('seconds', '-')} | "
                         f"{r.get('rss_mb', '-')} | {other} |")
        return "\n".join(lines)


NOTE = ("Unstructured and N:M zeros stay in dense matrices: on these dense CPU kernels they give no speed-up "
        "and no MAC saving. Only removed layers/heads/neurons run faster; see the speed rows.")


def print_table_from(path: Path) -> None:
    """The table of every row in a JSON-lines file, ratios against its last dense row."""
    rows = Rows(None)
    every = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    dense = [r["ppl"] for r in every if r.get("stage") == "dense"]
    if len({round(d, 6) for d in dense}) > 1:
        print(f"note: the runs measured different dense perplexities: {sorted(set(dense))}")
    # each stage run re-measures the dense model: show its row once
    rows.rows = [r for i, r in enumerate(every) if r.get("stage") != "dense" or
                 i == next(j for j, q in enumerate(every) if q.get("stage") == "dense")]
    print(rows.table(dense[-1] if dense else None))
    print(NOTE)


def sparsity_nm(ratio: str) -> tuple[float, str | None]:
    """prune_oneshot's sparsity and N:M arguments from a --ratios / --sparse-kd entry: '0.5' or '2:4'."""
    return (0.0, ratio) if ":" in ratio else (float(ratio), None)


def kd_windows(tok, args) -> tuple[torch.Tensor, str]:
    """KD's training windows and how they were drawn: by default --kd-samples windows of Emma at
    seeded random offsets (the rows of earlier sessions); with --kd-text, that many distinct
    (non-overlapping) windows pooled from the named texts and drawn with the seed."""
    if not args.kd_text:
        return calibration_windows(tok, "emma", args.kd_samples, args.seq_len, args.seed + 1), "Emma windows"
    names = args.kd_text.split(",")
    pool = torch.cat([text_windows(tok, name, args.seq_len)[0] for name in names])
    if len(pool) < args.kd_samples:
        raise SystemExit(f"--kd-text gives {len(pool)} windows of {args.seq_len} tokens, fewer than --kd-samples "
                         f"{args.kd_samples}; lower --kd-samples or add texts")
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed + 1))[:args.kd_samples]
    named = ", ".join(Path(n).stem for n in names)
    return pool[pick], f"distinct windows of {len(pool)} from {named}"


def distilled(student, teacher, tok, ev, args, masks=None, val=None, pairs=()) -> tuple[float, str, int]:
    """KD recovery of `student` in place for --kd-minutes (masks held; layer-wise terms on `pairs`;
    perplexity on `val` after each epoch), then its perplexity on `ev`, the row's note and the
    seconds spent (teacher cache included)."""
    train, source = kd_windows(tok, args)
    layer_weight = args.kd_layer_weight if pairs else 0.0
    cfg = RecoveryConfig(epochs=100, batch_size=2, lr=args.kd_lr, top_k=64, ce_weight=args.kd_ce_weight,
                         hidden_weight=args.kd_hidden_weight, layer_weight=layer_weight, layer_pairs=tuple(pairs),
                         max_minutes=args.kd_minutes, seed=args.seed)
    # a fresh cache folder: the teacher pass is timed inside the budget, never reused from a past run
    with tempfile.TemporaryDirectory() as fresh:
        rrep = recover(student, teacher, train, cfg, masks=masks, cache_dir=Path(fresh), val=val)
    ppl = perplexity(student, ev, progress=True).value
    layers = (f" + {layer_weight:g} layer cosine at {len(pairs)} seams "
              f"({', '.join(s.rpartition('.')[2] + '->' + t.rpartition('.')[2] for s, t in pairs)})" if layer_weight else "")
    curve = (f"; val ppl by step (P&P tokens after the test's): "
             f"{', '.join(f'{step}: {v:.2f}' for step, v in rrep.val_perplexity)}" if rrep.val_perplexity else "")
    other = (f"{rrep.steps} steps x 2 x {args.seq_len} tokens over {len(train)} {source}; teacher top-64 "
             f"cache {round(rrep.teacher_seconds)} s (inside the {args.kd_minutes:g}-min budget); top-64 KL T=1 + "
             f"{args.kd_ce_weight:g} CE + {args.kd_hidden_weight:g} hidden MSE{layers}; lr {args.kd_lr:g}; last loss "
             f"{rrep.losses[-1]:.3f}{curve}; engine: Distiller, causal-LM task")
    return ppl, other, round(rrep.seconds + rrep.teacher_seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="dense,oneshot,depth,speed,encoder")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--ratios", default="0.5,2:4")
    ap.add_argument("--allocations", default="uniform,owl",
                    help="one-shot: how each ratio is spread over the blocks (owl: by outlier share; not with N:M)")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--depth-remove", type=int, default=8)
    ap.add_argument("--depth-rule", default="influence", choices=DEPTH_RULES,
                    help="which blocks the depth stage removes (slimkit.llm.depth)")
    ap.add_argument("--kd-layer-weight", type=float, default=0.0,
                    help="weight of layer-wise hidden-state cosine at the depth cut's seams (shared among them)")
    ap.add_argument("--val-tokens", type=int, default=8192,
                    help="Pride and Prejudice tokens after the test tokens: KD's per-epoch validation perplexity")
    ap.add_argument("--kd-minutes", type=float, default=30.0)
    ap.add_argument("--kd-samples", type=int, default=256)
    ap.add_argument("--kd-text", default=None,
                    help="comma-separated texts (built-in names or files) whose distinct windows KD trains on; "
                         "default: --kd-samples Emma windows at random offsets. Never Pride and Prejudice: it is the "
                         "test and validation text")
    ap.add_argument("--kd-lr", type=float, default=2e-4)
    ap.add_argument("--kd-ce-weight", type=float, default=1.0, help="weight of next-token CE added to the KD loss")
    ap.add_argument("--kd-hidden-weight", type=float, default=0.0, help="weight of final-hidden-state KD")
    ap.add_argument("--sparse-kd", default="sparsegpt:0.5,sparsegpt:2:4",
                    help="sparsekd: METHOD:RATIO runs (RATIO a fraction or N:M), each pruned one-shot, then distilled "
                         "for --kd-minutes with its zeros held")
    ap.add_argument("--encoder-minutes", type=float, default=20.0)
    ap.add_argument("--encoder-train", type=int, default=3800, help="Emma sentences (about 3,800 usable)")
    ap.add_argument("--encoder-epochs", type=int, default=20)
    ap.add_argument("--encoder-calib", type=int, default=1024, help="Emma sentences for pruning and refit")
    ap.add_argument("--encoder-lr", type=float, default=3e-4)
    ap.add_argument("--encoder-layer-weight", type=float, default=1.0, help="layer-wise token cosine loss weight")
    ap.add_argument("--json", type=Path, default=Path("runs/bench_llm.jsonl"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table-from", type=Path, default=None,
                    help="print the table of rows that earlier runs (one stage each) appended to this JSON-lines file")
    args = ap.parse_args()
    if args.table_from:
        print_table_from(args.table_from)
        return
    if args.kd_text:
        for name in args.kd_text.split(","):
            try:
                check_text(name)
            except SlimkitError as e:
                raise SystemExit(f"--kd-text: {e}") from None
            if Path(name).stem == "prideprejudice":
                raise SystemExit("--kd-text must not name Pride and Prejudice: it is the test and validation text")
    stages = set(args.only.split(","))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    rows = Rows(args.json)
    torch.manual_seed(args.seed)
    print(f"torch threads {torch.get_num_threads()}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")

    dense_ppl = None
    if stages & {"dense", "oneshot", "depthrules", "depth", "sparsekd", "speed"}:
        lm, tok = load_causal_lm("smollm2")
        # the test windows are the first --eval-tokens of the text; validation (KD's curve only) follows them
        both = eval_windows(tok, "prideprejudice", args.eval_tokens + args.val_tokens, args.seq_len)
        ev, val = both[:args.eval_tokens // args.seq_len], both[args.eval_tokens // args.seq_len:]
        val = val if len(val) else None
        cal = calibration_windows(tok, "emma", args.calib_samples, args.seq_len, args.seed)
        t0 = time.perf_counter()
        dense = perplexity(lm, ev, progress=True)
        dense_ppl = dense.value
        rows.add(stage="dense", model="SmolLM2-135M", ppl=dense.value, seconds=round(time.perf_counter() - t0),
                 other=dense.protocol)
        fp32_mb = sum(p.numel() for p in lm.parameters()) * 4 / 2**20

        if "oneshot" in stages:
            # one model in memory at a time, reloaded per run, so the peak RSS is that of pruning it
            del lm
            gc.collect()
            runs = [(m, r, a) for m in args.methods.split(",") for r in args.ratios.split(",")
                    for a in args.allocations.split(",") if a == "uniform" or (":" not in r and m != "magnitude")]
            for method, ratio, allocation in runs:
                model, _ = load_causal_lm("smollm2")
                reset_peak_rss()
                res = prune_oneshot(model, cal, method, *sparsity_nm(ratio), allocation=allocation)
                rss = peak_rss_mb()
                ppl = perplexity(model, ev, progress=True)
                alloc = res.details["allocation"]
                spread = (f"; OWL block sparsities {min(alloc['sparsity'].values()):.3f}-"
                          f"{max(alloc['sparsity'].values()):.3f}" if allocation == "owl" else "")
                rows.add(stage="one-shot", model=f"{method} {ratio}{' OWL' if allocation == 'owl' else ''}",
                         ppl=ppl.value, seconds=round(res.details["seconds"]), rss_mb=round(rss),
                         other=f"realised {1 - res.kept_total:.3f}{spread}; calib {res.details['calibration']}; "
                         f"in-memory prune: peak RSS {rss / fp32_mb:.2f}x the fp32 model ({fp32_mb:.0f} MB), "
                         f"process included (bench/llm_stream_rss.py measures the streamed prune)")
                del model
                gc.collect()  # HF models hold reference cycles: free this one before the next loads
            lm, _ = load_causal_lm("smollm2")

        n_layers = lm.config.num_hidden_layers
        if "depthrules" in stages:
            for rule in DEPTH_RULES:
                cut = copy.deepcopy(lm)
                t0 = time.perf_counter()
                removed = prune_depth(cut, cal[:16], args.depth_remove, rule=rule).removed_blocks
                rows.add(stage="depth rule", model=f"-{args.depth_remove} layers ({rule})",
                         ppl=perplexity(cut, ev, progress=True).value, seconds=round(time.perf_counter() - t0),
                         other=f"removed {', '.join(b.rpartition('.')[2] for b in removed)}; no KD")
                del cut
                gc.collect()
        if "depth" in stages or "speed" in stages:
            depth_model = copy.deepcopy(lm)
            t0 = time.perf_counter()
            cut = prune_depth(depth_model, cal[:16], args.depth_remove, rule=args.depth_rule)
            removed = cut.removed_blocks
            ppl = perplexity(depth_model, ev, progress=True)
            rows.add(stage="depth", model=f"-{args.depth_remove} layers ({args.depth_rule})", ppl=ppl.value,
                     seconds=round(time.perf_counter() - t0), other=f"removed {', '.join(removed)}")
            if "depth" in stages and args.kd_minutes > 0:
                pairs = seam_pairs(cut.details["removed"], n_layers)
                ppl, other, seconds = distilled(depth_model, lm, tok, ev, args, val=val, pairs=pairs)
                rows.add(stage="depth+KD", model=f"-{args.depth_remove} layers, KD", ppl=ppl, seconds=seconds,
                         other=other)
        if "sparsekd" in stages:
            for run in args.sparse_kd.split(","):
                method, ratio = run.split(":", 1)
                student = copy.deepcopy(lm)
                res = prune_oneshot(student, cal, method, *sparsity_nm(ratio))
                before = perplexity(student, ev, progress=True).value
                rows.add(stage="one-shot", model=f"{method} {ratio}", ppl=before, seconds=round(res.details["seconds"]),
                         other=f"realised {1 - res.kept_total:.3f}; calib {res.details['calibration']}")
                ppl, other, seconds = distilled(student, lm, tok, ev, args, masks=res.masks)
                held = all(bool((p.detach()[~res.masks[n]] == 0).all()) for n, p in student.named_parameters()
                           if n in res.masks)
                rows.add(stage="sparse+KD", model=f"{method} {ratio}, KD", ppl=ppl, seconds=seconds,
                         other=f"zeros held after KD: {held}; {other}")
                del student
                gc.collect()

        if "speed" in stages:  # depth_model was cut above
            # the ratio from one run that alternates the two models (compress's decode timer), not from two
            # medians measured one after the other: batch-1 decode on a CPU drifts by more than a layer's share
            timer = DecodeTimer(prompt_len=128, tokens=32, threads=torch.get_num_threads())
            dense_ms, cut_ms = timer([lm, depth_model])
            prefill = timer.beside["prefill_ms"]
            for name, model, ms, pre in (("dense", lm, dense_ms, prefill[0]),
                                         (f"depth -{args.depth_remove}", depth_model, cut_ms, prefill[1])):
                params, _, macs = lm_cost(model, torch.zeros(1, 128, dtype=torch.long))
                rows.add(stage="speed", model=name, seconds="-",
                         other=f"params {params / 1e6:.1f} M, MACs/token {macs / 1e6:.1f} M; decode "
                               f"{ms:.2f} ms/token ({1e3 / ms:.1f} tok/s, {dense_ms / ms:.2f}x dense), prefill "
                               f"{pre:.0f} ms ({prefill[0] / pre:.2f}x dense); {timer.method}")
        del lm

    if "encoder" in stages:
        teacher, etok = load_encoder("minilm")
        train, held = default_sentences(args.encoder_train, 500, args.seed)
        calib = train[:args.encoder_calib]
        for reconstruct in (False, True):
            student = copy.deepcopy(teacher)
            t0 = time.perf_counter()
            prune_encoder(student, etok, calib, ffn_ratio=0.5, head_ratio=0.25, reconstruct=reconstruct)
            before = fidelity(student, teacher, etok, held)
            how = "least-squares refit of output projections" if reconstruct else "sliced, no refit"
            rows.add(stage="MiniLM", model=f"-50% FFN, -25% heads, {how}", seconds=round(time.perf_counter() - t0),
                     other=f"{before}; {len(calib)} Emma calibration sentences")
        info = distill_encoder(student, teacher, etok, train, epochs=args.encoder_epochs, lr=args.encoder_lr,
                               layer_weight=args.encoder_layer_weight, max_minutes=args.encoder_minutes)
        after = fidelity(student, teacher, etok, held)
        rows.add(stage="MiniLM+KD", model="-50% FFN, -25% heads, refit, distilled", seconds=round(info["seconds"]),
                 other=f"{after}; {info['steps']} steps of 32 Emma sentences; pooled cosine + "
                       f"{args.encoder_layer_weight:g} x layer-wise token cosine; lr {args.encoder_lr:g}; "
                       f"engine: Distiller, embeddings task")

    print()
    print(rows.table(dense_ppl))
    print(NOTE)


if __name__ == "__main__":
    main()
