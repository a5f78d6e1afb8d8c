"""The hf-encoder family on the verbs, for sentence encoders (MiniLM and other BERT-style bare encoders).

- prune: FFN neurons (--ffn), attention heads (--heads) and the last layers (--blocks), each
  followed by a least-squares refit of what the cut removed, calibrated on Emma's sentences;
- distill: the student's sentence embeddings matched to the teacher's on the engine;
- eval: fidelity to a reference encoder (mean cosine and nearest-neighbour agreement on held-out
  Pride and Prejudice sentences), and with --speed the measured latency.

A fine-tuned classifier folder of this family is cut, recovered and measured by `slimkit compress`,
which knows its labels; these verbs say so in one line.
"""

from __future__ import annotations

import copy
from pathlib import Path

import typer

from slimkit.cli.options import check_out, result_files
from slimkit.errors import SlimkitError, check_count, check_nonnegative, check_positive, check_sparsity


def check_sentence_encoder(model: str, verb: str) -> None:
    """Refuse a classifier folder here: its verbs need its labels, which compress reads."""
    p = Path(model).expanduser()
    if p.is_dir():
        import json

        archs = json.loads((p / "config.json").read_text(encoding="utf-8")).get("architectures") or []
        if archs and not archs[0].endswith("Model"):
            raise SlimkitError(f"{model} is a {archs[0]}: `slimkit {verb}` takes sentence encoders of this family; "
                               f"cut a classifier with `slimkit compress {model} --data ...`, which recovers it on "
                               f"its labels and measures it")


def _sentences(samples: int, held_out: int, seed: int) -> tuple[list[str], list[str]]:
    from slimkit.llm.encoder import default_sentences

    if samples < 1 or held_out < 2:
        raise SlimkitError(f"need --samples >= 1 and --val-samples >= 2, got {samples} and {held_out}")
    return default_sentences(samples, held_out, seed)


def prune(model: str, out: Path, overwrite: bool, ffn: float, heads: float, blocks: int, samples: int,
          held_out: int, seed: int, recipe: dict) -> None:
    """Cut FFN neurons, heads and last layers, refit by least squares, report fidelity, save."""
    check_sentence_encoder(model, "prune")
    check_sparsity(ffn, "--ffn")
    check_sparsity(heads, "--heads")
    check_count(blocks, "--blocks", 0)
    check_out(out, overwrite, model)
    texts, held = _sentences(samples, held_out, seed)  # the calibration sentences (--samples) and held-out ones
    from slimkit.io.hf_folder import save_hf
    from slimkit.llm.encoder import fidelity
    from slimkit.llm.encoder_prune import prune_encoder
    from slimkit.llm.load import load_encoder

    teacher, tok = load_encoder(model)
    student = copy.deepcopy(teacher)
    pruned = prune_encoder(student, tok, texts, ffn, heads, blocks)
    shape = _describe(teacher, student, pruned)
    fid = fidelity(student, teacher, tok, held)
    typer.echo(f"pruned + refit: {fid}")
    files = result_files(recipe, f"{model}: {shape}", FIDELITY_COLUMNS, [_row("pruned + refit", fid)])
    saved = save_hf(student, out, overwrite, tokenizer=tok, inputs=[model], command="slimkit prune", extra_files=files)
    typer.echo(f"saved {saved} (reload with slimkit.llm.load_encoder; recover it with slimkit distill {saved} "
               f"--teacher {model})")


FIDELITY_COLUMNS = ["model", "mean cosine to the teacher", "nearest-neighbour agreement", "held-out sentences"]


def _row(label: str, fid) -> list:
    return [label, fid.mean_cosine, fid.nn_agreement, fid.sentences]


def _describe(teacher, student, pruned=None) -> str:
    """Print (and return) the student's shape against the teacher's."""
    params = (sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters()))
    heads = ""
    if pruned is not None:
        heads = f", heads per layer {sorted({k for n, (k, _) in pruned.kept.items() if n.endswith('.attention.self')})}"
    line = (f"layers {len(student.encoder.layer)}, FFN {student.config.intermediate_size}{heads}; params "
            f"{params[0] / 1e6:.1f} M -> {params[1] / 1e6:.1f} M")
    typer.echo(line)
    return line


def distill(student: str, teacher: str, out: Path, overwrite: bool, samples: int, held_out: int, minutes: float,
            lr: float, seed: int, checkpoint, amp: str, recipe: dict) -> None:
    """Match the student's sentence embeddings to the teacher's (cosine, plus every layer's token states)."""
    check_sentence_encoder(student, "distill")
    check_sentence_encoder(teacher, "distill")
    check_nonnegative(minutes, "--minutes")
    check_positive(lr, "--lr")
    check_out(out, overwrite, student, teacher)
    texts, held = _sentences(samples, held_out, seed)
    from slimkit.distill.ddp import is_main_process
    from slimkit.io.hf_folder import save_hf
    from slimkit.llm.encoder import distill_encoder, fidelity
    from slimkit.llm.load import load_encoder

    st, tok = load_encoder(student)
    te, _ = load_encoder(teacher)
    before = fidelity(st, te, tok, held)
    info = distill_encoder(st, te, tok, texts, epochs=1000, lr=lr, seed=seed, layer_weight=1.0, max_minutes=minutes,
                           checkpoint=checkpoint, amp=amp)
    if not is_main_process():
        return  # under torchrun, rank 0 reports and saves
    resumed = f", resumed from step {info['resumed_from_step']}" if info["resumed_from_step"] else ""
    shape = _describe(te, st)
    after = fidelity(st, te, tok, held)
    typer.echo(f"before: {before}")
    typer.echo(f"distilled {info['steps']} steps, {info['seconds']:.0f} s{resumed}: {after}")
    files = result_files(recipe, f"{student} distilled from {teacher}: {shape}", FIDELITY_COLUMNS,
                         [_row("before", before), _row(f"distilled {info['steps']} steps", after)], recovery=info)
    saved = save_hf(st, out, overwrite, tokenizer=tok, inputs=[student, teacher], command="slimkit distill",
                    extra_files=files)
    typer.echo(f"saved {saved}")


def evaluate(model: str, reference: str | None, held_out: int, seed: int, speed: bool, threads: int) -> None:
    """Fidelity to `reference` on held-out sentences; with `speed`, latency of one sentence batch."""
    check_sentence_encoder(model, "eval")
    if reference is None:
        raise SlimkitError("an encoder's embeddings are judged against a reference: pass --reference minilm (or the "
                           "folder it was cut from)")
    check_sentence_encoder(reference, "eval")
    _, held = _sentences(1, held_out, seed)
    from slimkit.llm.encoder import fidelity
    from slimkit.llm.load import load_encoder

    st, tok = load_encoder(model)
    ref, _ = load_encoder(reference)
    _describe(ref, st)
    typer.echo(f"{model} against {reference}: {fidelity(st, ref, tok, held)}")
    if speed:
        from slimkit.measure import measure_latency_interleaved

        batch = dict(tok(held[:1], return_tensors="pt", padding=True))
        ref_ms, ms = (r.ms for r in measure_latency_interleaved([ref, st], batch, threads=threads))
        typer.echo(f"latency, one sentence: {reference} {ref_ms:.2f} ms, {model} {ms:.2f} ms "
                   f"({ref_ms / ms:.2f}x; median of interleaved rounds in this process, {threads} threads)")
