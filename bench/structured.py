"""Structured pruning benchmark on Fashion-MNIST, CPU: prints one table (and writes it as JSON).

Per model (ResNet-20-style, MobileNetV2-style): train a base model briefly, find the uniform ratio
that gives >= 2x fewer MACs, compare importance criteria at equal MACs, CE vs KD recovery on the
same budget, latency-aware vs uniform shaping, and a ratio chosen on validation against a floor.
Latency is batch 1, the fastest of alternating runs of dense and all variants of a model, timed
in one pass at the end (the machine is shared; see latency_cost).

    PYTHONPATH=. python bench/structured.py --train-n 8000 --epochs 2 --recover-epochs 1
"""

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from slimkit.data import load_fashion_mnist
from slimkit.data.arrays import batches
from slimkit.measure import count_macs, evaluate_classifier
from slimkit.models import build_model
from slimkit.prune.latency_cost import interleaved_latency, prune_latency_aware
from slimkit.prune.recovery import fine_tune
from slimkit.prune.select import choose_ratio, write_selection
from slimkit.prune.structured import prune_structured

MODELS = {"resnet20": ("resnet", {"depth": 20}), "mobilenetv2": ("mobilenetv2", {})}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--train-n", type=int, default=8000, help="training samples used (subset, for a small machine)")
    p.add_argument("--val-n", type=int, default=2000)
    p.add_argument("--test-n", type=int, default=0, help="0 = the whole 10k test split")
    p.add_argument("--epochs", type=float, default=2.0, help="base training epochs over the subset")
    p.add_argument("--recover-epochs", type=float, default=1.0, help="recovery budget, same for CE and KD")
    p.add_argument("--sweep-epochs", type=float, default=0.25, help="recovery per point of the ratio sweep")
    p.add_argument("--macs-target", type=float, default=0.5, help="pruned/dense MACs to reach (0.5 = 2x fewer)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    p.add_argument("--latency-threads", type=int, default=2,
                   help="threads for batch-1 timing; 1 is steadier when other jobs share the cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-rounds", type=int, default=40, help="alternating batch-1 runs per model")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--skip-criteria-recovery", action="store_true", help="compare criteria before recovery only")
    return p.parse_args()


def ratio_for_macs(model, example, target: float) -> float:
    """Close to the smallest uniform ratio whose pruned MACs are <= target x dense (5 bisection steps)."""
    dense = count_macs(model, example)
    lo, hi = 0.0, 0.9
    for _ in range(5):  # bisection on the ratio; MACs fall monotonically as it grows
        mid = (lo + hi) / 2
        if count_macs(prune_structured(model, example, mid).model, example) <= target * dense:
            hi = mid
        else:
            lo = mid
    return round(hi, 3)


