"""The README and docs/ cannot drift from the code.

- Every `slimkit ...` line in a bash block of README.md or docs/*.md is parsed by the real CLI:
  the command exists and every option it names exists with a value of the right type.
- The README's `slimkit compress` lines run for real, on tiny models and data laid out under the
  names they use, with the budget cut down (options appended: the last one given wins).
- The README's Python blocks run as they are.
"""

import re
import shlex
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from slimkit.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY = ["--search-steps", "2", "--recover-steps", "2", "--batch-size", "32", "--keep-slower", "--floor", "0",
        "--target", "macs=1.3x"]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def command_lines(text: str) -> list[list[str]]:
    """Shell lines of a block that run slimkit (continuations joined, comments dropped), as argv."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("slimkit ") or line.startswith(".venv/bin/slimkit "):
            out.append(shlex.split(line)[1:])
    return out


def doc_commands() -> list[tuple[str, list[str]]]:
    return [(f"{p.relative_to(ROOT)}: slimkit {' '.join(argv)}", argv)
            for p in DOCS for b in blocks(p, "bash") for argv in command_lines(b)]


@pytest.mark.parametrize("where,argv", doc_commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_documented_command_parses(where, argv):
    group = typer.main.get_command(app)
    cmd, args = group, list(argv)
    while isinstance(cmd, click.Group):
        assert args and args[0] in cmd.commands, f"{where}: no command {args[:1]} under {cmd.name}"
        cmd, args = cmd.commands[args[0]], args[1:]
    try:
        cmd.make_context(cmd.name, args, resilient_parsing=False)
    except click.exceptions.Exit:
        pass  # --help
    except click.UsageError as exc:
        pytest.fail(f"{where}: {exc.format_message()}")


def test_the_readme_documents_some_commands():
    readme = [w for w, _ in doc_commands() if w.startswith("README.md")]
    assert any("compress" in w for w in readme)


@pytest.fixture()
def readme_inputs(tmp_path, monkeypatch):
    """The names the README's compress lines use, as tiny models and data."""
    import csv

    import torch
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                        num_labels=10)).save_pretrained(tmp_path / "my-vit")
    from transformers import AutoTokenizer

    from slimkit.llm.load import minilm_dir

    try:
        tok = AutoTokenizer.from_pretrained(minilm_dir())
    except Exception as exc:  # noqa: BLE001 - an install step; say which
        pytest.skip(f"MiniLM's tokenizer is not installed ({exc})")
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64, num_labels=2,
                                             max_position_embeddings=64)).save_pretrained(tmp_path / "my-bert")
    tok.save_pretrained(tmp_path / "my-bert")
    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        w.writerows([(f"{'good' if i % 2 else 'poor'} film number {i}", "positive" if i % 2 else "negative")
                     for i in range(60)])
    digits_images(tmp_path / "digits")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def digits_images(root: Path) -> None:
    """A few 8x8 digits as PNGs, one sub-folder per class."""
    from PIL import Image

    from slimkit.data import load_digits

    d = load_digits(seed=0)
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in (d.train.y == c).nonzero().flatten()[:6].tolist():
            x = d.train.x[i, 0]
            Image.fromarray(((x - x.min()) / (x.max() - x.min() + 1e-9) * 255).byte().numpy(), mode="L").save(
                root / str(c) / f"{i}.png")


def test_readme_compress_lines_run(readme_inputs):
    # the lines on the folders made above; the language-model line loads the real SmolLM2 (minutes):
    # it is parsed above, and tests/test_family_causal_lm.py runs the same path on a tiny model
    lines = [argv for b in blocks(ROOT / "README.md", "bash") for argv in command_lines(b)
             if argv[0] == "compress" and argv[1] in ("my-vit/", "my-bert/")]
    assert len(lines) >= 2
    for argv in lines:
        # Fashion-MNIST's 16k validation and test images would take minutes: the same line on 8x8 digits
        argv = [*argv, *TINY] + (["--data", "digits"] if "fashion-mnist" in argv else [])
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, f"slimkit {' '.join(argv)}\n{res.output}"
        out = readme_inputs / argv[argv.index("--out") + 1]
        assert (out / "model" / "config.json").is_file() and (out / "report.json").is_file()


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for code in blocks(ROOT / "README.md", "python"):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
    assert (tmp_path / "runs" / "digits" / "report.json").is_file()
