"""`Distiller`: one training loop for KD, hints, pruned-model recovery and plain training.

The loop is written so that a run can be killed at any moment and resumed to the same result:
the data order of every epoch is a pure function of (seed, epoch), the full state (weights,
adapters, optimizer, scheduler, loss scaler, RNG, position, history) is checkpointed atomically,
and resuming replays the epoch's order from the saved position. The same code runs on one process
or under torchrun with DistributedDataParallel (see `ddp.py` for why results then match).
"""

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.data.arrays import Dataset, Split
from slimkit.distill import ddp
from slimkit.distill.cache import TeacherOutputs, build_or_load, compute_teacher_outputs
from slimkit.distill.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from slimkit.distill.config import CacheConfig, CheckpointConfig, EpochLog, TrainConfig, cosine_with_warmup
from slimkit.distill.features import FeatureTap, StudentBundle, resolve_module
from slimkit.distill.losses import ADAPTED_KINDS, FEATURE_KINDS, Term, combine
from slimkit.errors import SlimkitError
from slimkit.measure.metrics import evaluate_classifier
from slimkit.prune.magnitude import MaskHolder, Masks

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Teacher = nn.Module | TeacherOutputs | torch.Tensor | None


class NonFiniteLossError(SlimkitError):
    """The loss became NaN or inf; the last good checkpoint on disk is left untouched."""


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `setting` on `device`, or None for full precision."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16" and device.type != "cuda":
        raise SlimkitError("amp='fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


class Distiller:
    """Train `student` from `teacher` with a weighted list of loss `Term`s.

    `teacher` is a model, precomputed outputs (`TeacherOutputs` or a logits tensor in train-index
    order), or None for plain supervised training (terms must then be ["ce"]). `masks` keep pruned
    weights at zero. `augment(x, generator)` is applied to training batches; its generator is seeded
    per step, so augmented runs resume exactly too.
    """

    def __init__(self, teacher: Teacher, student: nn.Module, losses: Sequence[Term], config: TrainConfig = TrainConfig(),
                 checkpoint: CheckpointConfig | None = None, cache: CacheConfig = CacheConfig(),
                 augment: Augment | None = None, masks: Masks | None = None, device: str | torch.device | None = None) -> None:
        self.terms = list(losses)
        if not self.terms:
            raise SlimkitError("give at least one loss term, e.g. losses=hinton(4.0, 0.9)")
        if teacher is None and any(t.needs_teacher for t in self.terms):
            raise SlimkitError(f"terms {[t.name for t in self.terms if t.needs_teacher]} need a teacher")
        needs_features = any(t.kind in FEATURE_KINDS for t in self.terms)
        if needs_features and not isinstance(teacher, nn.Module):
            raise SlimkitError("feature terms (hint, attention, hidden_cosine) need the teacher model, not cached logits")
        self.teacher, self.student, self.config = teacher, student, config
        self.checkpoint, self.cache_config, self.augment, self.masks = checkpoint, cache, augment, masks
        self.dist = ddp.setup()
        if device is None:
            device = f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.amp = amp_dtype(config.amp, self.device)
        pairs = [(t.student_layer, t.teacher_layer, t.kind in ADAPTED_KINDS) for t in self.terms if t.kind in FEATURE_KINDS]
        self.bundle = StudentBundle(student, list(dict.fromkeys(pairs)))
        self._teacher_paths = [t for _, t, _ in pairs]
        for path in self._teacher_paths:
            resolve_module(teacher, path, "teacher")
        self.teacher_tap: FeatureTap | None = None
        self.history: list[EpochLog] = []
        self.steps_done = 0
        self.resumed_from_step: int | None = None

    # -- teacher outputs ---------------------------------------------------------------------------
    def _teacher_source(self, train: Split) -> TeacherOutputs | None:
        """Cached teacher outputs when they are exact for this run, else None (run the teacher live)."""
        t, cc = self.teacher, self.cache_config
        if isinstance(t, torch.Tensor):
            t = TeacherOutputs(t)
        if isinstance(t, TeacherOutputs):
            if len(t) != len(train):
                raise SlimkitError(f"teacher logits cover {len(t)} samples but the training split has {len(train)}")
            return t
        if t is None or cc.mode == "off" or not any(term.needs_teacher for term in self.terms):
            return None
        if self.augment is not None:
            warnings.warn("data augmentation changes the teacher's inputs every epoch, so its outputs cannot be "
                          "cached; running the teacher live", stacklevel=3)
            return None
        if self._teacher_paths:
            return None  # features must come from the same live forward pass
        t.to(self.device)
        if cc.dir is None:
            return compute_teacher_outputs(t, train.x, cc.batch_size, cc.topk, self.device)
        settings = {"augment": None, **dict(cc.settings)}
        if self.dist.is_main:
            build_or_load(t, train.x, cc.dir, settings, train.y, cc.batch_size, cc.topk, self.device)
        ddp.barrier(self.dist)
        return build_or_load(t, train.x, cc.dir, settings, train.y, cc.batch_size, cc.topk, self.device)

    def _probe(self, x: torch.Tensor) -> None:
        """Build the width adapters from one forward pass of each model on two samples."""
        if self.bundle.tap is None:
            return
        was = self.student.training
        self.student.eval()
        with torch.no_grad():
            self.student(x)
            self.teacher(x)
        self.student.train(was)
        self.bundle.build_adapters(dict(self.bundle.tap.features), dict(self.teacher_tap.features))
        self.bundle.tap.clear()
        self.teacher_tap.features.clear()
        self.bundle.adapters.to(self.device)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, data: Dataset, progress: bool = True, desc: str = "distill",
            on_epoch_end: Callable[[int, nn.Module, list[EpochLog]], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> list[EpochLog]:
        """Train on `data.train`, evaluating val accuracy/F1 after each epoch; returns the history."""
        cfg, info = self.config, self.dist
        torch.manual_seed(cfg.seed)
        train = data.train
        source = self._teacher_source(train)
        live = isinstance(self.teacher, nn.Module) and source is None and any(t.needs_teacher for t in self.terms)
        if live:
            self.teacher.to(self.device).eval()
        self.bundle.to(self.device)
        self.bundle.attach_hooks()
        if self._teacher_paths:
            self.teacher.to(self.device)
            self.teacher_tap = FeatureTap(self.teacher, self._teacher_paths, "teacher")
        try:
            return self._fit(data, source, live, progress, desc, on_epoch_end, on_step)
        finally:
            self.bundle.detach_hooks()
            if self.teacher_tap is not None:
                self.teacher_tap.remove()
                self.teacher_tap = None

    def _fit(self, data, source, live, progress, desc, on_epoch_end, on_step) -> list[EpochLog]:
        cfg, info, train = self.config, self.dist, data.train
        self._probe(train.x[:2].to(self.device))

        model: nn.Module = self.bundle
        if info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(self.bundle, device_ids=ids)
        optimizer = torch.optim.AdamW(self.bundle.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        holder = MaskHolder(self.student, self.masks, optimizer) if self.masks else None
        micro = ddp.per_rank_batch(cfg.batch_size, info) // cfg.grad_accum
        if micro * cfg.grad_accum * info.world_size != cfg.batch_size:
            raise SlimkitError(f"batch_size {cfg.batch_size} must split evenly over {info.world_size} processes x "
                               f"{cfg.grad_accum} accumulation steps")
        n_batches = len(ddp.epoch_batches(len(train), micro, info, cfg.seed, 0))
        steps_per_epoch = -(-n_batches // cfg.grad_accum)
        total = steps_per_epoch * cfg.epochs
        warm = min(cfg.warmup_steps, total // 10 + 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warm))
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

        state = {"epoch": 1, "batch": 0, "step": 0, "loss_sum": 0.0, "seen": 0, "best": None, "bad": 0, "best_state": None}
        ckpt = self.checkpoint
        found = ckpt is not None and ckpt.resume and ckpt.path.is_file()
        seen = int(ddp.all_reduce_sum(torch.tensor([int(found)]), info).item())
        if 0 < seen < info.world_size:
            raise SlimkitError(f"only {seen} of {info.world_size} processes can read checkpoint {ckpt.path}; "
                               f"put the checkpoint folder on storage that every node mounts")
        if found:
            self._restore(ckpt, optimizer, scheduler, scaler, state)
        try:
            self._epochs(model, data, source, live, optimizer, scheduler, scaler, state, micro, steps_per_epoch,
                         progress, desc, on_epoch_end, on_step)
        finally:
            if holder is not None:
                holder.remove()
            if info.owns_group:
                ddp.teardown(info)
        return self.history

    def _epochs(self, model, data, source, live, optimizer, scheduler, scaler, state, micro, steps_per_epoch,
                progress, desc, on_epoch_end, on_step) -> None:
        cfg, info, train = self.config, self.dist, data.train
        params = [p for p in self.bundle.parameters() if p.requires_grad]
        autocast = (lambda: torch.autocast(self.device.type, dtype=self.amp)) if self.amp else nullcontext
        show = progress and info.is_main
        while state["epoch"] <= cfg.epochs:
            epoch = state["epoch"]
            batches = ddp.epoch_batches(len(train), micro, info, cfg.seed, epoch)
            self.bundle.train()
            start, seen_here = time.perf_counter(), 0
            bar = tqdm(total=steps_per_epoch, initial=state["batch"] // cfg.grad_accum, disable=not show, leave=False,
                       desc=f"{desc} epoch {epoch}/{cfg.epochs}", dynamic_ncols=True)
            b = state["batch"]
            while b < len(batches):
                group = batches[b:b + cfg.grad_accum]
                n_group = sum(len(i) for i in group)
                for k, idx in enumerate(group):
                    x, y = train.x[idx].to(self.device, non_blocking=True), train.y[idx].to(self.device, non_blocking=True)
                    if self.augment is not None:
                        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 100_003 + b + k)
                        x = self.augment(x, gen)
                    sync = k == len(group) - 1 or not info.enabled
                    with (nullcontext() if sync else model.no_sync()), autocast():
                        out, feats = model(x)
                        t_out = t_idx = None
                        t_feats = None
                        if source is not None:
                            t_out, t_idx = source.lookup(idx, self.device)
                        elif live:
                            with torch.no_grad():
                                t_out = self.teacher(x)
                            if self.teacher_tap is not None:
                                t_feats = dict(self.teacher_tap.features)
                                self.teacher_tap.features.clear()
                        loss, _parts = combine(self.terms, out, y, t_out, t_idx, feats, t_feats)
                        scaled = loss * (len(idx) / n_group)
                    value = ddp.all_reduce_sum(loss.detach().float().clone(), info)
                    if not torch.isfinite(value):
                        where = self.checkpoint.path if self.checkpoint and self.checkpoint.path.is_file() else "none written"
                        raise NonFiniteLossError(f"{desc}: loss became {value.item()} at epoch {epoch}, step "
                                                 f"{state['step'] + 1}; stopped. Last good checkpoint: {where}. "
                                                 f"Lower the learning rate or check the inputs")
                    scaler.scale(scaled).backward()
                    state["loss_sum"] += loss.item() * len(idx)
                    state["seen"] += len(idx)
                    seen_here += len(idx)
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                b += len(group)
                state["batch"], state["step"] = b, state["step"] + 1
                self.steps_done = state["step"]
                bar.update(1)
                if show and state["step"] % 10 == 0:
                    rate = seen_here * info.world_size / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(loss=f"{state['loss_sum'] / max(state['seen'], 1):.4f}",
                                    acc=f"{self.history[-1].val_accuracy:.3f}" if self.history else "-",
                                    rate=f"{rate:.0f}/s", refresh=False)
                if on_step is not None:
                    on_step(state["step"])
                every = self.checkpoint.every_steps if self.checkpoint else 0
                if every and state["step"] % every == 0 and b < len(batches):
                    self._save(optimizer, scheduler, scaler, state)
            bar.close()
            elapsed = time.perf_counter() - start
            stop = self._end_epoch(data, state, elapsed, seen_here, desc, show)
            if on_epoch_end is not None and info.is_main:
                on_epoch_end(epoch, self.student, self.history)
            state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, seen=0)
            if self.checkpoint is not None:
                self._save(optimizer, scheduler, scaler, state)
            if stop:
                break
        if state["best_state"] is not None:
            self.bundle.load_state_dict(state["best_state"])

    def _end_epoch(self, data: Dataset, state: dict, elapsed: float, seen_here: int, desc: str, show: bool) -> bool:
        """Log the epoch and apply early stopping; True means stop training."""
        cfg, info = self.config, self.dist
        totals = ddp.all_reduce_sum(torch.tensor([state["loss_sum"], float(state["seen"])], dtype=torch.float64), info)
        metrics = evaluate_classifier(self.student, data.val, data.num_classes) if len(data.val) else None
        acc = metrics.accuracy if metrics else float("nan")
        log = EpochLog(state["epoch"], float(totals[0] / max(totals[1], 1)), acc, metrics.macro_f1 if metrics else float("nan"),
                       elapsed, seen_here * info.world_size / max(elapsed, 1e-9))
        self.history.append(log)
        if show:
            val = f"val acc {log.val_accuracy:.4f}  val F1 {log.val_macro_f1:.4f}  " if metrics else ""
            tqdm.write(f"{desc} epoch {log.epoch}/{cfg.epochs}: loss {log.train_loss:.4f}  {val}{log.samples_per_s:.0f} samples/s")
        if cfg.early_stop_patience <= 0 or metrics is None:
            return False
        if state["best"] is None or acc > state["best"] + cfg.early_stop_min_delta:
            state["best"], state["bad"] = acc, 0
            state["best_state"] = copy.deepcopy(self.bundle.state_dict())
            return False
        state["bad"] += 1
        if state["bad"] >= cfg.early_stop_patience and show:
            tqdm.write(f"{desc}: early stop after epoch {log.epoch}: val accuracy has not improved on "
                       f"{state['best']:.4f} for {state['bad']} epochs; restoring the best weights")
        return state["bad"] >= cfg.early_stop_patience

    # -- checkpoints -------------------------------------------------------------------------------
    def _save(self, optimizer, scheduler, scaler, state: dict) -> None:
        info = self.dist
        totals = ddp.all_reduce_sum(torch.tensor([state["loss_sum"], float(state["seen"])], dtype=torch.float64), info)
        if not info.is_main:
            return
        payload = {
            "model": self.bundle.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "history": [h.as_dict() for h in self.history],
            "position": {"epoch": state["epoch"], "batch": state["batch"], "step": state["step"],
                         "loss_sum": float(totals[0]), "seen": int(totals[1])},
            "early_stop": {"best": state["best"], "bad": state["bad"], "best_state": state["best_state"]},
            "config": self.config.as_dict(),
        }
        save_checkpoint(self.checkpoint.path, payload)

    def _restore(self, ckpt: CheckpointConfig, optimizer, scheduler, scaler, state: dict) -> None:
        saved = load_checkpoint(ckpt.path)
        mismatch = {k: (v, saved["config"].get(k)) for k, v in self.config.as_dict().items() if saved["config"].get(k) != v}
        if mismatch:
            raise SlimkitError(f"checkpoint {ckpt.path} was written with other settings {mismatch}; "
                               f"use the same settings to resume, or another checkpoint folder")
        self.bundle.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        self.history = [EpochLog(**h) for h in saved["history"]]
        pos = saved["position"]
        mine = self.dist.is_main
        state.update(epoch=pos["epoch"], batch=pos["batch"], step=pos["step"],
                     loss_sum=pos["loss_sum"] if mine else 0.0, seen=pos["seen"] if mine else 0, **saved["early_stop"])
        self.resumed_from_step = pos["step"]
        self.steps_done = pos["step"]


def describe(terms: Sequence[Term]) -> str:
    """'0.9*kd + 0.1*ce' style summary for logs and reports."""
    return " + ".join(f"{t.weight:g}*{t.name}" for t in terms)


__all__ = ["Augment", "Distiller", "NonFiniteLossError", "amp_dtype", "describe"]
