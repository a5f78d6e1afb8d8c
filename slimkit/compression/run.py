"""`compress`: one call from a trained model to a measured-faster one within a quality floor.

Steps, in order (each shows progress):

1. profile the dense model: MACs, parameters, validation metrics, the floor's value;
2. build the depth+width mixes reaching the target and time them (search.py), fastest first;
3. recover each mix by a short recovery on the engine, fastest first, and keep the first that
   holds the validation floor; when none does, the best-scoring mix is recovered fully and kept if
   it holds the floor then (the short recovery ranks mixes; a language model needs the full one
   to come back), else the run is refused, naming that mix and both of its scores;
4. recover the chosen mix fully (more steps from where its short recovery ended);
5. evaluate it, and the dense model, on the test split once;
6. time it against the dense model with the deciding timer, in one run: a result not measured
   faster is refused (`NotFasterError`), or with `keep_slower` returned flagged `faster=False`;
7. with `out`, save the model (rebuild.py: a Hugging Face folder, or a checkpoint that reloads with
   the dense builder) and the report (report.py, naming what was kept intact and why) through
   slimkit's output rules.

Recovery is KD from the dense model by default; `recovery="ce"` trains on labels alone.
`recover_chosen` repeats steps 3-4 on the chosen cut of a finished run with other settings (the
same structure and starting weights, the same steps): the control that shows what KD adds.

Everything random is seeded from `seed`: the same seed and data give the same structure and
weights, provided the timer measures the same order of speeds (a timer is injectable for that;
the report records every measured time).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from slimkit.compression.cutters import (
    Cutter,
    EncoderCutter,
    StructuredCutter,
    Timer,
    check_cuttable,
    deciding_timer,
    is_encoder,
)
from slimkit.compression.rebuild import check_rebuild, plan_rebuild
from slimkit.compression.recovery import (
    calibration_batches,
    check_recovery,
    check_teacher_outputs,
    class_labels,
    recover,
    recovery_teacher,
    training_record,
)
from slimkit.compression.result import CompressReport, CompressResult, Compressed, Dense, RefusedError
from slimkit.compression.search import check_reachable, params_of, search
from slimkit.compression.settings import (
    CompressSettings,
    floor_metric,
    looser_floor,
    parse_floor,
    parse_target,
)
from slimkit.distill import Task, classification, evaluate
from slimkit.distill.cache import TeacherOutputs
from slimkit.distill.train_data import batches_of, head
from slimkit.errors import SlimkitError
from slimkit.families import engine_parts
from slimkit.measure import count_macs
from slimkit.report_html import provenance


class NotFasterError(SlimkitError):
    """The compressed model did not measure faster than the dense one; nothing was saved."""


def make_settings(target: str, floor: Any, seed: int, settings: CompressSettings | None, overrides: dict) -> CompressSettings:
    """The run's settings; bad values become one SlimkitError line (pydantic's first complaint)."""
    parse_target(target)
    if not callable(floor):
        parse_floor(floor)
    base = settings.model_dump() if settings is not None else {}
    values = {**base, **overrides, "target": target, "seed": seed,
              "floor": floor if not callable(floor) else base.get("floor", "-1pt")}
    try:
        return CompressSettings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SlimkitError(f"compress setting {'.'.join(map(str, err['loc'])) or '?'}: {err['msg']}") from None


def _score(model: nn.Module, data: Any, task: Task, teacher: nn.Module, batch_size: int) -> dict[str, float]:
    return evaluate(model, data, task, teacher, batch_size=batch_size)


def compress(model: nn.Module, train: Any, val: Any, test: Any = None, task: Task | None = None,
             target: str = "latency=0.5x", floor: Any = "-1pt", example: Any = None, out: str | Path | None = None,
             seed: int = 0, settings: CompressSettings | None = None, cutter: Cutter | None = None,
             timer: Timer | None = None, timing_method: str | None = None, overwrite: bool = False,
             progress: bool = True, command: str = "slimkit.compress()", inputs: tuple = (), export_onnx: bool = False,
             builder: Any = None, teacher_outputs: torch.Tensor | TeacherOutputs | None = None,
             processor: Any = None, data_how: str | None = None, notes: list[str] | None = None,
             recipe: dict | None = None, **overrides) -> CompressResult:
    """Compress `model` to `target` keeping the validation metric of `task` above `floor`; see the module docstring.

    Data are what the engine takes (slimkit.distill.train_data): a Split, tensors (a tuple, list or
    dict of them), a DataLoader, a list of batches (tuples or dicts), or a function epoch -> batches;
    `test` may be None (no test evaluation). `example` is one input batch (default: the first
    validation batch's inputs). `cutter` is how the model is cut (default: the family's own for a
    task a family owns, slimkit.families.engine_parts: the causal-lm DecoderCutter for causal_lm, the
    WhisperCutter for speech; the hf-encoder family's EncoderCutter for BERT- and ViT-style Hugging
    Face encoders; else slimkit's structured pruner); `timer` times a list of models alike (default:
    the family's, e.g. DecodeTimer or TranscribeTimer, else the deciding timer; `timing_method` then
    says how an injected one measures). Such a family wants its settings too
    (slimkit.families.causal_lm.LM_SETTINGS, slimkit.families.whisper.WHISPER_SETTINGS).
    `export_onnx` also writes model.onnx to `out`, and the report gets the deployment rows: the
    dense and compressed exports checked and timed in ONNX Runtime (deploy.py). An export that fails
    raises ExportFailedError after the model and report were written (the failure recorded).
    `builder` builds the dense model (a callable, (callable, kwargs) or "package.module:callable"):
    it is how a model that is neither slimkit's nor a Hugging Face one is saved, reloaded
    (slimkit.io.load_model(path, builder=...)) and timed in fresh processes (rebuild.py); with
    `out`, such a model without one is refused before any work. `teacher_outputs`: the dense
    model's outputs over in-memory `train`, in its order, when the caller has them already (KD
    recoveries then use them instead of recomputing; the engine checks that they cover `train`).
    `processor`: a Hugging Face model's tokenizer or image processor, saved into its folder.
    `data_how`: how the splits were made (read, carved, with which seed), kept in the report.
    `recipe`: the command and options that reproduce this run (the CLI's), written as recipe.yaml;
    without one the folder's recipe.yaml holds the settings and says the model was a Python object.
    `notes`: sentences for the report (a family's, e.g. why a method it has is not a compress cut).
    An injected timer with a `beside` dict (e.g. prefill times beside decode times) has its last
    call's, the dense-vs-result timing, kept in the report under "timing_beside".
    Further keyword arguments are CompressSettings fields.
    """
    t0 = time.time()
    s = make_settings(target, floor, seed, settings, overrides)
    tgt, flr = parse_target(s.target), parse_floor(floor) if callable(floor) else parse_floor(s.floor)
    if out is not None:
        from slimkit.io.outputs import check_output_folder

        check_output_folder(out, overwrite, inputs)
    if export_onnx:
        if out is None:
            raise SlimkitError("export_onnx writes model.onnx into the run folder: give out= as well")
        from slimkit.export import require_deploy

        require_deploy()
    if timer is not None and not timing_method:
        raise SlimkitError("an injected timer needs timing_method= saying how it measures (it goes in the report)")
    plan = plan_rebuild(model, builder if builder is not None else s.builder, processor)
    if out is not None:
        check_rebuild(model, plan)
    task = task or classification()
    check_recovery(task, s.recovery)
    metric = floor_metric(flr, task)  # the metric the floor names, else the task's first
    torch.manual_seed(s.seed)
    model = model.eval()
    if example is None:
        example = task.split(next(iter(batches_of(val, 1))))[0]
    example = head(example, 1)
    calib_batches = calibration_batches(train, task, s.calib_batches, s.batch_size)
    calib = [x for x, _ in calib_batches]
    family_cutter, family_timer = engine_parts(task.name, model, example, s)  # causal-lm, whisper: their own
    if cutter is None:
        if family_cutter is not None:
            cutter = family_cutter
        elif is_encoder(model):  # the hf-encoder family: calibrated on the batches above
            cutter = EncoderCutter()
        else:
            labels = class_labels(calib_batches) if s.importance == "taylor" else None
            cutter = StructuredCutter(example, s.importance, labels=labels, round_to=s.round_to)
    check_cuttable(cutter, model, calib)
    check_teacher_outputs(teacher_outputs, train)
    if timer is None and family_timer is not None:  # what a user of the family waits for (its timer says)
        timer, timing_method = family_timer, family_timer.method
    if timer is None:
        timer, timing_method = deciding_timer(model, example, s.threads, s.timing_rounds, s.timing_passes, plan)
    intact_of = getattr(cutter, "intact", None)
    kept_intact = intact_of(model) if intact_of is not None else {"modules": {}, "groups": {}}

    dense_val = _score(model, val, task, model, s.batch_size)
    floor_value = flr.value(dense_val, metric.name, metric.higher_is_better)
    if not metric.meets(dense_val[metric.name], floor_value):
        raise SlimkitError(f"the floor {metric.name} {'>=' if metric.higher_is_better else '<='} {floor_value:.4g} is "
                           f"stricter than the dense model's own validation {metric.name} "
                           f"{dense_val[metric.name]:.4g}: no cut can hold it; set a floor relative to dense, e.g. -1pt")
    check_reachable(model, cutter, example, tgt, calib, s.max_blocks)
    dense_macs, dense_params = count_macs(model, example), params_of(model)
    stages = tqdm(total=7, initial=1, desc="compress", disable=not progress, leave=False)  # 1: the profile above
    stages.set_postfix_str("2 search")
    found = search(model, cutter, example, tgt, calib, s, timer, progress)
    cands = found.candidates
    stages.update(1)
    stages.set_postfix_str("3 recover mixes")
    recovered: dict[int, nn.Module] = {}
    curves: dict[int, list] = {}
    teacher = recovery_teacher(model, train, task, s, progress, teacher_outputs)

    def try_mix(i: int) -> bool:
        c = cands[i]
        curves[i] = []
        rec = recover(c.model, teacher, train, task, s, s.search_steps, f"mix {c.label}", progress,
                      curves[i])
        recovered[i] = rec
        c.val = _score(rec, val, task, model, s.batch_size)[metric.name]
        c.held = metric.meets(c.val, floor_value)
        if progress:  # the bars are transient: each tried mix leaves a line saying how it scored
            tqdm.write(f"mix {i + 1}/{len(cands)} ({c.label}, latency "
                       f"{c.timed_share:.2f}x): val {metric.name} {c.val:.4g} "
                       f"{'holds' if c.held else 'misses'} the floor {floor_value:.4g}")
        return c.held

    chosen_i = next((i for i in range(len(cands)) if try_mix(i)), None)  # fastest first
    choice = "the fastest mix holding the floor after its short recovery"
    common = dict(task=task.name, metric=metric.name, higher_is_better=metric.higher_is_better, target=tgt.text,
                  floor=flr.text, floor_value=floor_value, timing=timing_method, cutter=cutter.name,
                  kept_intact=kept_intact, settings=s.model_dump(mode="json"),
                  data=data_how or "as given to compress()", notes=list(notes or []))
    final, full_val = None, None
    tried = [i for i in range(len(cands)) if cands[i].val is not None]  # all of them when none held
    best_i = max(tried, key=lambda i: cands[i].val if metric.higher_is_better else -cands[i].val)
    if chosen_i is None and s.recover_steps > 0:
        # The short recovery ranks the mixes; where it is much shorter than the full one (a language model's
        # 30 steps against 400) no mix may hold yet. The best-scoring mix then gets the full recovery, and it
        # is the result only if it holds the floor after it.
        stages.set_postfix_str("4 full recovery of the best-scoring mix")
        final = recover(recovered[best_i], teacher, train, task, s, s.recover_steps, "full recovery", progress,
                        curves[best_i])
        final_val = _score(final, val, task, model, s.batch_size)
        full_val = final_val[metric.name]
        held = metric.meets(full_val, floor_value)
        if progress:
            tqdm.write(f"no mix held the floor after {s.search_steps} steps; the best-scoring "
                       f"({cands[best_i].label}) after {s.search_steps + s.recover_steps}: "
                       f"val {metric.name} {full_val:.4g} {'holds' if held else 'misses'} the floor "
                       f"{floor_value:.4g}")
        if held:
            chosen_i = best_i
            choice = (f"no mix held the floor after its short recovery ({s.search_steps} steps); the best-scoring one "
                      f"held it after the full recovery")
    if chosen_i is None:
        best = cands[best_i]
        after = (f"{best.val:.4g} after {s.search_steps} {s.recovery.upper()} steps"
                 + (f" and {full_val:.4g} after {s.search_steps + s.recover_steps}" if full_val is not None else ""))
        why = (f"no cut that reaches {tgt.text} holds the floor {metric.name} "
               f"{'>=' if metric.higher_is_better else '<='} {floor_value:.4g}: the best of "
               f"{len(cands)} mixes ({best.label}) scores {after}; loosen the "
               f"floor (e.g. {looser_floor(metric.name)}) or the target, or raise recover_steps")
        stages.close()
        raise RefusedError(why, CompressReport(  # what was measured; nothing is written (see RefusedError)
            refused=why, **common, dense=Dense(macs=dense_macs, params=dense_params, ms_search=found.dense_ms, val=dense_val),
            block_ranking=found.block_ranking, candidates=[c.as_dict() for c in cands], chosen=None,
            candidates_tried=len(cands), provenance=provenance(s.threads), wall_seconds=time.time() - t0))
    chosen = cands[chosen_i]
    stages.update(1)
    if final is None:
        stages.set_postfix_str("4 full recovery")
        final = recover(recovered[chosen_i], teacher, train, task, s, s.recover_steps, "full recovery", progress,
                        curves[chosen_i])
        final_val = _score(final, val, task, model, s.batch_size)
    stages.update(1)
    stages.set_postfix_str("5 test")
    dense_test = _score(model, test, task, model, s.batch_size) if test is not None else {}
    final_test = _score(final, test, task, model, s.batch_size) if test is not None else {}
    stages.update(1)
    stages.set_postfix_str("6 timing")
    dense_ms, final_ms = timer([model, final])
    beside = getattr(timer, "beside", None)
    faster = final_ms < dense_ms
    stages.update(1)
    final_macs = count_macs(final, example)
    report = CompressReport(
        **common, rebuild={"kind": plan.kind, "builder": plan.spec, "kwargs": plan.kwargs or {}},
        dense=Dense(macs=dense_macs, params=dense_params, ms=dense_ms, ms_search=found.dense_ms, val=dense_val,
                    test=dense_test),
        block_ranking=found.block_ranking, candidates=[c.as_dict() for c in cands], chosen=chosen_i, choice=choice,
        result=Compressed(macs=final_macs, params=params_of(final), ms=final_ms, latency_share=final_ms / dense_ms,
                          speedup=dense_ms / final_ms, macs_reduction=dense_macs / max(1, final_macs), val=final_val,
                          test=final_test, faster=faster,
                          meets_target=tgt.met(final_ms / dense_ms if tgt.kind == "latency" else
                                               chosen.share(tgt, dense_macs, dense_params)),
                          val_holds_floor=metric.meets(final_val[metric.name], floor_value)),
        candidates_tried=sum(c.val is not None for c in cands),
        training=training_record(s, metric.name, curves[chosen_i], [
            (s.search_steps, chosen.val), (s.search_steps + s.recover_steps, final_val[metric.name])]),
        provenance=provenance(s.threads),
        timing_beside={"models": ["dense", "compressed"], **beside} if isinstance(beside, dict) and beside else None)
    if not faster and not s.keep_slower:
        stages.close()
        raise NotFasterError(f"the compressed model measured {final_ms:.3f} ms against the dense model's {dense_ms:.3f} "
                             f"ms ({timing_method}): it is not faster here, so nothing is kept; try a latency target, "
                             f"more blocks (max_blocks), or keep_slower=True to inspect it")
    result = CompressResult(final, report, chosen, cands, faster, settings=s)
    report.wall_seconds = time.time() - t0
    onnx_bytes, onnx_error = _deploy(export_onnx, model, final, example, test, val, task, report, s, stages)
    if out is not None:
        from slimkit.compression.report import write_result

        result.out = write_result(out, result, example, plan, overwrite=overwrite, inputs=inputs, command=command,
                                  onnx=onnx_bytes, recipe=recipe)
        report.wall_seconds = time.time() - t0
    if onnx_error:
        from slimkit.compression.deploy import ExportFailedError

        stages.close()
        raise ExportFailedError(f"{onnx_error}; the compressed model and its report were still written to {out} "
                                f"(without model.onnx; report.json records the failure under 'onnx'): export it "
                                f"once the cause is fixed with `slimkit export`", result)
    stages.update(1)
    stages.close()
    return result


def _deploy(export_onnx: bool, dense: nn.Module, final: nn.Module, example: Any, test: Any, val: Any, task: Task,
            report: CompressReport, s: CompressSettings, stages: Any) -> tuple[bytes | None, str | None]:
    """With `export_onnx`: (the compressed model's ONNX bytes, None), or (None, the failure's one line);
    report.onnx gets the deployment section or the error. The failure does not raise here, so the
    compressed model is still written (compress never loses a finished run to its export)."""
    if not export_onnx:
        return None, None
    from slimkit.compression.deploy import export_and_time

    stages.set_postfix_str("7 export")
    data, split = (test, "test") if test is not None else (val, "validation")
    try:
        data_bytes, section = export_and_time(dense, final, example, data, split, task, report.result, s.threads,
                                              s.timing_rounds, s.batch_size)
    except SlimkitError as exc:
        report.onnx = {"error": str(exc)}
        return None, str(exc)
    report.deployment = section.pop("deployment")  # where `slimkit export`'s report.json has its rows
    report.onnx = section
    return data_bytes, None


def recover_chosen(result: CompressResult, dense: nn.Module, train: Any, task: Task | None = None,
                   progress: bool = True, val: Any = None, training: dict | None = None, **overrides) -> nn.Module:
    """The chosen cut of `result` recovered again as `compress` recovered it, with settings changed.

    It starts from the same structure and weights (the cut before any recovery) and runs the same
    two phases: `search_steps`, then `recover_steps` more from there. With `recovery="ce"` this is
    the control for KD: everything but the loss is the same. `overrides` are CompressSettings
    fields; `dense` and `train` must be what `result` was compressed from. `training`, a dict, is
    filled as compress fills report.training (the loss at every step; with `val`, the
    validation metric after each phase), so the control's curve can be drawn beside KD's.
    """
    if result.settings is None or result.chosen.model is None:
        raise SlimkitError("this result does not carry its chosen cut and settings; pass what compress() returned")
    s = result.settings
    s = make_settings(s.target, s.floor, s.seed, s, overrides)
    task = task or classification()
    check_recovery(task, s.recovery)
    teacher = recovery_teacher(dense, train, task, s, progress)
    c, curve, metric = result.chosen, [], result.report.metric
    short = recover(c.model, teacher, train, task, s, s.search_steps, f"mix {c.label} "
                    f"({s.recovery})", progress, curve)
    full = recover(short, teacher, train, task, s, s.recover_steps, f"full recovery ({s.recovery})", progress, curve)
    if training is not None:
        vals = [(n, _score(m, val, task, dense, s.batch_size)[metric] if val is not None else None)
                for n, m in ((s.search_steps, short), (s.search_steps + s.recover_steps, full))]
        training.update(training_record(s, metric, curve, vals))
    return full
