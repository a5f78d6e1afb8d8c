"""Output safety: slimkit never deletes or overwrites what it did not create.

A compression tool runs on people's only copies of trained models, so every write goes through
the rules here:

- A run folder (the --out of demo, run and the llm commands) carries a manifest, MANIFEST, that
  lists the files slimkit wrote into it. An existing folder is replaced only with overwrite=True,
  only when it carries that manifest, and only when it holds no file the manifest does not list.
  An empty folder may be filled. The current folder, a folder above it, a folder holding an input
  and a file where a folder should be are always refused.
- A single output file (train, prune, export) that exists is refused unless overwrite=True, and
  it can never be one of the command's inputs.
- Checks run before any work, and again just before the result is committed.
- Replacing is atomic: the new result is written complete in a staging folder beside the target
  and fsynced; the old one is renamed aside, the new one renamed in, then the old one deleted.
  SIGINT is held back during the renames. A crash at any point leaves the old result or the new
  one; the next run over the same path finishes or undoes an interrupted swap
  (`recover_interrupted`).
- Every committed path is recorded (`written`), so an interrupted command can say truthfully
  what it wrote.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slimkit.errors import SlimkitError

MANIFEST = ".slimkit-run.json"
_ASIDE = ".slimkit-old"          # the previous result during a swap: .<name>.slimkit-old
_STAGE = ".slimkit-partial"      # staging folders: .<name>.<pid>.<random>.slimkit-partial
_STAGE_MARK = ".slimkit-staging"  # inside a stage until its manifest is written: the stage is slimkit's
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

written: list[Path] = []         # paths committed by this process, oldest first
_stages: set[Path] = set()       # staging folders in use: writes inside them are not yet results


def record(path: str | os.PathLike) -> None:
    """Note a committed result, unless it lies in a staging folder (it is committed with it)."""
    p = Path(path).resolve()
    if not any(stage == p or stage in p.parents for stage in _stages):
        written.append(p)


def write_error(exc: OSError, target: Path) -> SlimkitError:
    """One line for an OSError met while writing `target`; the previous result is untouched."""
    if exc.errno in _FULL:
        return SlimkitError(f"no space left while writing {target} ({exc.strerror}); nothing was replaced; "
                            "free some space (or raise the file-size limit) and run again")
    return SlimkitError(f"cannot write {target}: {exc.strerror or exc}; nothing was replaced; choose a writable location")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _probe_writable(target: Path, what: str) -> None:
    """Refuse when the nearest existing folder above `target` cannot take a new entry.

    A real probe (create and remove a temporary folder) rather than os.access, which says yes to
    root on read-only file systems.
    """
    anc = target.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise SlimkitError(f"{what} {target}: {anc} is a file, not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".slimkit-probe.", dir=anc))
    except OSError as exc:
        raise SlimkitError(f"{what} {target} is not writable ({anc}: {exc.strerror}); choose a writable folder") from None


def _same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_file(path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (),
                      what: str = "output") -> Path:
    """Refuse an output file that exists (unless overwrite), is a folder, or is an input."""
    if not str(path).strip():
        raise SlimkitError(f"{what} path is empty; name a file such as model.safetensors")
    p = Path(path).expanduser()
    for source in inputs:
        if source is not None and Path(source).exists() and Path(source).resolve() == p.resolve():
            raise SlimkitError(f"{what} {p} is also an input; write the result to a new path")
    if p.is_dir():
        raise SlimkitError(f"{what} {p} is a folder; give a file path such as {p / 'model.safetensors'}")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise SlimkitError(f"{what} {p} exists; pass --overwrite to replace it, or choose another path")
    _probe_writable(p, what)
    return p


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a slimkit run folder, or None where there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _unlisted(folder: Path, manifest: dict) -> list[str]:
    """Files in a run folder that its manifest does not list: written by someone else."""
    return sorted(set(_files_under(folder)) - set(manifest["files"]) - {MANIFEST})


def _stage_pid(stage: Path) -> int | None:
    parts = stage.name.split(".")
    return int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_own_stage(stage: Path) -> bool:
    """A staging folder slimkit made: it still holds the marker, or a manifest listing all it holds.

    The name alone is not proof: a folder that merely looks like a stage is left alone.
    """
    if not stage.is_dir() or stage.is_symlink():
        return False
    if (stage / _STAGE_MARK).is_file():
        return True
    manifest = read_manifest(stage)
    return manifest is not None and not _unlisted(stage, manifest)


def recover_interrupted(out: Path) -> str | None:
    """Finish or undo a swap that a crash interrupted; returns a note saying what was done.

    Only slimkit's own leftovers are touched: the aside copy of a previous result (restored when
    `out` is missing, deleted once `out` holds a committed result) and staging folders whose
    process is gone.
    """
    note = None
    aside = out.parent / f".{out.name}{_ASIDE}"
    manifest = read_manifest(aside) if aside.is_dir() else None
    if manifest is not None:
        if not out.exists():
            os.rename(aside, out)
            note = f"restored {out} from an interrupted replace"
        elif read_manifest(out) is not None and not _unlisted(aside, manifest):
            shutil.rmtree(aside)
            note = f"removed the previous result left aside by an interrupted replace of {out}"
        else:
            note = f"an interrupted replace of {out} left the previous result in {aside}; it holds files slimkit " \
                   "did not write, so it is kept: move what you need out of it"
    home = out.parent  # where output_folder puts the stages (the nearest existing folder)
    while not home.exists():
        home = home.parent
    if home.is_dir():
        for stage in home.glob(f".{out.name}.*{_STAGE}"):
            pid = _stage_pid(stage)
            if pid is not None and pid != os.getpid() and not _alive(pid) and _is_own_stage(stage):
                shutil.rmtree(stage, ignore_errors=True)
    return note


def check_output_folder(path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (),
                        what: str = "--out") -> Path:
    """Refuse an output folder that slimkit may not fill or replace; see the module docstring."""
    if not str(path).strip():
        raise SlimkitError(f"{what} is empty; name a new folder such as runs/demo")
    p = Path(path).expanduser()
    full = p.resolve()
    cwd = Path.cwd().resolve()
    if _same_or_inside(cwd, full):
        raise SlimkitError(f"{what} {path} is the current folder or one above it; name a new folder such as runs/demo")
    for source in inputs:
        if source is not None and Path(source).exists() and _same_or_inside(Path(source).resolve(), full):
            raise SlimkitError(f"{what} {p} holds the input {source}; choose an output folder outside it")
    if p.is_symlink():
        raise SlimkitError(f"{what} {p} is a symbolic link; give the folder's real path or a new folder")
    note = recover_interrupted(full)
    if note:
        print(f"note: {note}")
    if p.exists():
        if not p.is_dir():
            raise SlimkitError(f"{what} {p} exists and is a file, not a folder; choose a new folder path")
        if any(p.iterdir()):
            manifest = read_manifest(p)
            if manifest is None:
                raise SlimkitError(f"{what} {p} exists and was not made by slimkit (no {MANIFEST}); choose a new "
                                   "folder, or empty it yourself")
            if not overwrite:
                raise SlimkitError(f"{what} {p} holds an earlier slimkit result; pass --overwrite to replace it, "
                                   "or choose another folder")
            foreign = _unlisted(p, manifest)
            if foreign:
                raise SlimkitError(f"{what} {p} holds files slimkit did not write ({', '.join(foreign[:3])}); move "
                                   "them out first, or choose another folder")
    _probe_writable(full, what)
    return p


def _write_manifest(stage: Path, command: str) -> None:
    """List and fsync every file of the finished stage, then write the manifest last."""
    from slimkit.version import __version__

    files = _files_under(stage)
    for name in files:
        _fsync(stage / name)
    manifest = {"slimkit_run": 1, "written_by": f"slimkit {__version__}", "command": command,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    with open(stage / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for folder in {stage, *(p.parent for p in (stage / n for n in files))}:
        _fsync(folder)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back for a few syscalls; a Ctrl-C meanwhile is raised right after them."""
    mask = hasattr(signal, "pthread_sigmask")
    if mask:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if mask:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _swap_in(stage: Path, out: Path) -> None:
    """Old result aside, new one in, old one deleted; either is complete at every instant."""
    aside = out.parent / f".{out.name}{_ASIDE}"
    with _sigint_held():  # `stage` lies in out's folder or in a folder above it: one file system either way
        if out.exists():
            if any(out.iterdir()):
                os.rename(out, aside)
            else:
                os.rmdir(out)  # an empty folder, checked above
        os.rename(stage, out)
        _fsync(out.parent)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def output_folder(path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (),
                  command: str = "") -> Iterator[Path]:
    """Yield a staging folder; when the block succeeds it becomes `path` (see the module docstring).

    The checks run first, before the caller's work. If `path` changed meanwhile so that it may no
    longer be replaced, the finished result is kept in the staging folder and the error says where.
    """
    inputs = list(inputs)
    out = check_output_folder(path, overwrite, inputs).resolve()
    home = out.parent  # the stage waits in the nearest existing folder: a failed run creates no parents
    while not home.exists():
        home = home.parent
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=_STAGE, dir=home))
    except OSError as exc:
        raise write_error(exc, out) from None
    _stages.add(stage)
    keep_stage = False
    try:
        (stage / _STAGE_MARK).write_text(str(os.getpid()))
        yield stage
        (stage / _STAGE_MARK).unlink()
        _write_manifest(stage, command)
        try:
            check_output_folder(path, overwrite, inputs)
        except SlimkitError as exc:
            keep_stage = True
            raise SlimkitError(f"{exc} (it changed while slimkit worked; the finished result is in {stage})") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        _swap_in(stage, out)
    except OSError as exc:
        raise write_error(exc, out) from None
    finally:
        _stages.discard(stage)
        if not keep_stage:
            shutil.rmtree(stage, ignore_errors=True)
    record(out)


