"""Deployment benchmark: ONNX export, ONNX Runtime latency and int8, after structured pruning; prints one table.

Per CNN (ResNet-20-style, MobileNetV2-style) on Fashion-MNIST (54k/6k/10k train/val/test):
  * the dense base model: bench/structured.py's cached checkpoint when one was trained with the same
    settings (same cache file), else trained here (structured.EPOCHS: 5 and 4 epochs);
  * a uniform cut: the uniform Taylor channel ratio reaching <= --macs-target x dense MACs, BatchNorm
    statistics re-estimated, then --recover-epochs of KD from the dense model (T=2, alpha=0.5);
  * a depth+width cut at the same MACs with compress's search (slimkit.compression.search), as
    bench/structured.py does: blocks ranked by influence per ms their removal saves (eager batch-1
    times in fresh processes), mixes recovered fastest first with --recover-epochs of KD until one
    holds val >= dense val - 1 pt. The recovery is shorter than structured.py's (2 ep uniform, 4 ep
    depth+width) so the run fits in ~25 min;
  * every model exported to ONNX (slimkit.export.to_onnx: checker, max abs difference on held-out
    inputs, test accuracy equal to PyTorch's within 0.1 pt), then static int8 (QDQ, per-channel
    weights, MinMax calibration on --calib-samples validation images), with the convolutions whose
    int8 kernel ran slower than their fp32 one left in fp32 when the whole model measures faster
    so (slimkit.export.quantize_int8_fastest, decided on 32 validation images; "int8 mixed" rows);
  * latency at batch 1 and 32: ONNX Runtime (bench/ort_timing.py: ORT_ENABLE_ALL, 2 intra-op threads, all
    of a model's ONNX files alternating) and eager PyTorch (slimkit.measure.fresh: BN folded, each model in
    its faster of NCHW and channels_last, OMP_WAIT_POLICY=ACTIVE), each the fastest of 3 fresh processes.
MiniLM (bench/deploy_encoder.py): dense and pruned as `slimkit prune minilm --ffn 0.5 --heads
0.25` does (least-squares refit), without distillation, exported and int8 (dynamic), timed at batch 1.

    # full run: ~25 min once bench/structured.py's base models are cached (+ ~15 min to train them), 2 cores
    PYTHONPATH=. python bench/deploy.py
    # dense beside a compressed model of the same base (the MobileNetV2 of bench/compress_e2e.py), timed together
    PYTHONPATH=. python bench/deploy.py --models mobilenetv2 --minilm off --cuts "" \
        --checkpoint mobilenetv2=bench/out/compress_e2e/mobilenetv2/model.safetensors
    PYTHONPATH=. python bench/deploy.py --quick   # smoke test: tiny training, numbers meaningless (25 min on a loaded shared machine)
"""

import argparse
import copy
import dataclasses
import json
import os
import re
import time
from pathlib import Path

import torch
from torch import nn

from slimkit.data import batches, load_fashion_mnist
from slimkit.data.arrays import Split
from slimkit.export import (OrtModel, classifier_check, classifier_scores, describe_session, quantize_int8_fastest,
                            split_feeds, to_onnx, write_output)
from slimkit.io import load_model
from slimkit.measure import count_macs, evaluate_classifier, predict_logits
from slimkit.measure.fresh import time_in_fresh_processes
from slimkit.prune.batchnorm import recalibrate_bn
from slimkit.distill.finetune import fine_tune
from slimkit.compression.cutters import StructuredCutter
from slimkit.compression.search import ratio_for, search
from slimkit.compression.settings import CompressSettings, Target
from slimkit.prune.structured import prune_structured

from deploy_encoder import minilm_rows
from ort_timing import time_onnx_in_fresh_process
from run_clock import channels_last, cpu_name, fmt_cell, stage
from structured import EPOCHS, MAX_BLOCKS, base_model

