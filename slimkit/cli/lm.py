"""The causal-lm family on the verbs: `slimkit prune | distill | eval` of Hugging Face causal LMs.

- prune: one-shot zeros (magnitude, wanda, sparsegpt; --ratio or --nm), or structured cuts that
  leave a smaller dense model (--blocks decoder layers by block influence, then --ffn neurons and
  --heads whole KV groups);
- distill: KD recovery of a cut model from its dense teacher (top-k teacher logits cached once,
  plus next-token CE);
- eval: perplexity with its protocol, and measured speed with --speed.

Every perplexity printed carries its protocol; models are saved atomically with the recipe.yaml
that replays the command. The verbs (slimkit.cli.prune, .distill, .evaluate) check the options
and pass only what this family reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from slimkit.cli.options import check_out, result_files
from slimkit.errors import SlimkitError, check_count, check_sparsity

SPARSE_NOTE = "unstructured/N:M zeros stay in dense matrices and give no CPU speed-up"


PPL_COLUMNS = ["model", "perplexity", "x dense", "protocol"]


def perplexity_table(rows: list[tuple[str, object]], dense=None) -> list[list]:
    """Print label, perplexity, ratio to dense and the protocol for each row; return the rows (for the report)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="perplexity")
    for col in PPL_COLUMNS:
        table.add_column(col)
    out = []
    for label, ppl in rows:
        ratio = ppl.value / dense.value if dense is not None else None
        table.add_row(label, f"{ppl.value:.4g}", f"{ratio:.3g}" if ratio is not None else "-", ppl.protocol)
        out.append([label, ppl.value, ratio if ratio is not None else "-", ppl.protocol])
    Console(width=max(120, Console().width)).print(table)
    return out


def check_windows(seq_len: int, eval_tokens: int, samples: int = 1, texts: tuple[str, ...] = ()) -> None:
    """Token-window options and the texts they are cut from, checked before any model is loaded."""
    check_count(samples, "--samples")
    check_count(seq_len, "--seq-len", 2)
    check_count(eval_tokens, "--eval-tokens", 0)
    if 0 < eval_tokens < seq_len:
        raise SlimkitError(f"--eval-tokens {eval_tokens} is less than one window of --seq-len {seq_len}; pass at least "
                           f"{seq_len}, or 0 to skip evaluation")
    from slimkit.data.text import check_text

    for text in texts:
        check_text(text)


def _eval_windows(tok, eval_data: str, eval_tokens: int, seq_len: int):
    from slimkit.data.text import eval_windows

    return eval_windows(tok, eval_data, eval_tokens, seq_len) if eval_tokens else None


