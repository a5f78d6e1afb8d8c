"""The whisper family: Hugging Face `WhisperForConditionalGeneration` through `slimkit compress`.

- Loading: a `save_pretrained` folder of the model and its processor, or the built-in
  `whisper-tiny.en` (slimkit.speech.convert); `--task` may only agree (speech).
- Data (`prepare`, slimkit.families.whisper.data): an audio folder with transcripts.tsv, or the
  built-ins 'synth' and 'real'. Training batches hold the log-mel features and the teacher's greedy
  transcripts (pseudo-labels, distil-whisper's recipe, slimkit.speech.recover) under teacher
  forcing, so recovery is the engine's KD of token distributions plus CE on the pseudo-labels.
- Task (`speech_task`): WER of greedy transcription against the reference transcripts (lower is
  better), so floors such as `wer+2pt` read it. A batch with decoder inputs is teacher-forced (the
  training losses read its logits); a batch of features alone is transcribed (validation).
- Cuts (`WhisperCutter`): whole decoder layers, keeping the maximally spaced ones
  (slimkit.speech.prune.spaced_layers), and encoder FFN neurons (prune_encoder_ffn). Both are
  widths WhisperConfig states, so the result reloads with plain `from_pretrained` and runs
  `generate()`.
- Timing (`TranscribeTimer`): end-to-end transcription of one held-out utterance at batch 1.

The trimmed encoder input (slimkit.speech.evaluate's trim_encoder) is not a compress cut: Hugging
Face's WhisperEncoder accepts exactly 2 x max_source_positions frames, so a saved model reloaded with
from_pretrained and run by generate() cannot use it. Carrying it would mean saving a shorter
`max_source_positions` with a feature extractor of a shorter `chunk_length`: a model that no longer
hears audio beyond that length, a different product rather than a cheaper one, and a third search
axis the engine's depth x width search does not have. It stays `slimkit eval MODEL --trim-encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.families import FAMILIES, check_task
from slimkit.families.base import Prepared, Source, shared_copy

ARCH = "WhisperForConditionalGeneration"
DEFAULT_FLOOR = "wer+2pt"
DECODER = "model.decoder.layers"
ENCODER = "model.encoder.layers"
# Settings a Whisper run gets unless the user sets them:
# - batch_size 8: a batch holds 8 x 80 x 3000 features (7.7 MB) and logits of 8 x tokens x 51864;
# - lr 1e-4, temperature 2, alpha 0.55: distil-whisper's recipe for pretrained Whisper (KL weight 1,
#   CE weight 0.8, i.e. 0.55 : 0.45), as slimkit.speech.recover uses it;
# - calib_batches 1: the cuts need no calibration (layer spacing and weight magnitudes);
# - three FFN ratios: search.py times (decoder layers) x (1 + ratios) whole transcriptions.
WHISPER_SETTINGS = {"batch_size": 8, "calib_batches": 1, "lr": 1e-4, "temperature": 2.0, "alpha": 0.55,
                    "ratios": (0.25, 0.5, 0.75)}
MACS_NOTE = ("MACs are one forward pass: the encoder over the features and the decoder over the 2-token prompt "
             "(a transcription's decode adds one decoder pass per token)")
ORDER_NOTE = ("decoder layers go in the order that keeps the kept ones maximally spaced (distil-whisper's "
              "choice); the block ranking's influence is that order's rank (1, 2, 4...), not a measurement")
TRIM_NOTE = ("the trimmed encoder input is not a compress cut: a reloaded model run by generate() takes the full "
             "30 s window (slimkit eval MODEL --trim-encoder measures it)")


def is_whisper(model: nn.Module) -> bool:
    return type(model).__name__ == ARCH


# -- cuts ----------------------------------------------------------------------------------------
def removal_order(n_layers: int) -> list[int]:
    """Decoder layers in the order compress removes them: after k removals the kept layers are
    slimkit.speech.prune.spaced_layers(n, n - k) whenever that set is one layer short of the
    previous one (always for 4 layers, as tiny.en has), else the set whose largest gap is smallest.
    The first layer is never removed; the last goes only when it is all that is left beside it."""
    from slimkit.speech.prune import spaced_layers

    kept, order = list(range(n_layers)), []
    for k in range(1, n_layers):
        target = set(spaced_layers(n_layers, n_layers - k))
        extra = [i for i in kept if i not in target]
        if len(extra) == 1 and target <= set(kept):
            drop = extra[0]
        else:
            inner = [i for i in kept if i not in (0, n_layers - 1)] or [n_layers - 1]

            def spread(i: int) -> tuple:
                rest = [j for j in kept if j != i]
                gaps = [b - a for a, b in zip(rest, rest[1:])] or [0]
                return max(gaps), sum(g * g for g in gaps), i
            drop = min(inner, key=spread)
        kept.remove(drop)
        order.append(drop)
    return order


@dataclass
class WhisperCutter:
    """Cuts a Whisper: decoder layers (blocks) and encoder FFN neurons (the channel ratio); copies
    share every tensor they do not change with the model they come from (families.base.shared_copy)."""

    name: str = "whisper"

    def blocks(self, model: nn.Module) -> list[str]:
        from slimkit.speech.prune import decoder_layers

        return [f"{DECODER}.{i}" for i in range(1, len(decoder_layers(model)))]

    def influences(self, model: nn.Module, calib: list[Any]) -> dict[str, float]:
        """Not a measurement: the rank of `removal_order`, doubling per step, so that the engine's
        influence-per-millisecond order (the layers cost the same) keeps the spaced layers."""
        from slimkit.speech.prune import decoder_layers

        order = removal_order(len(decoder_layers(model)))
        return {f"{DECODER}.{i}": 2.0 ** rank for rank, i in enumerate(order)}

    def remove(self, model: nn.Module, names: list[str]) -> nn.Module:
        """A copy without the named decoder layers; config, layer_idx and alignment heads follow."""
        from slimkit.speech.prune import decoder_layers, remove_decoder_layers

        drop = {int(n.rsplit(".", 1)[1]) for n in names}
        m = shared_copy(model)
        remove_decoder_layers(m, [i for i in range(len(decoder_layers(m))) if i not in drop])
        return m.eval()

    def cut(self, model: nn.Module, ratio: float, calib: list[Any],
            exact: bool = True) -> tuple[nn.Module, dict[str, list[int]]]:
        """`ratio` of every encoder layer's FFN neurons, lowest magnitude score first (cheap, so
        exact=False cuts the same neurons)."""
        from slimkit.speech.prune import encoder_layers, prune_encoder_ffn

        m = shared_copy(model)
        before = int(m.config.encoder_ffn_dim)
        if ratio > 0:
            prune_encoder_ffn(m, ratio)
        after = int(m.config.encoder_ffn_dim)
        return m.eval(), {f"{ENCODER}.{i}.fc1": [after, before] for i in range(len(encoder_layers(m)))}

    def intact(self, model: nn.Module) -> dict[str, dict[str, str]]:
        return {"modules": {
            f"{DECODER}.0": "the first decoder layer always stays (distil-whisper keeps first and last)",
            f"{ENCODER}.*.self_attn": "WhisperAttention derives head size as d_model / heads, so no WhisperConfig "
                                      "describes fewer heads and the folder would not reload",
            "model.decoder.embed_tokens": "the vocabulary is the tokenizer's (tied to the output projection)",
            "model.encoder.conv1": "the input: the processor's mel bins over the full window",
            f"{DECODER}.*.fc1": "compress cuts decoder depth and encoder FFN width (slimkit.speech.prune)",
        }, "groups": {}}


# -- timing --------------------------------------------------------------------------------------
class Transcriber(nn.Module):
    """forward(features) = the encoder, then greedy decoding of exactly `tokens` tokens."""

    def __init__(self, model: nn.Module, tokens: int) -> None:
        super().__init__()
        self.model, self.tokens = model, tokens

    @torch.inference_mode()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        from slimkit.speech.evaluate import encode
        from slimkit.speech.greedy import fits_greedy_loop, greedy_tokens

        encoded = encode(self.model, features)
        if fits_greedy_loop(self.model):
            return greedy_tokens(self.model, encoded, max_new_tokens=self.tokens, stop_at_end=False)
        return self.model.generate(encoder_outputs=encoded, do_sample=False, num_beams=1,
                                   min_new_tokens=self.tokens, max_new_tokens=self.tokens)


@dataclass
class TranscribeTimer:
    """Milliseconds to transcribe one utterance end to end at batch 1, every model alike in one run.

    Features excluded: the log-mel features are computed once and fed to every model, since they cost
    the same whatever the model. Each model runs its encoder and a greedy decode of `tokens` tokens,
    the dense model's transcript length: fixed, because a cut that is not recovered yet may never
    stop, and a timer must give every model the same work. slimkit.measure's interleaved timing
    alternates the models, `burst` calls each per round (the first brings the weights back into the
    caches), fastest call per model; a call on few models gets more rounds (`min_runs` in all)."""

    features: torch.Tensor
    tokens: int
    rounds: int = 3
    min_runs: int = 20
    burst: int = 2
    threads: int = 2

    @classmethod
    def for_dense(cls, model: nn.Module, features: torch.Tensor, most: int = 128, **kw) -> TranscribeTimer:
        """A timer on `features` (1, mels, frames) whose token count is `model`'s transcript length."""
        with torch.inference_mode():
            from slimkit.speech.evaluate import decode, encode

            ids = decode(model.eval(), encode(model, features[:1]))
        return cls(features[:1], max(1, min(most, int(ids.shape[-1]))), **kw)

    @property
    def method(self) -> str:
        return (f"in this process: end-to-end transcription of one held-out utterance at batch 1, features excluded "
                f"(computed once, fed to every model): the encoder over {self.features.shape[-1]} frames and a greedy "
                f"decode of {self.tokens} tokens (the dense model's transcript length, the same work for every model), "
                f"the models alternated by slimkit.measure.measure_latency_interleaved in {self.rounds} rounds or more "
                f"({self.min_runs // 2} when two models are compared), {self.burst} calls per turn, fastest call per "
                f"model, {self.threads} threads")

    def __call__(self, models: list[nn.Module]) -> list[float]:
        from slimkit.measure import measure_latency_interleaved

        rounds = max(self.rounds, -(-self.min_runs // len(models)))
        runs = measure_latency_interleaved([Transcriber(m, self.tokens) for m in models], self.features, runs=rounds,
                                           warmup=1, threads=self.threads, stat="min", burst=self.burst)
        return [r.ms for r in runs]


def engine_parts(model: nn.Module, example: Any, settings: Any) -> tuple[WhisperCutter | None, TranscribeTimer | None]:
    """The cutter and timer compress() uses for a speech task (slimkit.families.engine_parts)."""
    if not is_whisper(model):
        return None, None
    features = example.get("input_features") if isinstance(example, dict) else None
    if not isinstance(features, torch.Tensor) or features.dim() != 3 or "decoder_input_ids" not in example:
        raise SlimkitError("a Whisper run needs example={'input_features': (1, mels, frames), 'decoder_input_ids': "
                           "the prompt} (MACs are counted on one forward pass); pass example=prepared.example from "
                           "slimkit.families.whisper.prepare")
    return WhisperCutter(), TranscribeTimer.for_dense(model, features, threads=settings.threads)


# -- the task ------------------------------------------------------------------------------------
def word_edits(references: list[str], hypotheses: list[str]) -> tuple[int, int]:
    """(word edits, reference words) after Whisper's English normaliser with digit runs joined, as
    slimkit.speech.evaluate.word_error_rate counts them; summed over a split, their ratio is its WER."""
    import jiwer

    from slimkit.speech.evaluate import join_digit_runs, normalizer

    norm = normalizer()
    refs = [join_digit_runs(norm(r)) for r in references]
    hyps = [join_digit_runs(norm(h)) for h in hypotheses]
    empty = [r for r, n in zip(references, refs) if not n.strip()]
    if empty:
        raise SlimkitError(f"reference {empty[0]!r} is empty after normalisation; WER needs words to compare against")
    out = jiwer.process_words(refs, hyps)
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


def transcribe_or_force(model: nn.Module, inputs: dict) -> Any:
    """Teacher-forced logits for a batch with decoder inputs (training), else greedy token ids (validation)."""
    if "decoder_input_ids" in inputs:
        return model(**inputs, use_cache=False)
    from slimkit.speech.evaluate import decode, encode

    with torch.inference_mode():
        return decode(model, encode(model, inputs["input_features"]))


def speech_task(tokenizer: Any):
    """The engine task: the seq2seq losses (KD at label positions, CE on labels) and WER as its metric."""
    from slimkit.distill import Metric, seq2seq

    def batch(ids: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
        hyps = [tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True) for row in ids.tolist()]
        refs = [tokenizer.decode([t for t in row if t != -100], skip_special_tokens=True) for row in labels.tolist()]
        return word_edits(refs, hyps)

    wer = Metric("wer", batch, higher_is_better=False)
    return replace(seq2seq(), name="speech", metrics=(wer,), call=transcribe_or_force)


# -- loading -------------------------------------------------------------------------------------
def load(name_or_folder: str | Path, requested: str | None) -> Source:
    """The built-in whisper-tiny.en or a Whisper folder -> Source with the processor and the speech task."""
    import json

    from transformers.utils import logging as transformers_logging

    from slimkit.speech.convert import BUILTINS, load_whisper, resolve_model

    arch = ARCH
    if str(name_or_folder) not in BUILTINS:
        p = Path(name_or_folder)
        try:
            config = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SlimkitError(f"{p / 'config.json'} is not a readable JSON config; save the model with "
                               f"save_pretrained") from None
        arch = (config.get("architectures") or [""])[0] or ARCH
    check_task("whisper", "speech", requested, arch)  # before any weights load
    if arch != ARCH:
        raise SlimkitError(f"{name_or_folder} holds {arch}; the whisper family takes {FAMILIES['whisper'].takes} "
                           f"(a transcribing model)")
    transformers_logging.disable_progress_bar()  # a bar per load would bury the one-line errors
    folder = resolve_model(name_or_folder)
    model, processor = load_whisper(folder)
    return Source(model, "huggingface", task=speech_task(processor.tokenizer), family="whisper", processor=processor,
                  extras={"folder": folder, "task": "speech", "config": model.config})


def prepare(source: Source, spec: str | None, seed: int, n_train: int = 0, max_label_wer: float | None = 0.1,
            progress: bool = True) -> Prepared:
    """The speech data for `source` (slimkit.families.whisper.data.prepare_speech)."""
    from slimkit.families.whisper.data import prepare_speech

    return prepare_speech(source.model, source.processor, spec, seed, n_train, max_label_wer, progress)


def check_data(spec: str | None) -> None:
    """Refuse, before the model is loaded, --data that cannot give speech (data.check_speech_data)."""
    from slimkit.families.whisper.data import check_speech_data

    check_speech_data(spec)


__all__ = ["DEFAULT_FLOOR", "MACS_NOTE", "ORDER_NOTE", "TRIM_NOTE", "TranscribeTimer", "Transcriber",
           "WHISPER_SETTINGS", "WhisperCutter", "check_data", "engine_parts", "is_whisper", "load",
           "prepare", "removal_order", "speech_task", "word_edits"]
