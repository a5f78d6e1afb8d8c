"""Helpers to run a training worker as a subprocess (plain or under torchrun) and kill it."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = {"distill": ROOT / "bench" / "distill_worker.py", "crnn": ROOT / "tests" / "_crnn_worker.py"}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_worker(args: list[str], out: Path, kill_at_step: int | None = None, nproc: int = 1, timeout: float = 300,
               worker: str = "distill") -> dict | int:
    """Run a worker (bench/distill_worker.py, or tests/_crnn_worker.py for "crnn"); with `kill_at_step`,
    SIGKILL it once it reports that step and return the last step seen."""
    script = WORKERS[worker]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               str(script), *args, "--out", str(out)]
    else:
        cmd = [sys.executable, str(script), *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    last = 0
    if kill_at_step is not None:
        for line in proc.stdout:
            if line.startswith("STEP "):
                last = int(line.split()[1])
                if last >= kill_at_step:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        proc.wait(timeout)
        assert proc.returncode == -signal.SIGKILL, f"worker ended with {proc.returncode} before the kill: {proc.stderr.read()[-2000:]}"
        return last
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, f"worker failed ({proc.returncode}): {stderr[-3000:]}"
    return json.loads(out.read_text())
