"""`slimkit` command line: the verbs, the demo and the replay of recipes.

`slimkit {compress, prune, distill, eval, export, train, demo, run} MODEL`: MODEL comes first and
its family (slimkit.families) decides how each verb runs (slimkit.cli.options).

Every command turns a SlimkitError into one line on stderr and exit status 2.
"""

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app

# The verbs register themselves on `app` (slimkit.cli.app) when imported, in the order `slimkit
# --help` lists them: the product first, then the single steps, then the demo and recipes below.
from slimkit.cli import compress, prune, distill, evaluate, export, report, modules  # noqa: E402,F401,I001

@app.command()
@clean_errors
def demo(
    epochs: int = typer.Option(3, help="teacher training epochs (the teacher is cached by its settings)"),
    student_epochs: int = typer.Option(2, help="epochs for the KD student and, same budget, the scratch student"),
    finetune_epochs: float = typer.Option(0.25, help="fine-tune passes over the training set for the pruned teacher, masks held"),
    ratio: Optional[float] = typer.Option(0.5, help="fraction of conv/linear weights to remove, in [0, 1)"),
    theta: Optional[float] = typer.Option(None, help="magnitude threshold: remove |w| <= theta (overrides --ratio)"),
    temperature: float = typer.Option(4.0, help="KD softmax temperature T"),
    alpha: float = typer.Option(0.7, help="KD weight: alpha*T^2*KL + (1-alpha)*CE"),
    seed: int = typer.Option(0, help="seed for data split, init and shuffling"),
    out: Path = typer.Option(Path("runs/demo"), help="run folder for checkpoints and report.json/.md (a new folder, "
                                                    "or an earlier slimkit run with --overwrite)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier slimkit run in --out"),
    data: str = typer.Option("fashion-mnist", help="'fashion-mnist', 'digits' or a .npz path with x, y"),
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
        sparsity=ratio, theta=theta, temperature=temperature, alpha=alpha, seed=seed, out=str(out),
        dataset=data, data_dir=str(data_dir) if data_dir else None, teacher=teacher, student=student,
        batch_size=batch_size, reuse_teacher=not no_cache, train_subset=train_subset, overwrite=overwrite,
        headline=headline, headline_target=headline_target, headline_floor=headline_floor,
        headline_search_steps=headline_search_steps, headline_recover_steps=headline_recover_steps,
        headline_batch_size=headline_batch_size,
    )
    run_demo(cfg)


@app.command()
@clean_errors
def run(
    recipe: Path = typer.Argument(..., help="what to replay: a result's recipe.yaml (or the result folder, or a "
                                            "checkpoint that prune or distill wrote) from compress, prune or "
                                            "distill, or the demo's settings (recipes/demo.yaml)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier slimkit run in the recipe's out "
                                                              "(same as `overwrite: true` in a demo recipe)"),
) -> None:
    """Replay a compress, prune or distill run from its recipe, or run the demo from a YAML recipe."""
    from slimkit.cli.recipe import replay
    from slimkit.demo.pipeline import load_recipe, run_demo

    if replay(recipe, overwrite):
        return

    cfg = load_recipe(recipe)
    if overwrite:
        cfg = cfg.model_copy(update={"overwrite": True})
    run_demo(cfg, inputs=(recipe,))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
