"""`slimkit llm ...`: one-shot, depth and width pruning, evaluation and KD recovery of HF LMs,
and pruning plus embedding distillation of sentence encoders.

Each command prints a perplexity table whose every number carries its protocol, and saves the
model atomically (written to a temporary folder beside --out, then renamed).
Bad input raises SlimkitError, which becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import typer

from slimkit.cli import clean_errors
from slimkit.errors import SlimkitError, check_count, check_nonnegative, check_positive, check_sparsity

app = typer.Typer(help="Compress Hugging Face causal LMs: one-shot, depth and width pruning, KD recovery.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

MODEL_HELP = "built-in 'smollm2' or a local Hugging Face folder"


def _table(rows: list[tuple[str, object]], dense=None) -> None:
    """Print label, perplexity, ratio to dense and the protocol for each row."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="perplexity")
    for col in ("model", "ppl", "x dense", "protocol"):
        table.add_column(col)
    for label, ppl in rows:
        ratio = f"{ppl.value / dense.value:.3g}" if dense is not None else "-"
        table.add_row(label, f"{ppl.value:.4g}", ratio, ppl.protocol)
    Console(width=max(120, Console().width)).print(table)


def _eval_setup(tok, eval_text: str, eval_tokens: int, seq_len: int):
    from slimkit.llm.text import eval_windows

    return eval_windows(tok, eval_text, eval_tokens, seq_len)


def _check_windows(seq_len: int, eval_tokens: int, samples: int = 1, samples_option: str = "--calib-samples",
                   texts: tuple[str, ...] = ()) -> None:
    """Token-window options and the texts they are cut from, checked before any model is loaded."""
    check_count(samples, samples_option)
    check_count(seq_len, "--seq-len", 2)
    check_count(eval_tokens, "--eval-tokens", 0)
    if 0 < eval_tokens < seq_len:
        raise SlimkitError(f"--eval-tokens {eval_tokens} is less than one window of --seq-len {seq_len}; pass at least "
                           f"{seq_len}, or 0 to skip evaluation")
    from slimkit.llm.text import check_text

    for text in texts:
        check_text(text)


OVERWRITE_HELP = "replace an earlier slimkit result in --out (never a folder slimkit did not write)"


def _check_out(out: Path, overwrite: bool, *models: str) -> None:
    """Refuse --out before any model loads (slimkit.io.outputs' rules); model folders count as inputs."""
    from slimkit.io.outputs import check_output_folder

    check_output_folder(out, overwrite, [m for m in models if m and Path(m).expanduser().exists()])


CHECKPOINT_HELP = ("folder for the training state; a run killed at any point resumes from it when started again "
                   "with the same settings")
AMP_HELP = "autocast: auto (bf16/fp16 on CUDA, off on CPU), off, bf16 or fp16 (CUDA only)"
PARALLEL_HELP = ("under torchrun: 'ddp' (a whole copy per process) or 'fsdp' (student, gradients, optimizer state and a "
                 "live teacher sharded across processes; checkpoints sharded; see docs/distill.md)")


def _train_checks(checkpoint_dir: Optional[Path], every: int, amp: str):
    """The engine's checkpoint settings, with --amp and --checkpoint-every checked before any model loads."""
    from slimkit.distill.config import CheckpointConfig

    if amp not in ("auto", "off", "bf16", "fp16"):
        raise SlimkitError(f"--amp must be auto, off, bf16 or fp16, got {amp!r}")
    if every < 1:
        raise SlimkitError(f"--checkpoint-every must be >= 1, got {every}")
    if checkpoint_dir is not None and checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise SlimkitError(f"--checkpoint-dir {checkpoint_dir} exists and is not a folder")
    return CheckpointConfig(checkpoint_dir, every_steps=every) if checkpoint_dir is not None else None


