"""`slimkit speech ...`: Whisper speech recognition, WER and measured speed.

Bad input (an unknown model or data name, a folder without transcripts.tsv, an empty or too long
recording, a transcript naming a missing file) is one `error:` line and exit status 2, found
before any model runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.errors import SlimkitError

app = typer.Typer(help="Speech recognition with Whisper: WER and measured speed on real and synthesised speech.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

MODEL_HELP = "built-in 'whisper-tiny.en' or a local Whisper folder (save_pretrained of model and processor)"
DATA_HELP = ("'real' (pocketsphinx-testdata's 12 transcribed recordings), 'synth' (Piper-synthesised held-out Austen "
             "sentences) or a folder with audio files and transcripts.tsv (<file>\\t<transcript> per line); repeat "
             "for several sets")


def load_sets(specs: list[str], utterances: Optional[int], seed: int):
    """The requested speech sets, all loaded and checked before any model runs."""
    from slimkit.speech.audio import load_folder, real_recordings
    from slimkit.speech.synth import SynthSettings, synthetic_set

    if utterances is not None and utterances < 1:
        raise SlimkitError(f"--utterances must be at least 1, got {utterances}")
    sets = []
    for spec in specs:
        if spec == "real":
            data = real_recordings()
            data.utterances = data.utterances[:utterances]
        elif spec == "synth":
            data = synthetic_set(SynthSettings(split="heldout", utterances=utterances or 200, seed=seed))
        else:
            data = load_folder(spec, limit=utterances)
        sets.append(data)
    return sets


def print_table(model_name: str, params: int, results, threads: int, trim_pad_s: float) -> None:
    """One row per set: WER and per-utterance cost, with the protocol underneath."""
    from rich.console import Console
    from rich.table import Table

    from slimkit.speech.evaluate import protocol

    table = Table(title=f"{model_name}: speech recognition")
    for col in ("set", "utts", "audio s/utt", "encoder input", "WER %", "features ms", "encoder ms", "decode ms",
                "RTF", "params", "GMACs / audio s"):
        table.add_column(col, justify="left" if col in ("set", "encoder input") else "right")
    for r in results:
        table.add_row(r.name, str(r.utterances), f"{r.audio_s:.2f}",
                      f"audio + {trim_pad_s:g} s" if r.trim_encoder else "30 s (padded)", f"{100 * r.wer:.2f}",
                      f"{r.features_ms:.1f}", f"{r.encoder_ms:.0f}", f"{r.decode_ms:.0f}", f"{r.rtf:.3f}",
                      f"{params / 1e6:.1f} M", f"{r.macs_per_audio_s / 1e9:.2f}")
    console = Console(width=max(140, Console().width))
    console.print(table)
    console.print(f"method: {protocol(threads, trim_pad_s, results[0].decode_loop)}")


@app.command("eval")
@clean_errors
def eval_(
    model: str = typer.Option("whisper-tiny.en", help=MODEL_HELP),
    data: list[str] = typer.Option(["real", "synth"], "--data", help=DATA_HELP),
    utterances: Optional[int] = typer.Option(None, help="evaluate the first N utterances of each set "
                                                        "(synth: synthesise N held-out utterances; default 200)"),
    trim_encoder: bool = typer.Option(False, "--trim-encoder", help="feed the encoder only the audio plus "
                                      "--trim-pad seconds instead of Whisper's 30 s of padded frames"),
    trim_pad: float = typer.Option(10.0, help="seconds of padding kept after the audio with --trim-encoder"),
    threads: int = typer.Option(2, help="torch threads for the timed runs"),
    seed: int = typer.Option(0, help="seed of the synthesised set"),
    use_generate: bool = typer.Option(False, "--generate", help="decode with transformers' generate() instead of "
                                      "slimkit's greedy loop (the same tokens; to time generate() itself)"),
) -> None:
    """WER per set and measured speed (encoder and decode ms, RTF, MACs per audio second) of a Whisper model."""
    from slimkit.speech.convert import load_whisper, resolve_model
    from slimkit.speech.evaluate import evaluate, parameters

    if threads < 1:
        raise SlimkitError(f"--threads must be at least 1, got {threads}")
    if not 0.0 <= trim_pad <= 30.0:
        raise SlimkitError(f"--trim-pad must be between 0 and 30 seconds, got {trim_pad}")
    resolve_model(model)  # a wrong model name or folder fails before any audio is read or synthesised
    sets = load_sets(data, utterances, seed)
    for s in sets:
        for note in s.notes:
            typer.echo(f"note: {s.name}: {note}")
    whisper, processor = load_whisper(model)
    results = [evaluate(whisper, processor, s, trim_encoder, threads, trim_pad_s=trim_pad, use_generate=use_generate)
               for s in sets]
    print_table(model, parameters(whisper), results, threads, trim_pad)


OVERWRITE_HELP = "replace an earlier slimkit result in --out (never a folder slimkit did not write)"


def _parse_keep(keep: str) -> list[int]:
    try:
        return [int(p) for p in keep.split(",") if p.strip()]
    except ValueError:
        raise SlimkitError(f"--keep must be comma-separated decoder layer indices such as 0,3, got {keep!r}") from None


def _config_of(folder) -> dict:
    import json

    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def _save(model, processor, out, overwrite: bool, inputs: list, command: str, report: dict):
    """save_pretrained of model and processor plus a JSON report, staged and swapped in by slimkit.io.outputs."""
    import json

    from slimkit.io.outputs import output_folder

    with output_folder(out, overwrite, inputs, command) as stage:
        model.save_pretrained(stage)
        processor.save_pretrained(stage)
        (stage / "slimkit-speech.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return out


@app.command()
@clean_errors
def prune(
    model: str = typer.Option("whisper-tiny.en", help=MODEL_HELP),
    out: Path = typer.Option(..., help="folder for the pruned model and its processor (reloads with from_pretrained)"),
    decoder_layers: Optional[int] = typer.Option(None, help="decoder layers to keep, the maximally spaced ones "
                                                 "(first and last included, as distil-whisper: 2 of tiny's 4)"),
    keep: Optional[str] = typer.Option(None, help="exact decoder layer indices to keep, e.g. 0,3 (instead of "
                                       "--decoder-layers)"),
    encoder_ffn: float = typer.Option(0.0, help="fraction of every encoder layer's FFN neurons to remove, in [0, 1) "
                                      "(lowest |fc1 row| * |fc2 column| first)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Remove decoder layers and/or encoder FFN neurons; the result needs recovery (slimkit speech distill)."""
    from slimkit.errors import check_sparsity
    from slimkit.io.outputs import check_output_folder
    from slimkit.speech.convert import load_whisper, resolve_model
    from slimkit.speech.evaluate import parameters
    from slimkit.speech.prune import check_keep, prune_encoder_ffn, remove_decoder_layers, spaced_layers

    check_sparsity(encoder_ffn, "--encoder-ffn")
    if decoder_layers is not None and keep is not None:
        raise SlimkitError("give --decoder-layers or --keep, not both")
    if decoder_layers is None and keep is None and encoder_ffn == 0:
        raise SlimkitError("nothing to prune: pass --decoder-layers N, --keep i,j or --encoder-ffn FRACTION")
    src = resolve_model(model)
    n = int(_config_of(src).get("decoder_layers", 0))
    layers = check_keep(_parse_keep(keep), n) if keep is not None else None
    if decoder_layers is not None:
        layers = spaced_layers(n, decoder_layers)
    check_output_folder(out, overwrite, [src])
    whisper, processor = load_whisper(src)
    before = parameters(whisper)
    report = {"source": str(src), "decoder_layers_kept": layers, "encoder_ffn_removed": encoder_ffn}
    if layers is not None:
        remove_decoder_layers(whisper, layers)
    if encoder_ffn > 0:
        prune_encoder_ffn(whisper, encoder_ffn)
        report["encoder_ffn_dim"] = whisper.config.encoder_ffn_dim
    report["parameters"] = {"before": before, "after": parameters(whisper)}
    _save(whisper, processor, out, overwrite, [src], "speech prune", report)
    typer.echo(f"decoder layers kept {layers if layers is not None else 'all'}, encoder FFN "
               f"{whisper.config.encoder_ffn_dim} neurons per layer; parameters {before / 1e6:.2f} M -> "
               f"{report['parameters']['after'] / 1e6:.2f} M; saved {out} (not yet recovered: run slimkit speech "
               "distill)")


