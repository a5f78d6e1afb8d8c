"""Benchmark of the demo pipeline on Fashion-MNIST: runs `slimkit demo` per seed and prints one table.

Usage: python bench/demo.py [--seeds 0 1 2] [--out runs/bench-demo] [--no-cache]

Each seed is a full pipeline run (the teacher is cached per seed unless --no-cache). The table gives
the mean (and spread) over seeds of every model's test accuracy, macro-F1, MACs and latency, the
headline's rows (compress + KD against the same cut + CE), then the targets, each marked met or
missed from the numbers just measured.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slimkit.demo.pipeline import make_config, run_demo  # noqa: E402


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-demo")
    parser.add_argument("--no-cache", action="store_true", help="retrain teachers (the timed first run)")
    parser.add_argument("--kd-sweep", action="store_true",
                        help="after the runs, train the student at the same budget over a grid of T and alpha")
    parser.add_argument("--kd-sweep-only", action="store_true", help="run only the KD sweep (first seed)")
    args = parser.parse_args()
    if args.kd_sweep_only:
        kd_sweep(args.seeds[0])
        return

    runs, walls = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        result = run_demo(make_config(seed=seed, out=f"{args.out}/seed{seed}", reuse_teacher=not args.no_cache),
                          progress=True)
        walls.append(time.perf_counter() - t0)
        import json

        runs.append(json.loads(Path(f"{args.out}/seed{seed}/report.json").read_text()))
        runs[-1]["timings_s"] = result["timings_s"]

    names = [r["name"] for r in runs[0]["rows"]]
    col = {n: {k: [next(r for r in run["rows"] if r["name"] == n)[k] for run in runs] for k in runs[0]["rows"][0]}
           for n in names}
    print(f"\nFashion-MNIST test (10k), seeds {args.seeds}, mean ± sd; latency median, "
          f"{runs[0]['rows'][0]['threads']} threads")
    print(f"| {'model':<34} | {'acc %':>13} | {'macro-F1 %':>13} | {'non-zero params':>15} | {'MMACs':>6} | "
          f"{'b1 ms':>6} | {'b256 ms':>7} | {'MB':>5} |")
    print("|" + "---|" * 8)
    for n in names:
        c = col[n]
        print(f"| {n:<34} | {mean_sd([100 * a for a in c['accuracy']]):>13} | {mean_sd([100 * f for f in c['macro_f1']]):>13} | "
              f"{int(statistics.mean(c['params_nonzero'])):>15,} | {statistics.mean(c['macs']) / 1e6:>6.2f} | "
              f"{statistics.median(c['latency_b1_ms']):>6.3f} | {statistics.median(c['latency_b256_ms']):>7.2f} | "
              f"{statistics.mean(c['checkpoint_bytes']) / 1e6:>5.2f} |")

    acc = {n: statistics.mean(col[n]["accuracy"]) * 100 for n in names}
    teacher, pruned, kd, scratch = names
    mac_ratio = statistics.mean(col[teacher]["macs"]) / statistics.mean(col[kd]["macs"])
    first_wall = walls[0]
    checks = [
        ("teacher accuracy >= 91.0%", f"{acc[teacher]:.2f}%", acc[teacher] >= 91.0),
        ("KD student >= teacher - 1.0 pt", f"{acc[kd] - acc[teacher]:+.2f} pt", acc[kd] >= acc[teacher] - 1.0),
        ("KD student MACs >= 4x fewer", f"{mac_ratio:.2f}x", mac_ratio >= 4.0),
        ("KD student vs scratch (same budget)", f"{acc[kd] - acc[scratch]:+.2f} pt", None),
        ("pruned 50% after fine-tune >= teacher - 0.5 pt", f"{acc[pruned] - acc[teacher]:+.2f} pt",
         acc[pruned] >= acc[teacher] - 0.5),
        ("whole demo <= 600 s (first seed" + (", teacher trained)" if args.no_cache else ", teacher may be cached)"),
         f"{first_wall:.0f} s", first_wall <= 600),
    ]
    checks += headline_checks(runs, acc[teacher])
    print("\n| target | measured | met |\n|---|---|---|")
    for name, value, ok in checks:
        print(f"| {name} | {value} | {'-' if ok is None else ('yes' if ok else 'NO')} |")
    print("\nstage seconds per seed:", [{k: round(v) for k, v in run["timings_s"].items()} for run in runs])
    if args.kd_sweep:
        kd_sweep(args.seeds[0])


def headline_checks(runs: list[dict], teacher_acc: float) -> list[tuple[str, str, bool | None]]:
    """The headline's rows over seeds (compress + KD against the same cut + CE) and its targets."""
    heads = [run.get("headline") or {} for run in runs]
    refused = [h["refused"] for h in heads if h.get("refused")]
    if refused or not all(h.get("rows") for h in heads):
        return [("headline: compress gave a cut on every seed", f"refused: {refused[0] if refused else 'off'}",
                 False)]
    rows = {n: [next(r for r in h["rows"] if r["name"] == n) for h in heads]
            for n in ("dense teacher", "compress + KD", "same cut + CE")}
    print(f"\nheadline, seeds mean ± sd; timing: {heads[0]['timing']}")
    print("| model | test acc % | x dense latency | MACs reduction | wall s |\n|---|---|---|---|---|")
    for n, rs in rows.items():
        print(f"| {n} | {mean_sd([100 * r['accuracy'] for r in rs])} | {mean_sd([r['latency_share'] for r in rs])} "
              f"| {statistics.mean(r['macs_reduction'] for r in rs):.2f}x | {mean_sd([r['wall_s'] for r in rs])} |")
    kd = statistics.mean(100 * r["accuracy"] for r in rows["compress + KD"])
    ce = statistics.mean(100 * r["accuracy"] for r in rows["same cut + CE"])
    share = max(r["latency_share"] for r in rows["compress + KD"])
    return [
        ("headline: compress + KD measured <= 0.5x the teacher's latency (every seed)", f"{share:.2f}x", share <= 0.5),
        ("headline: compress + KD >= teacher - 1.0 pt (test)", f"{kd - teacher_acc:+.2f} pt", kd >= teacher_acc - 1.0),
        ("headline: KD beats CE on the same cut and steps", f"{kd - ce:+.2f} pt", kd > ce),
    ]


