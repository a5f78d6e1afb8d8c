"""Structured pruning benchmark on Fashion-MNIST, CPU: prints one table (and writes it as JSON).

Per model (ResNet-20-style, MobileNetV2-style), on the full 54k/6k/10k train/val/test splits:
  * a base model trained once and cached (safetensors under slimkit's cache root);
  * the uniform ratio giving >= 2x fewer MACs; the four criteria at those equal MACs, before
    recovery (BatchNorm statistics re-estimated) and after a short equal KD recovery;
  * CE vs KD recovery on the same samples, for each of two recovery seeds; latency-aware vs
    uniform shaping at the same importance budget; latency-aware depth+width through
    slimkit.compress: 0..k blocks plus channels at the same MACs (blocks ranked by influence per ms
    their removal saves), timed, then recovered with 4 ep of KD (the engine's, live teacher)
    fastest first until one holds the val floor (dense val - 1 pt), checked on test only at the end.
Latency: batch 1, every variant of a model and its dense model BN-folded, each in NCHW and
channels_last, all timed in alternation at the end (fastest of N rounds of 5 calls in a row, the
first of each 5 not recorded, so every model runs warm as it would alone), fastest of 3 fresh
processes that load the saved checkpoints (slimkit/measure/fresh.py says why); each model, the dense one too, is
reported in its faster layout. The depth+width candidates are timed the same way.

    # the full run: ~45 min with base training, ~35 min once the base models are cached (2 cores)
    PYTHONPATH=. python bench/structured.py
    PYTHONPATH=. python bench/structured.py --models resnet20 --train-n 512 --epochs 0.2 \\
        --recover-epochs 0.02 --criteria-epochs 0.01   # smoke test
"""

import argparse
import copy
import functools
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from slimkit.data import load_fashion_mnist
from slimkit.data.arrays import Split, batches
from slimkit.io import cache_root, load_model, read_architecture, save_model
from slimkit.measure import count_macs, evaluate_classifier, predict_logits
from slimkit.measure.fold import fold_batchnorm
from slimkit.measure.fresh import time_in_fresh_processes
from slimkit.models import build_model
from slimkit.prune.batchnorm import recalibrate_bn
from slimkit.prune import latency_table, prune_latency_aware, prune_structured
from slimkit.distill.finetune import fine_tune
from slimkit.compression.cutters import StructuredCutter
from slimkit.compression.search import ratio_for

from run_clock import (channels_last, cpu_name, eval_seconds_per_sample, fmt_cell, stage,
                       train_seconds_per_sample)