@app.command()
@clean_errors
def distill(
    student: str = typer.Option(..., help="student Whisper folder, e.g. written by slimkit speech prune"),
    teacher: str = typer.Option("whisper-tiny.en", help=MODEL_HELP),
    out: Path = typer.Option(..., help="folder for the trained student and its processor"),
    loss: str = typer.Option("kd", help="kd: KL to the teacher's token distributions + CE on its pseudo-labels; "
                             "ce: plain fine-tuning on the pseudo-labels"),
    minutes: float = typer.Option(30.0, help="time budget of the training run (teacher cache included)"),
    train_utterances: int = typer.Option(1000, help="synthesised training utterances (Austen sentences never held "
                                         "out, never the real recordings)"),
    val_utterances: int = typer.Option(50, help="held-out synthesised utterances: token accuracy per epoch, WER at "
                                       "the end"),
    batch_size: int = typer.Option(8, help="utterances per optimizer step"),
    lr: float = typer.Option(1e-4, help="AdamW peak learning rate (cosine to 0 over the budget)"),
    epochs: int = typer.Option(100, help="upper bound on epochs; --minutes usually ends the run first"),
    temperature: float = typer.Option(2.0, help="softmax temperature of the KD term"),
    kd_weight: float = typer.Option(1.0, help="weight of T^2 KL(teacher || student)"),
    ce_weight: float = typer.Option(0.8, help="weight of the cross-entropy on the pseudo-labels (with --loss kd)"),
    freeze_encoder: str = typer.Option("auto", help="auto (frozen when its shapes are the teacher's), yes or no"),
    max_label_wer: float = typer.Option(0.1, help="leave out training utterances whose pseudo-label has a higher WER "
                                        "against the synthesised sentence (distil-whisper's filter)"),
    threads: int = typer.Option(2, help="torch threads"),
    seed: int = typer.Option(0, help="seed of training and of the synthesised sets"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Recover a pruned Whisper on the teacher's pseudo-labels of synthesised speech (KD or CE only)."""
    from pydantic import ValidationError

    from slimkit.io.outputs import check_output_folder
    from slimkit.speech.convert import load_whisper, resolve_model
    from slimkit.speech.evaluate import evaluate
    from slimkit.speech.recover import SpeechDistillConfig, check_pair, recover
    from slimkit.speech.synth import SynthSettings, synthetic_set

    try:
        cfg = SpeechDistillConfig(loss=loss, minutes=minutes, epochs=epochs, batch_size=batch_size, lr=lr,
                                  temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight,
                                  freeze_encoder=freeze_encoder, max_label_wer=max_label_wer, seed=seed)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SlimkitError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    cfg.terms()
    if threads < 1:
        raise SlimkitError(f"--threads must be at least 1, got {threads}")
    if train_utterances < 1 or val_utterances < 0:
        raise SlimkitError(f"--train-utterances must be >= 1 and --val-utterances >= 0, got {train_utterances} "
                           f"and {val_utterances}")
    student_dir, teacher_dir = resolve_model(student), resolve_model(teacher)
    check_output_folder(out, overwrite, [student_dir, teacher_dir])
    s_model, processor = load_whisper(student_dir)
    t_model, _ = load_whisper(teacher_dir)
    check_pair(s_model, t_model)
    train = synthetic_set(SynthSettings(split="train", utterances=train_utterances, seed=seed))
    val = synthetic_set(SynthSettings(split="heldout", utterances=val_utterances, seed=seed)) if val_utterances else None
    report = recover(s_model, t_model, processor, train, val, cfg, threads)
    results = {}
    if val is not None:
        for name, m in (("teacher", t_model), ("student", s_model)):
            results[name] = evaluate(m, processor, val, threads=threads, macs_utterances=1)
    _save(s_model, processor, out, overwrite, [student_dir, teacher_dir], f"speech distill --loss {loss}",
          {"student": str(student_dir), "teacher": str(teacher_dir), "config": cfg.model_dump(),
           "train_utterances": train_utterances, "report": report.as_dict(),
           "wer": {k: r.wer for k, r in results.items()}})
    typer.echo(f"{loss}: {report.labels_kept} of {len(train)} pseudo-labels kept; {report.steps} steps in "
               f"{report.train_seconds / 60:.1f} min (ended by "
               f"{report.ended_by or 'epochs'}), encoder {'frozen' if report.frozen_encoder else 'trained'}")
    for name, r in results.items():
        typer.echo(f"{name}: WER {100 * r.wer:.2f}% on {r.utterances} held-out synthesised utterances, decode "
                   f"{r.decode_ms:.0f} ms/utt")
    typer.echo(f"saved {out}")
