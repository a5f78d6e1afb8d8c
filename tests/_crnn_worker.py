"""One CRNN distillation run from a DataLoader, as a separate process that a test can kill -9.

KD without labels (sequence task, (N, T, C) outputs) from a shuffled DataLoader whose dataset adds
random noise to every image, into a student with dropout: the data order, the noise and the
dropout masks all draw from random generators, so a resumed run matches the unbroken one bit for
bit only if every one of them is replayed. Prints "STEP n" after each optimizer step and writes a
JSON summary (steps, resumed_from_step, per-epoch train losses, a hash of the student's weights).
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slimkit.data.rendered_text import render_words, word_list  # noqa: E402
from slimkit.distill import CheckpointConfig, Distiller, TrainConfig, kd, sequence_logits  # noqa: E402
from tests.crnn import CRNN  # noqa: E402


class NoisyImages(Dataset):
    """Rendered words with fresh Gaussian noise on every read (an augmentation inside the dataset)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i] + 0.05 * torch.randn_like(self.images[i])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = render_words(word_list()[:256], seed=0).images
    loader = DataLoader(NoisyImages(images), batch_size=16, shuffle=True)
    torch.manual_seed(1)
    teacher, student = CRNN(16, 48), CRNN(8, 24, dropout=0.2)
    ckpt = CheckpointConfig(args.ckpt_dir, every_steps=args.every) if args.ckpt_dir else None
    distiller = Distiller(teacher, student, [kd(1.0, 2.0)], TrainConfig(epochs=args.epochs, batch_size=16, lr=3e-3,
                          warmup_steps=3, seed=0), checkpoint=ckpt, task=sequence_logits())
    history = distiller.fit(loader, progress=False, on_step=lambda s: print(f"STEP {s}", flush=True))
    h = hashlib.sha256()
    for name, t in sorted(student.state_dict().items()):
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    Path(args.out).write_text(json.dumps({"steps": distiller.steps_done, "resumed_from_step": distiller.resumed_from_step,
                                          "losses": [e.train_loss for e in history], "weights": h.hexdigest()[:16]}))


if __name__ == "__main__":
    main()
