"""Every bad input slimkit refuses, tried through the real CLI and the Python API; one table.

Usage: python bench/bad_inputs.py [--only SUBSTRING] [--jobs 2]

Each case builds its input files in a fresh temporary working folder (SLIMKIT_CACHE in another),
runs `python -m slimkit.cli.main ...` there as a subprocess (or calls the API in this process), and
records: the exit status, whether the error is exactly one `error:` line (API: one-line
SlimkitError), whether a traceback (API: any other exception) came out, whether anything in the
working folder was written or deleted, and the message. slimkit's own cache is reported apart
("cache"), since only a finished teacher is ever kept there. The totals are the two counts that
must be 0. Cases are plain data: append to CASES. tests/test_bad_inputs.py runs the same list
in-process, asserting the advice text of each message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Case:
    """One bad input: the files it needs, then CLI arguments or an API call, and the advice expected."""

    name: str
    advice: str  # text the one error line must contain: what to do about it
    needs: tuple[str, ...] = ()  # FIXTURES to build in the working folder first
    argv: tuple[str, ...] = ()  # CLI: the arguments after `slimkit`
    call: Callable[[Path], object] | None = None  # API: called with the working folder
    needs_transformers: bool = False
    # the input can only be judged after work whose progress lines precede the error (e.g. a theta
    # above every weight of a teacher that must be trained first): then only the last line must be it
    after_work: bool = False
    known_issue: str = ""  # a defect this case shows that is fixed elsewhere; printed under the table

    @property
    def interface(self) -> str:
        return "API" if self.call is not None else "CLI"


# ---- input files, built by name in the working folder -------------------------------------------------------------

def _digits_cnn(num_classes: int = 10, widths=(4, 4, 8)):
    from slimkit.models import TargetModel

    return TargetModel(in_channels=1, input_size=8, num_classes=num_classes, widths=widths)


def _checkpoint(d: Path, name: str, model=None) -> Path:
    from slimkit.io import save_model

    return save_model(model or _digits_cnn(), d / name)


def _with_header(d: Path, name: str, description, model=None) -> None:
    """A real checkpoint's tensors under an edited header description (any JSON)."""
    from safetensors.torch import save_file

    model = model or _digits_cnn()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(d / name), metadata={"slimkit": json.dumps(description)})


def _desc(**changes) -> dict:
    kwargs = {"in_channels": 1, "input_size": 8, "num_classes": 10, "widths": [4, 4, 8]}
    return {"format": 1, "class": "TargetModel", "kwargs": kwargs, "extra": {}, **changes}


def _truncated_checkpoint(d: Path, name: str) -> None:
    whole = _checkpoint(d, "whole.safetensors")
    (d / name).write_bytes(whole.read_bytes()[:900])
    whole.unlink()


def _vit_deep(d: Path) -> None:
    from slimkit.models import SmallViT

    vit = SmallViT(num_classes=10, input_size=8, patch=4, dim=4, depth=1, num_heads=2)
    _with_header(d, "deep.safetensors", {"format": 1, "class": "SmallViT", "kwargs": {**vit.config(), "depth": 10**9},
                                         "extra": {}}, vit)


def _npz(d: Path, name: str, **arrays) -> None:
    np.savez(d / name, **arrays)


