"""Transcribe speech sets with a Whisper model and report WER and measured speed.

Protocol (stated with every table):
- greedy decoding (num_beams 1, no sampling, no timestamps; the prompt is
  <|startoftranscript|><|notimestamps|>), one utterance at a time, batch 1, by slimkit's written-out
  loop (`slimkit.speech.greedy`: generate()'s tokens without its per-token bookkeeping) where it
  reproduces the model's generation config, else, or with ``use_generate=True``, by transformers'
  ``generate()``; each result says which (`SetResult.decode_loop`);
- WER from jiwer over the whole set (total edits / total reference words), after both texts pass
  through Whisper's English normaliser (transformers' EnglishTextNormalizer with Whisper's
  British-to-American spelling table, shipped by the PyPI package whisper-normalizer), then digit
  runs joined on both sides (`join_digit_runs`: the normaliser writes "five five" as "55", and
  a model's "5 5" must count as the same digits);
- timing in this process with ``torch.set_num_threads(threads)`` (2 by default), time.perf_counter
  around the log-mel features, the encoder and the decoder loop (given the encoder output) of
  every utterance, after one untimed warm-up utterance; mean per utterance. RTF is
  (features + encoder + decode) / audio duration, summed over the set;
- MACs from torch.utils.flop_counter over the encoder and the whole greedy decode of up to
  `macs_utterances` utterances spread over the set, divided by their audio seconds.

Whisper's encoder always takes 30 s of log-mel frames (3000), padding short audio with silence,
so a 2 s utterance pays for 30 s of encoder work. ``trim_encoder=True`` feeds only the frames that
hold the audio plus `trim_pad_s` of padding and slices the encoder's positional embedding to match
(`encode`); whether WER survives is measured, not assumed. The default padding is 10 s because
tiny.en, never trained on short windows, falls into repetition loops on short utterances when
little silence follows the speech (bench/speech.py --pads measures this).
"""

from __future__ import annotations

import copy
import functools
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimkit.errors import SlimkitError
from slimkit.measure.cost import count_params
from slimkit.speech.audio import SpeechSet
from slimkit.speech.greedy import fits_greedy_loop, greedy_tokens

THREADS = 2
HOP = 160            # samples per log-mel frame at 16 kHz
FULL_FRAMES = 3000   # 30 s of frames: what the feature extractor pads every utterance to
GREEDY_LOOP = "slimkit greedy loop"  # `decode_loop`'s name for slimkit.speech.greedy


@functools.lru_cache(maxsize=1)
def normalizer():
    """Whisper's English text normaliser, with its spelling table (from the whisper-normalizer wheel)."""
    import json
    from importlib import resources

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    try:
        table = resources.files("whisper_normalizer").joinpath("normalizers/english.json").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise SlimkitError("WER needs Whisper's spelling table from the PyPI package whisper-normalizer; install the "
                           "speech extra: pip install -e '.[speech]'") from None
    return EnglishTextNormalizer(json.loads(table))