def main() -> None:
    a = parse()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    data = load_fashion_mnist(seed=a.seed)
    train, val = data.train.subset(a.train_n), data.val.subset(a.val_n)
    test = data.test.subset(a.test_n)
    nc = data.num_classes
    example = data.test.x[:1]
    calib = [(x, y) for x, y, _ in batches(train, 64, shuffle=True, seed=a.seed)][:4]
    rows: list[dict] = []
    t_start = time.time()

    def acc(m, split) -> float:
        return 100 * evaluate_classifier(m, split, nc).accuracy

    def recover(m, teacher, epochs, tag):
        return fine_tune(m, train, epochs=epochs, lr=1e-3, teacher=teacher, seed=a.seed, desc=tag)

    for key in a.models.split(","):
        name, kw = MODELS[key]
        torch.manual_seed(a.seed)
        dense = fine_tune(build_model(name, **kw), train, epochs=a.epochs, lr=2e-3, seed=a.seed, desc=f"train {key}")
        d_macs = count_macs(dense, example)
        d_val, d_test = acc(dense, val), acc(dense, test)

        pending: list[tuple[dict, torch.nn.Module]] = []

        def row(variant, model, ratio, note="", predicted=None, val_acc=None):
            model = model.eval()
            macs = count_macs(model, example)
            rw = {"model": key, "variant": variant, "ratio": ratio, "mmacs": macs / 1e6, "macs_x": d_macs / macs,
                  "pred_ms": predicted, "val": acc(model, val) if val_acc is None else val_acc,
                  "test": acc(model, test), "note": note}
            rows.append(rw)
            pending.append((rw, model))
            print(json.dumps(rw), flush=True)

        def time_all():
            """One interleaved timing pass over dense and every variant; a slower variant falls back to dense."""
            ms = interleaved_latency([dense] + [m for _, m in pending], example, rounds=a.timing_rounds,
                                     threads=a.latency_threads, stat="min")
            dense_row["ms"] = ms[0]
            for (rw, _), m_ms in zip(pending, ms[1:]):
                rw["dense_ms"], rw["ms"] = ms[0], m_ms
                if m_ms >= ms[0]:
                    rw["note"] = (rw["note"] + "; " if rw["note"] else "") + (
                        f"measured {m_ms:.2f} ms >= dense {ms[0]:.2f} ms: cut does not pay, dense model kept")
                    rw.update(mmacs=d_macs / 1e6, macs_x=1.0, ms=ms[0], val=d_val, test=d_test)
                rw["speedup"] = ms[0] / rw["ms"]
                rw["eff"] = rw["speedup"] / rw["macs_x"] if rw["macs_x"] > 1 else None
            pending.clear()

        dense_row = {"model": key, "variant": "dense", "ratio": 0.0, "mmacs": d_macs / 1e6, "macs_x": 1.0,
                     "ms": None, "speedup": 1.0, "eff": None, "pred_ms": None, "val": d_val, "test": d_test, "note": ""}
        rows.append(dense_row)
        r = ratio_for_macs(dense, example, a.macs_target)
        pruned = {k: prune_structured(dense, example, r, k, calib=calib).model for k in ("l2", "bn", "taylor", "entropy")}
        for k, m in pruned.items():
            row(f"uniform-{k}, no recovery", m, r)
        ce = recover(copy.deepcopy(pruned["l2"]), None, a.recover_epochs, "CE")
        row("uniform-l2 + CE recovery", ce, r)
        for k in ("l2",) if a.skip_criteria_recovery else ("l2", "taylor", "entropy"):
            row(f"uniform-{k} + KD recovery", recover(copy.deepcopy(pruned[k]), dense, a.recover_epochs, f"KD {k}"), r)
        la, info = prune_latency_aware(dense, example, r, "l2", calib, threads=a.latency_threads,
                                       cache=out / "latency_cache.json", pairs=a.timing_rounds // 2)
        note = "; ".join(la.notes[:2]) + (f" (+{len(la.notes) - 2} more)" if len(la.notes) > 2 else "")
        row("latency-aware-l2 + KD recovery", recover(la.model, dense, a.recover_epochs, "KD latency-aware"), r,
            note=note, predicted=info["predicted_ms"])
        floor = d_val / 100 - 0.01
        sel = choose_ratio(dense, lambda q: recover(prune_structured(dense, example, q, "l2").model, dense,
                                                    a.sweep_epochs, f"sweep {q:.2f}"),
                           val, nc, example, floor=floor, grid=(0.2, 0.35, 0.5, 0.65), bisect_steps=1,
                           threads=a.latency_threads)
        write_selection(sel, out / f"{key}_ratio_curve.json", out / f"{key}_ratio_curve.png")
        if sel.chosen is None:
            rows.append({"model": key, "variant": "val-chosen ratio", "note": f"no ratio met val floor {100 * floor:.2f}"})
        else:
            q = sel.chosen.ratio
            final = recover(prune_structured(dense, example, q, "l2").model, dense, a.sweep_epochs, "chosen")
            row(f"val-chosen (floor val>={100 * floor:.2f}) + KD", final, q,
                note=f"test floor {100 * floor:.2f}", val_acc=100 * sel.chosen.val_accuracy)
        time_all()
    header = (f"Fashion-MNIST, CPU, {a.threads} threads (latency timed at {a.latency_threads}), batch-1 latency (fastest "
              f"of alternating runs); base models trained "
              f"{a.epochs} epochs on {len(train)} train samples (seed {a.seed}); recovery {a.recover_epochs} epoch(s) "
              f"AdamW, KD T=4 alpha=0.7; val {len(val)}, test {len(test)}; wall {time.time() - t_start:.0f}s")
    print("\n" + header)
    cols = ("model", "variant", "ratio", "mmacs", "macs_x", "ms", "speedup", "eff", "pred_ms", "val", "test", "note")
    print(" | ".join(cols))
    for rw in rows:
        print(" | ".join(_fmt(rw.get(c)) for c in cols))
    (out / "structured_bench.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
