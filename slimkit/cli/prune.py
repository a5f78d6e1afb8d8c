"""`slimkit prune MODEL`: one cut, no recovery, measured before and after; the family decides how.

| family     | cuts                                                                                    |
|------------|-----------------------------------------------------------------------------------------|
| modules    | structured: --ratio of channels, --heads, --blocks (dependency graph); magnitude zeros   |
| causal-lm  | structured: --blocks decoder layers, --ffn neurons, --heads (whole KV groups);           |
|            | one-shot zeros: --method magnitude, wanda or sparsegpt at --ratio or --nm 2:4            |
| hf-encoder | sentence encoders: --ffn neurons, --heads, --blocks (last layers), refit by least squares |
| whisper    | --blocks decoder layers (or --keep), --ffn encoder neurons                              |

`slimkit compress` chooses such cuts itself against a measured target; `prune` is for the one cut
you already want. Options a family does not read are refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app, recipe_of
from slimkit.cli.options import MODEL_HELP, OUT_HELP, OVERWRITE_HELP, pick, refuse_unused
from slimkit.families import is_factory, model_family
from slimkit.errors import SlimkitError


@app.command()
@clean_errors
def prune(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., help=OUT_HELP + " (a .safetensors file for checkpoints, else a folder)"),
    method: Optional[str] = typer.Option(None, help="structured (the default: a smaller dense model); magnitude "
                                         "(checkpoints, causal LMs), wanda or sparsegpt (causal LMs): one-shot zeros, "
                                         "no speed-up on dense kernels"),
    ratio: Optional[float] = typer.Option(None, help="fraction removed: channels (structured checkpoints) or weights "
                                          "(magnitude, wanda, sparsegpt); default 0.5"),
    nm: Optional[str] = typer.Option(None, help="causal LMs: N:M pattern such as 2:4 for wanda, sparsegpt or "
                                     "magnitude (instead of --ratio)"),
    blocks: Optional[int] = typer.Option(None, help="whole blocks to remove: residual blocks (checkpoints), decoder "
                                         "layers (causal LMs, Whisper), last layers (encoders)"),
    heads: Optional[float] = typer.Option(None, help="fraction of attention heads to remove per layer (causal LMs: "
                                          "whole KV groups)"),
    ffn: Optional[float] = typer.Option(None, help="fraction of FFN neurons to remove per layer (causal LMs, "
                                        "encoders, Whisper's encoder)"),
    keep: Optional[str] = typer.Option(None, help="Whisper: the decoder layers to keep, e.g. 0,3 (instead of "
                                       "--blocks)"),
    importance: Optional[str] = typer.Option(None, help="checkpoints, structured: l1, l2 (default), bn, taylor, "
                                             "entropy"),
    allocation: Optional[str] = typer.Option(None, help="how the ratio is spread: checkpoints, structured: uniform "
                                             "(default) per group or global ranking; causal LMs, wanda or sparsegpt: "
                                             "uniform (default) or owl (per block, by outlier share)"),
    round_to: Optional[int] = typer.Option(None, help="checkpoints, structured: kept channel counts are multiples of "
                                           "this (default 8)"),
    data: Optional[str] = typer.Option(None, help="calibration data: checkpoints: fashion-mnist, digits or an .npz "
                                       "(default: what it was trained on); causal LMs: a text file or built-in text "
                                       "(default emma)"),
    data_dir: Optional[Path] = typer.Option(None, help="checkpoints: folder with Fashion-MNIST IDX files"),
    eval_data: Optional[str] = typer.Option(None, help="causal LMs: held-out text for perplexity (default "
                                            "prideprejudice)"),
    eval_tokens: Optional[int] = typer.Option(None, help="causal LMs: evaluate on the first N tokens (default 16384; "
                                              "0 skips)"),
    samples: Optional[int] = typer.Option(None, help="calibration samples: causal LMs' windows (default 32 one-shot, "
                                          "16 structured); encoders' sentences (default 1024)"),
    seq_len: Optional[int] = typer.Option(None, help="causal LMs: tokens per window (default 512)"),
    stream: bool = typer.Option(False, "--stream", help="causal LMs, one-shot: read, prune and write one decoder "
                                "block at a time, for models larger than memory (a safetensors folder)"),
    keep_slower: bool = typer.Option(False, "--keep-slower", help="checkpoints, structured: write the cut even when "
                                     "it measures no faster than the dense model at batch 1"),
    seed: int = typer.Option(0, help="seed of the data split and the calibration draw"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """One cut of MODEL, measured before and after (recover it with slimkit distill)."""
    recipe = recipe_of("prune", dict(locals()))
    family = model_family(model)
    lm_only = {"--nm": nm, "--eval-data": eval_data, "--eval-tokens": eval_tokens, "--seq-len": seq_len,
               "--stream": stream}
    checkpoint_only = {"--importance": importance, "--round-to": round_to, "--data-dir": data_dir,
                       "--keep-slower": keep_slower}
    if family != "whisper":
        refuse_unused("prune", family, {"--keep": keep})
    if family == "modules":
        refuse_unused("prune", family, {**lm_only, "--ffn": ffn, "--samples": samples})
        if is_factory(model) and not Path(model).exists():
            raise SlimkitError(f"slimkit prune takes a saved checkpoint; {model} is a factory: save its model with "
                               f"slimkit.io.save_model, or let slimkit compress cut it")
        from slimkit.cli import modules

        modules.prune(Path(model), out, pick(method, "structured"), pick(ratio, 0.5), pick(importance, "l2"),
                      pick(allocation, "uniform"), pick(round_to, 8), pick(blocks, 0), pick(heads, 0.0), data,
                      data_dir, seed, keep_slower, overwrite, recipe)
        return
    refuse_unused("prune", family, checkpoint_only)
    if family != "causal-lm":
        refuse_unused("prune", family, {"--allocation": allocation})
    if family == "causal-lm":
        from slimkit.cli import lm

        cut = any(v is not None for v in (blocks, ffn, heads))
        chosen = pick(method, "structured" if cut or ratio is None and nm is None else "sparsegpt")
        common = dict(data=pick(data, "emma"), seq_len=pick(seq_len, 512), eval_data=pick(eval_data, "prideprejudice"),
                      eval_tokens=pick(eval_tokens, 16384), seed=seed, recipe=recipe)
        if chosen == "structured":
            refuse_unused("prune", "causal-lm structured", {"--ratio": ratio, "--nm": nm, "--stream": stream,
                                                             "--allocation": allocation})
            if not cut:
                raise SlimkitError("nothing to cut: pass --blocks N, --ffn FRACTION or --heads FRACTION (or --method "
                                   "wanda|sparsegpt|magnitude --ratio 0.5 for one-shot zeros)")
            lm.prune_structured(model, out, overwrite, pick(blocks, 0), pick(ffn, 0.0), pick(heads, 0.0),
                                samples=pick(samples, 16), **common)
        else:
            refuse_unused("prune", f"causal-lm {chosen}", {"--blocks": blocks, "--ffn": ffn, "--heads": heads})
            lm.prune_oneshot(model, out, overwrite, chosen, pick(ratio, 0.5), nm, samples=pick(samples, 32),
                             stream=stream, allocation=pick(allocation, "uniform"), **common)
        return
    refuse_unused("prune", family, {**lm_only, "--ratio": ratio, "--data": data})
    if method not in (None, "structured"):
        raise SlimkitError(f"--method {method} does not apply to a {family} model: its cuts are structured")
    if family == "hf-encoder":
        from slimkit.cli import encoder

        encoder.prune(model, out, overwrite, pick(ffn, 0.0), pick(heads, 0.0), pick(blocks, 0),
                      samples=pick(samples, 1024), held_out=500, seed=seed, recipe=recipe)
        return
    refuse_unused("prune", family, {"--heads": heads, "--samples": samples})
    from slimkit.cli import speech

    speech.prune(model, out, overwrite, blocks, keep, pick(ffn, 0.0), recipe)
