"""The `slimkit` Typer app that every command module registers on, and checks those commands share.

It lives apart from slimkit.cli.main so that command modules import it without importing main,
which imports them to register their commands.
"""

from pathlib import Path
from typing import Any

import typer

from slimkit.errors import SlimkitError

app = typer.Typer(
    help="slimkit: prune and distill PyTorch models, then measure what was really gained.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def check_model_fits(model, data) -> None:
    """Turn a model/data mismatch (input shape or number of classes) into one clear line."""
    import torch

    example = data.test.x[:1]
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except SlimkitError:
        raise
    except RuntimeError as exc:
        raise SlimkitError(
            f"model does not accept {data.name} inputs of shape {tuple(example.shape)}: {str(exc).splitlines()[0]}; "
            f"pass --data with the data the checkpoint was trained on"
        ) from None
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    if width != data.num_classes:
        raise SlimkitError(f"the checkpoint predicts {width} classes but {data.name} has {data.num_classes} "
                           f"(labels 0..{data.num_classes - 1}); pass --data with the data the checkpoint was "
                           f"trained on, or a checkpoint trained on the classes of {data.name}")


# Built-in data sets by the one-channel input size a slimkit model is built for.
BUILTIN_BY_SIZE = {28: "fashion-mnist", 8: "digits"}


def checkpoint_dataset(checkpoint, given: str | None) -> str:
    """The data a command checks a checkpoint on: --data when given; else what the checkpoint
    records it was trained on (`slimkit train` and `slimkit prune` write it); else the built-in
    whose images fit the model's recorded input (1 x 28 x 28: fashion-mnist, 1 x 8 x 8: digits);
    else fashion-mnist, and a mismatch then names --data."""
    if given:
        return given
    from slimkit.io import read_architecture

    description = read_architecture(checkpoint)
    recorded = description["extra"].get("dataset")
    if isinstance(recorded, str) and recorded:
        return recorded
    kwargs = description.get("kwargs") or {}
    if kwargs.get("in_channels") == 1 and kwargs.get("input_size") in BUILTIN_BY_SIZE:
        return BUILTIN_BY_SIZE[kwargs["input_size"]]
    return "fashion-mnist"


NOT_REPLAYED = ("overwrite",)  # replay asks for --overwrite itself: a recipe never replaces a folder on its own


def plain(value: Any) -> Any:
    """A YAML-safe value: paths as text, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def recipe_of(command: str, options: dict[str, Any]) -> dict[str, Any]:
    """{"command": command, option: value...} for a recipe file; what replay does not take is left out."""
    return {"command": command, **{k: plain(v) for k, v in options.items() if k not in NOT_REPLAYED}}
