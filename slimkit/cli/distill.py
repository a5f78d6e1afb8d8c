"""`slimkit distill MODEL --teacher TEACHER`: recover a cut model from its dense teacher on the engine.

| family     | what is learnt                                                                   | data            |
|------------|----------------------------------------------------------------------------------|-----------------|
| modules    | Hinton KD (--alpha, --temperature) or CE alone (--loss ce)                       | --data (images) |
| causal-lm  | the teacher's top-k logits per position plus next-token CE                       | --data (text)   |
| hf-encoder | sentence embeddings (cosine) plus every layer's token states                     | Emma sentences  |
| whisper    | the teacher's token distributions plus CE on its pseudo-labels (--loss ce: CE)   | synthesised     |

MODEL is the student; the teacher defaults to the family's built-in (smollm2, minilm,
whisper-tiny.en) and must be given for checkpoints. `--minutes` bounds the run; with
--checkpoint-dir a killed run resumes. Options a family does not read are refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app, recipe_of
from slimkit.cli.options import (
    AMP_HELP,
    CHECKPOINT_HELP,
    MODEL_HELP,
    OUT_HELP,
    OVERWRITE_HELP,
    check_train_state,
    pick,
    refuse_unused,
)
from slimkit.errors import SlimkitError
from slimkit.families import model_family

TEACHERS = {"causal-lm": "smollm2", "hf-encoder": "minilm", "whisper": "whisper-tiny.en"}


@app.command()
@clean_errors
def distill(
    model: str = typer.Argument(..., help="the student: " + MODEL_HELP),
    teacher: Optional[str] = typer.Option(None, help="the dense model (default: the family's built-in; required for "
                                          "checkpoints)"),
    out: Path = typer.Option(..., help=OUT_HELP + " (a .safetensors file for checkpoints, else a folder)"),
    data: Optional[str] = typer.Option(None, help="training data: checkpoints: fashion-mnist, digits or an .npz "
                                       "(default: what the student was trained on); causal LMs: a text file or "
                                       "built-in text (default emma)"),
    data_dir: Optional[Path] = typer.Option(None, help="checkpoints: folder with Fashion-MNIST IDX files"),
    samples: Optional[int] = typer.Option(None, help="training samples: causal LMs' windows (default 64), encoders' "
                                          "sentences (3800), Whisper's synthesised utterances (1000)"),
    val_samples: Optional[int] = typer.Option(None, help="held-out samples checked after training: encoders' "
                                              "sentences (500), Whisper's utterances (50)"),
    eval_data: Optional[str] = typer.Option(None, help="causal LMs: held-out text for perplexity (prideprejudice)"),
    eval_tokens: Optional[int] = typer.Option(None, help="causal LMs: evaluate on the first N tokens (16384; 0 "
                                              "skips)"),
    seq_len: Optional[int] = typer.Option(None, help="causal LMs: tokens per window (512)"),
    epochs: Optional[int] = typer.Option(None, help="epochs (checkpoints 2, causal LMs 1, Whisper at most 100)"),
    minutes: Optional[float] = typer.Option(None, help="time budget: causal LMs (none), encoders (10), Whisper (30)"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (checkpoints 3e-3, causal LMs 1e-4, encoders "
                                       "3e-4, Whisper 1e-4)"),
    batch_size: Optional[int] = typer.Option(None, help="batch size (checkpoints 256, causal LMs 4, Whisper 8)"),
    loss: Optional[str] = typer.Option(None, help="checkpoints and Whisper: kd (default) or ce (the labels alone: "
                                       "the control)"),
    temperature: Optional[float] = typer.Option(None, help="KD softmax temperature (checkpoints 4, Whisper 2)"),
    alpha: Optional[float] = typer.Option(None, help="checkpoints: KD weight, alpha*T^2*KL + (1-alpha)*CE (0.7)"),
    top_k: Optional[int] = typer.Option(None, help="causal LMs: teacher logits cached per position (64)"),
    kd_weight: Optional[float] = typer.Option(None, help="Whisper: weight of T^2 KL(teacher || student) (1)"),
    ce_weight: Optional[float] = typer.Option(None, help="weight of CE beside the KD: causal LMs' next token (1), "
                                              "Whisper's pseudo-labels (0.8)"),
    hidden_weight: Optional[float] = typer.Option(None, help="causal LMs: weight of final-hidden-state MSE (0)"),
    hold_zeros: bool = typer.Option(True, "--hold-zeros/--no-hold-zeros", help="keep weights a one-shot prune "
                                    "zeroed at zero (checkpoints, causal LMs)"),
    freeze_encoder: Optional[str] = typer.Option(None, help="Whisper: auto (frozen when its shapes are the "
                                                 "teacher's), yes or no"),
    max_label_wer: Optional[float] = typer.Option(None, help="Whisper: leave out training utterances whose "
                                                  "pseudo-label WER is higher (0.1)"),
    threads: Optional[int] = typer.Option(None, help="Whisper: torch threads (2)"),
    checkpoint_dir: Optional[Path] = typer.Option(None, help=CHECKPOINT_HELP + " (causal LMs, encoders)"),
    checkpoint_every: int = typer.Option(50, help="optimizer steps between checkpoints (with --checkpoint-dir)"),
    amp: str = typer.Option("auto", help=AMP_HELP),
    parallel: Optional[str] = typer.Option(None, help="causal LMs under torchrun: 'ddp' (the default: a whole copy "
                                           "per process) or 'fsdp' (student, gradients, optimizer state and a live "
                                           "teacher sharded across processes; sharded checkpoints; docs/distill.md)"),
    seed: int = typer.Option(0, help="seed of the data draw and training"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Recover MODEL (a cut student) from its dense teacher by knowledge distillation."""
    recipe = recipe_of("distill", dict(locals()))
    family = model_family(model)
    if teacher is None:
        if family not in TEACHERS:
            raise SlimkitError("a checkpoint student needs its teacher: pass --teacher dense.safetensors")
        teacher = TEACHERS[family]
    if model_family(teacher) != family:
        raise SlimkitError(f"--teacher {teacher} is a {model_family(teacher)} model and {model} a {family} model; pass "
                           f"the dense model the student was cut from")
    lm_only = {"--eval-data": eval_data, "--eval-tokens": eval_tokens, "--seq-len": seq_len, "--top-k": top_k,
               "--hidden-weight": hidden_weight, "--parallel": parallel}
    whisper_only = {"--kd-weight": kd_weight, "--freeze-encoder": freeze_encoder, "--max-label-wer": max_label_wer,
                    "--threads": threads}
    if family == "modules":
        refuse_unused("distill", family, {**lm_only, **whisper_only, "--samples": samples, "--val-samples": val_samples,
                                          "--minutes": minutes, "--ce-weight": ce_weight,
                                          "--checkpoint-dir": checkpoint_dir})
        from slimkit.cli import modules

        modules.distill(Path(model), Path(teacher), out, data, data_dir, pick(epochs, 2), pick(batch_size, 256),
                        pick(lr, 3e-3), pick(temperature, 4.0), pick(alpha, 0.7), pick(loss, "kd"), hold_zeros, seed,
                        overwrite, recipe)
        return
    refuse_unused("distill", family, {"--data-dir": data_dir, "--alpha": alpha})
    ckpt = check_train_state(checkpoint_dir, checkpoint_every, amp)
    if family == "causal-lm":
        refuse_unused("distill", family, {**whisper_only, "--val-samples": val_samples, "--loss": loss,
                                          "--temperature": temperature})
        if parallel not in (None, "ddp", "fsdp"):
            raise SlimkitError(f"--parallel must be ddp or fsdp, got {parallel!r}")
        if parallel == "fsdp":
            from slimkit.distill.fsdp import require_group

            require_group()  # one line, before any model loads, when no torchrun process group is there
        from slimkit.cli import lm

        lm.distill(model, teacher, out, overwrite, pick(data, "emma"), pick(samples, 64), pick(seq_len, 512),
                   pick(epochs, 1), pick(lr, 1e-4), pick(batch_size, 4), pick(top_k, 64), pick(ce_weight, 1.0),
                   pick(hidden_weight, 0.0), minutes, hold_zeros, pick(eval_data, "prideprejudice"),
                   pick(eval_tokens, 16384), seed, ckpt, amp, recipe, pick(parallel, "ddp"))
        return
    refuse_unused("distill", family, {**lm_only, "--data": data})
    if family == "hf-encoder":
        refuse_unused("distill", family, {**whisper_only, "--epochs": epochs, "--batch-size": batch_size,
                                          "--loss": loss, "--temperature": temperature, "--ce-weight": ce_weight})
        from slimkit.cli import encoder

        encoder.distill(model, teacher, out, overwrite, pick(samples, 3800), pick(val_samples, 500),
                        pick(minutes, 10.0), pick(lr, 3e-4), seed, ckpt, amp, recipe)
        return
    refuse_unused("distill", family, {"--checkpoint-dir": checkpoint_dir})
    from slimkit.cli import speech

    speech.distill(model, teacher, out, overwrite, pick(loss, "kd"), pick(minutes, 30.0), pick(samples, 1000),
                   pick(val_samples, 50), pick(batch_size, 8), pick(lr, 1e-4), pick(epochs, 100),
                   pick(temperature, 2.0), pick(kd_weight, 1.0), pick(ce_weight, 0.8), pick(freeze_encoder, "auto"),
                   pick(max_label_wer, 0.1), pick(threads, 2), seed, recipe)
