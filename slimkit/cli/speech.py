"""`slimkit speech ...`: Whisper speech recognition, WER and measured speed.

Bad input (an unknown model or data name, a folder without transcripts.tsv, an empty or too long
recording, a transcript naming a missing file) is one `error:` line and exit status 2, found
before any model runs.
"""

from __future__ import annotations

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
    console.print(f"method: {protocol(threads, trim_pad_s)}")


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
    results = [evaluate(whisper, processor, s, trim_encoder, threads, trim_pad_s=trim_pad) for s in sets]
    print_table(model, parameters(whisper), results, threads, trim_pad)