def write_file_atomic(path: Path, write) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The caller has checked `path` (check_output_file). On any failure the temporary file is
    removed and whatever `path` held stays as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        write(tmp)
        _fsync(Path(tmp))
        with _sigint_held():
            os.replace(tmp, path)
            _fsync(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record(path)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file, fsync, rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return write_file_atomic(Path(path), write)


def add_to_run(path: str | os.PathLike, data: bytes, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """Write one file into an existing place after the fact (`slimkit report` re-rendering a page),
    under the single-file rules, and keep a slimkit run folder's manifest true.

    In a folder with a manifest the file must be new or one the manifest lists (slimkit wrote it),
    and it is added to the manifest once written, so the folder still holds only slimkit's files
    and --overwrite may replace it later.
    """
    p = check_output_file(path, overwrite, inputs, what="--out")
    folder = p.parent
    manifest = read_manifest(folder) if folder.is_dir() else None
    name = p.name
    if manifest is not None and p.exists() and name not in manifest["files"]:
        raise SlimkitError(f"--out {p} lies in a slimkit run folder but was not written by slimkit; move it out "
                           f"first, or choose another path")
    atomic_write_bytes(p, data)
    if manifest is not None and name not in manifest["files"]:
        manifest["files"] = sorted([*manifest["files"], name])
        atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    return p
