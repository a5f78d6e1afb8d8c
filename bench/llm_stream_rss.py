"""Peak memory of streamed one-shot pruning of SmolLM2-135M, measured in a fresh process.

The target is peak RSS <= 1.5x the fp32 model: the in-memory path cannot meet it because the
python + torch + transformers process alone is about half the model. The kernel's peak-RSS mark is
reset after the imports, so the peak covers tokenizer, calibration windows, pruning and writing.

    PYTHONPATH=. python bench/llm_stream_rss.py                # sparsegpt 0.5, 32 x 512 tokens
    PYTHONPATH=. python bench/llm_stream_rss.py --method wanda --samples 8
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch  # imported before the baseline so that it counts as "the process"
import transformers  # noqa: F401  (imported before the baseline too)
from safetensors import safe_open

from slimkit.llm import calibration_windows, prune_oneshot_folder, resolve
from slimkit.llm.streaming import Checkpoint
from slimkit.measure.memory import peak_rss_mb, reset_peak_rss, status_mb


def fp32_mb(folder: Path) -> float:
    """Size of the checkpoint's tensors in float32 (each stored tensor once, so tied weights once)."""
    ckpt = Checkpoint(folder)
    numel = 0
    for path in set(ckpt.files.values()):
        with safe_open(str(path), framework="pt") as f:
            numel += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return numel * 4 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=16384,
                    help="perplexity of the streamed result on Pride and Prejudice, after the measurement; 0 skips")
    ap.add_argument("--json", type=Path, default=None, help="append the result as a bench/llm.py row (JSON lines)")
    args = ap.parse_args()

    src = resolve(args.model)  # converts the built-in once, in this process only the first time
    baseline = status_mb("VmRSS")
    reset = reset_peak_rss()
    start = time.perf_counter()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    cal = calibration_windows(tok, "emma", args.samples, args.seq_len, 0)
    del tok  # pruning needs only the token ids (the CLI drops it too)
    with tempfile.TemporaryDirectory() as tmp:
        res = prune_oneshot_folder(src, Path(tmp) / "pruned", cal, args.method, args.sparsity, progress=False)
        wall = time.perf_counter() - start
        peak = peak_rss_mb()
        ppl = evaluate(Path(tmp) / "pruned", args.eval_tokens, args.seq_len) if args.eval_tokens else None
    size = fp32_mb(src)
    print(f"model {src} ({size:.0f} MB fp32); {args.method} {args.sparsity} on {res.details['calibration']}, "
          f"realised {1 - res.kept_total:.4f}")
    print(f"process RSS before loading anything model-related: {baseline:.0f} MB")
    print(f"peak RSS (VmHWM{'' if reset else ', not reset: since process start'}): {peak:.0f} MB "
          f"= {peak / size:.2f}x the fp32 model (target <= 1.5x)")
    print(f"wall time (tokenizer, calibration windows, streamed prune and write): {wall:.1f} s")
    if ppl is not None:
        print(f"perplexity {ppl.value:.2f} ({ppl.protocol})")
    if args.json:
        row = {"stage": "one-shot streamed", "model": f"{args.method} {args.sparsity}",
               "ppl": ppl.value if ppl else None, "seconds": round(wall), "rss_mb": round(peak),
               "other": f"realised {1 - res.kept_total:.3f}; calib {res.details['calibration']}; fresh process, "
                        f"peak RSS {peak / size:.2f}x the fp32 model ({size:.0f} MB), Python/torch ({baseline:.0f} MB) included; "
                        f"{torch.get_num_threads()} threads"}
        with args.json.open("a") as f:
            f.write(json.dumps(row) + "\n")


def evaluate(folder: Path, tokens: int, seq_len: int):
    """Perplexity of the pruned folder on Pride and Prejudice (loaded whole; outside the measured window)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimkit.llm import eval_windows, perplexity

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return perplexity(model, eval_windows(tok, "prideprejudice", tokens, seq_len), progress=False)


if __name__ == "__main__":
    main()