def join_digit_runs(text: str) -> str:
    """Digit groups separated only by spaces, joined: "2 9 3 4 0" -> "29340".

    Whisper's normaliser writes a spoken digit sequence as one number ("two nine three four zero"
    -> "29340", "five five" -> "55") but leaves digits a model wrote apart ("2 9 3 4 0") as five
    words, so the same digits would count as one substitution and four insertions."""
    return re.sub(r"(?<=\d) (?=\d)", "", text)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (edits / reference words) after Whisper's English normalisation of both sides, with digit
    runs joined on both (`join_digit_runs`)."""
    import jiwer

    if len(references) != len(hypotheses) or not references:
        raise SlimkitError(f"WER needs as many hypotheses as references (got {len(hypotheses)} and {len(references)})")
    norm = normalizer()
    refs, hyps = [join_digit_runs(norm(r)) for r in references], [join_digit_runs(norm(h)) for h in hypotheses]
    empty = [r for r, n in zip(references, refs) if not n.strip()]
    if empty:
        raise SlimkitError(f"reference {empty[0]!r} is empty after normalisation; WER needs words to compare against")
    return float(jiwer.wer(refs, hyps))


def trimmed_frames(n_samples: int, pad_s: float) -> int:
    """Log-mel frames kept for an utterance: its audio plus `pad_s` of padding, even (the second conv
    has stride 2), at most the full 3000."""
    frames = math.ceil(n_samples / HOP + pad_s * 100)
    return min(FULL_FRAMES, 2 * math.ceil(frames / 2))


@contextmanager
def _encoder_positions(encoder: nn.Module, positions: int):
    """Let the encoder run on `positions` output frames: its positional table and the length it checks
    are cut to the first `positions` rows for the duration of the block (no weights are copied)."""
    full_table, full_config = encoder.embed_positions, encoder.config
    config = copy.copy(full_config)
    config.max_source_positions = positions
    encoder.embed_positions = nn.Embedding.from_pretrained(full_table.weight[:positions], freeze=True)
    encoder.config = config
    try:
        yield
    finally:
        encoder.embed_positions, encoder.config = full_table, full_config


def encode(model, features: torch.Tensor):
    """The encoder's output for log-mel `features` of any even length up to 3000 frames."""
    encoder = model.get_encoder()
    frames = features.shape[-1]
    if frames == encoder.config.max_source_positions * 2:
        return encoder(features)
    if frames % 2 or not 0 < frames < encoder.config.max_source_positions * 2:
        raise SlimkitError(f"encoder input of {frames} frames; give an even number up to "
                           f"{encoder.config.max_source_positions * 2}")
    with _encoder_positions(encoder, frames // 2):
        return encoder(features)


def decode_loop(model, use_generate: bool = False) -> str:
    """Which loop decodes this model (`decode`, `decode_time_split`): the name the reports print."""
    return GREEDY_LOOP if not use_generate and fits_greedy_loop(model) else "generate()"


def decode(model, encoder_output, use_generate: bool = False) -> torch.Tensor:
    """Greedy token ids (prompt excluded) from an encoder output; the model's generation config applies."""
    if decode_loop(model, use_generate) == GREEDY_LOOP:
        return greedy_tokens(model, encoder_output)
    return model.generate(encoder_outputs=encoder_output, do_sample=False, num_beams=1)


def log_mel(processor, audio: np.ndarray) -> torch.Tensor:
    """(1, 80, 3000) log-mel features of one 16 kHz utterance, padded to 30 s as Whisper expects."""
    return processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features


@dataclass
class Transcription:
    text: str
    features_ms: float
    encoder_ms: float
    decode_ms: float
    tokens: int


@torch.inference_mode()
def transcribe(model, processor, audio: np.ndarray, trim_encoder: bool = False, trim_pad_s: float = 10.0,
               use_generate: bool = False) -> Transcription:
    """One utterance: text and the measured time of its features, encoder and decode."""
    t0 = time.perf_counter()
    features = log_mel(processor, audio)
    if trim_encoder:
        features = features[..., :trimmed_frames(len(audio), trim_pad_s)]
    t1 = time.perf_counter()
    encoded = encode(model, features)
    t2 = time.perf_counter()
    ids = decode(model, encoded, use_generate)
    t3 = time.perf_counter()
    text = processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
    return Transcription(text, 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2), int(ids.shape[-1]))


@torch.inference_mode()
def transcription_macs(model, processor, audio: np.ndarray, trim_encoder: bool = False, trim_pad_s: float = 10.0,
                       use_generate: bool = False) -> int:
    """Multiply-accumulates of the encoder plus the whole greedy decode of one utterance."""
    features = log_mel(processor, audio)
    if trim_encoder:
        features = features[..., :trimmed_frames(len(audio), trim_pad_s)]
    counter = FlopCounterMode(display=False)
    with counter:
        decode(model, encode(model, features), use_generate)
    return int(counter.get_total_flops()) // 2


