"""Speech sets: the real recordings of Debian's pocketsphinx-testdata, and a user's own folder.

Every set is a list of `Utterance` (mono float32 at 16 kHz, the rate Whisper's features assume, and
its transcript). Loading checks everything before any model runs, and bad input is one line each:
- audio at another sample rate is resampled to 16 kHz (scipy.signal.resample_poly, a polyphase
  filter) and the set's `notes` say which files were; a multi-channel file is averaged to mono, and
  noted too. Refusing would only push the same resampling onto the user;
- a missing transcript file, a transcript naming a missing audio file, an empty audio file, an
  empty transcript and an utterance longer than 30 s (Whisper's whole input window; longer audio
  needs segmenting, which evaluation here does not do) are refused.

A user's folder holds the audio files and ``transcripts.tsv``: one line per utterance,
``<audio file relative to the folder>\\t<transcript>``; blank lines, lines starting with ``#`` and a
``file\\ttext`` header are skipped, further columns are ignored. Audio is anything soundfile reads
(WAV, FLAC, OGG...) or ``.raw``: headerless 16-bit little-endian mono PCM at 16 kHz.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimkit.errors import SlimkitError

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0
TRANSCRIPTS = "transcripts.tsv"
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
_TIDIGITS = {"z": "zero", "o": "oh", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
             "6": "six", "7": "seven", "8": "eight", "9": "nine"}


@dataclass(frozen=True)
class Utterance:
    """One recording: `audio` is mono float32 at 16 kHz, `text` its reference transcript."""

    id: str
    audio: np.ndarray
    text: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class SpeechSet:
    """A named list of utterances and what loading had to change (resampling, mixing down)."""

    name: str
    utterances: list[Utterance]
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)

    def __len__(self) -> int:
        return len(self.utterances)


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise SlimkitError("reading audio needs the PyPI package soundfile; install the speech extra: "
                           "pip install -e '.[speech]'") from None
    return soundfile


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int, int]:
    """(samples as float32, sample rate, channels) of one file; `.raw` is 16-bit mono 16 kHz PCM."""
    p = Path(path)
    if p.suffix.lower() == ".raw":
        data = p.read_bytes()
        if len(data) % 2:
            raise SlimkitError(f"{p} has an odd byte count; a .raw file must be 16-bit little-endian mono PCM at 16 kHz")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, SAMPLE_RATE, 1
    sf = _soundfile()
    try:
        audio, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except RuntimeError as exc:  # soundfile's errors derive from it
        raise SlimkitError(f"cannot read audio {p}: {str(exc).splitlines()[0]}; slimkit reads what soundfile reads "
                           "(WAV, FLAC, OGG...) and headerless 16-bit 16 kHz .raw") from None
    return audio.mean(axis=1).astype(np.float32), int(rate), audio.shape[1]


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """`audio` at `target` Hz by polyphase filtering (scipy.signal.resample_poly), float32."""
    if rate == target:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def load_utterance(path: str | os.PathLike, text: str, uid: str | None = None,
                   notes: list[str] | None = None) -> Utterance:
    """One checked utterance at 16 kHz; conversions are appended to `notes`."""
    p = Path(path)
    if not p.is_file():
        raise SlimkitError(f"audio file {p} does not exist")
    audio, rate, channels = read_audio(p) if p.stat().st_size else (np.zeros(0, np.float32), SAMPLE_RATE, 1)
    if audio.size == 0:
        raise SlimkitError(f"{p} holds no audio samples; remove it from the transcript file or replace it")
    if rate <= 0:
        raise SlimkitError(f"{p} declares sample rate {rate}; re-save it at 16000 Hz")
    if notes is not None and channels > 1:
        notes.append(f"{p.name}: {channels} channels averaged to mono")
    if rate != SAMPLE_RATE:
        audio = resample(audio, rate)
        if notes is not None:
            notes.append(f"{p.name}: resampled from {rate} Hz to {SAMPLE_RATE} Hz")
    seconds = len(audio) / SAMPLE_RATE
    if seconds > MAX_SECONDS:
        raise SlimkitError(f"{p} is {seconds:.1f} s long; Whisper takes at most {MAX_SECONDS:.0f} s per utterance: "
                           "cut it into shorter pieces")
    if not text.strip():
        raise SlimkitError(f"{p} has an empty transcript; WER needs a reference: write what is said")
    return Utterance(uid or p.stem, audio, text.strip())


def read_transcripts(tsv: Path) -> list[tuple[int, str, str]]:
    """(line number, audio file, transcript) rows of a transcript TSV (format in the module docstring)."""
    if not tsv.is_file():
        raise SlimkitError(f"no transcript file {tsv}; write one line per recording: <audio file>\\t<transcript>")
    try:
        lines = tsv.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SlimkitError(f"{tsv} is not UTF-8 text") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise SlimkitError(f"{tsv} line {number} has no tab; write <audio file>\\t<transcript>")
        if number == 1 and [f.strip().lower() for f in fields[:2]] == ["file", "text"]:
            continue
        rows.append((number, fields[0].strip(), fields[1].strip()))
    if not rows:
        raise SlimkitError(f"{tsv} lists no recordings; write one line per recording: <audio file>\\t<transcript>")
    return rows


def load_folder(path: str | os.PathLike, limit: int | None = None) -> SpeechSet:
    """A user's folder (or its transcript TSV) as a checked SpeechSet; see the module docstring."""
    p = Path(path).expanduser()
    if p.is_file():
        folder, tsv = p.parent, p
    elif p.is_dir():
        folder, tsv = p, p / TRANSCRIPTS
    else:
        raise SlimkitError(f"speech data {path!s} is neither 'real', 'synth' nor an existing folder or TSV file")
    rows = read_transcripts(tsv)
    for number, name, _ in rows:  # every path is checked before any audio is decoded
        if not (folder / name).is_file():
            raise SlimkitError(f"{tsv} line {number} names {name}, which does not exist in {folder}")
    notes: list[str] = []
    utterances = [load_utterance(folder / name, text, name, notes) for _, name, text in rows[:limit]]
    return SpeechSet(folder.name or str(folder), utterances, notes)


