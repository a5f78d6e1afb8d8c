"""`Distiller`: one training loop for every task: KD, hints, pruned-model recovery, plain training.

What batches and outputs mean comes from a `Task` (tasks.py: classification, sequence logits,
causal LMs, embeddings, or the user's own); what the data is comes from train_data.py (in-memory
tensors the engine indexes, or any loader). The loop is written so that a run can be killed at
any moment and resumed to the same result: the data order of every epoch is a pure function of
(seed, epoch), the full state (weights, adapters, optimizer, scheduler, loss scaler, RNG,
position, elapsed time, history) is checkpointed atomically, and resuming replays the epoch's
order from the saved position. The same code runs on one process or under torchrun with
DistributedDataParallel (see `ddp.py` for why results then match) or, with
`TrainConfig(parallel="fsdp")`, with student, optimizer state and teacher sharded by FSDP2 (`fsdp.py`).
"""

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from itertools import islice
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.data.arrays import Dataset
from slimkit.distill import ddp, fsdp
from slimkit.distill.cache import TeacherOutputs, teacher_source
from slimkit.distill.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from slimkit.distill.config import (CacheConfig, CheckpointConfig, EpochLog, TrainConfig, amp_dtype, budget_cosine,
                                    cosine_with_warmup)
from slimkit.distill.features import FeatureTap, StudentBundle, resolve_module
from slimkit.distill.losses import ADAPTED_KINDS, FEATURE_KINDS, Term, combine
from slimkit.distill.tasks import Task, classification, evaluate
from slimkit.distill.train_data import InMemory, Loader, as_train_data, batch_len, head, is_empty, to_device
from slimkit.errors import SlimkitError
from slimkit.masks import MaskHolder, Masks

Augment = Callable[[Any, torch.Generator], Any]
Teacher = nn.Module | TeacherOutputs | torch.Tensor | None


class NonFiniteLossError(SlimkitError):
    """The loss became NaN or inf; the last good checkpoint on disk is left untouched."""


