"""The one way the deployment path puts a file on disk: refuse what exists, then write atomically.

An exported model is a result a user may have spent an hour producing, and a file of the same name
may be something slimkit did not create. So an existing output is refused unless the caller says
`overwrite`, the check runs before any expensive work (`check_output`), and the file itself is
written to a temporary name beside the target, fsynced and renamed over it (`write_output`), so
a crash or a full disk never leaves a half-written model where a complete one is expected.
"""

import os
import tempfile
from pathlib import Path

from slimkit.errors import SlimkitError


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output path that exists (unless `overwrite`) or that names a folder; returns it."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise SlimkitError(f"output {out} is a folder; give a file name such as {out / 'model.onnx'}")
    if out.exists() and not overwrite:
        raise SlimkitError(f"output {out} already exists; choose another name or pass --overwrite (overwrite=True) "
                           "to replace it")
    return out


def _publish(tmp: str, out: Path, overwrite: bool) -> None:
    """Rename the finished temp file into place. Without `overwrite` a hard link publishes it, which fails
    if `out` appeared since the check, so a file created meanwhile is never replaced."""
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise SlimkitError(f"output {out} appeared while it was being written; nothing replaced it") from None
    except OSError:  # a file system without hard links: the check above is all there is
        os.replace(tmp, out)
        return
    os.unlink(tmp)


def write_output(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` to `path`: refused if it exists (unless `overwrite`); temp file beside it, fsync, rename."""
    out = check_output(path, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise SlimkitError(f"cannot write {out}: {exc.strerror}; choose a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the permissions a plain open() would have given
        _publish(tmp, out, overwrite)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(out.parent, os.O_RDONLY)
    except OSError:
        return out
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return out
