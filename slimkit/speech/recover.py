"""Recovery of a compressed Whisper on the shared engine: KD on the teacher's pseudo-labels, or
plain fine-tuning on them, within a time budget.

The recipe is distil-whisper's, on synthesised speech:
- **labels**: the teacher's own greedy transcripts of the synthesised training audio (never the
  reference sentences, and never the real test recordings). They are what the student can reach:
  the teacher's errors included, the student learns one consistent target. Computed once per
  teacher and utterance, batched, and kept under slimkit's cache (`pseudo_labels`);
- **filtered labels**: as distil-whisper does, a training utterance whose pseudo-label has a WER
  above `max_label_wer` against the sentence that was synthesised is left out (`keep_labels`): it
  drops the teacher's hallucinations and repetition loops (a 448-token loop would also make its
  whole batch that long). The sentences only choose which labels to keep; the labels stay the
  teacher's;
- **teacher forcing**: the decoder reads <|startoftranscript|><|notimestamps|> + the label tokens
  and predicts, at every position, the next token up to <|endoftext|> (`label_batch`);
- **losses** (the engine's `seq2seq` task): `kd_weight` * T^2 KL(teacher || student) of the token
  distributions at the label positions, plus `ce_weight` * cross-entropy on the labels; defaults
  are distil-whisper's training script's (T = 2, KL weight 1, CE weight 0.8). `loss="ce"` is plain
  fine-tuning on the same labels, the comparison KD must beat;
- **frozen encoder** when its shapes are the teacher's (decoder-depth students): distil-whisper
  keeps the encoder. When the student's encoder is the teacher's, weight for weight, its outputs
  for the training and validation audio are computed once and the decoders train on them
  (`encoder_states`): the same numbers every step would recompute, at a fraction of the cost (on a
  CPU the 30 s encoder pass is most of a step). A student with a narrower encoder trains it on the
  log-mel features.
The teacher runs once over the training set through the engine's cache (top-k logits per position,
keyed by teacher weights and every input tensor). `minutes` bounds the whole `Distiller.fit`
(cache build included; pseudo-labelling, which both losses share, is not inside it). Validation
after every epoch is teacher-forced token accuracy against the reference transcripts of held-out
synthesised sentences; it only reports progress (no early stopping or selection reads it), and
WER with generate() is measured afterwards (slimkit.speech.evaluate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from slimkit.errors import SlimkitError
from slimkit.io import cache_root
from slimkit.speech.audio import SpeechSet
from slimkit.speech.evaluate import THREADS, decode, encode, log_mel


class SpeechDistillConfig(BaseModel):
    """Settings of one recovery run; also the recipe of `slimkit distill` for a Whisper."""

    model_config = ConfigDict(extra="forbid")

    loss: Literal["kd", "ce"] = "kd"
    minutes: float = Field(30.0, gt=0)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    temperature: float = Field(2.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(0.8, ge=0)
    top_k: int = Field(64, ge=1)
    freeze_encoder: Literal["auto", "yes", "no"] = "auto"
    max_label_wer: float = Field(0.1, ge=0)
    seed: int = 0

    def terms(self):
        from slimkit.distill.losses import ce, kd

        if self.loss == "ce":
            return [ce(1.0)]
        if self.kd_weight == 0:
            raise SlimkitError("loss 'kd' with kd_weight 0 is plain fine-tuning; use loss 'ce' instead")
        return [kd(self.kd_weight, self.temperature)] + ([ce(self.ce_weight)] if self.ce_weight > 0 else [])


@dataclass
class RecoveryReport:
    """What one recovery run did; `history` holds the engine's per-epoch logs."""

    loss: str
    steps: int
    train_seconds: float      # the engine's fit, teacher cache included: what `minutes` bounds
    label_seconds: float      # pseudo-labelling (about 0 when read from the cache)
    labels_kept: int          # training utterances whose pseudo-label passed the WER filter
    input_seconds: float      # log-mel features, or encoder states when they are computed once
    teacher_cache_reused: bool
    frozen_encoder: bool
    encoder_states_once: bool  # the decoders trained on encoder outputs computed once
    ended_by: str | None
    history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**self.__dict__, "history": [h.as_dict() for h in self.history]}


def prompt_ids(model) -> list[int]:
    """<|startoftranscript|><|notimestamps|>: the prompt every transcription starts from."""
    gen = model.generation_config
    ids = [getattr(gen, "decoder_start_token_id", None), getattr(gen, "no_timestamps_token_id", None)]
    if None in ids:
        raise SlimkitError("the model's generation config lacks decoder_start_token_id or no_timestamps_token_id; "
                           "use a Whisper folder written by slimkit (slimkit prune, slimkit distill or the built-in)")
    return [int(i) for i in ids]


def _weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _utterance_key(audio) -> str:
    return hashlib.sha256(audio.tobytes()).hexdigest()[:24]