MODELS = {"resnet20": ("resnet", {"depth": 20}), "mobilenetv2": ("mobilenetv2", {})}
# Base-training epochs, sized for <= ~8 min per model on 2 quiet cores. Measured (nice'd, on a
# machine shared with other jobs, so from CPU time): one training batch of 128 in channels_last
# costs 298 ms (ResNet-20) and 377 ms (MobileNetV2) of one core; NCHW costs 374 / 703 ms. With 2
# threads on quiet cores assumed ~1.5x faster: ~1.4 and ~1.8 min per 54k-sample epoch, so 5 and 4
# epochs take ~7 min each. (2-thread wall times measured under that load were meaningless: 2.8 s
# per batch, OpenMP threads spinning while the other job held the cores.)
EPOCHS = {"resnet20": 5.0, "mobilenetv2": 4.0}
# Most whole blocks the depth+width search tries (of 7 and 4 removable): each removed block takes
# its per-op overhead with it, which channel cuts cannot remove at batch 1.
MAX_BLOCKS = {"resnet20": 5, "mobilenetv2": 4}
CRITERIA = ("l2", "bn", "taylor", "entropy")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--train-n", type=int, default=0, help="0 = the whole train split (54k)")
    p.add_argument("--epochs", type=float, default=None, help="base training epochs (default per model: EPOCHS)")
    p.add_argument("--recover-epochs", type=float, default=2.0, help="main recovery budget, same for CE and KD")
    p.add_argument("--recover-seeds", default=[0, 1], type=lambda s: [int(x) for x in s.split(",")],
                   help="comma-separated recovery seeds of the CE vs KD comparison (sample order only; --seed "
                        "drives every other recovery)")
    # Chosen on val before this table: ResNet-20, uniform Taylor cut, 2 ep, seeds 0 and 1, mean val accuracy
    # CE 92.72, KD T=4 alpha=0.7 92.88, T=4 alpha=1 92.79, T=1 alpha=1 92.78, T=2 alpha=0.5 92.93.
    p.add_argument("--kd-temperature", type=float, default=2.0, help="KD temperature of every KD recovery")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="KD weight (1 - alpha on CE) of every KD recovery")
    p.add_argument("--criteria-epochs", type=float, default=0.3, help="short equal KD recovery per criterion")
    p.add_argument("--criterion", default="taylor", choices=CRITERIA, help="criterion of the main rows")
    p.add_argument("--macs-target", type=float, default=0.5, help="pruned/dense MACs to reach (0.5 = 2x fewer)")
    p.add_argument("--floor-pt", type=float, default=1.0, help="val floor = dense val accuracy - this many points")
    p.add_argument("--max-blocks", type=int, default=None, help="most blocks the depth+width search removes "
                   "(default: MAX_BLOCKS)")
    # Mixes are judged after their full recovery, not a short one: a short recovery understates how much of a
    # removed block's loss a full one wins back. On val, MobileNetV2 without 4 blocks scored 2.2 pt under a
    # 2-block mix after 0.3 ep of KD, and 0.3 pt above it after a full recovery (91.72 after 4 ep vs 91.45).
    p.add_argument("--shape-recover-epochs", type=float, default=4.0,
                   help="KD recovery of each depth+width mix, scored fastest first until one holds the val floor "
                        "(dense val - --floor-pt); whole blocks removed take longer to win back than channels")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    p.add_argument("--latency-threads", type=int, default=2, help="threads for batch-1 timing")
    p.add_argument("--layout", default="best", choices=("best", "nchw", "channels_last"),
                   help="memory layout for timing; best = each model (dense too) in its faster layout")
    p.add_argument("--no-fold", action="store_true", help="time with BatchNorm as separate ops")
    p.add_argument("--timing-rounds", type=int, default=100,
                   help="alternating rounds of batch-1 timing; each runs a model 5 times in a row, 4 recorded")
    p.add_argument("--table-rounds", type=int, default=60, help="alternating runs per width in the latency table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/out")
    return p.parse_args()


def base_settings(key: str, epochs: float, train: Split, seed: int) -> tuple[dict, Path]:
    """What a base model's training depends on, and the cache file it is stored under."""
    name, kw = MODELS[key]
    settings = {"model": name, "kwargs": kw, "epochs": epochs, "lr": 2e-3, "batch": 128, "seed": seed,
                "n_train": len(train), "data": "fashion-mnist val_fraction 0.1", "layout": "channels_last", "v": 1}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return settings, cache_root() / "bench" / f"structured_{key}_{digest}.safetensors"


def base_model(key: str, epochs: float, train: Split, seed: int) -> tuple[nn.Module, str]:
    """The trained dense model, from the cache when these exact settings were trained before."""
    name, kw = MODELS[key]
    settings, path = base_settings(key, epochs, train, seed)
    if path.is_file():
        took = read_architecture(path).get("extra", {}).get("train_seconds", float("nan"))
        return channels_last(load_model(path)).eval(), f"cached {path.name} (trained in {took:.0f} s)"
    torch.manual_seed(seed)
    model = channels_last(build_model(name, **kw))
    est = epochs * len(train) * train_seconds_per_sample(model, train)
    with stage(f"train {key} {epochs} epochs on {len(train)}", est):
        t0 = time.time()
        fine_tune(model, train, epochs=epochs, lr=2e-3, seed=seed, desc=f"train {key}")
        took = time.time() - t0
    save_model(model, path, extra={"train_seconds": took, "settings": settings})
    return model.eval(), f"trained in {took:.0f} s, cached as {path.name}"


