"""`slimkit` command line: the demo pipeline, YAML recipes and checkpoint profiling.

Every command turns a SlimkitError into one line on stderr and exit status 2.
"""

import sys
from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app, check_model_fits, checkpoint_dataset

@app.command()
@clean_errors
def demo(
    epochs: int = typer.Option(3, help="teacher training epochs (the teacher is cached by its settings)"),
    student_epochs: int = typer.Option(2, help="epochs for the KD student and, same budget, the scratch student"),
    finetune_epochs: float = typer.Option(0.25, help="fine-tune passes over the training set for the pruned teacher, masks held"),
    sparsity: Optional[float] = typer.Option(0.5, help="fraction of conv/linear weights to remove, in [0, 1)"),
    theta: Optional[float] = typer.Option(None, help="magnitude threshold: remove |w| <= theta (overrides --sparsity)"),
    temperature: float = typer.Option(4.0, help="KD softmax temperature T"),
    alpha: float = typer.Option(0.7, help="KD weight: alpha*T^2*KL + (1-alpha)*CE"),
    seed: int = typer.Option(0, help="seed for data split, init and shuffling"),
    out: Path = typer.Option(Path("runs/demo"), help="run folder for checkpoints and report.json/.md (a new folder, "
                                                    "or an earlier slimkit run with --overwrite)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier slimkit run in --out"),
    dataset: str = typer.Option("fashion-mnist", help="'fashion-mnist', 'digits' or a .npz path with x, y"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with Fashion-MNIST IDX files (default: Debian's)"),
    teacher: str = typer.Option("source", help="teacher model name"),
    student: str = typer.Option("target", help="student model name"),
    batch_size: int = typer.Option(256, help="training batch size"),
    no_cache: bool = typer.Option(False, "--no-cache", help="retrain the teacher even if a cached one exists"),
    train_subset: int = typer.Option(0, help="train on the first N samples only (0 = all), for quick looks"),
    headline: bool = typer.Option(True, "--headline/--no-headline", help="then compress the teacher (KD recovery) "
                                                                        "and recover the same cut with CE, timed "
                                                                        "and tested side by side"),
    headline_target: str = typer.Option("latency=0.5x", help="headline compress target: latency=0.5x (measured "
                                                             "here), macs=2x or params=2x"),
    headline_floor: str = typer.Option("-1pt", help="headline validation floor: -1pt relative to the teacher, or "
                                                    "an absolute accuracy such as 0.9"),
    headline_search_steps: int = typer.Option(200, help="headline: recovery steps of each mix compress tries"),
    headline_recover_steps: int = typer.Option(400, help="headline: further recovery steps of the chosen mix (KD "
                                                         "and CE alike)"),
    headline_batch_size: int = typer.Option(64, help="headline: batch size of the recoveries"),
) -> None:
    """Teacher -> magnitude prune -> KD student vs scratch student, profiled in one table; then the
    headline: compress the teacher to a measured-faster cut, KD recovery against CE on the same cut."""
    from slimkit.demo.pipeline import make_config, run_demo

    cfg = make_config(
        teacher_epochs=epochs, student_epochs=student_epochs, finetune_epochs=finetune_epochs,
        sparsity=sparsity, theta=theta, temperature=temperature, alpha=alpha, seed=seed, out=str(out),
        dataset=dataset, data_dir=str(data_dir) if data_dir else None, teacher=teacher, student=student,
        batch_size=batch_size, reuse_teacher=not no_cache, train_subset=train_subset, overwrite=overwrite,
        headline=headline, headline_target=headline_target, headline_floor=headline_floor,
        headline_search_steps=headline_search_steps, headline_recover_steps=headline_recover_steps,
        headline_batch_size=headline_batch_size,
    )
    run_demo(cfg)


@app.command()
@clean_errors
def run(
    recipe: Path = typer.Argument(..., help="YAML recipe: a run folder's recipe.yaml (replays that compress run) "
                                            "or the demo's settings (recipes/demo.yaml)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier slimkit run in the recipe's out "
                                                              "(same as `overwrite: true` in a demo recipe)"),
) -> None:
    """Replay a run from its recipe.yaml, or run the demo from a YAML recipe (see recipes/demo.yaml)."""
    from slimkit.cli.recipe import replay
    from slimkit.demo.pipeline import load_recipe, run_demo

    if replay(recipe, overwrite):
        return

    cfg = load_recipe(recipe)
    if overwrite:
        cfg = cfg.model_copy(update={"overwrite": True})
    run_demo(cfg, inputs=(recipe,))


@app.command()
@clean_errors
def profile(
    checkpoint: Path = typer.Argument(..., help="a slimkit .safetensors checkpoint"),
    dataset: Optional[str] = typer.Option(None, help="'fashion-mnist', 'digits' or a .npz path (default: what the "
                                                     "checkpoint was trained on)"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with Fashion-MNIST IDX files"),
    seed: int = typer.Option(0, help="seed of the data split"),
) -> None:
    """Profile a saved checkpoint: accuracy, F1, params, MACs, latency, size."""
    from slimkit.data import load_dataset
    from slimkit.io import load_model
    from slimkit.measure.rows import print_table, profile_classifier

    model = load_model(checkpoint)
    data = load_dataset(checkpoint_dataset(checkpoint, dataset), str(data_dir) if data_dir else None, seed=seed)
    check_model_fits(model, data)
    row = profile_classifier(checkpoint.name, model, data.test, data.num_classes, checkpoint)
    print_table([row], [], title=f"{checkpoint} on {data.name} test ({len(data.test)} samples)")


def main() -> None:
    app()


# Commands defined in sibling modules register themselves on `app` (slimkit.cli.app) when imported.
from slimkit.cli import compress, export, report, train_prune  # noqa: E402,F401
from slimkit.cli.llm import app as _llm_app  # noqa: E402

app.add_typer(_llm_app, name="llm")
from slimkit.cli.speech import app as _speech_app  # noqa: E402
app.add_typer(_speech_app, name="speech")


if __name__ == "__main__":
    # Run as `python -m slimkit.cli.main`, this file is __main__, while the sibling modules above
    # registered their commands on the imported slimkit.cli.main: run that one's app.
    from slimkit.cli.main import main as _registered_main

    sys.exit(_registered_main())