def kd_sweep(seed: int) -> None:
    """Student test accuracy at the demo's budget, from scratch (alpha 0) and with KD over a grid of
    temperatures and alphas, all from the same seeded init and data order (one seed)."""
    import torch

    from slimkit.data import load_dataset
    from slimkit.distill import TrainConfig, teacher_logits, train_classifier
    from slimkit.measure import evaluate_classifier
    from slimkit.models import build_model
    from slimkit.demo.pipeline import get_teacher

    cfg = make_config(seed=seed)
    data = load_dataset(cfg.dataset, seed=seed)
    teacher, _ = get_teacher(cfg, data, TrainConfig(epochs=cfg.teacher_epochs, batch_size=cfg.batch_size,
                                                    lr=cfg.lr, seed=seed), progress=False)
    teacher_acc = 100 * evaluate_classifier(teacher, data.test, data.num_classes).accuracy
    cache = teacher_logits(teacher, data.train)
    budget = TrainConfig(epochs=cfg.student_epochs, batch_size=cfg.batch_size, lr=cfg.student_lr, seed=seed)
    print(f"\nKD sweep, seed {seed}, {cfg.student_epochs} student epochs; teacher {teacher_acc:.2f}%")
    print("| T | alpha | test acc % | vs scratch | vs teacher |\n|---|---|---|---|---|")
    scratch = None
    for temperature, alpha in [(1.0, 0.0), (4.0, 0.7), (4.0, 0.3), (2.0, 0.5), (8.0, 0.5)]:
        torch.manual_seed(seed)
        student = build_model(cfg.student)
        train_classifier(student, data, budget, teacher=cache if alpha > 0 else None, temperature=temperature,
                         alpha=alpha, progress=False)
        acc = 100 * evaluate_classifier(student, data.test, data.num_classes).accuracy
        scratch = acc if scratch is None else scratch
        label = ("-", "0 (scratch)") if alpha == 0 else (f"{temperature:g}", f"{alpha:g}")
        print(f"| {label[0]} | {label[1]} | {acc:.2f} | {acc - scratch:+.2f} | {acc - teacher_acc:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
