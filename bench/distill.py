"""Distillation engine benchmark on CPU (Fashion-MNIST with the seed CNN pair, and a SmolLM2 slice); prints one table.

Parts (run all, or pick with --parts 1,2,...):
  1  classification: throughput of slimkit's engine vs a minimal hand-written PyTorch KD loop
     (target >= 0.95x); also bf16 autocast vs fp32 on this CPU (why AMP is off by default here)
  2  epoch time with the teacher-output cache vs the live teacher, no augmentation (target >= 1.5x)
  3  hint + KD vs KD alone vs scratch, same budget, several seeds (reported as measured)
  4  kill -9 in the middle of epoch 2, resume: final accuracy vs the unbroken run, steps lost
  5  torchrun with 2 processes vs 1 process: accuracy and samples/s
  6  causal LM (SmolLM2 cut to --lm-layers blocks, top-k cached teacher logits, the recipe of
     `slimkit distill` of a causal LM): throughput of the engine vs a hand-written loop (target >= 0.95x)
  7  SmolLM2-135M depth-cut KD (live teacher) under torchrun with 2 gloo processes, parallel "fsdp"
     against "ddp": parameter + gradient + AdamW bytes held per rank, peak RSS, tokens/s and the
     loss after the same steps (bench/distill_lm_worker.py; a few steps: the CPU is shared)

Timing (parts 1 and 6): both loops run in the same process with the same thread count, in lockstep:
one step of slimkit's engine, then one step of the hand-written loop (run from the engine's
on_step callback), and so on, so every pair of steps sees the machine in the same state; other
processes' load bursts hit both alike. --rounds rounds of --round-steps steps, each round with
fresh models and optimizers, the first pair of a round (setup, one-off allocations) dropped. The
ratio is total hand-written time / total engine time (a load burst lengthens both sides of a pair),
with the median of the per-pair ratios beside it; throughputs are the batch over the mean step time.

    PYTHONPATH=. python bench/distill.py --parts 1,6          # the throughput table (minutes)
    PYTHONPATH=. python bench/distill.py --parts 1,2,3,4,5 --train-subset 6000
    PYTHONPATH=. python bench/distill.py --parts 7 --fsdp-steps 6  # FSDP vs DDP (minutes)
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


def hand_kd_stepper(student: torch.nn.Module, data: Dataset, cached: torch.Tensor, batch: int, seed: int):
    """The minimal hand-written loop, one step per call: KD from cached logits with AdamW."""
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=1e-4)
    x_all, y_all = data.train.x, data.train.y
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
    student.train()
    at = [0]

    def step() -> None:
        idx = order[at[0]:at[0] + batch]
        at[0] = (at[0] + batch) % (len(order) - batch + 1)
        x, y, t = x_all[idx], y_all[idx], cached[idx]
        s = student(x)
        loss = 0.7 * F.kl_div(F.log_softmax(s / 4, -1), F.log_softmax(t / 4, -1), reduction="batchmean", log_target=True) * 16 \
            + 0.3 * F.cross_entropy(s, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def slimkit_run(teacher, data: Dataset, batch: int, seed: int, steps: int | None = None, cache: str = "auto",
                amp: str = "off", terms=None, on_step=None) -> None:
    """slimkit's engine over `steps` batches (one epoch when None), calling `on_step` after each step."""
    torch.manual_seed(seed)
    student = TargetModel()
    n = len(data.train) - len(data.train) % batch if steps is None else steps * batch
    sub = Dataset(data.name, data.train.subset(n), data.val.subset(1), data.test, data.num_classes)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-3, grad_clip=None, seed=seed, amp=amp)
    d = Distiller(teacher if not isinstance(teacher, torch.Tensor) else teacher[:n], student, terms or hinton(4.0, 0.7),
                  cfg, cache=CacheConfig(mode=cache))
    d.fit(sub, progress=False, on_step=on_step)