def to_layout(m, layout: str):
    """A module (in eval mode) or tensor in the named memory layout."""
    out = m.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    return out.eval() if isinstance(out, nn.Module) else out


class ModelBench:
    """Rows for one model: every variant is evaluated when added and timed with the rest at the end."""

    def __init__(self, key: str, a: argparse.Namespace, data, train: Split) -> None:
        self.key, self.a, self.data, self.train = key, a, data, train
        self.example = data.test.x[:1]
        gen_batches = batches(train, 64, shuffle=True, seed=a.seed)
        self.calib = [(x, y) for x, y, _ in gen_batches][:8]
        self.bn_batches = [x for x, _, _ in batches(train, 128, shuffle=True, seed=a.seed + 1)][:20]
        self.rows: list[dict] = []
        self.timed: list[tuple[dict, nn.Module]] = []  # rows with a model, timed together at the end
        self.layouts = ["nchw", "channels_last"] if a.layout == "best" else [a.layout]
        self.tables: dict = {}
        self.kd_vs_ce: list[dict] = []  # KD minus CE accuracy, per recovery seed

    def acc(self, m: nn.Module, split: Split) -> float:
        return 100 * evaluate_classifier(channels_last(m).eval(), split, self.data.num_classes).accuracy

    def prune(self, model: nn.Module, ratio: float, crit: str) -> tuple[nn.Module, dict]:
        """Uniform cut of a copy of `model` by `ratio` and `crit`, BatchNorm statistics re-estimated;
        (model, kept widths)."""
        res = prune_structured(copy.deepcopy(model), self.example, ratio, crit, calib=self.calib)
        return recalibrate_bn(channels_last(res.model), self.bn_batches), {g: k for g, (k, _) in res.kept.items()}

    def recover(self, model: nn.Module, epochs: float, kd: bool, tag: str, seed: int | None = None) -> nn.Module:
        """KD from cached dense logits, or CE, on the same seeded samples for the same budget."""
        return fine_tune(channels_last(copy.deepcopy(model)), self.train, epochs=epochs, lr=1e-3,
                         teacher=self.logits if kd else None, temperature=self.a.kd_temperature, alpha=self.a.kd_alpha,
                         seed=self.a.seed if seed is None else seed, desc=f"{self.key} {tag}")

    def est_recover(self, model: nn.Module, epochs: float) -> float:
        return epochs * len(self.train) * train_seconds_per_sample(model, self.train)

    def row(self, variant: str, model: nn.Module, ratio, keep: dict | None = None, val: float | None = None,
            note: str = "") -> dict:
        """Evaluate and record a variant; `keep` (kept widths) lets the latency table predict its time."""
        model = model.eval()
        macs = count_macs(model, self.example)
        rw = {"model": self.key, "variant": variant, "ratio": ratio, "mmacs": macs / 1e6, "macs_x": self.d_macs / macs,
              "ms": None, "speedup": None, "eff": None, "pred_ms": None, "_keep": keep,
              "val": self.acc(model, self.data.val) if val is None else val, "test": self.acc(model, self.data.test),
              "note": note}
        self.rows.append(rw)
        self.timed.append((rw, model))
        print(json.dumps({k: v for k, v in rw.items() if not k.startswith("_")}), flush=True)
        return rw

    def run(self) -> list[dict]:
        a, key = self.a, self.key
        epochs = a.epochs if a.epochs is not None else EPOCHS[key]
        dense, how = base_model(key, epochs, self.train, a.seed)
        self.dense, self.d_macs = dense, count_macs(dense, self.example)
        with stage(f"{key}: teacher logits over {len(self.train)} train samples, dense accuracy"):
            self.logits = predict_logits(dense, self.train, 512)
            t0 = time.time()
            d_row = self.row("dense", dense, 0.0, note=f"base {epochs} epochs, {how}")
            eval_s = time.time() - t0
        self.d_val, self.d_test = d_row["val"], d_row["test"]
        r = ratio_for(StructuredCutter(self.example), dense, [], lambda m: count_macs(m, self.example),
                      a.macs_target * self.d_macs)
        if r is None:
            raise SystemExit(f"{key}: no uniform channel cut reaches {a.macs_target} x dense MACs")
        rec = self.est_recover(self.prune(dense, r, "l2")[0], 1.0)
        epochs_rec = recovery_epochs(a)
        print(f"[plan] {key}: uniform ratio {r} gives <= {a.macs_target} x dense MACs; recovery ~{rec:.0f} s per epoch "
              f"x {epochs_rec:.1f} epochs + ~13 evaluations of ~{0.7 * eval_s:.0f} s: ~"
              f"{(epochs_rec * rec + 13 * 0.7 * eval_s) / 60:.1f} min left for this model", flush=True)
        pruned, keeps = self.criteria(r, rec)
        crit, R = a.criterion, a.recover_epochs
        seeds = a.recover_seeds
        with stage(f"{key}: uniform-{crit} CE vs KD, {R} epoch each, recovery seeds {seeds}", 2 * len(seeds) * R * rec):
            for s in seeds:
                tag = "" if s == a.seed else f", recovery seed {s}"
                ce_row = self.row(f"uniform-{crit} + CE {R}ep{tag}", self.recover(pruned[crit], R, False, "CE", s), r,
                                  keep=keeps[crit])
                kd_row = self.row(f"uniform-{crit} + KD {R}ep{tag}", self.recover(pruned[crit], R, True, "KD", s), r,
                                  keep=keeps[crit])
                self.kd_vs_ce.append({"model": key, "seed": s, "val": kd_row["val"] - ce_row["val"],
                                      "test": kd_row["test"] - ce_row["test"]})
        with stage(f"{key}: latency tables ({', '.join(self.layouts)}), latency-aware {crit} + KD {R}ep", R * rec):
            self.latency_aware(r, crit, R)
        max_blocks = a.max_blocks if a.max_blocks is not None else MAX_BLOCKS[key]
        RS = a.shape_recover_epochs
        with stage(f"{key}: blocks+channels search (0..{max_blocks} blocks), KD {RS}ep per mix, fastest first, "
                   f"until one holds the val floor (estimate: 2 mixes)", 2 * RS * rec):
            self.depth_width(crit, RS, max_blocks)
        with stage(f"{key}: batch-1 timing of {len(self.timed)} models x {len(self.layouts)} layouts, "
                   f"{a.timing_rounds} alternating rounds"):
            self.time_all()
        return self.rows

    def criteria(self, r: float, rec: float) -> tuple[dict, dict]:
        """All criteria at the same uniform widths (so the same MACs): before and after a short equal recovery."""
        a, pruned, keeps = self.a, {}, {}
        with stage(f"{self.key}: criteria at equal MACs, no recovery (BN re-estimated)"):
            for crit in CRITERIA:
                pruned[crit], keeps[crit] = self.prune(self.dense, r, crit)
                self.row(f"uniform-{crit}, no recovery (BN re-est.)", pruned[crit], r, keep=keeps[crit])
        with stage(f"{self.key}: criteria + KD {a.criteria_epochs} epoch each", 3 * a.criteria_epochs * rec):
            for crit in ("l2", "taylor", "entropy"):
                model = self.recover(pruned[crit], a.criteria_epochs, True, f"KD {crit}")
                self.row(f"uniform-{crit} + KD {a.criteria_epochs}ep", model, r)
        return pruned, keeps

    def latency_aware(self, r: float, crit: str, R: float) -> None:
        """Shape the cut with each layout's lookup table; keep the one predicted fastest, recover it."""
        a, ex, dense_ms, best = self.a, self.example, self.dense_ms, None
        for layout in self.layouts:
            table = latency_table(self.dense, ex, threads=a.latency_threads, cache=Path(a.out) / "latency_cache.json",
                                  rounds=a.table_rounds, channels_last=layout == "channels_last",
                                  calibrate_with=lambda m, lay=layout: self.timing_copy(m, lay))
            self.tables[layout] = table
            la = prune_latency_aware(copy.deepcopy(self.dense), ex, r, crit, self.calib, threads=a.latency_threads,
                                     table=table)
            info = la.details
            pred = dense_ms[layout] - info["predicted_saving_ms"]
            print(f"[latency-aware] {layout}: table scale {table.scale:.3f}; dense {dense_ms[layout]:.3f} ms, "
                  f"predicted {pred:.3f} ms (uniform "
                  f"{dense_ms[layout] - info['uniform_predicted_saving_ms']:.3f}); kept {dict(la.kept)}", flush=True)
            if best is None or pred < best[0]:
                best = (pred, layout, la, info)
        _, layout, la, info = best
        model = recalibrate_bn(channels_last(la.model), self.bn_batches)
        note = (f"shaped for {layout}; same {crit} importance as uniform ({info['importance_spent']:.3g} of "
                f"{info['importance_uniform']:.3g})" + "".join(f"; {n}" for n in la.notes[:2]))
        self.row(f"latency-aware-{crit} + KD {R}ep", self.recover(model, R, True, "KD latency-aware"), r,
                 keep={g: k for g, (k, _) in la.kept.items()}, note=note)

    def depth_width(self, crit: str, R: float, max_blocks: int) -> None:
        """slimkit.compress at the MACs target and the val floor: k blocks + channels, the fastest mix (batch-1
        time, fresh processes, in the dense model's faster layout) whose val accuracy after an R-epoch KD
        recovery holds the floor. The mix's recovery is its whole recovery (recover_steps=0)."""
        import slimkit
        from slimkit.errors import SlimkitError

        a = self.a
        dense_ms = self.dense_ms
        layout = min(dense_ms, key=dense_ms.get)  # candidates are timed in the layout the dense model runs fastest in
        steps = max(1, round(R * len(self.train) / 128))
        try:
            res = slimkit.compress(
                self.dense, self.train, self.data.val, None, target=f"macs={a.macs_target}x", floor=f"-{a.floor_pt}pt",
                example=self.example, seed=a.seed, importance=crit, max_blocks=max_blocks, search_steps=steps,
                recover_steps=0, batch_size=128, lr=1e-3, temperature=a.kd_temperature, alpha=a.kd_alpha,
                keep_slower=True, timer=lambda ms: [t[layout] for t in self.fresh_times(ms, [layout])],
                timing_method=f"fresh processes, {layout}, {a.timing_rounds} rounds", command="bench/structured.py")
        except SlimkitError as exc:
            print(f"[shape] {self.key}: compress refused: {exc}", flush=True)
            self.rows.append({"model": self.key, "variant": f"latency-aware depth+width (compress) + KD {R}ep",
                              "note": f"refused: {exc}"})
            return
        (Path(a.out) / f"{self.key}_depth_width.json").write_text(json.dumps(res.report, indent=1, default=str))
        print(f"[shape] {self.key}: blocks by influence per ms saved: " + ", ".join(
            f"{b['block']} ({b['influence']:.3f} / {b['saving_ms']:.3f} ms)" for b in res.report.block_ranking),
            flush=True)
        for c in res.candidates:
            print(f"[shape] {self.key}: {c.blocks} blocks + ratio {c.ratio}: {c.macs / 1e6:.2f} MMACs, {c.ms:.3f} ms "
                  f"({layout}), " + ("not recovered" if c.val is None else f"val {100 * c.val:.2f} after KD {R}ep"),
                  flush=True)
        c, floor_val = res.chosen, 100 * res.report.floor_value
        tried = [x for x in res.candidates if x.val is not None]
        note = (f"slimkit.compress: fastest of {len(res.candidates)} measured mixes holding val >= {floor_val:.2f} "
                f"after KD {R}ep ({steps} steps); recovered fastest first: "
                + ", ".join(f"{x.blocks} blocks val {100 * x.val:.2f}" for x in tried))
        note += (f"; removed {', '.join(c.removed)}" if c.removed else "") + "; blocks ranked by influence per ms saved"
        self.row(f"latency-aware depth+width: {c.blocks} blocks + uniform-{crit} + KD {R}ep",
                 channels_last(res.model), c.ratio, val=100 * c.val, note=note)

    @functools.cached_property
    def dense_ms(self) -> dict[str, float]:
        """Batch-1 latency of the dense model in each layout, timed once per model in fresh processes (it
        only picks the layout and anchors the lookup-table prediction; the table rows time it again)."""
        return self.fresh_times([self.dense])[0]

    def fresh_times(self, models: list[nn.Module], layouts: list[str] | None = None) -> list[dict[str, float]]:
        """Per model {layout: ms}, all timed in alternation in fresh processes (slimkit.measure.fresh)."""
        a = self.a
        return time_in_fresh_processes(models, self.example, layouts or self.layouts, a.timing_rounds,
                                       a.latency_threads, fold=not a.no_fold)

    def timing_copy(self, m: nn.Module, layout: str | None = None) -> nn.Module:
        """How every model is timed: BN folded (unless --no-fold), eval mode, in `layout` (default: the first)."""
        m = copy.deepcopy(m).eval()
        return to_layout(m if self.a.no_fold else fold_batchnorm(m, self.example), layout or self.layouts[0])

    def time_all(self) -> None:
        """One alternating pass over dense and every variant, each in every layout, in fresh processes; a
        model's latency is its faster layout's. A variant no faster than dense falls back to it, with a note."""
        lays = self.layouts
        times = self.fresh_times([m for _, m in self.timed])
        by = {lay: [t[lay] for t in times] for lay in lays}
        d_best = min(by[lay][0] for lay in lays)
        for i, (rw, _) in enumerate(self.timed):
            rw["ms_by_layout"] = {lay: by[lay][i] for lay in lays}
            rw["layout"] = min(lays, key=lambda lay: by[lay][i])
            rw["ms"] = by[rw["layout"]][i]
            if rw.get("_keep") and rw["layout"] in self.tables:  # predicted by the table of the layout it runs in
                rw["pred_ms"] = by[rw["layout"]][0] - self.tables[rw["layout"]].saving_ms(rw["_keep"])
            if i and rw["ms"] >= d_best:
                rw["note"] = (rw["note"] + "; " if rw["note"] else "") + (
                    f"measured {rw['ms']:.3f} ms >= dense {d_best:.3f} ms: cut does not pay, dense model kept "
                    f"(pruned: {rw['mmacs']:.2f} MMACs, val {rw['val']:.2f}, test {rw['test']:.2f})")
                rw.update(mmacs=self.d_macs / 1e6, macs_x=1.0, ms=d_best, val=self.d_val, test=self.d_test)
            rw["dtest"] = rw["test"] - self.d_test
            rw["speedup"] = d_best / rw["ms"]
            rw["eff"] = rw["speedup"] / rw["macs_x"] if rw["macs_x"] > 1 else None


