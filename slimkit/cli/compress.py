"""`slimkit compress MODEL --data ... --target latency=0.5x --floor -1pt --out DIR`.

Every option that can be judged without the model (target, floor, task, output folder, export
format) is judged first, so bad input costs one `error:` line and writes nothing.
"""

from pathlib import Path

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app
from slimkit.errors import SlimkitError, check_count


@app.command()
@clean_errors
def compress(
    model: str = typer.Argument(..., help="a slimkit .safetensors checkpoint, a Hugging Face folder written by "
                                          "save_pretrained (its task is read from the config: *ForImageClassification, "
                                          "*ForSequenceClassification, or a bare encoder for embeddings; "
                                          "*ForCausalLM: a causal LM; WhisperForConditionalGeneration: speech), "
                                          "the built-ins smollm2 and whisper-tiny.en, or "
                                          "package.module:factory (a callable returning the model, or a dict with "
                                          "'model' and optionally 'task', 'data', 'builder')"),
    data: str | None = typer.Option(None, help="fashion-mnist, digits, an .npz (x, y), an image folder (one "
                                                  "sub-folder per class); for a text classifier a CSV, TSV, JSONL or "
                                                  "Parquet file or a datasets save_to_disk folder; for embeddings a "
                                                  "text file or 'sentences'; for a causal LM a UTF-8 text file or "
                                                  "emma / prideprejudice; default: the factory's data, else "
                                                  "fashion-mnist (images), 'sentences' (embeddings) or emma "
                                                  "(causal LMs); for Whisper an audio folder with transcripts.tsv, "
                                                  "or synth (default) or real (synth, tested on the pocketsphinx "
                                                  "recordings)"),
    task: str | None = typer.Option(None, help="classification, embeddings, ctc, causal-lm or speech (default: the "
                                                  "Hugging Face config's task, the factory's, else classification)"),
    text_column: str = typer.Option("text", help="text classifiers: the column holding the text"),
    label_column: str = typer.Option("label", help="text classifiers: the column holding the class"),
    target: str = typer.Option("latency=0.5x", help="latency=0.5x (measured here), macs=2x or params=2x"),
    floor: str | None = typer.Option(None, help="validation floor on the task's first metric: -1pt relative to "
                                                   "dense, or an absolute value (0.95); or on a named metric, the way "
                                                   "it gets worse: accuracy-1pt, cer+1pt (points), ppl<=1.25x (a "
                                                   "multiple of dense), cosine>=0.95 (absolute); default: ppl<=1.25x "
                                                   "for causal LMs, wer+2pt for Whisper, else -1pt"),
    out: Path = typer.Option(..., help="run folder for the model and report (new, or an earlier slimkit run with "
                                       "--overwrite)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier slimkit run in --out"),
    seed: int = typer.Option(0, help="seed of the data split, calibration and every recovery"),
    search_steps: int = typer.Option(200, help="recovery steps of each candidate mix"),
    recover_steps: int = typer.Option(1000, help="recovery steps of the chosen mix's full recovery"),
    recovery: str = typer.Option("kd", help="recovery loss: 'kd' from the dense model, or 'ce' on labels alone "
                                            "(the control; not for embeddings)"),
    max_blocks: int | None = typer.Option(None, help="most whole blocks a mix removes (default: all removable)"),
    batch_size: int | None = typer.Option(None, help="training batch size (default: 128; causal LMs 8 windows, "
                                                     "Whisper 8 utterances)"),
    eval_data: str | None = typer.Option(None, help="causal LMs: a held-out text (e.g. prideprejudice) for val and "
                                         "test, carved half and half; --data then trains on all its windows"),
    seq_len: int = typer.Option(256, help="causal LMs: tokens per window (the text is cut into non-overlapping "
                                          "windows)"),
    round_to: int = typer.Option(8, help="kept channel counts are multiples of this (16 when the model will run "
                                         "int8 in ONNX Runtime on x86)"),
    max_label_wer: float = typer.Option(0.1, help="Whisper: leave out a training utterance whose teacher transcript "
                                                  "(its label) has a WER above this against the reference (inf keeps "
                                                  "all)"),
    threads: int = typer.Option(2, help="torch threads of the batch-1 timing (what the latency target is measured at)"),
    train_n: int = typer.Option(0, help="use the first N training samples only (0 = all)"),
    data_dir: Path | None = typer.Option(None, help="folder with Fashion-MNIST IDX files"),
    export: str | None = typer.Option(None, help="'onnx': also write model.onnx; the dense and compressed models "
                                                    "are exported, checked and timed in ONNX Runtime, and the report "
                                                    "gets their deployment rows"),
    keep_slower: bool = typer.Option(False, help="keep a result measured no faster (flagged in the report) instead "
                                                 "of refusing it"),
) -> None:
    """Compress a model to a target within a validation floor: measured-faster or refused.

    Searches depth+width mixes fastest first, recovers each by KD, keeps the first that holds the
    floor, recovers it fully, tests it once, times it against the dense model, and writes the
    model with report.json, report.md, report.html and candidates.png.
    """
    options = dict(locals())  # every option as given, before any other name exists here
    from slimkit.cli.app import recipe_of

    recipe = recipe_of("compress", options)  # recipe.yaml replays this run
    from slimkit.compression.settings import parse_floor, parse_target
    from slimkit.compression.sources import TASKS, resolve_data, resolve_model, task_named

    if target.strip().lower().startswith(("sparsity", "wanda", "sparsegpt", "n:m", "2:4")):
        from slimkit.families.causal_lm import SPARSITY_NOTE

        raise SlimkitError(f"--target {target!r}: {SPARSITY_NOTE}; compress targets latency=0.5x, macs=2x or params=2x")
    parse_target(target)
    if floor is not None:
        parse_floor(floor)
    if task is not None and task not in TASKS:
        raise SlimkitError(f"unknown --task {task!r}; choose one of {', '.join(TASKS)}")
    if export not in (None, "onnx"):
        raise SlimkitError(f"--export {export!r} is not a format slimkit writes; use --export onnx")
    if recovery not in ("kd", "ce"):
        raise SlimkitError(f"unknown --recovery {recovery!r}; use 'kd' or 'ce'")
    if recovery == "ce" and task == "embeddings":
        raise SlimkitError("--recovery ce trains on labels, and the embeddings task has none; use --recovery kd")
    check_count(search_steps, "--search-steps", 0)
    check_count(recover_steps, "--recover-steps", 0)
    if batch_size is not None:
        check_count(batch_size, "--batch-size")
    check_count(seq_len, "--seq-len")
    check_count(round_to, "--round-to")
    check_count(train_n, "--train-n", 0)
    check_count(threads, "--threads")
    if not max_label_wer >= 0:
        raise SlimkitError(f"--max-label-wer must be >= 0 (inf keeps every label), got {max_label_wer}")
    if max_blocks is not None:
        check_count(max_blocks, "--max-blocks", 0)
    from slimkit.io.outputs import check_output_folder

    inputs = [p for p in (model, data) if p and Path(p).exists()]
    check_output_folder(out, overwrite, inputs)
    from slimkit.families import model_family, whisper

    family = model_family(model)  # the verbs' one reading of MODEL, no weights loaded
    if family == "causal-lm":
        from slimkit.families.causal_lm import check_data

        check_data(data)  # a missing text costs one line before the model loads
        if eval_data is not None:
            check_data(eval_data)
    elif family == "whisper":
        whisper.check_data(data)  # a folder without transcripts costs one line before the model loads
    if eval_data is not None and family != "causal-lm":
        raise SlimkitError("--eval-data is a causal LM's held-out text; other models' val and test come from --data "
                           "(carved with the seed, or the splits it ships with)")
    source = resolve_model(model, task)
    own_task = source.family in ("hf-encoder", "causal-lm", "whisper")  # the family read it from the model
    the_task = source.task if own_task else task_named(task) if task else source.task or task_named("classification")
    from slimkit.compression.settings import floor_metric

    lm = source.family == "causal-lm"
    if floor is None:
        from slimkit.families.causal_lm import DEFAULT_FLOOR

        floor = DEFAULT_FLOOR if lm else whisper.DEFAULT_FLOOR if source.family == "whisper" else "-1pt"
    floor_metric(parse_floor(floor), the_task)  # a metric the task does not measure: one line, before the data
    cutter, data_how, notes, example = source.cutter, None, None, source.example
    family_settings: dict = {}
    if lm:
        from slimkit.families import causal_lm

        prepared = causal_lm.prepare(source, data, seed, train_n, seq_len, eval_data)
        splits, data_how = prepared.splits, prepared.how
        notes = [causal_lm.SPARSITY_NOTE]  # its cutter and decode timer are compress()'s own for a causal_lm task
        family_settings = dict(causal_lm.LM_SETTINGS)
    elif source.family == "whisper":  # its cutter and transcription timer are compress()'s own for a speech task
        prepared = whisper.prepare(source, data, seed, train_n, max_label_wer)
        splits, data_how, example = prepared.splits, prepared.how, prepared.example
        notes = [whisper.MACS_NOTE, whisper.ORDER_NOTE, whisper.TRIM_NOTE]
        family_settings = dict(whisper.WHISPER_SETTINGS)
    elif source.family == "hf-encoder":
        from slimkit.families.hf_encoder import prepare

        prepared = prepare(source, data, seed, train_n, str(data_dir) if data_dir else None, text_column,
                           label_column)
        splits, data_how = prepared.splits, prepared.how
        if source.extras["task"] == "embeddings":  # calibrated on sentences, as slimkit prune cuts encoders
            from slimkit.families.hf_encoder import EncoderCutter

            cutter = EncoderCutter(source.processor, prepared.calib_texts[:256])
    elif data is not None or source.data is None:
        splits = resolve_data(data or "fashion-mnist", str(data_dir) if data_dir else None, seed, train_n)
    else:
        splits = source.data
    if source.kind == "checkpoint" and the_task.name == "classification":
        from slimkit.cli.app import check_model_fits
        from slimkit.data.arrays import Dataset

        n_classes = int(splits["train"].y.max()) + 1
        check_model_fits(source.model, Dataset(data or "fashion-mnist", splits["train"], splits["val"],
                                               splits["test"], n_classes))
    from slimkit.compression.run import compress as run_compress

    overrides = {**family_settings, "batch_size": batch_size or family_settings.get("batch_size", 128),
                 "threads": threads}
    if max_blocks is not None:
        overrides["max_blocks"] = max_blocks
    result = run_compress(source.model, splits["train"], splits["val"], splits.get("test"), the_task, target, floor,
                          example=example, out=out, seed=seed, cutter=cutter, overwrite=overwrite,
                          search_steps=search_steps, recover_steps=recover_steps,
                          recovery=recovery, round_to=round_to, notes=notes,
                          keep_slower=keep_slower, inputs=tuple(inputs), command="slimkit compress",
                          export_onnx=export == "onnx", builder=source.builder, processor=source.processor,
                          data_how=data_how, recipe=recipe, **overrides)
    rep = result.report
    if rep.deployment:
        from slimkit.measure.rows import DeployRow, print_table

        onnx = rep.onnx
        print_table([], onnx["notes"], title=f"deployment (ONNX Runtime, {onnx['optimisation_level']}, "
                                               f"{onnx['threads']} threads; metric on the {onnx['split']} split)",
                    deploy=[DeployRow(**row) for row in rep.deployment])
    r, m = rep.result, rep.metric
    test = f", test {m} {r.test[m]:.4f}" if r.test else ""
    typer.echo(f"wrote {out}: {r.speedup:.2f}x faster ({r.ms:.3f} vs {rep.dense.ms:.3f} ms, "
               f"{r.latency_share:.2f}x; {rep.target_verdict}), "
               f"{r.macs_reduction:.2f}x fewer MACs, val {m} {r.val[m]:.4f}{test}; "
               f"{rep.candidates_tried} mixes recovered in {rep.wall_seconds:.0f} s; "
               f"see {out / 'report.html'}")