def _until_eos(ids: torch.Tensor, stop: set[int]) -> list[int]:
    """One generated row up to its first <|endoftext|> (a batch pads finished rows with it)."""
    out = []
    for t in ids.tolist():
        if t in stop:
            break
        out.append(int(t))
    return out


@torch.inference_mode()
def pseudo_labels(teacher, processor, data: SpeechSet, threads: int = THREADS, progress: bool = True,
                  batch_size: int = 16) -> list[list[int]]:
    """The teacher's greedy token ids (no prompt, no <|endoftext|>) for every utterance, from the
    30 s padded features Whisper expects.

    Utterances are decoded `batch_size` at a time: each generated token reads the whole output
    projection (vocabulary x d_model) from memory, and a batch shares that read. Labels are kept
    in slimkit's cache per teacher and per utterance (keyed by their audio), so a training set
    that grows only labels its new utterances; the cache file is replaced atomically after every
    batch, so an interrupted run keeps what it labelled."""
    from tqdm import tqdm

    from slimkit.io.outputs import atomic_write_bytes

    if batch_size < 1:
        raise SlimkitError(f"pseudo-label batch size must be >= 1, got {batch_size}")
    path = cache_root() / "speech" / f"labels-by-utterance-{_weights_digest(teacher)[:20]}.json"
    try:  # slimkit's own cache file: one it cannot read is relabelled, never trusted
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    keys = [_utterance_key(u.audio) for u in data.utterances]
    todo = list(dict.fromkeys(k for k in keys if k not in known))
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    stop = {int(t) for t in (teacher.config.eos_token_id, teacher.generation_config.pad_token_id) if t is not None}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    teacher.eval()
    try:
        bar = tqdm(total=len(todo), desc="teacher pseudo-labels", unit="utt", disable=not progress)
        for at in range(0, len(todo), batch_size):
            chunk = todo[at:at + batch_size]
            feats = torch.cat([log_mel(processor, data.utterances[first[k]].audio) for k in chunk])
            for k, row in zip(chunk, decode(teacher, encode(teacher, feats))):
                known[k] = _until_eos(row, stop)
            atomic_write_bytes(path, json.dumps(known).encode())
            bar.update(len(chunk))
        bar.close()
    finally:
        torch.set_num_threads(old)
    return [known[k] for k in keys]


def keep_labels(processor, data: SpeechSet, labels: list[list[int]], max_wer: float) -> list[int]:
    """Indices of the utterances whose pseudo-label is within `max_wer` of the synthesised sentence."""
    from slimkit.speech.evaluate import word_error_rate

    texts = [processor.tokenizer.decode(t, skip_special_tokens=True) for t in labels]
    return [i for i, (u, text) in enumerate(zip(data.utterances, texts)) if word_error_rate([u.text], [text]) <= max_wer]


def label_batch(features: torch.Tensor, tokens: list[list[int]], prompt: list[int], eos: int) -> dict:
    """Teacher-forcing tensors: decoder_input_ids = prompt + tokens (padded with `eos`), labels = the
    next token at each position (the last is <|endoftext|>), -100 where the next token is part of
    the prompt or the position is padding."""
    if len(tokens) != features.shape[0]:
        raise SlimkitError(f"{features.shape[0]} feature rows but {len(tokens)} token lists")
    seqs = [prompt + list(t) + [eos] for t in tokens]
    width = max(len(s) for s in seqs) - 1
    ids = torch.full((len(seqs), width), eos, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq) - 1] = torch.tensor(seq[:-1])
        labels[row, len(prompt) - 1:len(seq) - 1] = torch.tensor(seq[len(prompt):])
    return {"input_features": features, "decoder_input_ids": ids, "labels": labels}


def features_of(processor, data: SpeechSet) -> torch.Tensor:
    """(N, 80, 3000) log-mel features of every utterance, 30 s padded."""
    return torch.cat([log_mel(processor, u.audio) for u in data.utterances])


def reference_tokens(processor, data: SpeechSet) -> list[list[int]]:
    """Token ids of the reference transcripts, spelled as Whisper writes them (a leading space)."""
    tok = processor.tokenizer
    return [tok(" " + u.text.strip(), add_special_tokens=False).input_ids for u in data.utterances]


def check_pair(student, teacher) -> None:
    """Student and teacher must share the vocabulary and the prompt for token-level KD."""
    if student.config.vocab_size != teacher.config.vocab_size:
        raise SlimkitError(f"student vocabulary {student.config.vocab_size} != teacher {teacher.config.vocab_size}; "
                           "KD compares token distributions, so both need the same tokenizer")
    if prompt_ids(student) != prompt_ids(teacher):
        raise SlimkitError("student and teacher start transcripts with different prompt tokens; use a student "
                           "made from this teacher (slimkit prune)")