def _sphinx_lines(path: Path) -> list[tuple[str, str]]:
    """(utterance id, text) from a Sphinx transcription file: ``<s> words </s> (id)``."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if m and m.group(1).strip():
            rows.append((m.group(2), m.group(1).strip()))
    return rows


def real_recordings(root: Path = POCKETSPHINX) -> SpeechSet:
    """The 12 transcribed real recordings of pocketsphinx-testdata; a test set, never for training.

    Transcripts come from the package's files: the cards and LibriVox transcription files, the
    "go forward" grammar for goforward.raw, and the TIDIGITS file-name convention (digits, z = zero,
    o = oh) for dhd.2934z.raw. numbers.raw and something.raw have no transcript and are left out.
    """
    if not root.is_dir():
        raise SlimkitError(f"the real recordings come from the Debian package pocketsphinx-testdata ({root} is "
                           "missing); install it: apt-get install pocketsphinx-testdata")
    rows: list[tuple[Path, str]] = []
    for sub, listing in (("cards", "cards.transcription"), ("librivox", "transcription")):
        rows += [(root / sub / f"{uid}.wav", text) for uid, text in _sphinx_lines(root / sub / listing)]
    grammar = re.search(r"public\s+<\w+>\s*=\s*([a-z ]+);", (root / "goforward.gram").read_text(encoding="utf-8"))
    if grammar is None:
        raise SlimkitError(f"{root / 'goforward.gram'} has no public rule; reinstall pocketsphinx-testdata")
    rows.append((root / "goforward.raw", grammar.group(1).strip()))
    for raw in sorted((root / "tidigits").glob("*.raw")):
        digits = raw.stem.split(".")[-1]
        rows.append((raw, " ".join(_TIDIGITS[c] for c in digits if c in _TIDIGITS)))
    utterances = [load_utterance(path, text, path.stem) for path, text in rows]
    return SpeechSet("real", utterances)