class Distiller:
    """Train `student` from `teacher` with a weighted list of loss `Term`s, for one `task`.

    `teacher` is a model, precomputed outputs (`TeacherOutputs` or a tensor in train-index order),
    or None for plain supervised training (terms must then be ["ce"]). `task` (default:
    classification) says how batches become inputs and targets, which outputs the terms compare
    and how to validate. `masks` keep pruned weights at zero. `augment(inputs, generator)` is
    applied to training inputs; its generator is seeded per step, so augmented runs resume exactly.
    """

    def __init__(self, teacher: Teacher, student: nn.Module, losses: Sequence[Term], config: TrainConfig = TrainConfig(),
                 checkpoint: CheckpointConfig | None = None, cache: CacheConfig = CacheConfig(),
                 augment: Augment | None = None, masks: Masks | None = None, device: str | torch.device | None = None,
                 task: Task | None = None) -> None:
        self.terms = list(losses)
        if not self.terms:
            raise SlimkitError("give at least one loss term, e.g. losses=hinton(4.0, 0.9)")
        if teacher is None and any(t.needs_teacher for t in self.terms):
            raise SlimkitError(f"terms {[t.name for t in self.terms if t.needs_teacher]} need a teacher")
        needs_features = any(t.kind in FEATURE_KINDS for t in self.terms)
        if needs_features and not isinstance(teacher, nn.Module):
            raise SlimkitError("feature terms (hint, attention, hidden_cosine, hidden_mse) need the teacher model, "
                               "not cached outputs")
        self.task = task or classification()
        if any(t.kind == "ce" for t in self.terms) and self.task.supervised is None:
            raise SlimkitError(f"the {self.task.name} task has no supervised loss; drop the 'ce' term")
        self.teacher, self.student, self.config = teacher, student, config
        self.checkpoint, self.cache_config, self.augment, self.masks = checkpoint, cache, augment, masks
        self.dist = ddp.setup()
        if device is None:
            device = f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.amp = amp_dtype(config.amp, self.device)
        self.fsdp = config.parallel == "fsdp"
        if self.fsdp:
            fsdp.check_setup(self.dist, masks, config.amp, config.early_stop_patience)
        self.mp = fsdp.policy(self.amp, self.device) if self.fsdp else None
        if checkpoint is not None and checkpoint.resume:
            fsdp.check_kind(checkpoint.dir, self.fsdp, checkpoint.path.name)
        pairs = [(t.student_layer, t.teacher_layer, t.kind in ADAPTED_KINDS) for t in self.terms if t.kind in FEATURE_KINDS]
        self.bundle = StudentBundle(student, list(dict.fromkeys(pairs)), call=self.task.call)
        self._teacher_paths = list(dict.fromkeys(t for _, t, _ in pairs))
        for path in self._teacher_paths:
            resolve_module(teacher, path, "teacher")
        self.teacher_tap: FeatureTap | None = None
        self.history: list[EpochLog] = []
        self.steps_done = 0
        self.resumed_from_step: int | None = None
        self.last_loss = float("nan")
        self.last_lr = float("nan")
        self.teacher_outputs: TeacherOutputs | None = None  # the cache this run trained from, if any
        self.cache_seconds = 0.0
        self.ended_by: str | None = None  # "time", "steps" or "early_stop" when not all epochs ran
        self._elapsed_before, self._start, self._clock = 0.0, 0.0, 0.0
        self._resume_rng: dict | None = None
        self.full_weights: dict[str, torch.Tensor] = {}  # parallel "fsdp": the trained student, on rank 0

    # -- adapters ----------------------------------------------------------------------------------
    def _probe(self, data: InMemory | Loader) -> None:
        """Build the width adapters from one forward pass of each model on two samples."""
        if self.bundle.tap is None:
            return
        sample = data.take(torch.arange(min(2, len(data)))) if isinstance(data, InMemory) else head(data.first(), 2)
        inputs, _ = self.task.split(to_device(sample, self.device))
        was = self.student.training
        self.student.eval()
        with torch.no_grad():
            self.task.call(self.student, inputs)
            self.task.call(self.teacher, inputs)
        self.student.train(was)
        self.bundle.build_adapters(dict(self.bundle.tap.features), dict(self.teacher_tap.features))
        self.bundle.tap.clear()
        self.teacher_tap.features.clear()
        self.bundle.adapters.to(self.device)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, train: Any, val: Any = None, progress: bool = True, desc: str = "distill",
            on_epoch_end: Callable[[int, nn.Module, list[EpochLog]], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> list[EpochLog]:
        """Train on `train`, validating on `val` after every epoch; returns the history.

        `train` is in-memory tensors (a Split, a tensor, a tuple, list or dict of tensors), a loader (a
        DataLoader, a list of batches, a function epoch -> iterable), or a `Dataset`, whose train
        and val splits are used. See train_data.py for what resuming needs of a loader.
        """
        cfg = self.config
        if isinstance(train, Dataset):
            train, val = train.train, (train.val if val is None else val)
        data = as_train_data(train)
        if isinstance(data, Loader) and data.once and (cfg.epochs > 1 or self.checkpoint is not None):
            raise SlimkitError("a generator can be read only once: to train several epochs or to resume, pass a "
                               "function epoch -> iterable, a list of batches or a DataLoader")
        val = None if val is None or is_empty(val) else val
        self._start, self._elapsed_before, self._resume_rng = time.perf_counter(), 0.0, None
        torch.manual_seed(cfg.seed)
        source = teacher_source(self.teacher, data, self.cache_config, self.task, self.device, self.dist,
                                needs_teacher=any(t.needs_teacher for t in self.terms), augmented=self.augment is not None,
                                features=tuple(self._teacher_paths), progress=progress and self.dist.is_main)
        self.teacher_outputs, self.cache_seconds = source, time.perf_counter() - self._start
        live = isinstance(self.teacher, nn.Module) and source is None and any(t.needs_teacher for t in self.terms)
        say = self.dist.is_main
        if isinstance(self.teacher, nn.Module):
            if live and self.fsdp:  # sharded before the move, so only shards reach the device
                fsdp.shard_teacher(self.teacher, self.mp, say)
            self.teacher.to(self.device).eval()
        if self.fsdp and not self._teacher_paths:  # no adapters to probe for first
            fsdp.shard(self.bundle, self.mp, "student", say)
        self.bundle.to(self.device)
        self.bundle.attach_hooks()
        if self._teacher_paths:
            self.teacher_tap = FeatureTap(self.teacher, self._teacher_paths, "teacher")
        try:
            self._probe(data)
            if source is not None and self.teacher_tap is not None:  # features come from the cache
                self.teacher_tap.remove()
                self.teacher_tap = None
            return self._fit(data, val, source, live, progress, desc, on_epoch_end, on_step)
        finally:
            self.bundle.detach_hooks()
            if self.teacher_tap is not None:
                self.teacher_tap.remove()
                self.teacher_tap = None

    def _schedule_length(self, data: InMemory | Loader, micro: int) -> tuple[int | None, int | None, int]:
        """(micro-batches and optimizer steps per epoch, None when unknown; steps the LR schedule spans)."""
        cfg = self.config
        n_batches = (len(ddp.epoch_batches(len(data), micro, self.dist, cfg.seed, 0)) if isinstance(data, InMemory)
                     else data.length())
        if n_batches is None and cfg.max_steps is None:
            raise SlimkitError("the training data has no len(), so the learning-rate schedule cannot know its length; "
                               "set TrainConfig(max_steps=...)")
        per_epoch = -(-n_batches // cfg.grad_accum) if n_batches is not None else None
        total = per_epoch * cfg.epochs if per_epoch is not None else cfg.max_steps
        return n_batches, per_epoch, max(1, min(total, cfg.max_steps or total))

    def _fit(self, data, val, source, live, progress, desc, on_epoch_end, on_step) -> list[EpochLog]:
        cfg, info = self.config, self.dist
        model: nn.Module = self.bundle
        if self.fsdp and not fsdp.is_sharded(self.bundle):  # feature terms: sharded after the adapters exist
            fsdp.shard(self.bundle, self.mp, "student", info.is_main)
        elif info.enabled and not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(self.bundle, device_ids=ids)
        params = [p for p in self.bundle.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        holder = MaskHolder(self.student, self.masks, optimizer) if self.masks else None
        micro = 0
        if isinstance(data, InMemory):
            micro = ddp.per_rank_batch(cfg.batch_size, info) // cfg.grad_accum
            if micro * cfg.grad_accum * info.world_size != cfg.batch_size:
                raise SlimkitError(f"batch_size {cfg.batch_size} must split evenly over {info.world_size} processes x "
                                   f"{cfg.grad_accum} accumulation steps")
        n_batches, per_epoch, total = self._schedule_length(data, micro)
        warm = min(cfg.warmup_steps, total // 10 + 1)
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        if budget:
            # The cosine spans the training time: the clock and the budget both start after the teacher
            # cache is built, so a slow cache does not start training at a reduced learning rate.
            lr_at = lambda s: budget_cosine(s, total, max(self._clock - self.cache_seconds, 0.0),  # noqa: E731
                                            max(budget - self.cache_seconds, 1e-9), warm)
        else:
            lr_at = lambda s: cosine_with_warmup(s, total, warm)  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

        state = {"epoch": 1, "batch": 0, "step": 0, "loss_sum": 0.0, "seen": 0, "best": None, "bad": 0, "best_state": None}
        ckpt = self.checkpoint
        found = ckpt is not None and ckpt.resume and (fsdp.latest(ckpt.dir) is not None if self.fsdp else ckpt.path.is_file())
        seen = int(ddp.all_reduce_sum(torch.tensor([int(found)]), info).item())
        if 0 < seen < info.world_size:
            raise SlimkitError(f"only {seen} of {info.world_size} processes can read checkpoint {ckpt.dir}; "
                               f"put the checkpoint folder on storage that every node mounts")
        if found:
            self._restore(ckpt, optimizer, scheduler, scaler, state)
        clean = False
        try:
            self._epochs(model, data, val, source, live, params, optimizer, scheduler, scaler, state, micro,
                         (n_batches, per_epoch), budget, progress, desc, on_epoch_end, on_step)
            clean = True
            if self.fsdp:  # while the group lives: rank 0 gets the student's whole weights on CPU
                self.full_weights = fsdp.gather_full(self.student)
        finally:
            if holder is not None:
                holder.remove()
            if info.owns_group:
                ddp.teardown(info, wait_for_peers=clean)
        return self.history

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._start

    def _batches(self, data: InMemory | Loader, epoch: int, micro: int, start: int):
        """(batch, sample indices or None) for the rest of an epoch, from micro-batch `start` on."""
        if isinstance(data, InMemory):
            for idx in ddp.epoch_batches(len(data), micro, self.dist, self.config.seed, epoch)[start:]:
                yield data.take(idx), idx
            return
        it = data.epoch(epoch, self.config.seed)
        for skipped in range(start):
            if next(it, None) is None:
                raise SlimkitError(f"on resume the loader gave {skipped} batches in epoch {epoch}, but {start} had been "
                                   f"trained on: it must give the same batches every time an epoch is iterated")
        if self._resume_rng is not None:  # the skipped batches drew from the RNGs: back to the checkpoint's state
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        for batch in it:
            yield batch, None

    def _epochs(self, model, data, val, source, live, params, optimizer, scheduler, scaler, state, micro, lengths,
                budget, progress, desc, on_epoch_end, on_step) -> None:
        cfg, info, task = self.config, self.dist, self.task
        n_batches, per_epoch = lengths
        autocast = (lambda: torch.autocast(self.device.type, dtype=self.amp)) if self.amp else nullcontext
        show = progress and info.is_main
        metric = task.metric
        while state["epoch"] <= cfg.epochs:
            epoch = state["epoch"]
            batches = self._batches(data, epoch, micro, state["batch"])
            self.bundle.train(task.train_mode)
            start, seen_here, ended = time.perf_counter(), 0, None
            bar = tqdm(total=per_epoch, initial=state["batch"] // cfg.grad_accum, disable=not show, leave=False,
                       desc=f"{desc} epoch {epoch}/{cfg.epochs}", dynamic_ncols=True)
            while True:
                if cfg.max_steps and state["step"] >= cfg.max_steps:
                    ended = "steps"
                    break
                if budget:
                    self._clock = ddp.from_main(self._elapsed(), info)
                    if self._clock >= budget:
                        ended = "time"
                        break
                group = list(islice(batches, cfg.grad_accum))
                if not group:
                    break
                sizes = [batch_len(b) for b, _ in group]
                n_group, b, group_loss = sum(sizes), state["batch"], 0.0
                for k, ((batch, idx), n) in enumerate(zip(group, sizes)):
                    inputs, targets = task.split(to_device(batch, self.device))
                    if self.augment is not None:
                        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 100_003 + b + k)
                        inputs = self.augment(inputs, gen)
                    sync = k == len(group) - 1 or not info.enabled
                    quiet = nullcontext() if sync else fsdp.no_sync(model) if self.fsdp else model.no_sync()
                    with quiet, autocast():
                        out, feats = model(inputs)
                        view = task.view(out, inputs)
                        t_view = t_idx = t_feats = None
                        if source is not None:
                            t_view, t_idx, t_feats = source.lookup(idx, self.device)
                        elif live:
                            with torch.no_grad():
                                t_view = task.view(task.call(self.teacher, inputs), inputs)
                            if self.teacher_tap is not None:
                                t_feats = dict(self.teacher_tap.features)
                                self.teacher_tap.features.clear()
                        loss, _parts = combine(self.terms, view, targets, t_view, t_idx, feats, t_feats,
                                               task.mask(inputs, targets), task.supervised)
                        scaled = loss * (n / n_group)
                    value = ddp.all_reduce_sum(loss.detach().float().clone(), info)
                    if not torch.isfinite(value):
                        where = self.checkpoint.path if self.checkpoint and self.checkpoint.path.is_file() else "none written"
                        raise NonFiniteLossError(f"{desc}: loss became {value.item()} at epoch {epoch}, step "
                                                 f"{state['step'] + 1}; stopped. Last good checkpoint: {where}. "
                                                 f"Lower the learning rate or check the inputs")
                    scaler.scale(scaled).backward()
                    group_loss += loss.item() * n
                    state["loss_sum"] += loss.item() * n
                    state["seen"] += n
                    seen_here += n
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                self.last_lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                scheduler.step()
                state["batch"], state["step"] = b + len(group), state["step"] + 1
                self.steps_done, self.last_loss = state["step"], group_loss / max(n_group, 1)
                bar.update(1)
                if show and state["step"] % 10 == 0:
                    rate = seen_here * info.world_size / max(time.perf_counter() - start, 1e-9)
                    last = self.history[-1].metrics.get(metric.name) if self.history and metric else None
                    bar.set_postfix(loss=f"{state['loss_sum'] / max(state['seen'], 1):.4f}",
                                    **{metric.name if metric else "val": f"{last:.4g}" if last is not None else "-"},
                                    rate=f"{rate:.3g} samples/s", refresh=False)
                if on_step is not None:
                    on_step(state["step"])
                every = self.checkpoint.every_steps if self.checkpoint else 0
                if every and state["step"] % every == 0 and (n_batches is None or state["batch"] < n_batches):
                    self._save(optimizer, scheduler, scaler, state)
            bar.close()
            if ended is not None and seen_here == 0:
                self.ended_by = ended
                break  # the budget ran out at an epoch boundary: nothing to log
            stop = self._end_epoch(val, state, time.perf_counter() - start, seen_here, desc, show)
            if on_epoch_end is not None and info.is_main:
                on_epoch_end(epoch, self.student, self.history)
            if ended is None:
                state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, seen=0)
            if self.checkpoint is not None:
                self._save(optimizer, scheduler, scaler, state)
            if ended is not None or stop:
                self.ended_by = ended or "early_stop"
                break
        if state["best_state"] is not None:
            self.bundle.load_state_dict(state["best_state"])

    def _end_epoch(self, val: Any, state: dict, elapsed: float, seen_here: int, desc: str, show: bool) -> bool:
        """Log the epoch and apply early stopping on the task's metric; True means stop training."""
        cfg, info, metric = self.config, self.dist, self.task.metric
        totals = ddp.all_reduce_sum(torch.tensor([state["loss_sum"], float(state["seen"])], dtype=torch.float64), info)
        teacher = self.teacher if isinstance(self.teacher, nn.Module) else None
        with fsdp.root_gathered(self.bundle) if self.fsdp and val is not None else nullcontext():
            metrics = evaluate(self.student, val, self.task, teacher, cfg.batch_size, self.device) if val is not None else {}
        log = EpochLog(state["epoch"], float(totals[0] / max(totals[1], 1)), metrics, elapsed,
                       seen_here * info.world_size / max(elapsed, 1e-9))
        self.history.append(log)
        if show:
            shown = "  ".join(f"val {k} {v:.4f}" for k, v in metrics.items())
            tqdm.write(f"{desc} epoch {log.epoch}/{cfg.epochs}: loss {log.train_loss:.4f}  {shown}  "
                       f"{log.samples_per_s:.0f} samples/s")
        if cfg.early_stop_patience <= 0 or metric is None or metric.name not in metrics:
            return False
        score = metrics[metric.name]
        best = state["best"]
        if best is None or not math.isfinite(best) or (math.isfinite(score) and metric.better(score, best, cfg.early_stop_min_delta)):
            state["best"], state["bad"] = score, 0
            state["best_state"] = copy.deepcopy(self.bundle.state_dict())
            return False
        state["bad"] += 1
        if state["bad"] >= cfg.early_stop_patience and show:
            tqdm.write(f"{desc}: early stop after epoch {log.epoch}: val {metric.name} has not improved on "
                       f"{state['best']:.4f} for {state['bad']} epochs; restoring the best weights")
        return state["bad"] >= cfg.early_stop_patience

    # -- checkpoints -------------------------------------------------------------------------------
    def _save(self, optimizer, scheduler, scaler, state: dict) -> None:
        info = self.dist
        totals = ddp.all_reduce_sum(torch.tensor([state["loss_sum"], float(state["seen"])], dtype=torch.float64), info)
        if not (info.is_main or self.fsdp):
            return
        payload = {
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "history": [h.as_dict() for h in self.history],
            "position": {"epoch": state["epoch"], "batch": state["batch"], "step": state["step"],
                         "loss_sum": float(totals[0]), "seen": int(totals[1]), "elapsed": self._elapsed()},
            "early_stop": {"best": state["best"], "bad": state["bad"], "best_state": state["best_state"]},
            "config": self.config.as_dict(),
        }
        if self.fsdp:  # every rank writes its shard
            fsdp.save_sharded(self.checkpoint.dir, state["step"], self.bundle, optimizer, payload, info)
            return
        payload.update(model=self.bundle.state_dict(), optimizer=optimizer.state_dict())
        save_checkpoint(self.checkpoint.path, payload)

    def _restore(self, ckpt: CheckpointConfig, optimizer, scheduler, scaler, state: dict) -> None:
        saved = (fsdp.load_sharded(fsdp.latest(ckpt.dir), self.bundle, optimizer) if self.fsdp
                 else load_checkpoint(ckpt.path))
        written = {"parallel": "ddp", **saved["config"]}  # checkpoints from before `parallel` existed were DDP's
        mismatch = {k: (v, written.get(k)) for k, v in self.config.as_dict().items() if written.get(k) != v}
        if mismatch:
            raise SlimkitError(f"checkpoint {ckpt.dir} was written with other settings {mismatch}; "
                               f"use the same settings to resume, or another checkpoint folder")
        if not self.fsdp:
            self.bundle.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        self._resume_rng = saved["rng"] if saved["position"]["batch"] else None
        self.history = [EpochLog(**h) for h in saved["history"]]
        pos = saved["position"]
        mine = self.dist.is_main
        state.update(epoch=pos["epoch"], batch=pos["batch"], step=pos["step"],
                     loss_sum=pos["loss_sum"] if mine else 0.0, seen=pos["seen"] if mine else 0, **saved["early_stop"])
        self._elapsed_before = pos["elapsed"]
        self.resumed_from_step = pos["step"]
        self.steps_done = pos["step"]


def describe(terms: Sequence[Term]) -> str:
    """'0.9*kd + 0.1*ce' style summary for logs and reports."""
    return " + ".join(f"{t.weight:g}*{t.name}" for t in terms)


__all__ = ["Augment", "Distiller", "NonFiniteLossError", "amp_dtype", "describe"]