def encoder_matches(student, teacher, weights: bool = False) -> bool:
    """Whether the student's encoder has the teacher's shapes (then it can stay frozen), and with
    `weights` also the teacher's exact weights (then its outputs can be computed once)."""
    s, t = student.get_encoder().state_dict(), teacher.get_encoder().state_dict()
    same = s.keys() == t.keys() and all(s[k].shape == t[k].shape for k in s)
    return same and (not weights or all(torch.equal(s[k], t[k]) for k in s))


@torch.no_grad()
def encoder_states(model, processor, data: SpeechSet, progress: bool = True) -> torch.Tensor:
    """(N, 1500, d_model) encoder outputs of every utterance's 30 s padded features."""
    from tqdm import tqdm

    model.eval()
    encoder = model.get_encoder()
    return torch.cat([encoder(log_mel(processor, u.audio)).last_hidden_state
                      for u in tqdm(data.utterances, desc=f"encoder states {data.name}", unit="utt",
                                    disable=not progress)])


def _decoder_call(model, inputs: dict):
    """The seq2seq call on precomputed encoder states: only the decoder runs."""
    return model(encoder_outputs=(inputs["encoder_states"],), decoder_input_ids=inputs["decoder_input_ids"],
                 use_cache=False)


def recover(student, teacher, processor, train: SpeechSet, val: SpeechSet | None, cfg: SpeechDistillConfig,
            threads: int = THREADS, progress: bool = True, states_cache: dict | None = None) -> RecoveryReport:
    """Train `student` in place on the teacher's pseudo-labels of `train` (see the module docstring).

    `states_cache`, a dict the caller keeps, holds the encoder states computed here (keyed by the
    teacher encoder's weights and the utterances' audio), so several students of one teacher in
    one process compute them once."""
    from slimkit.distill import CacheConfig, Distiller, TrainConfig, seq2seq

    check_pair(student, teacher)
    if not train.utterances:
        raise SlimkitError("the training set is empty")
    prompt, eos = prompt_ids(teacher), int(teacher.config.eos_token_id)
    frozen = cfg.freeze_encoder == "yes" or (cfg.freeze_encoder == "auto" and encoder_matches(student, teacher))
    shared = frozen and encoder_matches(student, teacher, weights=True)
    task = dataclasses.replace(seq2seq(), call=_decoder_call, settings={"inputs": "encoder_states"}) if shared else seq2seq()

    def inputs(data: SpeechSet, tokens: list[list[int]]) -> dict:
        if not shared:
            return label_batch(features_of(processor, data), tokens, prompt, eos)
        batch = label_batch(torch.zeros(len(data), 0), tokens, prompt, eos)
        del batch["input_features"]
        if states_cache is None:
            return {"encoder_states": encoder_states(teacher, processor, data, progress), **batch}
        key = (_weights_digest(teacher.get_encoder()), tuple(_utterance_key(u.audio) for u in data.utterances))
        if key not in states_cache:
            states_cache[key] = encoder_states(teacher, processor, data, progress)
        return {"encoder_states": states_cache[key], **batch}

    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            warmup_steps=cfg.warmup_steps, grad_clip=1.0, seed=cfg.seed, amp="off",
                            max_minutes=cfg.minutes)
    cache = CacheConfig(dir=cache_root() / "kd", topk=cfg.top_k, batch_size=cfg.batch_size)
    distiller = Distiller(teacher if cfg.loss == "kd" else None, student, cfg.terms(), train_cfg, cache=cache,
                          task=task, device="cpu")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        labels = pseudo_labels(teacher, processor, train, threads, progress)
        keep = keep_labels(processor, train, labels, cfg.max_label_wer)
        if not keep:
            raise SlimkitError(f"no pseudo-label of the {len(train)} training utterances is within WER "
                               f"{cfg.max_label_wer:g} of its sentence; raise max_label_wer")
        kept = SpeechSet(train.name, [train.utterances[i] for i in keep])
        t1 = time.perf_counter()
        batch = inputs(kept, [labels[i] for i in keep])
        val_batch = inputs(val, reference_tokens(processor, val)) if val is not None and val.utterances else None
        for p in student.get_encoder().parameters():
            p.requires_grad_(not frozen)
        t2 = time.perf_counter()
        distiller.fit(batch, val_batch, progress=progress, desc=f"speech {cfg.loss}")
        t3 = time.perf_counter()
    finally:
        torch.set_num_threads(old)
        for p in student.parameters():
            p.requires_grad_(True)
        student.eval()
    outputs = distiller.teacher_outputs
    return RecoveryReport(cfg.loss, distiller.steps_done, t3 - t2, t1 - t0, len(keep), t2 - t1,
                          bool(outputs is not None and outputs.reused), frozen, shared, distiller.ended_by,
                          list(distiller.history))


__all__ = ["RecoveryReport", "SpeechDistillConfig", "check_pair", "encoder_matches", "encoder_states", "features_of",
           "keep_labels", "label_batch", "prompt_ids", "pseudo_labels", "recover", "reference_tokens"]
