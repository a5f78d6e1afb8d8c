"""The modules family on the verbs (slimkit checkpoints of any nn.Module), and `slimkit train`.

- train: a reference model from scratch, saved as a checkpoint that records its data;
- prune: structured (channels, heads, blocks through the dependency graph) or magnitude zeros;
- distill: KD of a (pruned) checkpoint from a teacher checkpoint on the data it was trained on;
- eval: the measured profile (accuracy, F1, params, MACs, latency, size).

Each prints a measured profile; nothing is claimed faster unless its latency was measured faster
here. The verbs (slimkit.cli.prune, .distill, .evaluate) check the options and pass only what this
family reads.
"""

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app, check_model_fits, checkpoint_dataset
from slimkit.errors import SlimkitError, check_count, check_positive, check_sparsity


def _data(dataset: str, data_dir: Optional[Path], seed: int):
    from slimkit.data import load_dataset

    return load_dataset(dataset, str(data_dir) if data_dir else None, seed=seed)


@app.command()
@clean_errors
def train(
    model: str = typer.Argument(..., help="model name: source, target, resnet, mobilenetv2, vit"),
    out: Path = typer.Option(..., help="checkpoint to write (.safetensors)"),
    data: str = typer.Option("fashion-mnist", help="'fashion-mnist', 'digits' or a .npz path"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with Fashion-MNIST IDX files"),
    epochs: int = typer.Option(3, help="training epochs"),
    batch_size: int = typer.Option(256, help="batch size"),
    lr: float = typer.Option(2e-3, help="peak learning rate (AdamW, warm-up then cosine)"),
    seed: int = typer.Option(0, help="seed for split, init and shuffling"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
) -> None:
    """Train a reference model from scratch and save it as a checkpoint."""
    check_count(epochs, "--epochs")
    check_count(batch_size, "--batch-size")
    check_positive(lr, "--lr")
    import torch

    from slimkit.io.outputs import check_output_file

    check_output_file(out, overwrite, what="--out")

    from slimkit.distill import TrainConfig, train_classifier
    from slimkit.io import save_model
    from slimkit.measure import evaluate_classifier
    from slimkit.models import build_model

    dataset, data = data, _data(data, data_dir, seed)
    torch.manual_seed(seed)
    net = build_model(model, in_channels=data.in_channels, input_size=data.input_size, num_classes=data.num_classes)
    train_classifier(net, data, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed), desc=model)
    save_model(net, out, extra={"dataset": dataset})  # export, eval and prune default to it
    acc = evaluate_classifier(net, data.test, data.num_classes).accuracy
    typer.echo(f"wrote {out}: test accuracy {100 * acc:.2f}% on {data.name} ({len(data.test)} samples)")


def prune(checkpoint: Path, out: Path, method: str, ratio: float, importance: str, allocation: str, round_to: int,
          blocks: int, heads: float, dataset: Optional[str], data_dir: Optional[Path], seed: int, keep_slower: bool,
          overwrite: bool, recipe: dict) -> None:
    """Prune a checkpoint and print its measured profile before and after (no fine-tuning).

    A structured cut that measures no faster than the dense model at batch 1 on this machine is
    not written (unless --keep-slower): removing structure only to lose time helps nobody.
    """
    _check_prune_options(method, ratio, importance, allocation, round_to, blocks, heads)
    import copy

    from slimkit.data import batches
    from slimkit.io import load_model, save_model
    from slimkit.prune import magnitude_prune
    from slimkit.measure.rows import print_table, profile_classifiers, speed_notes

    from slimkit.io.outputs import check_output_file

    check_output_file(out, overwrite, inputs=[checkpoint], what="--out")
    dense = load_model(checkpoint)
    dataset = checkpoint_dataset(checkpoint, dataset)
    data = _data(dataset, data_dir, seed)
    check_model_fits(dense, data)
    if method == "magnitude":
        pruned = copy.deepcopy(dense)
        report = magnitude_prune(pruned, sparsity=ratio)
        save_model(pruned, out, extra={"kept_total": report.kept_total, "dataset": dataset, "recipe": recipe})
    elif method == "structured":
        from slimkit.prune.structured import prune_structured

        calib = [(x, y) for x, y, _ in batches(data.train.subset(1024), 128, shuffle=True, seed=seed)]
        result = prune_structured(copy.deepcopy(dense), data.test.x[:1], ratio=ratio, importance=importance,
                                  allocation=allocation, round_to=round_to, calib=calib, blocks=blocks,
                                  head_ratio=heads)
        pruned = result.model
        if not keep_slower:
            from slimkit.measure.fresh import not_slower

            kept, info = not_slower(dense, pruned, data.test.x[:1])
            if kept is dense:
                raise SlimkitError(f"{info['note']}; nothing written to {out}. Prune more, remove blocks (--blocks), "
                                   "or pass --keep-slower")
        save_model(pruned, out, extra={"dataset": dataset, "recipe": recipe})
    else:
        raise SlimkitError(f"unknown method {method!r}; use 'structured' or 'magnitude'")
    rows = profile_classifiers({"dense": (dense, checkpoint), f"{method} {ratio:g}": (pruned, out)},
                               data.test, data.num_classes)
    print_table(rows, speed_notes(rows, "dense"), title=f"{checkpoint.name} -> {out} on {data.name} (before fine-tuning)")


def _check_prune_options(method: str, ratio: float, importance: str, allocation: str, round_to: int, blocks: int,
                         heads: float) -> None:
    """Every `prune` option that can be judged without the model, judged before it is loaded."""
    if method not in ("structured", "magnitude"):
        raise SlimkitError(f"unknown method {method!r}; use 'structured' or 'magnitude'")
    check_sparsity(ratio, "--ratio")
    if method == "structured":
        check_count(round_to, "--round-to", 1)
        check_count(blocks, "--blocks", 0)
        check_sparsity(heads, "--heads")
        if allocation not in ("uniform", "global"):
            raise SlimkitError(f"unknown --allocation {allocation!r}; use 'uniform' or 'global'")
        from slimkit.prune.importance import IMPORTANCE_KINDS

        if importance not in IMPORTANCE_KINDS:
            raise SlimkitError(f"unknown --importance {importance!r}; choose one of {', '.join(IMPORTANCE_KINDS)}")


def distill(student: Path, teacher: Path, out: Path, dataset: Optional[str], data_dir: Optional[Path], epochs: int,
            batch_size: int, lr: float, temperature: float, alpha: float, loss: str, hold_zeros: bool, seed: int,
            overwrite: bool, recipe: dict) -> None:
    """KD of a student checkpoint (typically pruned) from a teacher checkpoint, then both profiled.

    `loss` "kd" is Hinton KD (alpha * T^2 KL + (1 - alpha) CE); "ce" trains on labels alone (the
    control). With `hold_zeros`, weights a magnitude prune zeroed stay zero."""
    if loss not in ("kd", "ce"):
        raise SlimkitError(f"unknown --loss {loss!r}; use 'kd' or 'ce'")
    check_count(epochs, "--epochs")
    check_count(batch_size, "--batch-size")
    check_positive(lr, "--lr")
    check_positive(temperature, "--temperature")
    if not 0 <= alpha <= 1:
        raise SlimkitError(f"--alpha must be in [0, 1], got {alpha}")
    from slimkit.io.outputs import check_output_file

    check_output_file(out, overwrite, inputs=[student, teacher], what="--out")
    import copy

    from slimkit.distill import TrainConfig, train_classifier
    from slimkit.io import load_model, save_model
    from slimkit.masks import zero_masks
    from slimkit.measure.rows import print_table, profile_classifiers, speed_notes

    dense, before = load_model(teacher), load_model(student)
    dataset = checkpoint_dataset(student, dataset)
    data = _data(dataset, data_dir, seed)
    check_model_fits(dense, data)
    check_model_fits(before, data)
    net = copy.deepcopy(before)
    masks = (zero_masks(net) or None) if hold_zeros else None
    train_classifier(net, data, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                     teacher=dense if loss == "kd" else None, temperature=temperature, alpha=alpha, masks=masks,
                     desc=f"distill ({loss})")
    save_model(net, out, extra={"dataset": dataset, "distilled_from": str(teacher), "recipe": recipe})
    rows = profile_classifiers({"teacher": (dense, teacher), "student before": (before, student),
                                f"student {loss}": (net, out)}, data.test, data.num_classes)
    print_table(rows, speed_notes(rows, "teacher"), title=f"{student.name} -> {out} on {data.name}")


def evaluate(checkpoint: Path, dataset: Optional[str], data_dir: Optional[Path], seed: int) -> None:
    """The measured profile of a checkpoint: accuracy, F1, params, MACs, latency, size."""
    from slimkit.data import load_dataset
    from slimkit.io import load_model
    from slimkit.measure.rows import print_table, profile_classifier

    model = load_model(checkpoint)
    data = load_dataset(checkpoint_dataset(checkpoint, dataset), str(data_dir) if data_dir else None, seed=seed)
    check_model_fits(model, data)
    row = profile_classifier(checkpoint.name, model, data.test, data.num_classes, checkpoint)
    print_table([row], [], title=f"{checkpoint} on {data.name} test ({len(data.test)} samples)")