@app.command()
@clean_errors
def prune(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    method: str = typer.Option("sparsegpt", help="magnitude, wanda or sparsegpt"),
    sparsity: float = typer.Option(0.5, help="fraction of each Linear to zero, in [0, 1)"),
    nm: Optional[str] = typer.Option(None, help="N:M pattern such as 2:4 (overrides --sparsity)"),
    out: Path = typer.Option(..., help="folder for the pruned model"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    calib_text: str = typer.Option("emma", help="calibration text: built-in name or a file"),
    calib_samples: int = typer.Option(32, help="calibration windows"),
    seq_len: int = typer.Option(512, help="tokens per window (calibration and evaluation)"),
    eval_text: str = typer.Option("prideprejudice", help="evaluation text"),
    eval_tokens: int = typer.Option(16384, help="evaluate on the first N tokens (0 skips evaluation)"),
    seed: int = typer.Option(0, help="seed for the calibration draw"),
    stream: bool = typer.Option(False, "--stream/--in-memory",
                                help="read, prune and write one decoder block at a time, for models larger than "
                                     "memory (needs a safetensors folder; evaluation still loads whole models, "
                                     "so pass --eval-tokens 0 when they do not fit)"),
) -> None:
    """One-shot unstructured or N:M pruning of every Linear in the decoder blocks."""
    _check_windows(seq_len, eval_tokens, calib_samples, texts=(calib_text, eval_text))
    from slimkit.llm.load import load_causal_lm, save_pretrained_atomic
    from slimkit.llm.oneshot import METHODS, parse_nm, prune_oneshot
    from slimkit.llm.perplexity import perplexity
    from slimkit.llm.text import calibration_windows

    if method not in METHODS:
        raise SlimkitError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    pattern = parse_nm(nm)
    if pattern is None:
        check_sparsity(sparsity)
    _check_out(out, overwrite, model)
    if stream:
        _prune_streamed(model, method, sparsity, nm, pattern, out, calib_text, calib_samples, seq_len, eval_text,
                        eval_tokens, seed, overwrite)
        return
    lm, tok = load_causal_lm(model)
    cal = calibration_windows(tok, calib_text, calib_samples, seq_len, seed) if method != "magnitude" else None
    ev = _eval_setup(tok, eval_text, eval_tokens, seq_len) if eval_tokens else None
    dense = perplexity(lm, ev, eval_text, progress=True) if ev is not None else None
    result = prune_oneshot(lm, cal, method, sparsity, pattern)
    typer.echo(f"{method} {'N:M ' + nm if nm else f'{sparsity:.0%}'}: realised sparsity {1 - result.kept_total:.4f} "
               f"of decoder Linear weights in {result.details['seconds']:.1f} s "
               f"(calibration: {result.details['calibration']})")
    if ev is not None:
        _table([("dense", dense), (f"{method} {nm or sparsity}", perplexity(lm, ev, eval_text, progress=True))], dense)
    typer.echo("note: unstructured/N:M zeros stay in dense matrices and give no CPU speed-up")
    typer.echo(f"saved {save_pretrained_atomic(lm, tok, out, overwrite, [model], command='llm prune')}")


def _prune_streamed(model: str, method: str, sparsity: float, nm: Optional[str], pattern, out: Path, calib_text: str,
                    calib_samples: int, seq_len: int, eval_text: str, eval_tokens: int, seed: int,
                    overwrite: bool) -> None:
    """`prune --stream`: prune from the checkpoint folder block by block, then evaluate from disk.

    Pruning holds one block at a time. Evaluation needs whole models, so the dense and the pruned
    model are loaded one after the other (never both at once), the pruned one from --out: what is
    measured is what was saved.
    """
    from slimkit.io.hf_folder import offline
    from slimkit.llm.load import load_causal_lm, resolve
    from slimkit.llm.perplexity import perplexity
    from slimkit.llm.streaming import prune_oneshot_folder
    from slimkit.llm.text import calibration_windows

    src = resolve(model)
    offline()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, KeyError) as exc:
        raise SlimkitError(f"cannot load the tokenizer of {src}: {str(exc).splitlines()[0]}") from None
    cal = calibration_windows(tok, calib_text, calib_samples, seq_len, seed) if method != "magnitude" else None
    ev = _eval_setup(tok, eval_text, eval_tokens, seq_len) if eval_tokens else None
    del tok  # from here on only token ids are needed: keep memory for the blocks
    result = prune_oneshot_folder(src, out, cal, method, sparsity, pattern, overwrite=overwrite)
    typer.echo(f"{method} {'N:M ' + nm if nm else f'{sparsity:.0%}'}: realised sparsity {1 - result.kept_total:.4f} "
               f"of decoder Linear weights in {result.details['seconds']:.1f} s, streamed block by block "
               f"(calibration: {result.details['calibration']})")
    if ev is not None:
        lm, _ = load_causal_lm(src)
        dense = perplexity(lm, ev, eval_text, progress=True)
        del lm
        lm, _ = load_causal_lm(out)
        _table([("dense", dense), (f"{method} {nm or sparsity}", perplexity(lm, ev, eval_text, progress=True))], dense)
    typer.echo("note: unstructured/N:M zeros stay in dense matrices and give no CPU speed-up")
    typer.echo(f"saved {out}")


