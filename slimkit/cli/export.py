"""`slimkit export`: a checkpoint to a checked ONNX file (and an int8 copy), with measured runtime rows;
a Whisper to CTranslate2 (faster-whisper's runtime); or a sharded training checkpoint (parallel
"fsdp") to one safetensors file or a Hugging Face folder.

Every output is checked for existence before any work starts and written only after the export
matched PyTorch (outputs on held-out inputs, then the task metric); the deployment table gives each
variant's file size, metric and latency measured here, and the notes say when one is not faster
or when int8 costs too much.
"""

import json
from pathlib import Path
from typing import Optional

import typer

from slimkit.cli import clean_errors
from slimkit.cli.app import app, check_model_fits, checkpoint_dataset
from slimkit.errors import SlimkitError

BATCHES = (1, 32)
SEQ_LENS = (32, 128)
REPORT_FILES = ("report.json", "report.md", "report.html")


def int8_path(onnx: Path) -> Path:
    """Where the int8 copy of `model.onnx` goes: `model.int8.onnx` beside it."""
    return onnx.with_name(f"{onnx.stem}.int8{onnx.suffix or '.onnx'}")


def _kind(checkpoint: str) -> str:
    """'classifier' for a slimkit .safetensors file, 'encoder' for minilm or a Hugging Face encoder folder."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return "classifier"
    if path.is_dir() or checkpoint == "minilm":
        return "encoder"
    raise SlimkitError(f"checkpoint {checkpoint} does not exist; give a slimkit .safetensors checkpoint, a folder "
                       "written by `slimkit prune minilm` (or any Hugging Face BERT-style folder), or 'minilm'")


@app.command("export")
@clean_errors
def export(
    model: str = typer.Argument(..., help="a slimkit .safetensors checkpoint, a sentence-encoder folder, 'minilm', a "
                                          "Whisper folder or whisper-tiny.en (with --ct2), or the --checkpoint-dir "
                                          "of a run with --parallel fsdp"),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="ONNX file to write"),
    ct2: Optional[Path] = typer.Option(None, "--ct2", help="Whisper: CTranslate2 folder to write (ctranslate2's own "
                                                           "converter; run by faster-whisper), checked against "
                                                           "PyTorch's transcripts of --data"),
    safetensors: Optional[Path] = typer.Option(None, help="sharded checkpoints: write the student's whole weights "
                                                          "to this one .safetensors file"),
    hf_folder: Optional[Path] = typer.Option(None, help="sharded checkpoints: write a Hugging Face folder (with "
                                                        "--base, the folder the student was trained from)"),
    base: Optional[str] = typer.Option(None, help="with --hf-folder: the Hugging Face folder the run started from "
                                                  "(its config and tokenizer)"),
    int8: Optional[str] = typer.Option(None, help="also write an int8 copy (NAME.int8.onnx): 'static' (calibrated "
                                                  "on the validation split; for conv models), 'mixed' (static, with "
                                                  "the convolutions measured slower in int8 here left in fp32 when "
                                                  "that measures faster; conv models) or 'dynamic' (Linear-heavy "
                                                  "models: MiniLM, ViT); with --ct2, 'dynamic' writes int8 weights "
                                                  "(CTranslate2 quantizes activations on the fly)"),
    data: Optional[str] = typer.Option(None, help="classifiers: 'fashion-mnist', 'digits' or a .npz path "
                                                     "(default: what the checkpoint was trained on); Whisper: 'real' "
                                                     "(default), 'synth' or an audio folder with transcripts.tsv"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with Fashion-MNIST IDX files"),
    seed: int = typer.Option(0, help="seed of the data split"),
    samples: int = typer.Option(1024, help="static int8: validation samples (sentences) to calibrate on"),
    threads: int = typer.Option(2, help="threads for timing, ONNX Runtime and PyTorch alike"),
    runs: int = typer.Option(50, help="alternating timing rounds per batch size"),
    report: Optional[Path] = typer.Option(None, help="folder to write report.json, report.md and report.html into"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace outputs that already exist"),
) -> None:
    """Export to ONNX, check it against PyTorch, optionally quantize to int8, and time it in ONNX Runtime;
    a Whisper to CTranslate2, checked and timed through faster-whisper; or consolidate a sharded (FSDP)
    training checkpoint into one file or a Hugging Face folder."""
    from slimkit.export import write_output
    from slimkit.measure.rows import deploy_notes, print_table, report_files

    if _sharded(model) or safetensors is not None or hf_folder is not None:
        if onnx is not None or int8 is not None or ct2 is not None:
            raise SlimkitError("a sharded training checkpoint exports to --safetensors or --hf-folder; export that "
                               "folder to ONNX afterwards")
        _consolidate(model, safetensors, hf_folder, base, overwrite)
        return
    if runs < 1 or threads < 1 or samples < 1:
        raise SlimkitError("--runs, --threads and --samples must be >= 1")
    if ct2 is not None:
        rows, header, details = _whisper_ct2(model, ct2, onnx, int8, data, data_dir, seed, threads, report, overwrite)
    else:
        rows, header, details = _onnx(model, onnx, int8, data, data_dir, seed, samples, threads, runs, report,
                                      overwrite)
    notes = deploy_notes(rows)
    print_table([], notes, title=header, deploy=rows)
    if report:
        from slimkit.report_html import page_bytes, provenance

        files = report_files([], notes, header, {**details, "provenance": provenance(threads)}, rows)
        files["report.html"] = page_bytes(json.loads(files["report.json"]))  # the page shows what the JSON says
        for name in REPORT_FILES:
            write_output(report / name, files[name], overwrite)
        typer.echo(f"wrote {report / 'report.json'}, {report / 'report.md'} and {report / 'report.html'}")


def _onnx(checkpoint: str, onnx: Optional[Path], int8: Optional[str], data, data_dir, seed: int, samples: int,
          threads: int, runs: int, report: Optional[Path], overwrite: bool):
    from slimkit.export import check_output, require_deploy

    if onnx is None:
        raise SlimkitError("give --onnx FILE (--ct2 DIR for a Whisper; --safetensors / --hf-folder for a sharded "
                           "training checkpoint)")
    require_deploy()
    if int8 not in (None, "static", "mixed", "dynamic"):
        raise SlimkitError(f"--int8 must be 'static', 'mixed' or 'dynamic', got {int8!r}")
    outputs = [onnx] + ([int8_path(onnx)] if int8 else []) + ([report / n for n in REPORT_FILES] if report else [])
    kind = _kind(checkpoint)
    if int8 == "mixed" and kind != "classifier":
        raise SlimkitError("--int8 mixed chooses a precision per convolution, and an encoder has none; use --int8 "
                           "dynamic for encoders")
    for out in outputs:
        check_output(out, overwrite, inputs=[checkpoint])
    run = _classifier if kind == "classifier" else _encoder
    return run(checkpoint, onnx, int8, data, data_dir, seed, samples, threads, runs, overwrite)


def _whisper_ct2(model: str, ct2: Path, onnx: Optional[Path], int8: Optional[str], data: Optional[str], data_dir,
                 seed: int, threads: int, report: Optional[Path], overwrite: bool):
    from slimkit.export import check_output
    from slimkit.families import model_family

    if model_family(model) != "whisper":
        raise SlimkitError(f"--ct2 writes a Whisper for faster-whisper, and {model} is a {model_family(model)} model; "
                           f"export it with --onnx")
    if onnx is not None:
        raise SlimkitError("give one of --ct2 and --onnx: a Whisper deploys to CTranslate2 here")
    if int8 not in (None, "dynamic"):
        raise SlimkitError(f"--int8 {int8} is for ONNX convolutions; with --ct2 use --int8 dynamic (int8 weights)")
    if data_dir is not None:
        raise SlimkitError("--data-dir is Fashion-MNIST's folder; a Whisper's check set is --data")
    for out in [report / n for n in REPORT_FILES] if report else []:
        check_output(out, overwrite, inputs=[model])
    from slimkit.cli.speech import export_ct2

    return export_ct2(model, ct2, "int8" if int8 else "float32", data or "real", seed, threads, overwrite)


def _sharded(checkpoint: str) -> bool:
    from slimkit.distill.fsdp import STATE_FILE, latest

    path = Path(checkpoint).expanduser()
    return path.is_dir() and ((path / STATE_FILE).is_file() or latest(path) is not None)


def _consolidate(checkpoint: str, safetensors: Optional[Path], hf_folder: Optional[Path], model: Optional[str],
                 overwrite: bool) -> None:
    """Gather a sharded checkpoint's weights in this one process (no torchrun) and write them, safetensors only."""
    from slimkit.export import check_output

    if not _sharded(checkpoint):
        raise SlimkitError(f"{checkpoint} is not a sharded training checkpoint (a folder of step-N checkpoints from "
                           f"--parallel fsdp); --safetensors and --hf-folder export only those")
    if safetensors is None and hf_folder is None:
        raise SlimkitError("give --safetensors FILE and/or --hf-folder FOLDER (with --base)")
    if hf_folder is not None and model is None:
        raise SlimkitError("--hf-folder needs --base: the Hugging Face folder the run started from (config, tokenizer)")
    if safetensors is not None:
        check_output(safetensors, overwrite, inputs=[checkpoint])
    if hf_folder is not None:
        from slimkit.io.outputs import check_output_folder

        check_output_folder(hf_folder, overwrite, [checkpoint, model])
    from safetensors.torch import save

    from slimkit.distill.fsdp import consolidate
    from slimkit.export import write_output

    weights = consolidate(checkpoint)
    if safetensors is not None:
        write_output(safetensors, save({k: v.contiguous() for k, v in weights.items()}), overwrite, [checkpoint])
        typer.echo(f"wrote {safetensors} ({len(weights)} tensors)")
    if hf_folder is not None:
        from slimkit.llm.load import load_causal_lm_weights, save_pretrained_atomic

        lm, tok = load_causal_lm_weights(model, weights)
        typer.echo(f"wrote {save_pretrained_atomic(lm, tok, hf_folder, overwrite, [checkpoint, model], command='export')}")