LAYOUTS = ["nchw", "channels_last"]
COLS = ("model", "variant", "precision", "mmacs", "macs_x", "metric", "ref", "delta", "mb", "ort@1", "ort@2",
        "ort_eff@1", "ort_eff@2", "eager@1", "eager@2", "eager_eff@1", "eager_eff@2", "int8_x@2", "note")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 512 train samples, tiny recoveries, few rounds")
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--train-n", type=int, default=0, help="0 = the whole train split (54k)")
    p.add_argument("--epochs", type=float, default=None, help="base training epochs (default: structured.EPOCHS)")
    p.add_argument("--recover-epochs", type=float, default=1.0, help="KD recovery of each cut (and each scored mix)")
    p.add_argument("--macs-target", type=float, default=0.5, help="pruned/dense MACs to reach (0.5 = 2x fewer)")
    p.add_argument("--max-blocks", type=int, default=None, help="most blocks the depth+width search removes")
    p.add_argument("--round-to", type=int, default=16, help="kept channel counts are multiples of this (16: "
                   "widths ONNX Runtime's int8 convolutions run fast on x86; see bench/int8_widths.py)")
    p.add_argument("--calib-samples", type=int, default=1024, help="validation images for static int8 calibration")
    p.add_argument("--rounds-1", type=int, default=100, help="alternating timing rounds at batch 1 (x4 warm calls)")
    p.add_argument("--rounds-32", type=int, default=20, help="alternating timing rounds at batch 32 (x4 warm calls)")
    p.add_argument("--passes", type=int, default=3, help="fresh timing processes; the fastest is kept")
    p.add_argument("--test-n", type=int, default=0, help="0 = the whole test split (10k)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minilm", choices=("on", "off"), default="on")
    p.add_argument("--minilm-calib", type=int, default=256, help="calibration sentences of the MiniLM pruning refit")
    p.add_argument("--minilm-held", type=int, default=128, help="held-out sentences for the cosine checks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuts", default="uniform,depth+width", help="the bench's own cuts to build and deploy beside "
                   "dense (comma-separated; empty: only dense and --checkpoint models)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                   help="also deploy a compressed model of the same base (a slimkit checkpoint, e.g. the "
                        "model.safetensors of `slimkit compress` or bench/compress_e2e.py); repeatable")
    p.add_argument("--out", default="bench/out/deploy")
    a = p.parse_args()
    a.cuts = [c for c in a.cuts.split(",") if c]
    if set(a.cuts) - {"uniform", "depth+width"}:
        p.error(f"--cuts {','.join(a.cuts)}: choose from uniform, depth+width")
    a.checkpoints = {}
    for spec in a.checkpoint:
        key, sep, path = spec.partition("=")
        if not sep or key not in a.models.split(",") or not Path(path).is_file():
            p.error(f"--checkpoint {spec}: give MODEL=PATH with MODEL one of --models ({a.models}) and PATH an "
                    "existing slimkit checkpoint")
        a.checkpoints[key] = Path(path)
    if a.quick:
        a.train_n, a.test_n, a.epochs, a.recover_epochs, a.calib_samples = 512, 2000, 0.2, 0.02, 256
        a.rounds_1, a.rounds_32, a.passes, a.minilm_calib, a.minilm_held = 20, 3, 1, 32, 16
        a.max_blocks = 2 if a.max_blocks is None else a.max_blocks
    return a


class CnnBench:
    """The rows of one CNN: dense, uniform and depth+width cuts, each fp32 and int8 in ONNX Runtime."""

    def __init__(self, key: str, a: argparse.Namespace, data, train: Split) -> None:
        self.key, self.a, self.data, self.train = key, a, data, train
        self.ex = data.test.x[:1]
        self.calib = [(x, y) for x, y, _ in batches(train, 64, shuffle=True, seed=a.seed)][:8]
        self.bn_batches = [x for x, _, _ in batches(train, 128, shuffle=True, seed=a.seed + 1)][:20]

    def acc(self, m: nn.Module, split: Split) -> float:
        return evaluate_classifier(channels_last(m).eval(), split, self.data.num_classes).accuracy

    def recover(self, m: nn.Module, tag: str) -> nn.Module:
        m = recalibrate_bn(channels_last(copy.deepcopy(m)), self.bn_batches)
        return fine_tune(m, self.train, epochs=self.a.recover_epochs, lr=1e-3, teacher=self.logits, temperature=2.0,
                         alpha=0.5, seed=self.a.seed, desc=f"{self.key} {tag}").eval()

    def eager_times(self, models: list[nn.Module], batch: int, layouts: list[str] = LAYOUTS) -> list[dict[str, float]]:
        a = self.a
        return time_in_fresh_processes(models, self.data.test.x, layouts, a.rounds_1 if batch == 1 else a.rounds_32,
                                       a.threads, passes=a.passes, batch=batch)

    def cuts(self) -> dict[str, nn.Module]:
        a, key = self.a, self.key
        epochs = a.epochs if a.epochs is not None else EPOCHS[key]
        dense, how = base_model(key, epochs, self.train, a.seed)
        self.notes = {"dense": f"base {epochs} ep, {how}"}  # per variant: how it was made, for its table row
        self.logits = predict_logits(dense, self.train, 512)
        target_macs = a.macs_target * count_macs(dense, self.ex)
        cuts = {"dense": dense}
        if "uniform" in a.cuts:
            cuts["uniform"] = self.uniform_cut(dense, target_macs)
        if "depth+width" in a.cuts:
            cuts["depth+width"] = self.depth_width_cut(dense, target_macs)
        if key in a.checkpoints:
            cuts["compressed (checkpoint)"] = load_model(a.checkpoints[key]).eval()
            self.notes["compressed (checkpoint)"] = f"from {a.checkpoints[key]}"
        return cuts

    def uniform_cut(self, dense: nn.Module, target_macs: float) -> nn.Module:
        a = self.a
        with stage(f"{self.key}: uniform Taylor cut to <= {a.macs_target} x MACs, KD {a.recover_epochs} ep"):
            r = ratio_for(StructuredCutter(self.ex, round_to=a.round_to), dense, [], lambda m: count_macs(m, self.ex),
                          target_macs)
            if r is None:
                raise SystemExit(f"{self.key}: no uniform channel cut reaches {a.macs_target} x dense MACs")
            cut = prune_structured(copy.deepcopy(dense), self.ex, r, "taylor", calib=self.calib,
                                   round_to=a.round_to).model
            return self.recover(cut, "uniform")

    def depth_width_cut(self, dense: nn.Module, target_macs: float) -> nn.Module:
        a, key = self.a, self.key
        floor = self.acc(dense, self.data.val) - 0.01
        d_ms = self.eager_times([dense], 1)[0]
        lay = min(d_ms, key=d_ms.get)
        max_blocks = a.max_blocks if a.max_blocks is not None else MAX_BLOCKS[key]
        cutter = StructuredCutter(self.ex, "taylor", labels=[y for _, y in self.calib], round_to=a.round_to)
        with stage(f"{key}: depth+width search (0..{max_blocks} blocks), KD {a.recover_epochs} ep per mix tried"):
            found = search(dense, cutter, self.ex, Target("macs", target_macs / count_macs(dense, self.ex)),
                           [x for x, _ in self.calib], CompressSettings(max_blocks=max_blocks, round_to=a.round_to),
                           lambda ms: [t[lay] for t in self.eager_times(ms, 1, [lay])])
            best = None  # fastest first until a mix holds the floor, else the best-scoring one
            for c in found.candidates:
                rec = self.recover(c.model, "depth+width mix")
                c.val = self.acc(rec, self.data.val)
                if best is None or c.val > best[0].val:
                    best = (c, rec)
                if c.val >= floor:
                    best = (c, rec)
                    break
        c, recovered = best
        held = "holds" if c.val >= floor else "no mix held; best-scoring"
        self.notes["depth+width"] = (f"{c.blocks} blocks ({', '.join(c.removed) or 'none'}) + ratio {c.ratio}; "
                                     f"{held} val floor {100 * floor:.2f}")
        return recovered

    def run(self) -> list[dict]:
        a, data, out = self.a, self.data, Path(self.a.out)
        models = self.cuts()
        test, nc = data.test, data.num_classes
        feeds = split_feeds(data.val, "input", a.calib_samples)
        timing_batch = split_feeds(data.val, "input", 32, 32)[0]  # the batch int8's precision choice is timed on
        info, files = {}, []
        with stage(f"{self.key}: ONNX export (checked on test), static int8 calibrated on {a.calib_samples} val images"):
            for name, m in models.items():
                plain = copy.deepcopy(m).to(memory_format=torch.contiguous_format).eval()
                stem = out / f"{self.key}_{re.sub(r'[^a-z0-9]+', '_', name).strip('_')}"
                # the PyTorch reference runs channels_last (faster here); the export is of a plain NCHW copy
                res = to_onnx(plain, test.x[:2], f"{stem}.onnx", overwrite=True, check_inputs=[test.x[:32]],
                              validate=classifier_check(m, test, nc))
                q = quantize_int8_fastest(res.model_bytes, feeds, timing_batch, a.threads)
                q.path = write_output(f"{stem}.int8.onnx", q.model_bytes, overwrite=True)
                q_acc = classifier_scores(OrtModel(q.model_bytes), test, nc)["accuracy"]
                info[name] = {"macs": count_macs(plain, self.ex), "pt": res.checks["pytorch"], "onnx": res.checks["onnx"],
                              "diff": max(res.max_abs_diff.values()), "exporter": res.exporter, "mb": res.file_bytes / 1e6,
                              "rewrites": res.rewrites,
                              "int8": q_acc, "int8_mb": q.file_bytes / 1e6, "int8_choice": q.details["precision_choice"],
                              "int8_note": q.details["precision_note"]}
                files += [res.path, q.path]
        settings = {"batch 1": test.x[:1], "batch 32": test.x[:32]}
        with stage(f"{self.key}: ONNX Runtime timing, {len(files)} models alternating, {a.passes} fresh processes"):
            ort, prof = time_onnx_in_fresh_process(files, settings, {"batch 1": a.rounds_1, "batch 32": a.rounds_32},
                                                   a.threads, a.passes, profile="batch 1")
        self.profile_lines = [_profile_line(f"{self.key} {name} fp32", p) for name, p in zip(models, prof[::2])]
        with stage(f"{self.key}: eager PyTorch timing, batch 1 and 32, {a.passes} fresh processes"):
            eager = {b: [min(t.values()) for t in self.eager_times(list(models.values()), b)] for b in (1, 32)}
        return self.rows(info, ort, eager)

    def rows(self, info: dict, ort: list[dict], eager: dict) -> list[dict]:
        d = info["dense"]
        rows = []
        for i, (name, v) in enumerate(info.items()):
            macs_x = d["macs"] / v["macs"]
            o32, o8 = ort[2 * i], ort[2 * i + 1]
            s_ort = [ort[0][k] / o32[k] for k in ("batch 1", "batch 32")]
            s_eager = [eager[b][0] / eager[b][i] for b in (1, 32)]
            eff = (lambda s, mx=macs_x: s / mx) if i else (lambda s: None)
            notes = [f"{v['exporter']} exporter, max abs diff {v['diff']:.1e}"]
            notes += [f"{k} ({n})" for k, n in v["rewrites"].items()]
            notes += [self.notes[name]] if name in self.notes else []
            for j, b in enumerate(("batch 1", "batch 32")):
                if i and s_eager[j] > 1 >= s_ort[j]:
                    notes.append(f"pays in eager PyTorch ({s_eager[j]:.2f}x) but not in ONNX Runtime ({s_ort[j]:.2f}x) "
                                 f"at {b}")
            if i and s_ort[0] / macs_x < 0.85:
                notes.append(f"ORT efficiency at batch 1 {s_ort[0] / macs_x:.2f} < 0.85 (eager {s_eager[0] / macs_x:.2f})")
            rows.append({"model": self.key, "variant": name, "precision": "fp32", "mmacs": v["macs"] / 1e6,
                         "macs_x": macs_x, "metric": f"acc {100 * v['onnx']:.2f}", "ref": f"PT {100 * v['pt']:.2f}",
                         "delta": 100 * (v["onnx"] - v["pt"]), "mb": v["mb"], "ort@1": o32["batch 1"],
                         "ort@2": o32["batch 32"], "ort_eff@1": eff(s_ort[0]), "ort_eff@2": eff(s_ort[1]),
                         "eager@1": eager[1][i], "eager@2": eager[32][i], "eager_eff@1": eff(s_eager[0]),
                         "eager_eff@2": eff(s_eager[1]), "int8_x@2": None, "note": "; ".join(notes)})
            x8 = o32["batch 32"] / o8["batch 32"]
            drop = 100 * (v["onnx"] - v["int8"])
            notes = [f"{o32['batch 1'] / o8['batch 1']:.2f}x fp32 at batch 1", v["int8_note"]]
            if drop > 0.5:
                notes.append(f"int8 costs {drop:.2f} pt (> 0.5 pt): too much")
            if x8 < 1.5:
                notes.append(f"int8 only {x8:.2f}x fp32 at batch 32 (< 1.5x)")
            precision = "int8 mixed" if v["int8_choice"] == "mixed" else "int8 static"
            rows.append({"model": self.key, "variant": name, "precision": precision, "mmacs": v["macs"] / 1e6,
                         "macs_x": macs_x, "metric": f"acc {100 * v['int8']:.2f}", "ref": f"fp32 {100 * v['onnx']:.2f}",
                         "delta": -drop, "mb": v["int8_mb"], "ort@1": o8["batch 1"], "ort@2": o8["batch 32"],
                         "int8_x@2": x8, "note": "; ".join(notes)})
        return rows


def _profile_line(label: str, p: dict) -> str:
    top = sorted(p["by_op"].items(), key=lambda kv: -kv[1])[:3]
    return (f"  {label}: {p['nodes']} nodes; run {p['wall_us']:.0f} us, of which kernels {p['kernel_us']:.0f} us ("
            + ", ".join(f"{op} {us:.0f}" for op, us in top) + f"), outside kernels {p['wall_us'] - p['kernel_us']:.0f} us")


def end_to_end(rows: list[dict]) -> list[str]:
    """Dense fp32 -> each pruned int8, in ONNX Runtime: one latency and one size number each."""
    lines = []
    for key in dict.fromkeys(r["model"] for r in rows if r["model"] != "minilm"):
        dense = next(r for r in rows if r["model"] == key and r["variant"] == "dense" and r["precision"] == "fp32")
        for r in rows:
            if r["model"] == key and r["variant"] != "dense" and r["precision"].startswith("int8"):
                lines.append(f"  {key}: dense fp32 -> {r['variant']} int8: {dense['ort@2'] / r['ort@2']:.2f}x faster at "
                             f"batch 32 ({dense['ort@1'] / r['ort@1']:.2f}x at batch 1), {dense['mb'] / r['mb']:.2f}x "
                             f"smaller file ({dense['mb']:.2f} -> {r['mb']:.2f} MB), accuracy {r['metric'][4:]} vs "
                             f"{dense['metric'][4:]}")
    return lines


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = load_fashion_mnist(seed=a.seed)
    if a.test_n:
        data = dataclasses.replace(data, test=data.test.subset(a.test_n))
    train = data.train.subset(a.train_n) if a.train_n else data.train
    rows: list[dict] = []
    profiles: list[str] = []
    for key in a.models.split(","):
        if key:
            bench = CnnBench(key, a, data, train)
            rows += bench.run()
            profiles += bench.profile_lines
    if a.minilm == "on":
        rows += minilm_rows(a, out)
    header = (f"{'QUICK SMOKE RUN (numbers meaningless); ' if a.quick else ''}CPU {cpu_name()} ({os.cpu_count()} "
              f"cores), torch {torch.__version__}. ONNX Runtime: {describe_session(a.threads)}; eager PyTorch: "
              f"{a.threads} threads, BN folded, faster of NCHW/channels_last, OMP_WAIT_POLICY=ACTIVE. Latency: fastest "
              f"of {a.rounds_1} (batch 1) / {a.rounds_32} (batch 32) alternating rounds x 4 warm calls, fastest of "
              f"{a.passes} fresh processes, ORT and eager in separate processes. CNNs: Fashion-MNIST, base models "
              f"{len(train)} train samples; cut widths multiples of {a.round_to}, recovered with {a.recover_epochs} ep KD "
              f"(T=2, alpha=0.5); @1 = batch 1, "
              f"@2 = batch 32; efficiency = speed-up over dense fp32 / MACs reduction; metric = ONNX test accuracy "
              f"({len(data.test)} images), ref = PyTorch (fp32 rows) or the fp32 ONNX model (int8 rows); int8 static "
              f"QDQ calibrated on {a.calib_samples} val images; int8 mixed = the same with the convolutions profiled "
              f"slower in int8 left fp32, kept because it timed faster than all int8 (32 val images). MiniLM: @1 = "
              f"seq 32, @2 = seq 128, batch 1, MACs at seq 128; metric = mean embedding cosine to the same model in "
              f"PyTorch (int8 rows: to its fp32 PyTorch model); eager MiniLM not timed. Wall {time.time() - t0:.0f} s")
    print("\n" + header)
    print(" | ".join(COLS))
    for r in rows:
        print(" | ".join(fmt_cell(r.get(c)) for c in COLS))
    e2e = end_to_end(rows)
    print("\nEnd-to-end in ONNX Runtime (dense fp32 -> pruned int8):\n" + "\n".join(e2e))
    print("\nONNX Runtime profiler at batch 1 (fastest of 50 runs with the profiler on, which adds time per node; "
          "kernel time per op type shows where a cut saves and what it keeps):\n" + "\n".join(profiles))
    (out / "deploy_bench.json").write_text(json.dumps({"header": header, "rows": rows, "end_to_end": e2e,
                                                       "ort_profile_batch1": profiles}, indent=1))


if __name__ == "__main__":
    main()
