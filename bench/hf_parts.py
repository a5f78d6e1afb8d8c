"""Hugging Face classifiers for bench/compress_e2e.py, fine-tuned here with transformers' Trainer
and saved with save_pretrained, as a user would hold them; each is then compressed by one
`slimkit compress` command line.

- vit: a ViTForImageClassification built from its config (28x28 gray input, patch 7, 4 layers,
  width 128), fine-tuned on 20k Fashion-MNIST images; compressed with --data fashion-mnist;
- austen: all-MiniLM-L6-v2 with a sequence-classification head, fine-tuned to tell which of the
  five Austen novels a sentence comes from, the sentences written to a CSV that compress reads.

Fine-tuned folders are cached under ~/.cache/slimkit/bench, keyed by their settings.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "slimkit" / "bench"
AUSTEN = ROOT.parent / "shared" / "data" / "austen"
NOVELS = ("emma", "mansfieldpark", "northangerabbey", "prideprejudice", "sensesensibility")


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class _Rows(torch.utils.data.Dataset):
    """Dict rows for Trainer from tensors sharing their first dimension."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def _fine_tune(model, rows: dict[str, torch.Tensor], epochs: float, lr: float, batch_size: int, seed: int,
               out: Path) -> None:
    from transformers import Trainer, TrainingArguments

    steps = int(-(-len(next(iter(rows.values()))) // batch_size) * epochs)
    args = TrainingArguments(output_dir=str(out / "trainer"), num_train_epochs=epochs, learning_rate=lr,
                             per_device_train_batch_size=batch_size, warmup_steps=max(1, steps // 10),
                             weight_decay=0.01,
                             logging_steps=50, save_strategy="no", report_to=[], seed=seed, use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=False)
    Trainer(model=model, args=args, train_dataset=_Rows(rows)).train()


def vit_folder(seed: int, quick: bool) -> tuple[Path, str]:
    """The fine-tuned ViT's folder (cached) and how it was made."""
    from transformers import ViTConfig, ViTForImageClassification

    from slimkit.data import load_fashion_mnist

    # sized for 2 cores: one pass over 20k images takes minutes; the rows compare a model with its own cut
    settings = {"part": "vit", "seed": seed, "quick": quick, "epochs": 1, "hidden": 128, "layers": 4,
                "n": 512 if quick else 20000}
    folder = CACHE / f"vit-{_key(settings)}"
    how = (f"ViT ({settings['layers']} layers, width {settings['hidden']}, patch 7) fine-tuned {settings['epochs']} "
           f"epoch on {settings['n'] or 'all'} Fashion-MNIST training images with Trainer")
    if (folder / "config.json").is_file():
        return folder, how + " (cached)"
    torch.manual_seed(seed)
    config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=settings["hidden"],
                       num_hidden_layers=settings["layers"], num_attention_heads=4,
                       intermediate_size=4 * settings["hidden"], num_labels=10, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    model = ViTForImageClassification(config)
    data = load_fashion_mnist(seed=seed)  # the same split compress will carve with the same seed
    train = data.train.subset(settings["n"]) if settings["n"] else data.train
    t0 = time.time()
    _fine_tune(model, {"pixel_values": train.x, "labels": train.y}, settings["epochs"], 1e-3, 128, seed, folder)
    model.save_pretrained(folder)
    return folder, how + f" ({time.time() - t0:.0f} s)"


def austen_rows(per_novel: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, novel) rows, the same number from each novel, shuffled with the seed."""
    from slimkit.llm.encoder import sentences

    rows = []
    rng = random.Random(seed)
    for novel in NOVELS:
        found = sentences((AUSTEN / f"{novel}.txt").read_text(encoding="utf-8"))
        rows += [(s, novel) for s in rng.sample(found, min(per_novel, len(found)))]
    rng.shuffle(rows)
    return rows


def austen_classifier(seed: int, quick: bool) -> tuple[Path, Path, str]:
    """The fine-tuned MiniLM classifier's folder, the CSV of its sentences (cached), and how."""
    import csv

    from transformers import AutoTokenizer, BertForSequenceClassification

    from slimkit.families.hf_encoder import text_data
    from slimkit.llm.load import minilm_dir

    settings = {"part": "austen", "seed": seed, "quick": quick, "per_novel": 60 if quick else 400,
                "epochs": 1 if quick else 2}
    folder = CACHE / f"austen-{_key(settings)}"
    data = CACHE / f"austen-{_key(settings)}.csv"
    how = (f"MiniLM-L6 + head fine-tuned {settings['epochs']} epochs on {settings['per_novel']} sentences per "
           f"novel (5 novels) with Trainer")
    if not data.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(data, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "novel"])
            w.writerows(austen_rows(settings["per_novel"], seed))
    if (folder / "config.json").is_file():
        return folder, data, how + " (cached)"
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = BertForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=5, id2label=dict(enumerate(NOVELS)), label2id={n: i for i, n in enumerate(NOVELS)})
    # train on exactly the split compress will carve (same reader, same seed): its val/test stay unseen
    train = text_data(str(data), tok, model.config, seed, text_column="sentence", label_column="novel").splits["train"]
    t0 = time.time()
    _fine_tune(model, dict(train), settings["epochs"], 5e-5, 32, seed, folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, data, how + f" ({time.time() - t0:.0f} s)"


def compress_cli(folder: Path, data_args: list[str], out: Path, target: str, floor: str, seed: int,
                 search_steps: int, recover_steps: int, batch_size: int, extra: list[str] = ()) -> dict:
    """Run `slimkit compress` as a user would and return its report.json (or {"refused": line})."""
    exe = Path(sys.executable).parent / "slimkit"
    cmd = [str(exe), "compress", str(folder), *data_args, "--out", str(out), "--overwrite", "--target", target,
           "--floor", floor, "--seed", str(seed), "--search-steps", str(search_steps), "--recover-steps",
           str(recover_steps), "--batch-size", str(batch_size), *extra]
    print("$ " + " ".join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # streamed as it comes: the run's progress is the user's progress
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    if proc.returncode != 0:
        errors = [ln[ln.index("error:"):] for ln in lines if "error:" in ln]  # after any progress bar
        return {"refused": errors[-1] if errors else (lines or ["no output"])[-1], "command": cmd}
    report = json.loads((out / "report.json").read_text())
    report["command"] = cmd
    return report