def _timing(threads: int, runs: int, folded: bool) -> str:
    from slimkit.export import describe_session

    return (f"median of {runs} rounds x 4 warm calls; PyTorch eager{' (BatchNorm folded into its conv)' * folded} timed "
            f"alone in this process with {threads} threads, then the ONNX models alternating: "
            f"{describe_session(threads)}")


def _classifier(checkpoint, onnx, int8, dataset, data_dir, seed, calib_samples, threads, runs, overwrite):
    import torch

    from slimkit.data import load_dataset
    from slimkit.export import (OrtModel, classifier_check, classifier_scores, export_onnx, quantize_int8,
                                quantize_int8_fastest, split_feeds, time_onnx, write_output)
    from slimkit.io import load_model
    from slimkit.measure import count_macs, file_size_bytes, measure_latency_interleaved
    from slimkit.measure.fold import fold_batchnorm
    from slimkit.measure.rows import DeployRow

    model = load_model(checkpoint).eval()
    data = load_dataset(checkpoint_dataset(checkpoint, dataset), str(data_dir) if data_dir else None, seed=seed)
    check_model_fits(model, data)  # input shape and class count, as profile and prune check them
    test, nc = data.test, data.num_classes
    res = export_onnx(model, test.x[:2], check_inputs=[test.x[:1], test.x[2:34]],
                      validate=classifier_check(model, test, nc))
    write_output(onnx, res.model_bytes, overwrite, inputs=[checkpoint])
    _say_written(onnx, res)
    variants = [("onnx fp32", "fp32", res.model_bytes, res.checks["onnx"], onnx, "pytorch")]
    if int8:
        name = next(iter(res.inputs))
        feeds = split_feeds(data.val, name, calib_samples) if int8 != "dynamic" else None
        if int8 == "mixed":  # decided on 32 validation samples at the batch size the table reports throughput for
            q = quantize_int8_fastest(res.model_bytes, feeds, split_feeds(data.val, name, 32, 32)[0], threads)
        else:
            q = quantize_int8(res.model_bytes, int8, feeds)
        acc = classifier_scores(OrtModel(q.model_bytes, threads), test, nc)["accuracy"]
        write_output(int8_path(onnx), q.model_bytes, overwrite, inputs=[checkpoint])
        typer.echo(f"wrote {int8_path(onnx)} ({int8} int8: {q.details})")
        variants.append(("onnx int8", f"int8 {int8}", q.model_bytes, acc, int8_path(onnx), "onnx fp32"))
    example = test.x[:1]
    folded = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    eager = fold_batchnorm(model, example) if folded else model
    eager_ms, ort_ms = {}, {name: {} for name, *_ in variants}
    for b in BATCHES:
        x = test.x[:b] if len(test) >= b else test.x[torch.arange(b) % len(test)]
        eager_ms[f"batch {b}"] = measure_latency_interleaved([eager], x, runs=runs, warmup=10, threads=threads)[0].ms
        times = time_onnx([v[2] for v in variants], x, runs=runs, threads=threads)
        for (name, *_), t in zip(variants, times):
            ort_ms[name][f"batch {b}"] = t.ms
    timing = _timing(threads, runs, folded)
    rows = [DeployRow("pytorch", "pytorch eager", "fp32", "accuracy", res.checks["pytorch"], eager_ms,
                      str(checkpoint), file_size_bytes(checkpoint), timing,
                      extra={"macs": count_macs(model, example)})]
    for name, precision, data_bytes, acc, path, base in variants:
        rows.append(DeployRow(name, "onnxruntime", precision, "accuracy", acc, ort_ms[name], str(path),
                              len(data_bytes), timing, base))
    header = (f"{checkpoint} -> {onnx} on {data.name} test ({len(test)} samples); {timing}")
    return rows, header, {"export": res.as_dict()}


