"""One distillation run as a separate process, for the kill-and-resume and torchrun checks.

Used by bench/distill.py and tests/test_distill_resume.py / test_distill_ddp.py. It prints
"STEP n" after every optimizer step (so a parent can kill -9 it at a chosen point) and, on rank 0,
writes a JSON summary: final val accuracy, steps, throughput and a hash of the student's weights.

    torchrun --nproc-per-node 2 bench/distill_worker.py --dataset digits --out result.json
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slimkit.data import Dataset, load_dataset  # noqa: E402
from slimkit.distill import CheckpointConfig, Distiller, TrainConfig, ce, hinton  # noqa: E402
from slimkit.io import load_model  # noqa: E402
from slimkit.models import SeedCNN, TargetModel  # noqa: E402


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--train-subset", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (.safetensors); KD when given, else CE")
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--every", type=int, default=0, help="checkpoint every N optimizer steps")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset, seed=0)
    if args.train_subset:
        data = Dataset(data.name, data.train.subset(args.train_subset), data.val, data.test, data.num_classes)
    torch.manual_seed(args.seed)
    if data.input_size == 28:
        student = TargetModel(data.in_channels, data.input_size, data.num_classes)
    else:
        student = SeedCNN(data.in_channels, data.input_size, (16, 32, 64), data.num_classes)
    teacher = load_model(args.teacher) if args.teacher else None
    terms = hinton(4.0, 0.7) if teacher is not None else [ce()]
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, warmup_steps=5)
    ckpt = CheckpointConfig(args.ckpt_dir, every_steps=args.every) if args.ckpt_dir else None
    distiller = Distiller(teacher, student, terms, cfg, checkpoint=ckpt)

    def on_step(step: int) -> None:
        if distiller.dist.is_main:  # one writer, so lines from several ranks never interleave
            print(f"STEP {step}", flush=True)

    start = time.perf_counter()
    history = distiller.fit(data, progress=False, on_step=on_step)
    wall = time.perf_counter() - start
    if distiller.dist.is_main:
        summary = {
            "val_accuracy": history[-1].val_accuracy,
            "history": [h.as_dict() for h in history],
            "steps": distiller.steps_done,
            "resumed_from_step": distiller.resumed_from_step,
            "world_size": distiller.dist.world_size,
            "train_samples_per_s": sum(h.samples_per_s for h in history) / len(history),
            "wall_s": wall,
            "weights": weights_digest(student),
        }
        Path(args.out).write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