def prune_oneshot(model: str, out: Path, overwrite: bool, method: str, ratio: float, nm: str | None, data: str,
                  samples: int, seq_len: int, eval_data: str, eval_tokens: int, seed: int, stream: bool,
                  recipe: dict, allocation: str = "uniform") -> None:
    """One-shot unstructured or N:M zeros in every Linear of the decoder blocks."""
    check_windows(seq_len, eval_tokens, samples, texts=(data, eval_data))
    from slimkit.llm.load import load_causal_lm, save_pretrained_atomic
    from slimkit.llm.oneshot import check_oneshot_args, prune_oneshot as prune
    from slimkit.llm.perplexity import perplexity
    from slimkit.data.text import calibration_windows

    _, pattern = check_oneshot_args(method, ratio, nm, "row", allocation, names=("--method", "--ratio"))
    if stream and allocation != "uniform":
        raise SlimkitError("--allocation owl measures every block of the dense model before pruning, which --stream "
                           "(one block in memory at a time) does not do; leave out --stream or use uniform allocation")
    check_out(out, overwrite, model)
    if stream:
        _prune_streamed(model, method, ratio, nm, pattern, out, data, samples, seq_len, eval_data, eval_tokens, seed,
                        overwrite, recipe)
        return
    lm, tok = load_causal_lm(model)
    cal = calibration_windows(tok, data, samples, seq_len, seed) if method != "magnitude" else None
    ev = _eval_windows(tok, eval_data, eval_tokens, seq_len)
    dense = perplexity(lm, ev, eval_data, progress=True) if ev is not None else None
    result = prune(lm, cal, method, ratio, pattern, allocation=allocation)
    typer.echo(f"{method} {'N:M ' + nm if nm else f'{ratio:.0%}'}: realised sparsity {1 - result.kept_total:.4f} "
               f"of decoder Linear weights in {result.details['seconds']:.1f} s "
               f"(calibration: {result.details['calibration']})")
    alloc = result.details["allocation"]
    if alloc["kind"] == "owl":
        per_block = ", ".join(f"{i}: {v:.3f}" for i, v in alloc["sparsity"].items())
        typer.echo(f"OWL allocation (m {alloc['m']:g}, lambda {alloc['lambda']:g}), sparsity per block: {per_block}")
    rows = []
    if ev is not None:
        rows = perplexity_table([("dense", dense), (f"{method} {nm or ratio}",
                                                    perplexity(lm, ev, eval_data, progress=True))], dense)
    typer.echo(f"note: {SPARSE_NOTE}")
    header = (f"{model}: {method} {'N:M ' + nm if nm else f'{ratio:.0%}'}"
              f"{', OWL allocation' if alloc['kind'] == 'owl' else ''}, realised sparsity "
              f"{1 - result.kept_total:.4f} of decoder Linear weights")
    files = result_files(recipe, header, PPL_COLUMNS, rows, [SPARSE_NOTE])
    saved = save_pretrained_atomic(lm, tok, out, overwrite, [model], files, command="slimkit prune")
    typer.echo(f"saved {saved}")


def _prune_streamed(model: str, method: str, ratio: float, nm: str | None, pattern, out: Path, data: str,
                    samples: int, seq_len: int, eval_data: str, eval_tokens: int, seed: int, overwrite: bool,
                    recipe: dict) -> None:
    """`prune --stream`: prune from the checkpoint folder block by block, then evaluate from disk.

    Pruning holds one block at a time. Evaluation needs whole models, so the dense and the pruned
    model are loaded one after the other (never both at once), the pruned one from --out: what is
    measured is what was saved.
    """
    from slimkit.io.hf_folder import offline
    from slimkit.llm.load import load_causal_lm, resolve
    from slimkit.llm.perplexity import perplexity
    from slimkit.llm.streaming import prune_oneshot_folder
    from slimkit.data.text import calibration_windows

    src = resolve(model)
    offline()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, KeyError) as exc:
        raise SlimkitError(f"cannot load the tokenizer of {src}: {str(exc).splitlines()[0]}") from None
    cal = calibration_windows(tok, data, samples, seq_len, seed) if method != "magnitude" else None
    ev = _eval_windows(tok, eval_data, eval_tokens, seq_len)
    del tok  # from here on only token ids are needed: keep memory for the blocks
    header = f"{model}: {method} {'N:M ' + nm if nm else f'{ratio:.0%}'}, streamed block by block"
    result = prune_oneshot_folder(src, out, cal, method, ratio, pattern, overwrite=overwrite,
                                  extra_files=result_files(recipe, header, ["model"], [], [
                                      SPARSE_NOTE, "perplexity: printed by the command after the folder was "
                                      "written (evaluation reloads the saved model)"]))
    typer.echo(f"{method} {'N:M ' + nm if nm else f'{ratio:.0%}'}: realised sparsity {1 - result.kept_total:.4f} "
               f"of decoder Linear weights in {result.details['seconds']:.1f} s, streamed block by block "
               f"(calibration: {result.details['calibration']})")
    if ev is not None:
        lm, _ = load_causal_lm(src)
        dense = perplexity(lm, ev, eval_data, progress=True)
        del lm
        lm, _ = load_causal_lm(out)
        perplexity_table([("dense", dense), (f"{method} {nm or ratio}", perplexity(lm, ev, eval_data, progress=True))],
                         dense)
    typer.echo(f"note: {SPARSE_NOTE}")
    typer.echo(f"saved {out}")


