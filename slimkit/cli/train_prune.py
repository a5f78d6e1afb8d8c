"""`slimkit train` and `slimkit prune`: make a checkpoint, then prune it (structured or magnitude).

Both print a measured before/after profile; nothing is claimed faster unless its latency was
measured faster here.
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
    dataset: str = typer.Option("fashion-mnist", help="'fashion-mnist', 'digits' or a .npz path"),
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

    data = _data(dataset, data_dir, seed)
    torch.manual_seed(seed)
    net = build_model(model, in_channels=data.in_channels, input_size=data.input_size, num_classes=data.num_classes)
    train_classifier(net, data, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed), desc=model)
    save_model(net, out, extra={"dataset": dataset})  # export, profile and prune default to it
    acc = evaluate_classifier(net, data.test, data.num_classes).accuracy
    typer.echo(f"wrote {out}: test accuracy {100 * acc:.2f}% on {data.name} ({len(data.test)} samples)")


@app.command()
@clean_errors
def prune(
    checkpoint: Path = typer.Argument(..., help="a slimkit .safetensors checkpoint"),
    out: Path = typer.Option(..., help="pruned checkpoint to write (.safetensors)"),
    method: str = typer.Option("structured", help="'structured' (removes channels, heads, blocks) or 'magnitude'"),
    ratio: float = typer.Option(0.5, help="fraction of channels (structured) or weights (magnitude) to remove"),
    importance: str = typer.Option("l2", help="structured score: l1, l2, bn, taylor, entropy"),
    allocation: str = typer.Option("uniform", help="structured: 'uniform' per group or 'global' ranking"),
    round_to: int = typer.Option(8, help="structured: kept channel counts are multiples of this"),
    blocks: int = typer.Option(0, help="structured: residual blocks to remove by block influence"),
    heads: float = typer.Option(0.0, help="structured: fraction of attention heads to remove"),
    dataset: Optional[str] = typer.Option(None, help="data for calibration and the before/after profile "
                                                     "(default: what the checkpoint was trained on)"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with Fashion-MNIST IDX files"),
    seed: int = typer.Option(0, help="seed of the data split and calibration batches"),
    keep_slower: bool = typer.Option(False, help="structured: write the pruned model even when it measures no "
                                                 "faster than the dense one at batch 1"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists (never the input)"),
) -> None:
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
        save_model(pruned, out, extra={"kept_total": report.kept_total, "dataset": dataset})
    elif method == "structured":
        from slimkit.prune.structured import prune_structured

        calib = [(x, y) for x, y, _ in batches(data.train.subset(1024), 128, shuffle=True, seed=seed)]
        result = prune_structured(copy.deepcopy(dense), data.test.x[:1], ratio=ratio, importance=importance,
                                  allocation=allocation, round_to=round_to, calib=calib, blocks=blocks,
                                  head_ratio=heads)
        pruned = result.model
        if not keep_slower:
            from slimkit.prune.latency_cost import not_slower

            kept, info = not_slower(dense, pruned, data.test.x[:1])
            if kept is dense:
                raise SlimkitError(f"{info['note']}; nothing written to {out}. Prune more, remove blocks (--blocks), "
                                   "or pass --keep-slower")
        save_model(pruned, out, extra={"dataset": dataset})
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
