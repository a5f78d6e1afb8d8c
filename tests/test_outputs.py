"""Output safety: slimkit never deletes or overwrites what it did not create, and replaces atomically."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from slimkit.io import outputs
from slimkit.errors import SlimkitError
from slimkit.io import load_model, save_model
from slimkit.models import TargetModel
from slimkit.io.outputs import MANIFEST, check_output_file, check_output_folder, output_folder


def cli(*args, cwd=None, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "slimkit.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_run(folder: Path, text: str) -> None:
    with output_folder(folder, overwrite=True) as stage:
        (stage / "result.txt").write_text(text)
        (stage / "sub").mkdir()
        (stage / "sub" / "weights.bin").write_bytes(text.encode() * 100)


# ---- run folders -------------------------------------------------------------------------------

def test_out_dot_refused_and_user_files_survive(tmp_path):
    (tmp_path / "notes.txt").write_text("my only copy")
    before = snapshot(tmp_path)
    for args in (["demo", "--data", "digits", "--out", "."], ["prune", "smollm2", "--blocks", "8", "--out", "."]):
        line = one_error_line(cli(*args, cwd=tmp_path))
        assert "current folder" in line
    assert snapshot(tmp_path) == before


def test_folder_slimkit_did_not_write_is_refused_before_any_work(tmp_path):
    user = tmp_path / "my-project"
    user.mkdir()
    (user / "train.py").write_text("print('mine')")
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    for args in (["demo", "--data", "digits", "--out", str(user), "--overwrite"],
                 ["prune", "smollm2", "--ffn", "0.25", "--out", str(user), "--overwrite"],
                 ["prune", "minilm", "--ffn", "0.5", "--heads", "0.25", "--out", str(user)],
                 ["distill", "smollm2", "--out", str(user), "--overwrite"]):
        line = one_error_line(cli(*args, cwd=tmp_path))
        assert "was not made by slimkit" in line and str(user) in line
    assert time.perf_counter() - t0 < 60  # no model was loaded or trained
    assert snapshot(tmp_path) == before


def test_out_that_is_a_file_or_empty_or_link(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("x")
    line = one_error_line(cli("demo", "--data", "digits", "--out", str(target), cwd=tmp_path))
    assert "is a file, not a folder" in line and target.read_text() == "x"
    with pytest.raises(SlimkitError, match="out is empty"):
        check_output_folder("", what="out")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(SlimkitError, match="symbolic link"):
        check_output_folder(link)
    empty = tmp_path / "empty"
    empty.mkdir()
    with output_folder(empty) as stage:  # an empty folder may be filled
        (stage / "a.txt").write_text("a")
    assert (empty / "a.txt").read_text() == "a" and read(empty)["files"] == ["a.txt"]


def read(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_second_run_needs_overwrite_and_manifest_lists_files(tmp_path):
    out = tmp_path / "run"
    make_run(out, "first")
    assert read(out)["files"] == ["result.txt", "sub/weights.bin"]
    with pytest.raises(SlimkitError, match="pass --overwrite"):
        with output_folder(out):
            raise AssertionError("the block must not run")  # pragma: no cover
    assert (out / "result.txt").read_text() == "first"
    make_run(out, "second")
    assert (out / "result.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no stage or aside left behind


def test_files_added_to_a_run_folder_block_overwrite(tmp_path):
    out = tmp_path / "run"
    make_run(out, "first")
    (out / "my-analysis.ipynb").write_text("{}")
    with pytest.raises(SlimkitError, match="files slimkit did not write .my-analysis.ipynb"):
        check_output_folder(out, overwrite=True)
    assert (out / "my-analysis.ipynb").exists() and (out / "result.txt").read_text() == "first"


def test_output_folder_holding_an_input_is_refused(tmp_path):
    out = tmp_path / "run"
    make_run(out, "first")
    recipe = out / "sub" / "weights.bin"
    with pytest.raises(SlimkitError, match="holds the input"):
        check_output_folder(out, overwrite=True, inputs=[recipe])


def test_recipe_out_empty_or_dot_is_refused(tmp_path):
    (tmp_path / "r.yaml").write_text("dataset: digits\nout: ''\n")
    assert "out is empty" in one_error_line(cli("run", "r.yaml", cwd=tmp_path))
    (tmp_path / "r.yaml").write_text("dataset: digits\nout: .\noverwrite: true\n")
    assert "current folder" in one_error_line(cli("run", "r.yaml", cwd=tmp_path))
    assert (tmp_path / "r.yaml").exists()


def test_failed_or_interrupted_block_keeps_the_old_result(tmp_path):
    out = tmp_path / "run"
    make_run(out, "old")
    before = snapshot(out)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        outputs.written.clear()
        with pytest.raises(type(exc)):
            with output_folder(out, overwrite=True) as stage:
                (stage / "result.txt").write_text("half")
                raise exc
        assert snapshot(out) == before and outputs.written == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    from slimkit.io.outputs import output_folder
    out, kill_at = sys.argv[1], int(sys.argv[2])
    real_rename, real_rmtree, calls = os.rename, shutil.rmtree, [0]
    def rename(a, b):
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        real_rename(a, b)
    def rmtree(path, *args, **kwargs):
        if kill_at == 2 and str(path).endswith(".slimkit-old"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_rmtree(path, *args, **kwargs)
    os.rename, shutil.rmtree = rename, rmtree
    with output_folder(out, overwrite=True) as stage:
        (stage / "result.txt").write_text("new")
        if kill_at < 0:
            os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("kill_at", [-1, 0, 1, 2])
def test_kill_9_during_replace_leaves_old_or_new(tmp_path, kill_at):
    """-1: while writing; 0: before the old result moves aside; 1: between the two renames; 2: after both,
    before the old result is deleted."""
    out = tmp_path / "run"
    make_run(out, "old")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(out), str(kill_at)], cwd=Path(__file__).parents[1])
    assert proc.returncode == -signal.SIGKILL
    old_or_new = (out / "result.txt").read_text() if out.exists() else None
    if kill_at == 1:  # mid-swap: the old result is complete aside, the next check puts it back
        assert old_or_new is None and (tmp_path / ".run.slimkit-old" / "result.txt").read_text() == "old"
    check_output_folder(out, overwrite=True)
    text = (out / "result.txt").read_text()
    assert text in ("old", "new")
    if text == "old":
        assert (out / "sub" / "weights.bin").read_bytes() == b"old" * 100
    assert set(read(out)["files"]) == {p for p in snapshot(out) if p != MANIFEST}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "run"]  # leftovers cleaned


# ---- single files --------------------------------------------------------------------------------

def test_existing_output_file_needs_overwrite_and_never_the_input(tmp_path):
    ckpt = save_model(TargetModel(in_channels=1, input_size=8), tmp_path / "t.safetensors")
    before = ckpt.read_bytes()
    line = one_error_line(cli("train", "target", "--data", "digits", "--out", str(ckpt), cwd=tmp_path))
    assert "exists; pass --overwrite" in line
    line = one_error_line(cli("prune", str(ckpt), "--out", str(ckpt), "--overwrite", "--data", "digits",
                              cwd=tmp_path))
    assert "is also an input" in line
    assert ckpt.read_bytes() == before
    with pytest.raises(SlimkitError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)


def test_train_overwrite_replaces_a_file(tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    result = cli("train", "target", "--data", "digits", "--epochs", "1", "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert isinstance(load_model(out), TargetModel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_read_only_location_is_refused_before_work(tmp_path):
    probe = Path("/sys/slimkit-probe")
    try:
        probe.mkdir()
        probe.rmdir()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    assert "not writable" in one_error_line(cli("demo", "--data", "digits", "--out", "/sys/slimkit-run"))
    assert "not writable" in one_error_line(cli("train", "target", "--data", "digits", "--out",
                                                "/sys/m.safetensors"))


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    from slimkit.errors import SlimkitError
    from slimkit.io import save_model
    from slimkit.models import SourceModel
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    try:
        save_model(SourceModel(), sys.argv[1])
    except SlimkitError as exc:
        print(exc)
        sys.exit(2)
""")


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"previous result")
    script = tmp_path / "full.py"
    script.write_text(DISK_FULL)
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 2 and "no space left" in proc.stdout and "nothing was replaced" in proc.stdout
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.py", "m.safetensors"]