def kv_groups_of(heads: float, n_kv: int) -> int:
    """--heads (a fraction) as whole KV groups of `n_kv`: a group takes its query heads with it, so a
    causal LM loses heads in whole groups; a fraction that rounds to no group is refused."""
    check_sparsity(heads, "--heads")
    groups = round(heads * n_kv)
    if heads > 0 and groups == 0:
        raise SlimkitError(f"--heads {heads:g} of {n_kv} KV groups removes none (heads leave in whole KV groups); "
                           f"pass at least {1 / n_kv:.3g}")
    return groups


def prune_structured(model: str, out: Path, overwrite: bool, blocks: int, ffn: float, heads: float, data: str,
                     samples: int, seq_len: int, eval_data: str, eval_tokens: int, seed: int, recipe: dict) -> None:
    """Remove `blocks` decoder layers (lowest block influence), then `ffn` of the FFN neurons and
    `heads` of the KV groups of every layer; the result is a smaller dense model that reloads with
    from_pretrained."""
    check_count(blocks, "--blocks", 0)
    check_sparsity(ffn, "--ffn")
    check_windows(seq_len, eval_tokens, samples, texts=(data, eval_data))
    from slimkit.llm.depth import check_depth_cut, prune_depth
    from slimkit.llm.load import load_causal_lm, load_config, save_pretrained_atomic
    from slimkit.llm.perplexity import perplexity
    from slimkit.data.text import calibration_windows
    from slimkit.llm.width import check_width_cut, prune_width

    check_out(out, overwrite, model)
    config = load_config(model)
    check_depth_cut(config.num_hidden_layers, blocks)
    groups = kv_groups_of(heads, config.num_key_value_heads)
    check_width_cut(config.num_key_value_heads, ffn, groups)
    lm, tok = load_causal_lm(model)
    cal = calibration_windows(tok, data, samples, seq_len, seed)
    ev = _eval_windows(tok, eval_data, eval_tokens, seq_len)
    dense = perplexity(lm, ev, eval_data, progress=True) if ev is not None else None
    params = sum(p.numel() for p in lm.parameters())
    if blocks:
        res = prune_depth(lm, cal, blocks)
        typer.echo(f"removed layers {', '.join(res.removed_blocks)} "
                   f"(block influence {[round(res.scores[b], 4) for b in res.removed_blocks]})")
    if ffn or groups:
        cfg = prune_width(lm, cal, ffn, groups).model.config
        typer.echo(f"intermediate size {cfg.intermediate_size}, KV groups {cfg.num_key_value_heads}, query heads "
                   f"{cfg.num_attention_heads}")
    typer.echo(f"params {params / 1e6:.1f} M -> {sum(p.numel() for p in lm.parameters()) / 1e6:.1f} M")
    label = f"-{blocks} layers, -{ffn:g} FFN, -{groups} KV groups"
    rows = []
    if ev is not None:
        rows = perplexity_table([("dense", dense), (label, perplexity(lm, ev, eval_data, progress=True))], dense)
    files = result_files(recipe, f"{model}: {label} (not recovered: slimkit distill recovers it)", PPL_COLUMNS, rows,
                         params={"dense": params, "pruned": sum(p.numel() for p in lm.parameters())})
    saved = save_pretrained_atomic(lm, tok, out, overwrite, [model], files, command="slimkit prune")
    typer.echo(f"saved {saved} (recover it with slimkit distill {saved} --teacher {model})")