@dataclass
class SetResult:
    """WER and cost of one model on one set (means are per utterance)."""

    name: str
    utterances: int
    audio_s: float
    wer: float
    features_ms: float
    encoder_ms: float
    decode_ms: float
    rtf: float
    macs_per_audio_s: float
    tokens: float
    trim_encoder: bool
    decode_loop: str
    hypotheses: list[str] = field(default_factory=list, repr=False)


def evaluate(model, processor, data: SpeechSet, trim_encoder: bool = False, threads: int = THREADS,
             macs_utterances: int = 8, trim_pad_s: float = 10.0, progress: bool = True,
             use_generate: bool = False) -> SetResult:
    """Transcribe every utterance of `data` and measure it (protocol in the module docstring)."""
    from tqdm import tqdm

    if not data.utterances:
        raise SlimkitError(f"speech set {data.name} is empty")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        transcribe(model, processor, data.utterances[0].audio, trim_encoder, trim_pad_s, use_generate)  # warm-up
        runs = []
        bar = tqdm(data.utterances, desc=f"{data.name}{' trimmed' if trim_encoder else ''}", unit="utt",
                   disable=not progress)
        for utt in bar:
            runs.append(transcribe(model, processor, utt.audio, trim_encoder, trim_pad_s, use_generate))
            if len(runs) % 10 == 0:  # the running WER, for the progress bar only
                refs = [u.text for u in data.utterances[:len(runs)]]
                bar.set_postfix(wer=f"{word_error_rate(refs, [r.text for r in runs]):.3f}")
        picks = sorted(set(np.linspace(0, len(data) - 1, max(1, min(macs_utterances, len(data)))).round().astype(int)))
        macs = sum(transcription_macs(model, processor, data.utterances[i].audio, trim_encoder, trim_pad_s,
                                      use_generate) for i in picks)
        macs_seconds = sum(data.utterances[i].seconds for i in picks)
    finally:
        torch.set_num_threads(old)
    n = len(runs)
    hyps = [r.text for r in runs]
    busy_ms = sum(r.features_ms + r.encoder_ms + r.decode_ms for r in runs)
    return SetResult(
        name=data.name, utterances=n, audio_s=data.seconds / n,
        wer=word_error_rate([u.text for u in data.utterances], hyps),
        features_ms=sum(r.features_ms for r in runs) / n, encoder_ms=sum(r.encoder_ms for r in runs) / n,
        decode_ms=sum(r.decode_ms for r in runs) / n, rtf=busy_ms / 1e3 / data.seconds,
        macs_per_audio_s=macs / macs_seconds, tokens=sum(r.tokens for r in runs) / n,
        trim_encoder=trim_encoder, decode_loop=decode_loop(model, use_generate), hypotheses=hyps,
    )


def parameters(model) -> int:
    """Parameter count (tied embedding and output projection once)."""
    return count_params(model)[0]


def protocol(threads: int = THREADS, trim_pad_s: float = 10.0, loop: str = GREEDY_LOOP) -> str:
    """One line that says how every number of a table was obtained; `loop` is `decode_loop`'s answer."""
    said = "slimkit's greedy loop, generate()'s tokens" if loop == GREEDY_LOOP else "transformers' generate()"
    return (f"greedy decoding ({said}; beam 1, no timestamps), batch 1, fp32, {threads} threads, in-process "
            "perf_counter means per utterance after 1 warm-up; RTF = (features + encoder + decode) / audio; "
            "WER = jiwer over Whisper's EnglishTextNormalizer, digit runs joined; MACs/s = flop_counter MACs "
            "(encoder + full decode) / audio s; "
            f"trimmed encoder = audio + {trim_pad_s:g} s of frames, positional table sliced")