def slimkit_steps(teacher, data: Dataset, batch: int, seed: int, cache: str = "auto") -> list[float]:
    """Per-step seconds of one slimkit epoch (timed by the engine's on_step callback)."""
    stamps: list[float] = []
    slimkit_run(teacher, data, batch, seed, cache=cache, on_step=lambda _s: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def lockstep(run_engine, hand_step) -> list[tuple[float, float]]:
    """(engine seconds, hand-written seconds) per step, one step of each in turn.

    The hand-written step runs inside the engine's on_step callback, right after each engine step,
    so every pair sees the machine in the same state (other processes share these cores); the first
    pair, which pays one-off setup and allocations, is dropped.
    """
    pairs: list[tuple[float, float]] = []
    last = [time.perf_counter()]

    def on_step(_step: int) -> None:
        engine = time.perf_counter() - last[0]
        t0 = time.perf_counter()
        hand_step()
        pairs.append((engine, time.perf_counter() - t0))
        last[0] = time.perf_counter()
    run_engine(on_step)
    return pairs[1:]


def rounds_of(make, rounds: int) -> list[tuple[float, float]]:
    """`rounds` lockstep runs, each with fresh models (make(round) -> (run_engine, hand_step))."""
    pairs: list[tuple[float, float]] = []
    for r in range(rounds):
        torch.manual_seed(r)
        pairs += lockstep(*make(r))
    return pairs


def speed(pairs: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """(engine s/step, hand-written s/step, their ratio hand / engine, median of the per-pair ratios).

    Means over all pairs: in lockstep a load burst lengthens both sides of a pair, so the ratio of
    the totals is fair; the median of per-pair ratios is shown beside it as a check."""
    e, h = statistics.mean(e for e, _ in pairs), statistics.mean(h for _, h in pairs)
    return e, h, h / e, statistics.median(h / e for e, h in pairs)


def part1(data: Dataset, teacher, args) -> None:
    cached = teacher_logits(teacher, data.train)
    b, k = args.batch_size, args.round_steps

    def make(amp: str):
        return lambda r: (lambda cb: slimkit_run(cached, data, b, r, k, amp=amp, on_step=cb),
                          hand_kd_stepper(TargetModel(), data, cached, b, r))
    e, h, ratio, per_pair = speed(rounds_of(make("off"), args.rounds))
    row("1 classification KD throughput (cached logits)", f"slimkit {b / e:.0f} samples/s",
        f"hand-written {b / h:.0f} samples/s",
        f"{ratio:.3f}x (median per step {per_pair:.3f}; target >= 0.95) {'PASS' if ratio >= 0.95 else 'MISS'}")
    e16, h16, ratio16, _ = speed(rounds_of(make("bf16"), args.rounds))
    row("1b bf16 autocast on CPU (slimkit loop)", f"{ratio16 / ratio:.2f}x the fp32 speed",
        f"bf16 vs fp32 hand loop {ratio16:.2f}x; fp32 engine vs hand {ratio:.2f}x",
        "each against the fp32 hand-written loop in lockstep")


def part2(data: Dataset, teacher, args) -> None:
    cached_s, live_s, build = [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        teacher_logits(teacher, data.train)
        build.append(time.perf_counter() - t0)
        pair = [lambda: cached_s.extend(slimkit_steps(teacher, data, args.batch_size, r, cache="auto")),
                lambda: live_s.extend(slimkit_steps(teacher, data, args.batch_size, r, cache="off"))]
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


def hand_lm_stepper(student: torch.nn.Module, windows: torch.Tensor, cache, batch: int, seed: int):
    """The loop `slimkit distill` of a causal LM ran before the engine, one step per call: top-k KD from cached
    teacher logits, AdamW, clipping at 1 (with the engine's loss function, so only the loop differs)."""
    from slimkit.distill import soft_target_kl_topk

    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    student.train()
    at = [0]

    def step() -> None:
        b = order[at[0]:at[0] + batch]
        at[0] = (at[0] + batch) % (len(order) - batch + 1)
        logits = student(input_ids=windows[b], use_cache=False).logits
        loss = soft_target_kl_topk(logits, cache.values[b], cache.indices[b].long(), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return step


def engine_lm_run(student: torch.nn.Module, windows: torch.Tensor, cache, batch: int, seed: int, on_step) -> None:
    """The same steps through `Distiller` with the causal-LM task and the cached top-k outputs."""
    from slimkit.distill import TeacherOutputs, causal_lm, kd

    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-4, weight_decay=0.0, warmup_steps=0, grad_clip=1.0, seed=seed,
                      amp="off")
    Distiller(TeacherOutputs(cache.values, cache.indices), student, [kd(1.0, 1.0)], cfg, task=causal_lm()).fit(
        {"input_ids": windows}, progress=False, on_step=on_step)


def part6(args) -> None:
    import copy

    from slimkit.distill import causal_lm, compute_teacher_outputs
    from slimkit.llm import calibration_windows, load_causal_lm, remove_layers

    teacher, tok = load_causal_lm("smollm2")
    remove_layers(teacher, list(range(args.lm_layers, len(teacher.model.layers))))
    student = copy.deepcopy(teacher)
    remove_layers(student, [args.lm_layers // 2])  # a depth-pruned student, as in `slimkit prune smollm2 --blocks`
    for module in student.modules():  # the recovery recipe freezes the (tied) embeddings
        if isinstance(module, torch.nn.Embedding):
            module.weight.requires_grad_(False)
    b, k = args.lm_batch, args.round_steps
    windows = calibration_windows(tok, "emma", b * k, args.lm_seq_len, 0)
    cache = compute_teacher_outputs(teacher, {"input_ids": windows}, 2, 64, task=causal_lm())
    e, h, ratio, per_pair = speed(rounds_of(lambda r: (lambda cb: engine_lm_run(copy.deepcopy(student), windows, cache,
                                                                                b, r, cb),
                                                       hand_lm_stepper(copy.deepcopy(student), windows, cache, b, r)),
                                            args.rounds))
    tokens = b * args.lm_seq_len
    row(f"6 causal-LM KD throughput (SmolLM2 {args.lm_layers - 1} of {args.lm_layers} blocks, top-64 cache)",
        f"slimkit {tokens / e:.0f} tokens/s", f"hand-written {tokens / h:.0f} tokens/s",
        f"{ratio:.3f}x (median per step {per_pair:.3f}; target >= 0.95) {'PASS' if ratio >= 0.95 else 'MISS'}")


def part7(args) -> None:
    """The same run twice under torchrun (2 processes, 1 thread each): DDP, then FSDP."""
    work = Path(tempfile.mkdtemp(prefix="fsdp-", dir=args.work))
    worker = str(ROOT / "bench" / "distill_lm_worker.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = {}
    for mode in ("ddp", "fsdp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker,
               "--parallel", mode, "--steps", str(args.fsdp_steps), "--cut", str(args.fsdp_cut),
               "--batch", str(args.fsdp_batch), "--seq-len", str(args.fsdp_seq_len), "--out", str(work / f"{mode}.json")]
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SystemExit(f"part 7 worker failed: {' '.join(cmd)}")
        res[mode] = json.loads((work / f"{mode}.json").read_text())
    mib = 1 << 20
    held = {m: max(r["params"] + r["grads"] + r["optimizer"] for r in res[m]["per_rank"]) / mib for m in res}
    rss = {m: max(r["max_rss"] for r in res[m]["per_rank"]) / mib for m in res}
    d, f = res["ddp"], res["fsdp"]
    what = (f"SmolLM2 {d['teacher_layers']} -> {d['student_layers']} blocks ({d['student_params'] / 1e6:.0f} M), "
            f"live teacher, {args.fsdp_steps} steps of {args.fsdp_batch} x {args.fsdp_seq_len} tokens, 2 gloo procs x 1 thread")
    for m in ("ddp", "fsdp"):
        r = res[m]["per_rank"][0]
        row(f"7 {m} ({what})" if m == "ddp" else f"7 {m}",
            f"params+grads+AdamW per rank {held[m]:.0f} MiB (p {r['params'] / mib:.0f}, g {r['grads'] / mib:.0f}, "
            f"opt {r['optimizer'] / mib:.0f}); peak RSS {rss[m]:.0f} MiB",
            f"{res[m]['tokens_per_s']:.0f} tokens/s", f"loss after {len(res[m]['losses'])} steps {res[m]['losses'][-1]:.5f}")
    rel = abs(f["losses"][-1] - d["losses"][-1]) / abs(d["losses"][-1])
    row("7 fsdp / ddp", f"held memory {held['fsdp'] / held['ddp']:.2f}x (target about 0.5)",
        f"tokens/s {f['tokens_per_s'] / d['tokens_per_s']:.2f}x",
        f"final loss rel. diff {rel:.1e} {'PASS' if held['fsdp'] / held['ddp'] <= 0.55 and rel <= 1e-4 else 'MISS'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="1,2,3,4,5,6")
    ap.add_argument("--train-subset", type=int, default=6000, help="first N training images (0 = all 54k)")
    ap.add_argument("--epochs", type=int, default=3, help="student epochs for parts 3 and 5")
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats for timing part 2")
    ap.add_argument("--rounds", type=int, default=8, help="lockstep rounds for the throughput parts 1 and 6")
    ap.add_argument("--round-steps", type=int, default=12, help="optimizer steps per round (parts 1 and 6)")
    ap.add_argument("--lm-layers", type=int, default=4, help="part 6: SmolLM2 blocks kept for the teacher")
    ap.add_argument("--lm-seq-len", type=int, default=256, help="part 6: tokens per window")
    ap.add_argument("--lm-batch", type=int, default=2, help="part 6: windows per batch")
    ap.add_argument("--fsdp-steps", type=int, default=6, help="part 7: optimizer steps of each run")
    ap.add_argument("--fsdp-cut", type=int, default=8, help="part 7: SmolLM2 blocks removed for the student")
    ap.add_argument("--fsdp-batch", type=int, default=4, help="part 7: global batch (windows)")
    ap.add_argument("--fsdp-seq-len", type=int, default=128, help="part 7: tokens per window")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/bench-distill")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    chosen = [p.strip() for p in args.parts.split(",")]
    data = teacher = None
    if set(chosen) - {"6", "7"}:
        data = load_fashion_mnist(seed=0)
        data = Dataset(data.name, data.train.subset(args.train_subset), data.val, data.test, data.num_classes)
        teacher = get_teacher(data, args)
    parts = {"1": part1, "2": part2, "3": part3, "4": part4, "5": part5}
    for p in chosen:
        print(f"part {p} ...", flush=True)
        if p in ("6", "7"):
            (part6 if p == "6" else part7)(args)
        else:
            parts[p](data, teacher, args)
    header = (f"slimkit distill bench: CPU, {args.threads} torch threads, load average at the end "
              f"{os.getloadavg()[0]:.1f} (other processes share these cores)")
    if data is not None:
        header += (f"; Fashion-MNIST train subset {len(data.train)}, val {len(data.val)}, batch {args.batch_size}, "
                   f"SourceModel -> TargetModel")
    widths = [max(len(r[i]) for r in ROWS + [("check", "slimkit / measured", "reference", "verdict")]) for i in range(4)]
    print("\n" + header)
    for r in [("check", "slimkit / measured", "reference", "verdict"), tuple("-" * w for w in widths), *ROWS]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