def evaluate(model: str, reference: str | None, data: str, eval_tokens: int, seq_len: int, speed: bool) -> None:
    """Perplexity of a model (and of a reference), with the protocol; with `speed`, measured speed."""
    check_count(seq_len, "--seq-len", 2)
    check_count(eval_tokens, "--eval-tokens", seq_len)
    from slimkit.llm.load import load_causal_lm
    from slimkit.llm.perplexity import perplexity
    from slimkit.data.text import check_text

    check_text(data)
    lm, tok = load_causal_lm(model)
    ev = _eval_windows(tok, data, eval_tokens, seq_len)
    rows, dense = [], None
    if reference:
        ref, _ = load_causal_lm(reference)
        dense = perplexity(ref, ev, data, progress=True)
        rows.append((reference, dense))
        del ref
    rows.append((model, perplexity(lm, ev, data, progress=True)))
    perplexity_table(rows, dense)
    if speed:
        from slimkit.llm.speed import measure_speed

        rep = measure_speed(lm)
        typer.echo(f"params {rep.params:,} (non-zero {rep.nonzero_params:,}), MACs/token {rep.macs_per_token:,}, "
                   f"prefill {rep.prefill_tokens_per_s:.0f} tok/s, decode {rep.decode_tokens_per_s:.1f} tok/s "
                   f"({rep.threads} threads, {rep.device})")
        if rep.note:
            typer.echo(f"note: {rep.note}")


def distill(student: str, teacher: str, out: Path, overwrite: bool, data: str, samples: int, seq_len: int,
            epochs: int, lr: float, batch_size: int, top_k: int, ce_weight: float, hidden_weight: float,
            minutes: float | None, hold_zeros: bool, eval_data: str, eval_tokens: int, seed: int, checkpoint,
            amp: str, recipe: dict, parallel: str = "ddp") -> None:
    """KD recovery of a cut model against its dense teacher (teacher top-k logits cached once)."""
    check_windows(seq_len, eval_tokens, samples, texts=(data, eval_data))
    from slimkit.distill.ddp import is_main_process
    from slimkit.llm.load import load_causal_lm, save_pretrained_atomic
    from slimkit.llm.perplexity import perplexity
    from slimkit.llm.recover import RecoveryConfig, recover
    from slimkit.data.text import calibration_windows

    check_out(out, overwrite, student, teacher)
    cfg = RecoveryConfig(epochs=epochs, batch_size=batch_size, lr=lr, top_k=top_k, ce_weight=ce_weight,
                         hidden_weight=hidden_weight, max_minutes=minutes, seed=seed, amp=amp, parallel=parallel)
    cfg.terms(), cfg.train_config()  # bad settings fail here, before any model loads
    st, tok = load_causal_lm(student)
    te, _ = load_causal_lm(teacher)
    train = calibration_windows(tok, data, samples, seq_len, seed)
    ev = _eval_windows(tok, eval_data, eval_tokens, seq_len)
    rows, dense = [], None
    if ev is not None:
        dense = perplexity(te, ev, eval_data, progress=True)
        rows += [("teacher", dense), ("student before", perplexity(st, ev, eval_data, progress=True))]
    t0 = time.perf_counter()
    from slimkit.masks import zero_masks

    rep = recover(st, te, train, cfg, masks=(zero_masks(st) or None) if hold_zeros else None, checkpoint=checkpoint)
    if not is_main_process():
        return  # under torchrun, rank 0 reports and saves
    if parallel == "fsdp":  # the student stayed sharded; rank 0 holds its gathered weights
        from slimkit.llm.load import load_causal_lm_weights

        st, _ = load_causal_lm_weights(student, rep.full_weights)
    resumed = f", resumed from step {rep.resumed_from_step}" if rep.resumed_from_step else ""
    typer.echo(f"{rep.steps} steps in {time.perf_counter() - t0:.0f} s (teacher cache "
               f"{'reused' if rep.cache_reused else f'built in {rep.teacher_seconds:.0f} s'}{resumed})")
    printed = []
    if ev is not None:
        rows.append(("student after KD", perplexity(st, ev, eval_data, progress=True)))
        printed = perplexity_table(rows, dense)
    files = result_files(recipe, f"{student} recovered from {teacher}: {rep.steps} KD steps", PPL_COLUMNS, printed,
                         recovery=rep.as_dict())
    saved = save_pretrained_atomic(st, tok, out, overwrite, [student, teacher], files, command="slimkit distill")
    typer.echo(f"saved {saved}")