def _encoder(checkpoint, onnx, int8, dataset, data_dir, seed, calib_samples, threads, runs, overwrite):
    from slimkit.export import (OrtModel, embedding_cosines, encoder_check, export_onnx, quantize_int8, time_onnx,
                                write_output)
    from slimkit.llm.encoder import default_sentences
    from slimkit.llm.load import load_encoder, resolve
    from slimkit.measure import file_size_bytes, measure_latency_interleaved
    from slimkit.measure.rows import DeployRow

    path = resolve(checkpoint)
    model, tok = load_encoder(path)
    calib, held = default_sentences(max(calib_samples, 2), 128, seed)
    enc = lambda texts, **kw: dict(tok(texts, return_tensors="pt", padding=True, truncation=True, **kw))  # noqa: E731
    res = export_onnx(model, enc(held[:2]), check_inputs=[enc(held[2:7]), enc(held[7:8])],
                      validate=encoder_check(model, tok, held))
    write_output(onnx, res.model_bytes, overwrite, inputs=[checkpoint])
    _say_written(onnx, res)
    variants = [("onnx fp32", "fp32", res.model_bytes, res.checks["mean_cosine"], onnx, "pytorch")]
    if int8:
        feeds = None
        if int8 == "static":
            names = set(res.inputs)
            feeds = [{k: v.numpy() for k, v in enc(calib[i:i + 32], max_length=128).items() if k in names}
                     for i in range(0, calib_samples, 32)]
        q = quantize_int8(res.model_bytes, int8, feeds)
        cos = float(embedding_cosines(OrtModel(q.model_bytes, threads), model, tok, held).mean())
        write_output(int8_path(onnx), q.model_bytes, overwrite, inputs=[checkpoint])
        typer.echo(f"wrote {int8_path(onnx)} ({int8} int8: {q.details})")
        variants.append(("onnx int8", f"int8 {int8}", q.model_bytes, cos, int8_path(onnx), "onnx fp32"))
    long_text = " ".join(held)
    eager_ms, ort_ms = {}, {name: {} for name, *_ in variants}
    for n in SEQ_LENS:
        x = enc([long_text], max_length=n)
        key = f"seq {x['input_ids'].shape[1]}"
        eager_ms[key] = measure_latency_interleaved([model], x, runs=runs, warmup=5, threads=threads)[0].ms
        for (name, *_), t in zip(variants, time_onnx([v[2] for v in variants], x, runs=runs, threads=threads)):
            ort_ms[name][key] = t.ms
    timing = _timing(threads, runs, False) + "; batch 1"
    weights = path / "model.safetensors"
    rows = [DeployRow("pytorch", "pytorch eager", "fp32", "cosine", 1.0, eager_ms, str(path),
                      file_size_bytes(weights if weights.is_file() else path), timing)]
    for name, precision, data_bytes, cos, out, base in variants:
        rows.append(DeployRow(name, "onnxruntime", precision, "cosine", cos, ort_ms[name], str(out), len(data_bytes),
                              timing, base))
    header = (f"{checkpoint} -> {onnx}; metric: mean cosine of mean-pooled embeddings to the PyTorch model on "
              f"{len(held)} held-out Pride and Prejudice sentences; {timing}")
    return rows, header, {"export": res.as_dict()}


def _say_written(onnx: Path, res) -> None:
    """Which exporter wrote the file, and why the preferred one was not used."""
    typer.echo(f"wrote {onnx} ({res.exporter} exporter, opset {res.opset}"
               + "".join(f"; {k}: {n}" for k, n in res.rewrites.items())
               + (f"; dynamo fallback because {res.fallback_reason}" if res.fallback_reason else "") + ")")
