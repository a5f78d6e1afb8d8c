"""The `slimkit` Typer app that every command module registers on, and checks those commands share.

It lives apart from slimkit.cli.main so that command modules import it without importing main,
which imports them to register their commands.
"""

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
            f"model does not accept {data.name} inputs of shape {tuple(example.shape)}: {str(exc).splitlines()[0]}"
        ) from None
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    if width != data.num_classes:
        raise SlimkitError(f"the checkpoint predicts {width} classes but {data.name} has {data.num_classes} "
                           f"(labels 0..{data.num_classes - 1}); use a checkpoint trained on the classes of {data.name}")
