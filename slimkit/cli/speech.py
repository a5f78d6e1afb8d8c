"""The whisper family on the verbs: `slimkit eval | prune | distill` of Whisper speech recognition.

- eval: WER per set and measured speed (encoder and decode ms, RTF, MACs per audio second);
- prune: decoder layers (--blocks removes that many, keeping the maximally spaced ones; --keep names
  them) and encoder FFN neurons (--ffn); the result reloads with from_pretrained;
- distill: recovery on the teacher's pseudo-labels of synthesised speech (KD or CE only).

Bad input (an unknown model or data name, a folder without transcripts.tsv, an empty or too long
recording, a transcript naming a missing file) is one `error:` line and exit status 2, found
before any model runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.options import result_files
from slimkit.errors import SlimkitError

DATA_HELP = ("'real' (pocketsphinx-testdata's 12 transcribed recordings), 'synth' (Piper-synthesised held-out Austen "
             "sentences) or a folder with audio files and transcripts.tsv (<file>\\t<transcript> per line); repeat "
             "for several sets")


def load_sets(specs: list[str], utterances: Optional[int], seed: int):
    """The requested speech sets, all loaded and checked before any model runs."""
    from slimkit.speech.audio import load_folder, real_recordings
    from slimkit.speech.synth import SynthSettings, synthetic_set

    if utterances is not None and utterances < 1:
        raise SlimkitError(f"--samples must be at least 1, got {utterances}")
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


def evaluate(model: str, data: list[str], utterances: Optional[int], trim_encoder: bool, trim_pad: float,
             threads: int, seed: int, use_generate: bool) -> None:
    """WER per set and measured speed (encoder and decode ms, RTF, MACs per audio second) of a Whisper model."""
    from slimkit.speech.convert import load_whisper, resolve_model
    from slimkit.speech.evaluate import evaluate as evaluate_sets, parameters

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
    results = [evaluate_sets(whisper, processor, s, trim_encoder, threads, trim_pad_s=trim_pad,
                             use_generate=use_generate) for s in sets]
    print_table(model, parameters(whisper), results, threads, trim_pad)


def export_ct2(model: str, out: Path, quantization: str, data: str, seed: int, threads: int, overwrite: bool):
    """A Whisper to CTranslate2 (slimkit.speech.deploy), checked against the PyTorch model's transcripts of
    `data`; the deployment rows (PyTorch and faster-whisper, end to end per utterance), header and details."""
    from slimkit.io.outputs import check_output_folder
    from slimkit.measure.rows import DeployRow
    from slimkit.speech.convert import load_whisper, resolve_model
    from slimkit.speech.deploy import DECODE, export_ct2 as convert_and_check, require_ct2
    from slimkit.speech.evaluate import evaluate as evaluate_set, protocol, word_error_rate

    require_ct2()
    folder = resolve_model(model)  # a wrong model name or folder fails before any audio is read
    check_output_folder(out, overwrite, [folder])
    (speech,) = load_sets([data], None, seed)
    whisper, processor = load_whisper(model)
    ours = evaluate_set(whisper, processor, speech, False, threads)
    audios = [u.audio for u in speech.utterances]
    made = convert_and_check(folder, out, quantization, audios, ours.hypotheses, threads, overwrite)
    refs = [u.text for u in speech.utterances]
    typer.echo(f"wrote {out} ({quantization}; {made['same']}/{made['of']} transcripts equal to PyTorch's on "
               f"{speech.name}, same features and decoding)")
    setting = f"{speech.name}, batch 1"
    torch_ms = ours.features_ms + ours.encoder_ms + ours.decode_ms
    timing = (f"mean end-to-end ms per utterance after 1 warm-up, {threads} threads, in this process; PyTorch: "
              f"{protocol(threads, loop=ours.decode_loop)}; faster-whisper: {DECODE}")
    rows = [DeployRow("pytorch", "pytorch eager", "fp32", "wer", ours.wer, {setting: torch_ms}, str(folder),
                      timing=timing),
            DeployRow(f"ctranslate2 {quantization}", "faster-whisper", "int8" if quantization == "int8" else "fp32",
                      "wer", word_error_rate(refs, made["texts"]), {setting: made["ms_per_utt"]}, str(out),
                      made["bytes"], timing, baseline="pytorch")]
    header = f"{model} deployed to CTranslate2 {quantization}: WER and end-to-end time per utterance on {speech.name}"
    typer.echo(f"faster-whisper's own pipeline gives {made['same_in_faster_whisper']}/{made['of']} of those "
               f"transcripts (it pads features, not audio, and writes numbers as digits)")
    return rows, header, {"check": {k: made[k] for k in ("same", "of", "same_in_faster_whisper")},
                          "convert_s": made["convert_s"]}


def _parse_keep(keep: str) -> list[int]:
    try:
        return [int(p) for p in keep.split(",") if p.strip()]
    except ValueError:
        raise SlimkitError(f"--keep must be comma-separated decoder layer indices such as 0,3, got {keep!r}") from None


def _config_of(folder) -> dict:
    import json

    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def _save(model, processor, out, overwrite: bool, inputs: list, command: str, report: dict, files: dict):
    """save_pretrained of model and processor plus the details as JSON and the result's files (recipe,
    report.json, report.html), staged and swapped in by slimkit.io.outputs."""
    import json

    from slimkit.io.outputs import output_folder

    with output_folder(out, overwrite, inputs, command) as stage:
        model.save_pretrained(stage)
        processor.save_pretrained(stage)
        (stage / "slimkit-speech.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        for name, data in files.items():
            (stage / name).write_bytes(data)
    return out


def prune(model: str, out: Path, overwrite: bool, blocks: Optional[int], keep: Optional[str], ffn: float,
          recipe: dict) -> None:
    """Remove decoder layers and/or encoder FFN neurons; the result needs recovery (slimkit distill)."""
    from slimkit.errors import check_count, check_sparsity
    from slimkit.io.outputs import check_output_folder
    from slimkit.speech.convert import load_whisper, resolve_model
    from slimkit.speech.evaluate import parameters
    from slimkit.speech.prune import check_keep, prune_encoder_ffn, remove_decoder_layers, spaced_layers

    check_sparsity(ffn, "--ffn")
    if blocks is not None and keep is not None:
        raise SlimkitError("give --blocks (how many decoder layers to remove) or --keep (which to keep), not both")
    if not blocks and keep is None and ffn == 0:
        raise SlimkitError("nothing to prune: pass --blocks N, --keep i,j or --ffn FRACTION")
    src = resolve_model(model)
    n = int(_config_of(src).get("decoder_layers", 0))
    layers = check_keep(_parse_keep(keep), n) if keep is not None else None
    if blocks:
        check_count(blocks, "--blocks", 0)
        if blocks >= n:
            raise SlimkitError(f"--blocks {blocks} would remove every one of the {n} decoder layers; remove at most "
                               f"{n - 1}")
        layers = spaced_layers(n, n - blocks)
    check_output_folder(out, overwrite, [src])
    whisper, processor = load_whisper(src)
    before = parameters(whisper)
    report = {"source": str(src), "decoder_layers_kept": layers, "encoder_ffn_removed": ffn}
    if layers is not None:
        remove_decoder_layers(whisper, layers)
    if ffn > 0:
        prune_encoder_ffn(whisper, ffn)
        report["encoder_ffn_dim"] = whisper.config.encoder_ffn_dim
    report["parameters"] = {"before": before, "after": parameters(whisper)}
    files = result_files(recipe, f"{model}: decoder layers kept {layers if layers is not None else 'all'}, encoder "
                                 f"FFN {whisper.config.encoder_ffn_dim} (not recovered: slimkit distill recovers it)",
                         ["model", "parameters", "decoder layers", "encoder FFN"],
                         [["dense", before, n, int(_config_of(src).get("encoder_ffn_dim", 0))],
                          ["pruned", report["parameters"]["after"], whisper.config.decoder_layers,
                           whisper.config.encoder_ffn_dim]])
    _save(whisper, processor, out, overwrite, [src], "slimkit prune", report, files)
    typer.echo(f"decoder layers kept {layers if layers is not None else 'all'}, encoder FFN "
               f"{whisper.config.encoder_ffn_dim} neurons per layer; parameters {before / 1e6:.2f} M -> "
               f"{report['parameters']['after'] / 1e6:.2f} M; saved {out} (not yet recovered: run slimkit distill "
               f"{out} --teacher {model})")


def distill(student: str, teacher: str, out: Path, overwrite: bool, loss: str, minutes: float, samples: int,
            val_samples: int, batch_size: int, lr: float, epochs: int, temperature: float, kd_weight: float,
            ce_weight: float, freeze_encoder: str, max_label_wer: float, threads: int, seed: int,
            recipe: dict) -> None:
    """Recover a cut Whisper on the teacher's pseudo-labels of synthesised speech (KD or CE only)."""
    from pydantic import ValidationError

    from slimkit.io.outputs import check_output_folder
    from slimkit.speech.convert import load_whisper, resolve_model
    from slimkit.speech.evaluate import evaluate as evaluate_set
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
    if samples < 1 or val_samples < 0:
        raise SlimkitError(f"--samples (training utterances) must be >= 1 and --val-samples >= 0, got {samples} "
                           f"and {val_samples}")
    student_dir, teacher_dir = resolve_model(student), resolve_model(teacher)
    check_output_folder(out, overwrite, [student_dir, teacher_dir])
    s_model, processor = load_whisper(student_dir)
    t_model, _ = load_whisper(teacher_dir)
    check_pair(s_model, t_model)
    train = synthetic_set(SynthSettings(split="train", utterances=samples, seed=seed))
    val = synthetic_set(SynthSettings(split="heldout", utterances=val_samples, seed=seed)) if val_samples else None
    report = recover(s_model, t_model, processor, train, val, cfg, threads)
    results = {}
    if val is not None:
        for name, m in (("teacher", t_model), ("student", s_model)):
            results[name] = evaluate_set(m, processor, val, threads=threads, macs_utterances=1)
    files = result_files(recipe, f"{student} recovered from {teacher} ({loss}): {report.steps} steps on "
                                 f"{report.labels_kept} pseudo-labels",
                         ["model", "WER %", "held-out synthesised utterances", "decode ms / utterance"],
                         [[name, 100 * r.wer, r.utterances, r.decode_ms] for name, r in results.items()],
                         recovery=report.as_dict())
    _save(s_model, processor, out, overwrite, [student_dir, teacher_dir], f"slimkit distill --loss {loss}",
          {"student": str(student_dir), "teacher": str(teacher_dir), "config": cfg.model_dump(),
           "train_utterances": samples, "report": report.as_dict(),
           "wer": {k: r.wer for k, r in results.items()}}, files)
    typer.echo(f"{loss}: {report.labels_kept} of {len(train)} pseudo-labels kept; {report.steps} steps in "
               f"{report.train_seconds / 60:.1f} min (ended by "
               f"{report.ended_by or 'epochs'}), encoder {'frozen' if report.frozen_encoder else 'trained'}")
    for name, r in results.items():
        typer.echo(f"{name}: WER {100 * r.wer:.2f}% on {r.utterances} held-out synthesised utterances, decode "
                   f"{r.decode_ms:.0f} ms/utt")
    typer.echo(f"saved {out}")
