"""The deployment path's files go through slimkit.io.outputs: refuse what exists, then write atomically.

An exported model may stand where a file slimkit did not create already is, so an existing output
is refused unless `overwrite` (and an output that is one of the command's inputs always is). The
check runs before any expensive work (`check_output`) and again just before the file is committed
(`write_output`), which writes it to a temporary name beside the target, fsyncs and renames it.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from slimkit.io.outputs import atomic_write_bytes, check_output_file


def check_output(path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """Refuse an output file that exists (unless `overwrite`), is a folder or is an input; returns it."""
    return check_output_file(path, overwrite, inputs)


def write_output(path: str | os.PathLike, data: bytes, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """Write `data` to `path` atomically, after checking `path` once more (see `check_output`)."""
    return atomic_write_bytes(check_output(path, overwrite, inputs), data)