def test_ctrl_c_message_says_what_was_written(tmp_path):
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "slimkit.cli.main", "train", "target", "--data", "digits",
                             "--epochs", "500", "--out", str(out)], stderr=subprocess.PIPE, text=True,
                            # a shell that starts jobs in the background ignores SIGINT, and children inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while "epoch" not in seen:  # interrupt once training runs, however long start-up takes on a busy machine
        char = proc.stderr.read(1)
        assert char, f"the command ended before training: {seen}"
        seen += char
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130
    assert err.rstrip().endswith("interrupted; nothing was written or replaced")  # after the progress bar
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_interrupt_summary_names_committed_results(tmp_path):
    from slimkit.cli import interrupted_summary

    outputs.written.clear()
    assert interrupted_summary() == "nothing was written or replaced"
    linear = (torch.nn.Linear, {"in_features": 2, "out_features": 2})
    save_model(torch.nn.Linear(2, 2), tmp_path / "a.safetensors", builder=linear)
    with output_folder(tmp_path / "run") as stage:
        save_model(torch.nn.Linear(2, 2), stage / "inner.safetensors", builder=linear)
    summary = interrupted_summary()
    assert str(tmp_path / "a.safetensors") in summary and str(tmp_path / "run") in summary
    assert "inner" not in summary  # written inside the staging folder: part of the run, not a result of its own
    outputs.written.clear()


def test_a_failed_run_creates_no_parent_folders(tmp_path):
    out = tmp_path / "runs" / "deep" / "demo"
    with pytest.raises(RuntimeError):
        with output_folder(out) as stage:
            assert stage.parent == tmp_path
            raise RuntimeError("training failed")
    assert list(tmp_path.iterdir()) == []
    with output_folder(out) as stage:
        (stage / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_an_aside_holding_a_user_file_is_kept(tmp_path):
    out = tmp_path / "run"
    make_run(out, "new")
    aside = tmp_path / ".run.slimkit-old"
    make_run(aside, "old")
    (aside / "notes.txt").write_text("mine")
    check_output_folder(out, overwrite=True)
    assert (aside / "notes.txt").read_text() == "mine" and (out / "result.txt").read_text() == "new"


def test_only_slimkit_stages_of_dead_processes_are_cleaned(tmp_path):
    """A leftover stage is removed only when its process is gone and it carries slimkit's marker (or a
    manifest listing all it holds); a folder that merely has a stage's name is someone's data."""
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    ours, lookalike = tmp_path / f".run.{pid}.abc.slimkit-partial", tmp_path / f".run.{pid}.xyz.slimkit-partial"
    ours.mkdir()
    (ours / ".slimkit-staging").write_text(str(pid))
    (ours / "half.bin").write_bytes(b"x")
    lookalike.mkdir()
    (lookalike / "thesis.tex").write_text("mine")
    alive = tmp_path / f".run.{os.getpid()}.own.slimkit-partial"
    alive.mkdir()
    (alive / ".slimkit-staging").write_text(str(os.getpid()))
    check_output_folder(out)
    assert not ours.exists()
    assert (lookalike / "thesis.tex").read_text() == "mine" and alive.is_dir()
