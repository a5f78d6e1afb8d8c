"""Compression benchmark on this CPU: prints one table and writes it as JSON.

Part "foreign": real `transformers` classes at their default configs with random init (structure
and speed only; nothing is downloaded): ResNet-50 and MobileNetV2 at 224x224, ConvNeXt-tiny, a
small ViT (ViT-S/16: 384 wide, 6 heads, 12 layers), BERT-base at sequence length 128 and
wav2vec2-base on 1 s of 16 kHz audio. Each goes through a 50% structured cut
(slimkit.prune.prune_structured: half of every prunable channel group, and for the transformers
half of every attention module's heads; what cannot be cut is kept and counted); the conv models
also through the latency-aware shaping (prune_latency_aware, match="latency": the uniform cut's
predicted time saving, reached where it loses the least channel importance), once with its
per-layer lookup table measured at batch 1 ("lat-aware b1") and once at the largest batch
("lat-aware b32"): which layers are worth cutting differs between the two. Reported at batch 1 and
batch 32: MACs reduction (dense / pruned, torch.utils.flop_counter), measured speed-up (dense ms /
pruned ms) and efficiency (speed-up / MACs reduction), plus whether the pruned model saves, reloads
and gives the same outputs (see `reload_check`).

Timing method: slimkit's deciding timer (slimkit.measure.fresh), per batch size: every variant of
one model and its dense model saved as Hugging Face folders, then loaded by --passes fresh
processes (OMP_WAIT_POLICY=ACTIVE, torch intra-op threads = --threads, BatchNorm folded into the
convs of dense and pruned models alike, NCHW), each timing them in alternation (rounds of `burst`
calls in a row per model, the first call of each burst not recorded); per model the fastest call
over all processes counts. One process alone is not enough here: at batch 32 the same model runs
markedly faster in one process than in the next (README, "Foreign architectures"), and slow
processes only add time. This process itself leaves OpenMP's wait policy to the environment: under
ACTIVE its idle worker threads would spin, taking a core from the timing processes.

    PYTHONPATH=. python bench/compress.py            # the full run (2 cores: about half an hour)
    PYTHONPATH=. python bench/compress.py --quick    # smoke run: tiny configs, few rounds
"""

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io.hf_folder import load_hf, save_hf
from slimkit.measure import count_macs
from slimkit.measure.fresh import HF, time_in_fresh_processes
from slimkit.io.outputs import atomic_write_bytes
from slimkit.prune import latency_table, prune_latency_aware, prune_structured

CONV = ("resnet50", "mobilenet_v2", "convnext_tiny")
TRANSFORMERS = ("vit_small", "bert_base", "wav2vec2_base")


def build(name: str, quick: bool) -> tuple[nn.Module, callable]:
    """(dense model in eval mode, batch -> example input) for one architecture."""
    import transformers as t

    torch.manual_seed(0)
    side = 64 if quick else 224
    images = lambda b: torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(b))
    if name == "resnet50":
        cfg = (t.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck")
               if quick else t.ResNetConfig())
        return t.ResNetForImageClassification(cfg).eval(), images
    if name == "mobilenet_v2":
        cfg = t.MobileNetV2Config(depth_multiplier=0.35, image_size=side) if quick else t.MobileNetV2Config()
        return t.MobileNetV2ForImageClassification(cfg).eval(), images
    if name == "convnext_tiny":
        cfg = t.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2) if quick else t.ConvNextConfig()
        return t.ConvNextForImageClassification(cfg).eval(), images
    if name == "vit_small":
        cfg = t.ViTConfig(hidden_size=64 if quick else 384, num_hidden_layers=2 if quick else 12,
                          num_attention_heads=4 if quick else 6, intermediate_size=128 if quick else 1536,
                          image_size=side, patch_size=16)
        return t.ViTForImageClassification(cfg).eval(), images
    if name == "bert_base":
        cfg = (t.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128) if quick else t.BertConfig())
        length = 32 if quick else 128
        return t.BertModel(cfg).eval(), lambda b: torch.randint(0, cfg.vocab_size, (b, length),
                                                                generator=torch.Generator().manual_seed(b))
    if name == "wav2vec2_base":
        cfg = (t.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
               if quick else t.Wav2Vec2Config())
        samples = 4000 if quick else 16000
        return t.Wav2Vec2Model(cfg).eval(), lambda b: torch.randn(b, samples, generator=torch.Generator().manual_seed(b))
    raise SlimkitError(f"unknown model {name!r}; choose from {', '.join(CONV + TRANSFORMERS)}")


