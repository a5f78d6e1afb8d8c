"""Command-line entry points, and the one way every command reports bad input."""

import functools

import typer

from slimkit.errors import SlimkitError


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
            typer.echo("interrupted; nothing was written to the output folder", err=True)
            raise typer.Exit(130) from None

    return wrapper