def _cut_npz(d: Path) -> None:
    _npz(d, "whole.npz", x=np.zeros((20, 8, 8), np.float32), y=np.zeros(20, np.int64))
    raw = (d / "whole.npz").read_bytes()
    (d / "whole.npz").unlink()
    (d / "cut.npz").write_bytes(raw[: len(raw) // 2])


def _npy_named_npz(d: Path) -> None:
    with open(d / "npy.npz", "wb") as f:
        np.save(f, np.zeros((20, 8, 8), np.float32))


def _tiny_lm(d: Path) -> None:
    """A 2-layer Llama with 2 KV heads and a word-level tokenizer, written offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate("<unk> the a of and to in is it that was her she he".split())}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the fixture's own writes are not what a case reports
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(d / "tiny-lm")
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>").save_pretrained(d / "tiny-lm")


FACTORY_MODULE = """
from slimkit.models import TargetModel


def model():
    return TargetModel(in_channels=1, input_size=8, num_classes=10, widths=(4, 4, 8))


def weights():
    return {"fc.weight": 1}
"""


def _run_folder(d: Path, name: str, report_json: str) -> None:
    (d / name).mkdir()
    (d / name / "report.json").write_text(report_json)


def _folder(d: Path, name: str) -> None:
    (d / name).mkdir()
    (d / name / "weights.bin").write_bytes(b"\0" * 16)


FIXTURES: dict[str, Callable[[Path], None]] = {
    "good.safetensors": lambda d: _checkpoint(d, "good.safetensors"),
    "seven.safetensors": lambda d: _checkpoint(d, "seven.safetensors", _digits_cnn(num_classes=7)),
    "folder.safetensors": lambda d: _folder(d, "folder.safetensors"),
    "noise.safetensors": lambda d: (d / "noise.safetensors").write_bytes(bytes(range(256)) * 3),
    "cut.safetensors": lambda d: _truncated_checkpoint(d, "cut.safetensors"),
    "list.safetensors": lambda d: _with_header(d, "list.safetensors", [1, 2]),
    "class-int.safetensors": lambda d: _with_header(d, "class-int.safetensors", _desc(**{"class": 7})),
    "newer.safetensors": lambda d: _with_header(d, "newer.safetensors", _desc(format=3)),
    "kwarg-unknown.safetensors": lambda d: _with_header(d, "kwarg-unknown.safetensors", _desc(
        kwargs={"in_channels": 1, "input_size": 8, "num_classes": 10, "widths": [4, 4, 8], "depth": 20})),
    "kwarg-type.safetensors": lambda d: _with_header(d, "kwarg-type.safetensors", _desc(
        kwargs={"in_channels": "one", "input_size": 8, "num_classes": 10, "widths": [4, 4, 8]})),
    "huge.safetensors": lambda d: _with_header(d, "huge.safetensors", _desc(
        kwargs={"in_channels": 1, "input_size": 8, "num_classes": 10, "widths": [2**20] * 3})),
    "deep.safetensors": _vit_deep,
    "shapes.safetensors": lambda d: _with_header(d, "shapes.safetensors", _desc(), _digits_cnn(widths=(4, 4, 16))),
    "layout.safetensors": lambda d: _with_header(d, "layout.safetensors",
                                                 _desc(format=2, layout={"shapes": {"fc1.bias": [64]}})),
    "old-pruned.safetensors": lambda d: _with_header(d, "old-pruned.safetensors",
                                                     _desc(extra={"shapes": {"fc1.bias": [8]}})),
    "empty.npz": lambda d: (d / "empty.npz").write_bytes(b""),
    "cut.npz": _cut_npz,
    "npy.npz": _npy_named_npz,
    "str.npz": lambda d: _npz(d, "str.npz", x=np.array([["a"] * 8] * 20), y=np.zeros(20, np.int64)),
    "n0.npz": lambda d: _npz(d, "n0.npz", x=np.zeros((0, 8, 8)), y=np.zeros(0, np.int64)),
    "neg.npz": lambda d: _npz(d, "neg.npz", x=np.zeros((20, 8, 8)), y=np.arange(20) - 1),
    "nan.npz": lambda d: _npz(d, "nan.npz", x=np.full((20, 8, 8), math.nan), y=np.zeros(20, np.int64)),
    "len.npz": lambda d: _npz(d, "len.npz", x=np.zeros((20, 8, 8)), y=np.zeros(19, np.int64)),
    "nhwc.npz": lambda d: _npz(d, "nhwc.npz", x=np.zeros((20, 8, 8, 1)), y=np.zeros(20, np.int64)),
    "nhwc3.npz": lambda d: _npz(d, "nhwc3.npz", x=np.zeros((20, 32, 32, 3)), y=np.zeros(20, np.int64)),
    "y2d.npz": lambda d: _npz(d, "y2d.npz", x=np.zeros((20, 8, 8)), y=np.zeros((20, 1), np.int64)),
    "latin1.yaml": lambda d: (d / "latin1.yaml").write_bytes("dataset: digits\nout: caf\xe9\n".encode("latin-1")),
    "keys.yaml": lambda d: (d / "keys.yaml").write_text("1: 2\ndataset: digits\n"),
    "nodata.yaml": lambda d: (d / "nodata.yaml").write_text("dataset: missing/data.npz\n"),
    "nodir.yaml": lambda d: (d / "nodir.yaml").write_text("data_dir: missing/fashion\n"),
    "theta-nan.yaml": lambda d: (d / "theta-nan.yaml").write_text("dataset: digits\ntheta: .nan\n"),
    "hf-noconfig": lambda d: _folder(d, "hf-noconfig"),
    "exists.onnx": lambda d: (d / "exists.onnx").write_bytes(b"not slimkit's"),
    "tiny-lm": _tiny_lm,
    "slimkit_bad_factory.py": lambda d: (d / "slimkit_bad_factory.py").write_text(FACTORY_MODULE),
    "run-notjson": lambda d: _run_folder(d, "run-notjson", "{not json"),
    "run-list": lambda d: _run_folder(d, "run-list", "[1, 2]"),
    "run-broken": lambda d: _run_folder(d, "run-broken", '{"candidates": [], "dense": {}}'),
}


def _api_prune(theta: float):
    def call(d: Path):
        from slimkit.prune import magnitude_prune

        return magnitude_prune(_digits_cnn(), theta=theta)

    return call


def _api(fn_path: str, *args):
    """A call of slimkit function `module:name` with `args`, where a str arg is a file in the working folder."""
    def call(d: Path):
        import importlib

        module, name = fn_path.split(":")
        fn = getattr(importlib.import_module(module), name)
        return fn(*[d / a if isinstance(a, str) else a for a in args])

    return call


P = "eval"
DIGITS = ("--data", "digits")
CASES: list[Case] = [
    # checkpoints
    Case("checkpoint is a folder", "pass the .safetensors file", ("folder.safetensors",), (P, "folder.safetensors")),
    Case("checkpoint is noise", "pass a .safetensors file written by slimkit", ("noise.safetensors",), (P, "noise.safetensors")),
    Case("checkpoint truncated", "pass a .safetensors file written by slimkit", ("cut.safetensors",), (P, "cut.safetensors")),
    Case("header JSON not an object", "not written by slimkit's save_model", ("list.safetensors",),
         (P, "list.safetensors")),
    Case("header class not text", "save the model again", ("class-int.safetensors",), (P, "class-int.safetensors")),
    Case("checkpoint format newer", "upgrade slimkit", ("newer.safetensors",), (P, "newer.safetensors")),
    Case("header kwarg unknown", "it does not take: ['depth']", ("kwarg-unknown.safetensors",),
         (P, "kwarg-unknown.safetensors")),
    Case("header kwarg wrong type", "save the model again", ("kwarg-type.safetensors",),
         (P, "kwarg-type.safetensors")),
    Case("header declares huge widths", "in the file but", ("huge.safetensors",), (P, "huge.safetensors")),
    Case("header declares 10^9 layers", "save the model again", ("deep.safetensors",), (P, "deep.safetensors")),
    Case("right class, wrong tensor shapes", "tensor 'fc1.weight' has shape [16, 16] in the file but [8, 16]",
         ("shapes.safetensors",), (P, "shapes.safetensors")),
    Case("layout disagrees with file", "in its layout", ("layout.safetensors",), (P, "layout.safetensors")),
    Case("pruned checkpoint in format 1", "prune and save it again", ("old-pruned.safetensors",),
         (P, "old-pruned.safetensors")),
    Case("class count differs from data", "pass --data with the data the checkpoint was trained on",
         ("seven.safetensors",), (P, "seven.safetensors", *DIGITS)),
    Case("checkpoint missing", "check the path", (), (P, "absent.safetensors")),
    # data
    *[Case(f"data: {what}", advice, ("good.safetensors", f), (P, "good.safetensors", "--data", f))
      for what, f, advice in [
          ("empty .npz", "empty.npz", "save it with np.savez"),
          ("truncated .npz", "cut.npz", "save it with np.savez"),
          (".npy named .npz", "npy.npz", "save it with np.savez"),
          ("string dtype", "str.npz", "convert it with x.astype('float32')"),
          ("N = 0", "n0.npz", "save at least one sample"),
          ("negative labels", "neg.npz", "renumber them with np.unique"),
          ("NaN in x", "nan.npz", "replace or drop those samples"),
          ("x/y length mismatch", "len.npz", "they must match"),
          ("NHWC (N, 8, 8, 1)", "nhwc.npz", "save x.transpose(0, 3, 1, 2)"),
          ("NHWC (N, 32, 32, 3)", "nhwc3.npz", "save x.transpose(0, 3, 1, 2)"),
          ("labels not 1-D", "y2d.npz", "save y.reshape(-1)"),
      ]],
    Case("train on NHWC data", "save x.transpose(0, 3, 1, 2)", ("nhwc.npz",),
         ("train", "target", "--out", "m.safetensors", "--data", "nhwc.npz", "--epochs", "1")),
    # recipes
    Case("recipe not UTF-8", "save it as UTF-8", ("latin1.yaml",), ("run", "latin1.yaml")),
    Case("recipe non-text keys", "write each key as a name", ("keys.yaml",), ("run", "keys.yaml")),
    Case("recipe names missing data file", "fix 'dataset'", ("nodata.yaml",), ("run", "nodata.yaml")),
    Case("recipe names missing data folder", "fix 'data_dir'", ("nodir.yaml",), ("run", "nodir.yaml")),
    Case("recipe theta NaN", "Input should be a finite number", ("theta-nan.yaml",), ("run", "theta-nan.yaml")),
    # numeric options
    *[Case(f"prune {' '.join(opt)}", advice, ("good.safetensors",),
           ("prune", "good.safetensors", "--out", "p.safetensors", *DIGITS, *opt))
      for opt, advice in [
          (("--blocks", "-1"), "pass --blocks 0 or more"),
          (("--heads", "-1"), "--heads must be in [0, 1)"),
          (("--heads", "nan"), "--heads must be in [0, 1)"),
          (("--heads", "1"), "--heads must be in [0, 1)"),
          (("--ratio", "nan"), "--ratio must be in [0, 1)"),
          (("--round-to", "0"), "pass --round-to 1 or more"),
          (("--method", "random"), "use 'structured' or 'magnitude'"),
          (("--importance", "l3"), "choose one of l1, l2"),
      ]],
    Case("demo --theta nan", "Input should be a finite number", (), ("demo", "--theta", "nan", *DIGITS)),
    Case("demo --theta -1", "greater than or equal to 0", (), ("demo", "--theta", "-1", *DIGITS)),
    Case("demo --epochs 0", "greater than or equal to 1", (), ("demo", "--epochs", "0", *DIGITS)),
    Case("demo --theta above every weight", "choose a theta below", (),
         ("demo", *DIGITS, "--theta", "100", "--epochs", "1", "--student-epochs", "1", "--finetune-epochs", "0"),
         after_work=True),
    *[Case(f"train {' '.join(opt)}", advice, (), ("train", "target", "--out", "m.safetensors", *DIGITS, *opt))
      for opt, advice in [
          (("--epochs", "0"), "pass --epochs 1 or more"),
          (("--batch-size", "0"), "pass --batch-size 1 or more"),
          (("--lr", "0"), "--lr must be a finite number > 0"),
          (("--lr", "nan"), "--lr must be a finite number > 0"),
      ]],
    *[Case(" ".join(argv), advice, (), argv)
      for argv, advice in [
          (("distill", "smollm2", "--out", "o", "--batch-size", "0"), "pass batch_size 1 or more"),
          (("distill", "smollm2", "--out", "o", "--lr", "-1"), "lr must be a finite number > 0"),
          (("distill", "smollm2", "--out", "o", "--samples", "0"), "pass --samples 1 or more"),
          (("distill", "smollm2", "--out", "o", "--seq-len", "0"), "pass --seq-len 2 or more"),
          (("distill", "smollm2", "--out", "o", "--top-k", "0"), "pass top_k 1 or more"),
          (("distill", "smollm2", "--out", "o", "--minutes", "-1"), "minutes"),
          (("distill", "smollm2", "--out", "o", "--alpha", "0.5"), "--alpha does not apply to a causal-lm model"),
          (("prune", "smollm2", "--method", "sparsegpt", "--out", "o", "--samples", "0"), "pass --samples 1 or more"),
          (("prune", "smollm2", "--method", "sparsegpt", "--out", "o", "--seq-len", "1"), "pass --seq-len 2 or more"),
          (("prune", "smollm2", "--method", "sparsegpt", "--out", "o", "--eval-tokens", "-1"),
           "pass --eval-tokens 0 or more"),
          (("prune", "smollm2", "--method", "sparsegpt", "--out", "o", "--eval-tokens", "100"),
           "or 0 to skip evaluation"),
          (("prune", "smollm2", "--out", "o", "--blocks", "-1"), "pass --blocks 0 or more"),
          (("prune", "smollm2", "--out", "o", "--ffn", "2"), "--ffn must be in [0, 1)"),
          (("prune", "smollm2", "--out", "o"), "nothing to cut"),
          (("prune", "smollm2", "--method", "wanda", "--nm", "2:4", "--allocation", "owl", "--out", "o"),
           "use --ratio with owl, or N:M with uniform allocation"),
          (("prune", "smollm2", "--method", "wanda", "--ratio", "0.95", "--allocation", "owl", "--out", "o"),
           "use a ratio between 0.16 and 0.84, or uniform allocation"),
          (("eval", "smollm2", "--eval-tokens", "-1"), "pass --eval-tokens 512 or more"),
          (("eval", "smollm2", "--seq-len", "0"), "pass --seq-len 2 or more"),
          (("distill", "minilm", "--out", "o", "--minutes", "nan"), "--minutes must be a finite number >= 0"),
          (("distill", "minilm", "--out", "o", "--lr", "0"), "--lr must be a finite number > 0"),
          (("prune", "whisper-tiny.en", "--out", "o"), "nothing to prune"),
          (("export", "smollm2", "--ct2", "o"), "export it with --onnx"),
          (("export", "whisper-tiny.en", "--ct2", "o", "--int8", "static"), "use --int8 dynamic"),
          (("prune", "minilm", "--ratio", "0.5", "--out", "o"), "--ratio does not apply to a hf-encoder model"),
      ]],
    Case("model folder without config.json", "pass a Hugging Face folder written by save_pretrained", ("hf-noconfig",),
         ("prune", "hf-noconfig", "--method", "magnitude", "--out", "o")),
    Case("prune --data missing.txt", "or the path of a UTF-8 text file", (),
         ("prune", "smollm2", "--method", "sparsegpt", "--out", "o", "--data", "missing.txt")),
    Case("prune --blocks beyond the layers", "can remove between 0 and 1 of 2 layers", ("tiny-lm",),
         ("prune", "tiny-lm", "--blocks", "5", "--out", "o"), needs_transformers=True),
    Case("prune --heads: every KV group", "can remove 0..1 KV groups", ("tiny-lm",),
         ("prune", "tiny-lm", "--heads", "0.99", "--out", "o"), needs_transformers=True),
    # export (needs the deploy extra)
    Case("export checkpoint missing", "give a slimkit .safetensors checkpoint", (),
         ("export", "absent.safetensors", "--onnx", "m.onnx")),
    Case("export output exists", "pass --overwrite to replace it", ("good.safetensors", "exists.onnx"),
         ("export", "good.safetensors", "--onnx", "exists.onnx", *DIGITS)),
    Case("export output is the checkpoint", "write the result to a new path", ("good.safetensors",),
         ("export", "good.safetensors", "--onnx", "good.safetensors", "--overwrite", *DIGITS)),
    Case("export --int8 int4", "--int8 must be 'static', 'mixed' or 'dynamic'", ("good.safetensors",),
         ("export", "good.safetensors", "--onnx", "m.onnx", "--int8", "int4")),
    # report (slimkit.cli.report)
    Case("report run missing", "give a run folder slimkit wrote", (), ("report", "no-run")),
    Case("report folder without report.json", "give a folder written by slimkit compress", ("hf-noconfig",),
         ("report", "hf-noconfig")),
    Case("report.json not JSON", "re-run the command that wrote it", ("run-notjson",), ("report", "run-notjson")),
    Case("report.json a list", "re-run the command that wrote it", ("run-list",), ("report", "run-list")),
    Case("report: compress fields missing", "re-run the command that wrote it", ("run-broken",),
         ("report", "run-broken", "--out", "page.html")),
    Case("report: two runs, no --out", "name it with --out", ("run-broken",), ("report", "run-broken", "run-broken")),
    # compress
    Case("compress factory module missing", "name a module importable from the current folder", (),
         ("compress", "no_such_module:model", "--out", "o", "--data", "digits")),
    Case("compress factory function missing", "define def nothing(): return model", ("slimkit_bad_factory.py",),
         ("compress", "slimkit_bad_factory:nothing", "--out", "o", "--data", "digits")),
    Case("compress factory returns no nn.Module", "return the model, or a dict with 'model'",
         ("slimkit_bad_factory.py",), ("compress", "slimkit_bad_factory:weights", "--out", "o", "--data", "digits")),
    Case("compress target no cut reaches", "slimkit cannot make it cheaper", ("good.safetensors",),
         ("compress", "good.safetensors", "--target", "macs=500x", "--out", "o", "--data", "digits")),
    Case("compress floor the dense model misses", "set a floor relative to dense, e.g. -1pt", ("good.safetensors",),
         ("compress", "good.safetensors", "--target", "macs=2x", "--floor", "1.01", "--out", "o", "--data", "digits")),
    Case("compress target malformed", "write the target as latency=0.5x", ("good.safetensors",),
         ("compress", "good.safetensors", "--target", "speed=2x", "--out", "o", "--data", "digits")),
    Case("compress floor malformed", "write the floor as -1pt", ("good.safetensors",),
         ("compress", "good.safetensors", "--floor", "-1 points", "--out", "o", "--data", "digits")),
    Case("compress --export tflite", "use --export onnx", ("good.safetensors",),
         ("compress", "good.safetensors", "--export", "tflite", "--out", "o", "--data", "digits")),
    # the Python API
    Case("load_model(folder)", "pass the .safetensors file", ("folder.safetensors",),
         call=_api("slimkit.io:load_model", "folder.safetensors")),
    Case("load_model(huge header)", "in the file but", ("huge.safetensors",),
         call=_api("slimkit.io:load_model", "huge.safetensors")),
    Case("read_architecture(newer format)", "upgrade slimkit", ("newer.safetensors",),
         call=_api("slimkit.io:read_architecture", "newer.safetensors")),
    Case("load_npz(NHWC)", "save x.transpose(0, 3, 1, 2)", ("nhwc.npz",),
         call=_api("slimkit.data:load_npz", "nhwc.npz")),
    Case("load_npz(.npy named .npz)", "save it with np.savez", ("npy.npz",),
         call=_api("slimkit.data:load_npz", "npy.npz")),
    Case("load_recipe(non-text keys)", "write each key as a name", ("keys.yaml",),
         call=_api("slimkit.demo.pipeline:load_recipe", "keys.yaml")),
    Case("magnitude_prune(theta=nan)", "weights with |w| <= theta are removed", call=_api_prune(math.nan)),
    Case("magnitude_prune(theta above every |w|)", "choose a theta below", call=_api_prune(1e9)),
    Case("RecoveryConfig(batch_size=0)", "pass batch_size 1 or more",
         call=lambda d: __import__("slimkit.llm.recover", fromlist=["x"]).RecoveryConfig(batch_size=0)),
    Case("resolve(folder without config.json)", "pass a folder written by save_pretrained", ("hf-noconfig",),
         call=_api("slimkit.llm.load:resolve", "hf-noconfig")),
]


# ---- running ------------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    exit: str  # exit status (CLI) or the exception type (API)
    one_line: bool  # exactly one `error:` line and exit 2 (CLI) / a one-line SlimkitError (API)
    advice: bool  # the message contains the case's advice
    traceback: bool
    changed: str  # "no", "yes" (the working folder), or "cache" (only slimkit's cache)
    message: str


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def is_one_error_line(stderr: str, after_work: bool = False) -> bool:
    """Exactly one line, `error: ...`; after work, the last line is the only `error:` line."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if after_work:
        return len(errors) == 1 and lines[-1] == errors[0]
    return len(lines) == 1 and len(errors) == 1


def prepare(case: Case, work: Path) -> None:
    for name in case.needs:
        if not (work / name).exists():
            FIXTURES[name](work)


def run_cli(case: Case, work: Path, cache: Path) -> tuple[int, str]:
    env = {**os.environ, "SLIMKIT_CACHE": str(cache), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli.main", *case.argv], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def run_api(case: Case, work: Path) -> BaseException | None:
    from slimkit.errors import SlimkitError  # noqa: F401  (imported before the call, as a user would)

    here = Path.cwd()
    os.chdir(work)
    try:
        case.call(work)
    except Exception as exc:  # noqa: BLE001 - recording what came out is the point
        return exc
    finally:
        os.chdir(here)
    return None


def judge(case: Case) -> Outcome:
    from slimkit.errors import SlimkitError

    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp) / "work", Path(tmp) / "cache"
        work.mkdir()
        cache.mkdir()
        prepare(case, work)
        before, cache_before = snapshot(work), snapshot(cache)
        if case.call is None:
            code, stderr = run_cli(case, work, cache)
            one = code == 2 and is_one_error_line(stderr, case.after_work)
            lines = [line for line in stderr.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("error:")] or lines[-1:] or ["(no stderr)"]
            exit_, traceback, message = str(code), "Traceback" in stderr, errors[0]
        else:
            os.environ["SLIMKIT_CACHE"] = str(cache)
            exc = run_api(case, work)
            one = isinstance(exc, SlimkitError) and "\n" not in str(exc)
            exit_ = type(exc).__name__ if exc is not None else "returned"
            traceback = exc is not None and not isinstance(exc, SlimkitError)
            message = (str(exc).splitlines() or [""])[0] if exc is not None else "(nothing raised)"
        message = message.replace(f"{work}{os.sep}", "").replace(str(work), ".")
        outcome = Outcome(exit_, one, case.advice in message, traceback, "", message)
        outcome.changed = "yes" if snapshot(work) != before else "cache" if snapshot(cache) != cache_before else "no"
    print(f"{case.interface} {case.name}: exit {outcome.exit}", file=sys.stderr, flush=True)
    return outcome


def markdown_table() -> str:
    """Every case as a Markdown row: the input, how it was given, and what the error line advises."""
    rows = ["| bad input | given as | the error line says |", "|---|---|---|"]
    for c in CASES:
        given = "`slimkit " + " ".join(c.argv) + "`" if c.call is None else "Python API"
        rows.append(f"| {c.name} | {given.replace('|', '&#124;')} | {c.advice.replace('|', '&#124;')} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--jobs", type=int, default=2, help="CLI cases run this many subprocesses at a time")
    parser.add_argument("--markdown", action="store_true", help="print the cases as docs/bad-inputs.md's table and "
                        "stop (nothing runs; tests/test_bad_inputs.py checks the page against it)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table())
        return
    try:
        import transformers  # noqa: F401

        have_transformers = True
    except ImportError:
        have_transformers = False
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bad inputs: one error line, no traceback, nothing written")
    for col in ("case", "via", "exit", "one-line error", "says what to do", "traceback", "written/deleted", "message"):
        table.add_column(col, overflow="fold")
    counts = {"CLI": 0, "API": 0, "not one-line": 0, "no advice": 0, "written": 0, "skipped": 0}
    t0 = time.perf_counter()
    chosen = [c for c in CASES if args.only in c.name and (have_transformers or not c.needs_transformers)]
    counts["skipped"] = sum(1 for c in CASES if args.only in c.name) - len(chosen)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # subprocesses only; API cases run here
        cli = {c: pool.submit(judge, c) for c in chosen if c.call is None}
        outcomes = {c: cli[c].result() if c in cli else judge(c) for c in chosen}
    for case, o in outcomes.items():
        counts[case.interface] += 1
        counts["not one-line"] += not o.one_line or o.traceback
        counts["no advice"] += not o.advice
        counts["written"] += o.changed == "yes"
        table.add_row(case.name, case.interface, o.exit, "yes" if o.one_line else "NO", "yes" if o.advice else "NO",
                      "YES" if o.traceback else "no", o.changed, o.message)
    console = Console(width=max(250, Console().width))
    console.print(table)
    for case in CASES:
        if case.known_issue and args.only in case.name:
            console.print(f"known issue, {case.name}: {case.known_issue}")
    skipped = f", {counts['skipped']} skipped (no transformers)" if counts["skipped"] else ""
    console.print(f"cases: {counts['CLI'] + counts['API']} ({counts['CLI']} CLI, {counts['API']} API{skipped}); "
                  f"not a one-line SlimkitError: {counts['not one-line']}; "
                  f"without the expected advice: {counts['no advice']}; "
                  f"wrote or deleted in the working folder: {counts['written']}; "
                  f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