def _remove_and_save(model: str, out: Path, overwrite: bool, calib_text: str, calib_samples: int, seq_len: int,
                     eval_text: str, eval_tokens: int, seed: int, label: str,
                     remove: Callable[[object, object], str], check: Callable[[object], None]) -> None:
    """`check` the cut against the model's config, load, calibrate, evaluate dense, apply `remove` (which returns
    a line to print), evaluate, save."""
    from slimkit.llm.load import load_causal_lm, load_config, save_pretrained_atomic
    from slimkit.llm.perplexity import perplexity
    from slimkit.llm.text import calibration_windows

    _check_out(out, overwrite, model)
    check(load_config(model))
    lm, tok = load_causal_lm(model)
    cal = calibration_windows(tok, calib_text, calib_samples, seq_len, seed)
    ev = _eval_setup(tok, eval_text, eval_tokens, seq_len) if eval_tokens else None
    dense = perplexity(lm, ev, eval_text, progress=True) if ev is not None else None
    typer.echo(remove(lm, cal))
    if ev is not None:
        _table([("dense", dense), (label, perplexity(lm, ev, eval_text, progress=True))], dense)
    typer.echo(f"saved {save_pretrained_atomic(lm, tok, out, overwrite, [model], command='llm ' + label)}")


@app.command()
@clean_errors
def depth(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    remove: int = typer.Option(8, help="number of decoder layers to remove"),
    out: Path = typer.Option(..., help="folder for the pruned model"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    calib_text: str = typer.Option("emma"),
    calib_samples: int = typer.Option(16),
    seq_len: int = typer.Option(512),
    eval_text: str = typer.Option("prideprejudice"),
    eval_tokens: int = typer.Option(16384, help="0 skips evaluation"),
    seed: int = typer.Option(0),
) -> None:
    """Remove the decoder layers with the lowest block influence."""
    check_count(remove, "--remove", 0)
    _check_windows(seq_len, eval_tokens, calib_samples, texts=(calib_text, eval_text))
    from slimkit.llm.depth import check_depth_cut, prune_depth

    def cut(lm, cal) -> str:
        res = prune_depth(lm, cal, remove)
        return (f"removed layers {', '.join(res.removed_blocks)} "
                f"(block influence {[round(res.scores[b], 4) for b in res.removed_blocks]})")

    _remove_and_save(model, out, overwrite, calib_text, calib_samples, seq_len, eval_text, eval_tokens, seed,
                     f"depth -{remove}", cut, lambda config: check_depth_cut(config.num_hidden_layers, remove))


@app.command()
@clean_errors
def width(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    ffn_ratio: float = typer.Option(0.25, help="fraction of FFN neurons to remove in every layer, in [0, 1)"),
    kv_groups: int = typer.Option(0, help="KV groups to remove per layer, each with its query heads"),
    out: Path = typer.Option(..., help="folder for the pruned model"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    calib_text: str = typer.Option("emma"),
    calib_samples: int = typer.Option(16),
    seq_len: int = typer.Option(512),
    eval_text: str = typer.Option("prideprejudice"),
    eval_tokens: int = typer.Option(16384, help="0 skips evaluation"),
    seed: int = typer.Option(0),
) -> None:
    """Remove FFN neurons and whole KV groups (GQA-correct); the result reloads with from_pretrained."""
    check_sparsity(ffn_ratio, "--ffn-ratio")
    check_count(kv_groups, "--kv-groups", 0)
    _check_windows(seq_len, eval_tokens, calib_samples, texts=(calib_text, eval_text))
    from slimkit.llm.width import check_width_cut, prune_width

    def cut(lm, cal) -> str:
        params = sum(p.numel() for p in lm.parameters())
        cfg = prune_width(lm, cal, ffn_ratio, kv_groups).model.config
        kept = sum(p.numel() for p in lm.parameters())
        return (f"intermediate size {cfg.intermediate_size}, KV groups {cfg.num_key_value_heads}, query heads "
                f"{cfg.num_attention_heads}; params {params / 1e6:.1f} M -> {kept / 1e6:.1f} M")

    _remove_and_save(model, out, overwrite, calib_text, calib_samples, seq_len, eval_text, eval_tokens, seed,
                     f"width -{ffn_ratio:g} FFN, -{kv_groups} KV groups", cut,
                     lambda config: check_width_cut(config.num_key_value_heads, ffn_ratio, kv_groups))


@app.command()
@clean_errors
def encoder(
    model: str = typer.Option("minilm", help="built-in 'minilm' or a local Hugging Face BERT-style folder"),
    ffn_ratio: float = typer.Option(0.5, help="fraction of FFN neurons to remove in every layer, in [0, 1)"),
    head_ratio: float = typer.Option(0.25, help="fraction of attention heads to remove in every layer, in [0, 1)"),
    drop_layers: int = typer.Option(0, help="last layers to remove"),
    out: Path = typer.Option(..., help="folder for the pruned, distilled encoder"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    minutes: float = typer.Option(10.0, help="distillation time budget (0 skips distillation)"),
    lr: float = typer.Option(3e-4),
    train: int = typer.Option(3800, help="Emma sentences for calibration and distillation"),
    calib: int = typer.Option(1024, help="of those, sentences for pruning and the least-squares refit"),
    held_out: int = typer.Option(500, help="Pride and Prejudice sentences for the fidelity check"),
    seed: int = typer.Option(0),
    checkpoint_dir: Optional[Path] = typer.Option(None, help=CHECKPOINT_HELP),
    checkpoint_every: int = typer.Option(50, help="optimizer steps between checkpoints (with --checkpoint-dir)"),
    amp: str = typer.Option("auto", help=AMP_HELP),
) -> None:
    """Prune FFN neurons, heads and layers of a sentence encoder, refit, distill, report fidelity, save."""
    check_nonnegative(minutes, "--minutes")
    check_positive(lr, "--lr")
    check_count(drop_layers, "--drop-layers", 0)
    import copy

    from slimkit.distill.ddp import is_main_process
    from slimkit.io.hf_folder import save_hf
    from slimkit.llm.encoder import default_sentences, distill_encoder, fidelity
    from slimkit.llm.encoder_prune import prune_encoder
    from slimkit.llm.load import load_encoder

    _check_out(out, overwrite, model)
    # checked here too (prune_encoder checks again) so bad input fails before the model loads
    check_sparsity(ffn_ratio, "ffn_ratio")
    check_sparsity(head_ratio, "head_ratio")
    if minutes < 0 or train < 1 or held_out < 2 or not 0 < calib <= train:
        raise SlimkitError("need --minutes >= 0, --train >= 1, --held-out >= 2 and 0 < --calib <= --train")
    ckpt = _train_checks(checkpoint_dir, checkpoint_every, amp)
    teacher, tok = load_encoder(model)
    texts, held = default_sentences(train, held_out, seed)
    student = copy.deepcopy(teacher)
    pruned = prune_encoder(student, tok, texts[:calib], ffn_ratio, head_ratio, drop_layers)
    rows = [("pruned + refit", fidelity(student, teacher, tok, held))]
    if minutes > 0:
        info = distill_encoder(student, teacher, tok, texts, epochs=1000, lr=lr, seed=seed, layer_weight=1.0,
                               max_minutes=minutes, checkpoint=ckpt, amp=amp)
        if not is_main_process():
            return  # under torchrun, rank 0 reports and saves
        resumed = f", resumed from step {info['resumed_from_step']}" if info["resumed_from_step"] else ""
        rows.append((f"+ distilled {info['steps']} steps, {info['seconds']:.0f} s{resumed}",
                     fidelity(student, teacher, tok, held)))
    params = (sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters()))
    heads = sorted({k for name, (k, _) in pruned.kept.items() if name.endswith(".attention.self")})
    typer.echo(f"layers {len(student.encoder.layer)}, FFN {student.config.intermediate_size}, heads per layer "
               f"{heads}; params {params[0] / 1e6:.1f} M -> {params[1] / 1e6:.1f} M")
    for label, fid in rows:
        typer.echo(f"{label}: {fid}")
    saved = save_hf(student, out, overwrite, tokenizer=tok, inputs=[model], command="llm encoder")
    typer.echo(f"saved {saved} (reload with slimkit.llm.load_encoder)")


@app.command("eval")
@clean_errors
def evaluate(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    reference: Optional[str] = typer.Option(None, help="model to show as the dense reference"),
    eval_text: str = typer.Option("prideprejudice"),
    eval_tokens: int = typer.Option(16384),
    seq_len: int = typer.Option(512),
    speed: bool = typer.Option(False, help="also measure params, MACs, prefill and decode tokens/s"),
) -> None:
    """Perplexity of a model (and optionally of a reference), with the protocol."""
    check_count(seq_len, "--seq-len", 2)
    check_count(eval_tokens, "--eval-tokens", seq_len)
    from slimkit.llm.load import load_causal_lm
    from slimkit.llm.perplexity import perplexity
    from slimkit.llm.text import check_text

    check_text(eval_text)
    lm, tok = load_causal_lm(model)
    ev = _eval_setup(tok, eval_text, eval_tokens, seq_len)
    rows = []
    dense = None
    if reference:
        ref, _ = load_causal_lm(reference)
        dense = perplexity(ref, ev, eval_text, progress=True)
        rows.append((reference, dense))
        del ref
    rows.append((model, perplexity(lm, ev, eval_text, progress=True)))
    _table(rows, dense)
    if speed:
        from slimkit.llm.speed import measure_speed

        rep = measure_speed(lm)
        typer.echo(f"params {rep.params:,} (non-zero {rep.nonzero_params:,}), MACs/token {rep.macs_per_token:,}, "
                   f"prefill {rep.prefill_tokens_per_s:.0f} tok/s, decode {rep.decode_tokens_per_s:.1f} tok/s "
                   f"({rep.threads} threads, {rep.device})")
        if rep.note:
            typer.echo(f"note: {rep.note}")


@app.command()
@clean_errors
def distill(
    student: str = typer.Option(..., help="pruned model folder"),
    teacher: str = typer.Option("smollm2", help=MODEL_HELP),
    out: Path = typer.Option(..., help="folder for the recovered model"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    train_text: str = typer.Option("emma"),
    samples: int = typer.Option(64, help="training windows"),
    seq_len: int = typer.Option(512),
    epochs: int = typer.Option(1),
    lr: float = typer.Option(1e-4),
    batch_size: int = typer.Option(4),
    top_k: int = typer.Option(64, help="teacher logits cached per position"),
    ce_weight: float = typer.Option(1.0, help="weight of next-token cross-entropy beside the KD (0 = KD alone)"),
    hidden_weight: float = typer.Option(0.0, help="weight of final-hidden-state MSE (0 = off)"),
    max_minutes: Optional[float] = typer.Option(None, help="stop training after this many minutes"),
    hold_zeros: bool = typer.Option(True, help="keep zero weights at zero (unstructured/N:M students)"),
    eval_text: str = typer.Option("prideprejudice"),
    eval_tokens: int = typer.Option(16384, help="0 skips evaluation"),
    seed: int = typer.Option(1),
    checkpoint_dir: Optional[Path] = typer.Option(None, help=CHECKPOINT_HELP),
    checkpoint_every: int = typer.Option(50, help="optimizer steps between checkpoints (with --checkpoint-dir)"),
    amp: str = typer.Option("auto", help=AMP_HELP),
    parallel: str = typer.Option("ddp", help=PARALLEL_HELP),
) -> None:
    """KD recovery of a pruned model against its unpruned teacher (teacher top-k logits cached once)."""
    _check_windows(seq_len, eval_tokens, samples, "--samples", texts=(train_text, eval_text))
    if parallel not in ("ddp", "fsdp"):
        raise SlimkitError(f"--parallel must be ddp or fsdp, got {parallel!r}")
    if parallel == "fsdp":
        from slimkit.distill.fsdp import require_group

        require_group()
    if max_minutes is not None:
        check_positive(max_minutes, "--max-minutes")
    from slimkit.distill.ddp import is_main_process
    from slimkit.llm.load import load_causal_lm, save_pretrained_atomic
    from slimkit.llm.perplexity import perplexity
    from slimkit.llm.recover import RecoveryConfig, recover
    from slimkit.llm.text import calibration_windows

    _check_out(out, overwrite, student, teacher)
    ckpt = _train_checks(checkpoint_dir, checkpoint_every, amp)
    cfg = RecoveryConfig(epochs=epochs, batch_size=batch_size, lr=lr, top_k=top_k, ce_weight=ce_weight,
                         hidden_weight=hidden_weight, max_minutes=max_minutes, seed=seed, amp=amp,
                         parallel=parallel)
    cfg.terms(), cfg.train_config()  # bad settings fail here, before any model loads
    st, tok = load_causal_lm(student)
    te, _ = load_causal_lm(teacher)
    train = calibration_windows(tok, train_text, samples, seq_len, seed)
    ev = _eval_setup(tok, eval_text, eval_tokens, seq_len) if eval_tokens else None
    rows = []
    dense = None
    if ev is not None:
        dense = perplexity(te, ev, eval_text, progress=True)
        rows += [("teacher", dense), ("student before", perplexity(st, ev, eval_text, progress=True))]
    masks = None
    if hold_zeros:
        import torch

        # a Linear counts as pruned when at least 10% of it is zero; stray zeros of the
        # dequantized checkpoint are not worth holding
        masks = {n + ".weight": m.weight != 0 for n, m in st.named_modules()
                 if isinstance(m, torch.nn.Linear) and float((m.weight == 0).float().mean()) >= 0.1} or None
    t0 = time.perf_counter()
    rep = recover(st, te, train, cfg, masks=masks, checkpoint=ckpt)
    if not is_main_process():
        return  # under torchrun, rank 0 reports and saves
    if parallel == "fsdp":  # the student stayed sharded; rank 0 holds its gathered weights
        from slimkit.llm.load import load_causal_lm_weights

        st, _ = load_causal_lm_weights(student, rep.full_weights)
    resumed = f", resumed from step {rep.resumed_from_step}" if rep.resumed_from_step else ""
    typer.echo(f"{rep.steps} steps in {time.perf_counter() - t0:.0f} s (teacher cache "
               f"{'reused' if rep.cache_reused else f'built in {rep.teacher_seconds:.0f} s'}{resumed})")
    if ev is not None:
        rows.append(("student after KD", perplexity(st, ev, eval_text, progress=True)))
        _table(rows, dense)
    typer.echo(f"saved {save_pretrained_atomic(st, tok, out, overwrite, [student, teacher], command='llm distill')}")