class MainOutput(nn.Module):
    """The model's main output tensor (logits or last hidden state), so BN folding can compare outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        return out["logits"] if "logits" in out else out["last_hidden_state"]


@torch.no_grad()
def reload_check(model: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute output difference between the pruned model and the same model written as a
    Hugging Face folder (slimkit.io.hf_folder.save_hf: widths in the config, per-layer ones recorded)
    and read back with load_hf, the path `compress` saves these models by."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hf(model, Path(tmp) / "pruned")
        again = load_hf(folder, type(model)).eval()
    return float((MainOutput(again)(x) - MainOutput(model)(x)).abs().max())


def run_model(name: str, args: argparse.Namespace) -> list[dict]:
    dense, make = build(name, args.quick)
    x1 = make(1)
    t0 = time.time()
    variants = {"uniform 50%": prune_structured(copy.deepcopy(dense), x1, ratio=0.5,
                                                head_ratio=0.0 if name in CONV else 0.5)}
    if name in CONV and not args.no_latency_aware:
        for b in sorted({1, max(args.batches)}):
            table = latency_table(dense, x1, threads=args.threads, rounds=args.table_rounds if b == 1 else
                                  args.table_rounds_bn, progress=not args.quiet, batch=b,
                                  cache=Path(args.out) / "latency_tables.json")
            variants[f"lat-aware b{b}"] = prune_latency_aware(copy.deepcopy(dense), x1, 0.5, threads=args.threads,
                                                              table=table, match="latency")
    cut_s = time.time() - t0
    rows = {v: {"model": name, "variant": v, "kept_intact": len(r.kept_intact), "held_groups": len(r.held),
                "notes": r.notes, "params_ratio": sum(p.numel() for p in r.model.parameters())
                / sum(p.numel() for p in dense.parameters()), "cut_s": cut_s, "reload_max_abs_diff":
                reload_check(r.model, x1)} for v, r in variants.items()}
    folded = any(isinstance(m, nn.BatchNorm2d) for m in dense.modules())
    for b in args.batches:
        x = make(b)
        runs, burst, warmup = (args.rounds_b1, 5, 5) if b == 1 else (args.rounds_bn, 2, 2)
        times = time_in_fresh_processes([dense, *(r.model for r in variants.values())], x, rounds=runs,
                                        threads=args.threads, fold=folded, passes=args.passes, batch=b, builder=HF,
                                        burst=burst, warmup=warmup, log=not args.quiet)
        times = [t["nchw"] for t in times]
        dense_macs = count_macs(dense, x)
        for (v, r), ms in zip(variants.items(), times[1:]):
            macs_red = dense_macs / count_macs(r.model, x)
            speed = times[0] / ms
            rows[v].update({f"b{b}_dense_ms": times[0], f"b{b}_pruned_ms": ms, f"b{b}_macs_reduction": macs_red,
                            f"b{b}_speedup": speed, f"b{b}_efficiency": speed / macs_red, "bn_folded": folded})
    return list(rows.values())


def table(rows: list[dict], batches: list[int]) -> str:
    head = f"{'model':<14} {'variant':<14} {'kept':>4} {'reload':>8}"
    for b in batches:
        head += f" | b{b:<2} {'MACs/':>6} {'speed':>6} {'eff':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['model']:<14} {r['variant']:<14} {r['kept_intact']:>4} {r['reload_max_abs_diff']:>8.1e}"
        for b in batches:
            line += (f" |     {r[f'b{b}_macs_reduction']:>5.2f}x {r[f'b{b}_speedup']:>5.2f}x "
                     f"{r[f'b{b}_efficiency']:>5.2f}")
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="foreign", choices=("foreign",))
    p.add_argument("--models", default=",".join(CONV + TRANSFORMERS))
    p.add_argument("--batches", default="1,32", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds-b1", type=int, default=30, help="alternating rounds at batch 1 (5 calls each, 4 kept)")
    p.add_argument("--rounds-bn", type=int, default=5, help="alternating rounds at larger batches (2 calls, 1 kept)")
    p.add_argument("--passes", type=int, default=3, help="fresh timing processes per batch size (fastest counts)")
    p.add_argument("--table-rounds", type=int, default=20, help="timing rounds per width of the batch-1 latency table")
    p.add_argument("--table-rounds-bn", type=int, default=3,
                   help="timing rounds per width of the latency table at the largest batch")
    p.add_argument("--no-latency-aware", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny configs, 64x64 images, few rounds")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default="bench/out")
    args = p.parse_args()
    if args.quick:
        args.rounds_b1, args.rounds_bn, args.table_rounds, args.table_rounds_bn, args.passes = 5, 2, 3, 2, 1
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONV + TRANSFORMERS]
    if unknown:
        raise SystemExit(f"error: unknown models {unknown}; choose from {', '.join(CONV + TRANSFORMERS)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0, rows = time.time(), []
    for n in names:
        print(f"[foreign] {n} ...", flush=True)
        rows += run_model(n, args)
    header = (f"# foreign architectures{' (QUICK: tiny configs, not the reported sizes)' if args.quick else ''}: "
              f"50% structured cut, random init. Timing: fastest of {args.passes} fresh processes per batch size, each "
              f"loading every model from its saved folder and timing them in alternation (fastest call; batch 1: "
              f"{args.rounds_b1} rounds x 4 calls; larger batches: {args.rounds_bn} rounds x 1 call), "
              f"threads={args.threads}, OMP_WAIT_POLICY=ACTIVE, BN folded, NCHW; "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}. "
              f"MACs/ = dense/pruned MACs; speed = dense ms/pruned ms; eff = speed/MACs; kept = modules kept "
              f"intact; reload = max |diff| after slimkit.io.hf_folder.save_hf + load_hf. Wall {time.time() - t0:.0f} s.")
    print(header)
    print(table(rows, args.batches))
    out = Path(args.out) / ("compress_foreign_quick.json" if args.quick else "compress_foreign.json")
    atomic_write_bytes(out, json.dumps({"header": header, "rows": rows}, indent=1).encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