def recovery_epochs(a: argparse.Namespace) -> float:
    """Epochs of pruned-model recovery one model's rows take (run estimates and the plan share it)."""
    return ((2 * len(a.recover_seeds) + 1) * a.recover_epochs  # CE and KD per seed, latency-aware
            + 2 * a.shape_recover_epochs  # depth+width: mixes recovered until one holds (estimate: 2)
            + 3 * a.criteria_epochs)  # criteria


def plan(a: argparse.Namespace, train: Split, n_eval: int) -> None:
    """A whole-run estimate before anything long starts, from a few timed batches of each dense model.

    Assumes a pruned model trains at ~0.6x and evaluates at ~0.7x the dense cost per sample; the
    stages print their own estimates and times too.
    """
    total = 0.0
    for key in a.models.split(","):
        name, kw = MODELS[key]
        epochs = a.epochs if a.epochs is not None else EPOCHS[key]
        model = build_model(name, **kw)
        sps, eps = train_seconds_per_sample(model, train), eval_seconds_per_sample(model, train)
        cached = base_settings(key, epochs, train, a.seed)[1].is_file()
        t_train = 0.0 if cached else epochs * len(train) * sps
        t_rest = len(train) * eps + recovery_epochs(a) * len(train) * sps * 0.6 + 14 * n_eval * eps * 0.7
        total += t_train + t_rest
        print(f"[plan] {key}: {sps * 1e3:.2f} ms per training sample; base training "
              f"{'cached' if cached else f'~{t_train / 60:.1f} min'}, the rest ~{t_rest / 60:.1f} min", flush=True)
    print(f"[plan] whole run ~{total / 60:.0f} min (+ a few minutes of pruning, tables and timing)", flush=True)


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist(seed=a.seed)
    train = data.train.subset(a.train_n) if a.train_n else data.train
    t_start, rows = time.time(), []
    plan(a, train, len(data.val) + len(data.test))
    kd_vs_ce = []
    for key in a.models.split(","):
        bench = ModelBench(key, a, data, train)
        rows += bench.run()
        kd_vs_ce += bench.kd_vs_ce
    layout = "each model in its faster of NCHW and channels_last" if a.layout == "best" else a.layout
    header = (f"Fashion-MNIST; CPU {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}; train/eval "
              f"{a.threads} threads; latency batch 1, {a.latency_threads} threads, under inference_mode, "
              f"{'BN as separate ops' if a.no_fold else 'BN folded'} in dense and pruned alike, {layout}, "
              f"fastest of {a.timing_rounds} alternating rounds x 4 warm calls, fastest of 3 fresh processes "
              f"loading the saved checkpoints, OMP_WAIT_POLICY=ACTIVE; pred_ms = dense ms - lookup-table saving "
              f"(table scaled to one measured 50% uniform cut); base models {len(train)} train samples "
              f"(epochs {a.epochs or EPOCHS}); recovery AdamW lr 1e-3, KD T={a.kd_temperature} alpha={a.kd_alpha} "
              f"from cached dense logits, CE and KD on the same samples: main {a.recover_epochs} ep, criteria "
              f"{a.criteria_epochs} ep; pruned models BN re-estimated on 20x128 train images; val {len(data.val)}, test "
              f"{len(data.test)}; seed {a.seed}; wall {time.time() - t_start:.0f} s")
    print("\n" + header)
    cols = ("model", "variant", "ratio", "mmacs", "macs_x", "ms", "layout", "speedup", "eff", "pred_ms", "val", "test",
            "dtest", "note")
    print(" | ".join(cols))
    for rw in rows:
        print(" | ".join(fmt_cell(rw.get(c)) for c in cols))
    print(f"\nKD minus CE after {a.recover_epochs} ep on the same samples (accuracy points), per recovery seed:")
    for key in dict.fromkeys(d["model"] for d in kd_vs_ce):
        mine = [d for d in kd_vs_ce if d["model"] == key]
        for split in ("val", "test"):
            each = ", ".join(f"seed {d['seed']} {d[split]:+.2f}" for d in mine)
            print(f"  {key} {split}: {each}; mean {sum(d[split] for d in mine) / len(mine):+.2f}")
    clean = [{k: v for k, v in rw.items() if not k.startswith("_")} for rw in rows]
    result = {"header": header, "rows": clean, "kd_minus_ce": kd_vs_ce}
    (out / "structured_bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
