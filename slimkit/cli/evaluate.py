"""`slimkit eval MODEL`: the model's task metric and measured cost, in the family's own terms.

| family     | what is measured                                                                        |
|------------|-----------------------------------------------------------------------------------------|
| modules    | test accuracy, macro F1, params, MACs, latency (batch 1 and 256), file size              |
| causal-lm  | perplexity with its protocol (--reference beside it); --speed: prefill and decode tok/s   |
| hf-encoder | sentence encoders: fidelity to --reference; --speed: latency beside the reference         |
| whisper    | WER per set (--data real, synth or an audio folder; repeatable), encoder/decode ms, RTF    |

A fine-tuned classifier folder is measured by `slimkit compress`'s report, which holds its dense
and compressed rows; here it is refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app
from slimkit.cli.options import MODEL_HELP, pick, refuse_unused
from slimkit.families import is_factory, model_family
from slimkit.errors import SlimkitError


@app.command("eval")
@clean_errors
def evaluate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: Optional[list[str]] = typer.Option(None, help="checkpoints: fashion-mnist, digits or an .npz (default: what "
                                             "it was trained on); causal LMs: a text (prideprejudice); Whisper: real, "
                                             "synth or an audio folder with transcripts.tsv, repeatable (real and "
                                             "synth)"),
    data_dir: Optional[Path] = typer.Option(None, help="checkpoints: folder with Fashion-MNIST IDX files"),
    reference: Optional[str] = typer.Option(None, help="causal LMs: a model to show beside (the dense one); "
                                            "encoders: the model fidelity is measured against (required)"),
    eval_tokens: Optional[int] = typer.Option(None, help="causal LMs: evaluate on the first N tokens (16384)"),
    seq_len: Optional[int] = typer.Option(None, help="causal LMs: tokens per window (512)"),
    speed: bool = typer.Option(False, "--speed", help="causal LMs and encoders: also measure speed"),
    samples: Optional[int] = typer.Option(None, help="Whisper: the first N utterances of each set (synth: N "
                                          "synthesised, default 200); encoders: held-out sentences (500)"),
    trim_encoder: bool = typer.Option(False, "--trim-encoder", help="Whisper: feed the encoder only the audio plus "
                                      "--trim-pad seconds instead of 30 s of padded frames"),
    trim_pad: Optional[float] = typer.Option(None, help="Whisper: seconds of padding kept with --trim-encoder (10)"),
    threads: Optional[int] = typer.Option(None, help="threads for the timed runs (Whisper and encoders: 2)"),
    generate: bool = typer.Option(False, "--generate", help="Whisper: decode with transformers' generate() instead "
                                  "of slimkit's greedy loop (the same tokens; to time generate() itself)"),
    seed: int = typer.Option(0, help="seed of the data split or the synthesised set"),
) -> None:
    """Measure MODEL: its task metric, size and speed, each with how it was measured."""
    family = model_family(model)
    lm_only = {"--eval-tokens": eval_tokens, "--seq-len": seq_len}
    whisper_only = {"--trim-encoder": trim_encoder, "--trim-pad": trim_pad, "--generate": generate}
    if family != "modules":
        refuse_unused("eval", family, {"--data-dir": data_dir})
    if family != "whisper" and data is not None and len(data) > 1:
        raise SlimkitError(f"--data is given {len(data)} times; a {family} model is measured on one data set")
    one = data[0] if data else None
    if family == "modules":
        refuse_unused("eval", family, {**lm_only, **whisper_only, "--reference": reference, "--speed": speed,
                                       "--samples": samples, "--threads": threads})
        if is_factory(model) and not Path(model).exists():
            raise SlimkitError(f"slimkit eval takes a saved checkpoint; {model} is a factory: save its model with "
                               f"slimkit.io.save_model first")
        from slimkit.cli import modules

        modules.evaluate(Path(model), one, data_dir, seed)
    elif family == "causal-lm":
        refuse_unused("eval", family, {**whisper_only, "--samples": samples, "--threads": threads})
        from slimkit.cli import lm

        lm.evaluate(model, reference, pick(one, "prideprejudice"), pick(eval_tokens, 16384), pick(seq_len, 512), speed)
    elif family == "hf-encoder":
        refuse_unused("eval", family, {**lm_only, **whisper_only, "--data": one})
        from slimkit.cli import encoder

        encoder.evaluate(model, reference, pick(samples, 500), seed, speed, pick(threads, 2))
    else:
        refuse_unused("eval", family, {**lm_only, "--reference": reference, "--speed": speed})
        from slimkit.cli import speech

        speech.evaluate(model, data or ["real", "synth"], samples, trim_encoder, pick(trim_pad, 10.0),
                        pick(threads, 2), seed, generate)
