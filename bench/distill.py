"""Distillation engine benchmark on Fashion-MNIST with the seed CNN pair, on CPU; prints one table.

Parts (run all, or pick with --parts 1,2,...):
  1  throughput of slimkit's KD loop vs a minimal hand-written PyTorch KD loop (target >= 0.95x);
     also bf16 autocast vs fp32 on this CPU (why AMP is off by default here)
  2  epoch time with the teacher-output cache vs the live teacher, no augmentation (target >= 1.5x)
  3  hint + KD vs KD alone vs scratch, same budget, several seeds (reported as measured)
  4  kill -9 in the middle of epoch 2, resume: final accuracy vs the unbroken run, steps lost
  5  torchrun with 2 processes vs 1 process: accuracy and samples/s

Timings on a shared machine are noisy: paired runs are interleaved (alternating order) and throughput
is the batch over the median per-step time, which load bursts barely move.

    PYTHONPATH=. python bench/distill.py --parts 1,2 --train-subset 6000
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimkit.data import Dataset, load_fashion_mnist  # noqa: E402
from slimkit.distill import CacheConfig, Distiller, TrainConfig, ce, hint, hinton, teacher_logits  # noqa: E402
from slimkit.io import load_model, save_model  # noqa: E402
from slimkit.models import SourceModel, TargetModel  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []


def row(check: str, measured: str, reference: str, verdict: str) -> None:
    ROWS.append((check, measured, reference, verdict))
    print(f"  {check}: {measured} | {reference} | {verdict}", flush=True)


def get_teacher(data: Dataset, args: argparse.Namespace) -> SourceModel:
    """A teacher trained once per (subset, epochs) and kept under --work."""
    path = Path(args.work) / f"teacher-{len(data.train)}-{args.teacher_epochs}.safetensors"
    if path.is_file():
        return load_model(path)
    torch.manual_seed(0)
    teacher = SourceModel()
    Distiller(None, teacher, [ce()], TrainConfig(epochs=args.teacher_epochs, batch_size=128, lr=2e-3)).fit(data, desc="teacher")
    save_model(teacher, path)
    return teacher


def hand_kd_epoch(student: torch.nn.Module, data: Dataset, cached: torch.Tensor, batch: int, seed: int) -> list[float]:
    """The minimal loop: one epoch of KD from cached logits with AdamW; returns per-step seconds."""
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=1e-4)
    x_all, y_all = data.train.x, data.train.y
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
    student.train()
    stamps = [time.perf_counter()]
    for i in range(0, len(order) - batch + 1, batch):
        idx = order[i:i + batch]
        x, y, t = x_all[idx], y_all[idx], cached[idx]
        s = student(x)
        loss = 0.7 * F.kl_div(F.log_softmax(s / 4, -1), F.log_softmax(t / 4, -1), reduction="batchmean", log_target=True) * 16 \
            + 0.3 * F.cross_entropy(s, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])][1:]  # the first step pays one-off allocations


def slimkit_epoch(teacher, data: Dataset, batch: int, seed: int, cache: str = "auto", amp: str = "off",
                  terms=None) -> list[float]:
    """One slimkit KD epoch; returns per-step seconds (timed by the engine's on_step callback)."""
    torch.manual_seed(seed)
    student = TargetModel()
    n = len(data.train) - len(data.train) % batch
    sub = Dataset(data.name, data.train.subset(n), data.val.subset(1), data.test, data.num_classes)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-3, grad_clip=None, seed=seed, amp=amp)
    stamps: list[float] = []
    d = Distiller(teacher if not isinstance(teacher, torch.Tensor) else teacher[:n], student, terms or hinton(4.0, 0.7),
                  cfg, cache=CacheConfig(mode=cache))
    d.fit(sub, progress=False, on_step=lambda _s: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def part1(data: Dataset, teacher, args) -> None:
    cached = teacher_logits(teacher, data.train)
    ours, ref, bf16 = [], [], []
    for r in range(args.repeats):  # interleaved, order alternating, so load bursts hit both sides
        runs = [lambda: ref.extend(hand_kd_epoch(TargetModel(), data, cached, args.batch_size, r)),
                lambda: ours.extend(slimkit_epoch(cached, data, args.batch_size, r)),
                lambda: bf16.extend(slimkit_epoch(cached, data, args.batch_size, r, amp="bf16"))]
        for run in (runs if r % 2 == 0 else runs[::-1]):
            torch.manual_seed(r)
            run()
    b = args.batch_size
    m_ours, m_ref, m_bf16 = (statistics.median(v) for v in (ours, ref, bf16))
    ratio = m_ref / m_ours
    row("1 KD loop throughput (cached logits)", f"slimkit {b / m_ours:.0f} samples/s",
        f"hand-written {b / m_ref:.0f} samples/s", f"{ratio:.3f}x (target >= 0.95) {'PASS' if ratio >= 0.95 else 'MISS'}")
    r16 = m_ours / m_bf16
    row("1b bf16 autocast on CPU (slimkit loop)", f"{b / m_bf16:.0f} samples/s", f"fp32 {b / m_ours:.0f} samples/s",
        f"{r16:.2f}x")


def part2(data: Dataset, teacher, args) -> None:
    cached_s, live_s, build = [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        teacher_logits(teacher, data.train)
        build.append(time.perf_counter() - t0)
        pair = [lambda: cached_s.extend(slimkit_epoch(teacher, data, args.batch_size, r, cache="auto")),
                lambda: live_s.extend(slimkit_epoch(teacher, data, args.batch_size, r, cache="off"))]
        for run in (pair if r % 2 == 0 else pair[::-1]):
            run()
    steps = len(data.train) // args.batch_size
    c, lv = statistics.median(cached_s) * steps, statistics.median(live_s) * steps
    speed = lv / c
    row("2 KD epoch time, no augmentation", f"cached {c:.1f} s (+{statistics.median(build):.1f} s once to build)",
        f"live teacher {lv:.1f} s", f"{speed:.2f}x faster (target >= 1.5) {'PASS' if speed >= 1.5 else 'MISS'}")


def part3(data: Dataset, teacher, args) -> None:
    recipes = {"scratch": None, "KD": hinton(4.0, 0.7), "hint+KD": [*hinton(4.0, 0.7), hint("conv2", "conv2", 1.0)]}
    results: dict[str, list[float]] = {k: [] for k in recipes}
    for seed in range(args.seeds):
        for name, terms in recipes.items():
            torch.manual_seed(seed)
            student = TargetModel()
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=2e-3, seed=seed)
            d = Distiller(teacher if terms else None, student, terms or [ce()], cfg)
            results[name].append(d.fit(data, progress=False)[-1].val_accuracy)
            print(f"    seed {seed} {name}: val acc {results[name][-1]:.4f}", flush=True)
    from slimkit.measure.metrics import evaluate_classifier
    t_acc = evaluate_classifier(teacher, data.val, data.num_classes).accuracy
    summary = {k: f"{statistics.mean(v):.4f}+-{statistics.pstdev(v):.4f}" for k, v in results.items()}
    row(f"3 student val acc, {args.epochs} epochs x {args.seeds} seeds", f"hint+KD {summary['hint+KD']}",
        f"KD {summary['KD']}; scratch {summary['scratch']}; teacher {t_acc:.4f}", "reported as measured")


def _worker(extra: list[str], out: Path, nproc: int = 1, kill_at: int | None = None, threads: int = 2):
    worker = str(ROOT / "bench" / "distill_worker.py")
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), worker]
           if nproc > 1 else [sys.executable, worker]) + extra + ["--threads", str(threads), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    last = 0
    for line in proc.stdout:
        if line.startswith("STEP ") and line.split()[1].isdigit():
            last = int(line.split()[1])
            if kill_at is not None and last >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    if kill_at is None:
        if proc.returncode != 0:
            raise SystemExit(f"worker failed with exit code {proc.returncode}: {' '.join(cmd)}")
        return json.loads(out.read_text())
    return last


def part4(data: Dataset, teacher, args) -> None:
    work = Path(tempfile.mkdtemp(prefix="resume-", dir=args.work))
    tpath = save_model(teacher, work / "teacher.safetensors")
    base = ["--dataset", "fashion-mnist", "--train-subset", str(len(data.train)), "--epochs", "3",
            "--batch-size", str(args.batch_size), "--lr", "2e-3", "--teacher", str(tpath), "--seed", "0"]
    steps_per_epoch = -(-len(data.train) // args.batch_size)
    every = max(1, steps_per_epoch // 4)
    unbroken = _worker(base, work / "unbroken.json")
    ckpt = ["--ckpt-dir", str(work / "ckpt"), "--every", str(every)]
    kill_at = steps_per_epoch + steps_per_epoch // 2 + 1
    killed = _worker(base + ckpt, work / "never.json", kill_at=kill_at)
    resumed = _worker(base + ckpt, work / "resumed.json")
    lost = killed - resumed["resumed_from_step"]
    diff = abs(resumed["val_accuracy"] - unbroken["val_accuracy"]) * 100
    same = resumed["weights"] == unbroken["weights"]
    row("4 kill -9 mid-epoch 2, resume", f"resumed {resumed['val_accuracy']:.4f} (killed at step {killed}, "
        f"resumed from {resumed['resumed_from_step']}, lost {lost} steps, interval {every})",
        f"unbroken {unbroken['val_accuracy']:.4f}",
        f"diff {diff:.2f} pts, weights {'bit-identical' if same else 'differ'} {'PASS' if diff <= 0.2 and lost <= every else 'MISS'}")


def part5(data: Dataset, teacher, args) -> None:
    work = Path(tempfile.mkdtemp(prefix="ddp-", dir=args.work))
    tpath = save_model(teacher, work / "teacher.safetensors")
    n = len(data.train) - len(data.train) % args.batch_size
    base = ["--dataset", "fashion-mnist", "--train-subset", str(n), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", "2e-3", "--teacher", str(tpath)]
    one = _worker(base, work / "one.json", threads=2)
    two = _worker(base, work / "two.json", nproc=2, threads=1)
    diff = abs(one["val_accuracy"] - two["val_accuracy"]) * 100
    row("5 torchrun 2 procs (gloo, 1 thread each) vs 1 proc (2 threads)",
        f"2 procs: acc {two['val_accuracy']:.4f}, {two['train_samples_per_s']:.0f} samples/s",
        f"1 proc: acc {one['val_accuracy']:.4f}, {one['train_samples_per_s']:.0f} samples/s", f"acc diff {diff:.2f} pts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="1,2,3,4,5")
    ap.add_argument("--train-subset", type=int, default=6000, help="first N training images (0 = all 54k)")
    ap.add_argument("--epochs", type=int, default=3, help="student epochs for parts 3 and 5")
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats for timing parts 1-2")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/bench-distill")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist(seed=0)
    data = Dataset(data.name, data.train.subset(args.train_subset), data.val, data.test, data.num_classes)
    teacher = get_teacher(data, args)
    parts = {"1": part1, "2": part2, "3": part3, "4": part4, "5": part5}
    for p in args.parts.split(","):
        print(f"part {p} ...", flush=True)
        parts[p.strip()](data, teacher, args)
    header = (f"slimkit distill bench: Fashion-MNIST, train subset {len(data.train)}, val {len(data.val)}, "
              f"batch {args.batch_size}, CPU {args.threads} threads, SourceModel -> TargetModel")
    widths = [max(len(r[i]) for r in ROWS + [("check", "slimkit / measured", "reference", "verdict")]) for i in range(4)]
    print("\n" + header)
    for r in [("check", "slimkit / measured", "reference", "verdict"), tuple("-" * w for w in widths), *ROWS]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
