"""Command-line entry points, and the one way every command reports bad input."""

import functools

import typer

from slimkit.errors import SlimkitError


def interrupted_summary() -> str:
    """What this process committed before an interrupt; all else stayed as it was."""
    from slimkit.io.outputs import written

    if not written:
        return "nothing was written or replaced"
    return f"written before the interrupt: {', '.join(map(str, written))}; nothing else was written or replaced"


def clean_errors(fn):
    """Report bad input as one `error:` line on stderr and exit status 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlimkitError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(f"interrupted; {interrupted_summary()}", err=True)
            raise typer.Exit(130) from None

    return wrapper
