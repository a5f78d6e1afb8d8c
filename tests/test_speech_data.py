"""Speech data: the user-folder loader's checks, WER normalisation, synthesised-set rules, the CLI's
one-line errors, and one real conversion plus transcription (the only test that needs the weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimkit.errors import SlimkitError
from tests.speech_helpers import require_built_in_whisper

sf = pytest.importorskip("soundfile", reason="speech extra not installed (pip install -e '.[speech]')")


def _wav(path, seconds: float, rate: int = 16_000, channels: int = 1) -> None:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(str(path), np.stack([tone] * channels, axis=1) if channels > 1 else tone, rate)


def _folder(tmp_path, rows: str, files: dict):
    for name, (seconds, rate) in files.items():
        _wav(tmp_path / name, seconds, rate)
    (tmp_path / "transcripts.tsv").write_text(rows, encoding="utf-8")
    return tmp_path


def _one_line(exc) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_folder_loads_resamples_and_says_so(tmp_path) -> None:
    from slimkit.speech.audio import load_folder

    folder = _folder(tmp_path, "file\ttext\na.wav\thello there\n\n# a comment\nb.wav\tgood morning\textra column\n",
                     {"a.wav": (1.0, 16_000), "b.wav": (2.0, 44_100)})
    data = load_folder(folder)
    assert [u.id for u in data.utterances] == ["a.wav", "b.wav"]
    assert [u.text for u in data.utterances] == ["hello there", "good morning"]
    assert len(data.utterances[1].audio) == 32_000 and data.utterances[1].audio.dtype == np.float32
    assert data.notes == ["b.wav: resampled from 44100 Hz to 16000 Hz"]
    assert load_folder(folder / "transcripts.tsv", limit=1).utterances[0].id == "a.wav"


@pytest.mark.parametrize("rows, files, message", [
    (None, {"a.wav": (1.0, 16_000)}, "no transcript file .*transcripts.tsv"),
    ("a.wav\thello\nmissing.wav\tgone\n", {"a.wav": (1.0, 16_000)}, "line 2 names missing.wav, which does not exist"),
    ("a.wav\thello\n", {"a.wav": (0.0, 16_000)}, "a.wav holds no audio samples"),
    ("a.wav\thello\n", {"a.wav": (31.0, 16_000)}, "a.wav is 31.0 s long; Whisper takes at most 30 s"),
    ("a.wav\t  \n", {"a.wav": (1.0, 16_000)}, "empty transcript"),
    ("a.wav hello\n", {"a.wav": (1.0, 16_000)}, "line 1 has no tab"),
    ("# only a comment\n", {}, "lists no recordings"),
])
def test_folder_bad_input_is_one_line(tmp_path, rows, files, message) -> None:
    from slimkit.speech.audio import load_folder

    for name, (seconds, rate) in files.items():
        _wav(tmp_path / name, seconds, rate)
    if rows is not None:
        (tmp_path / "transcripts.tsv").write_text(rows, encoding="utf-8")
    with pytest.raises(SlimkitError, match=message) as exc:
        load_folder(tmp_path)
    _one_line(exc)


def test_zero_byte_and_undecodable_files_are_one_line(tmp_path) -> None:
    from slimkit.speech.audio import load_folder

    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "transcripts.tsv").write_text("empty.wav\thello\n")
    with pytest.raises(SlimkitError, match="holds no audio samples") as exc:
        load_folder(tmp_path)
    _one_line(exc)
    (tmp_path / "empty.wav").write_bytes(b"not audio at all")
    with pytest.raises(SlimkitError, match="cannot read audio") as exc:
        load_folder(tmp_path)
    _one_line(exc)


def test_raw_files_are_16_bit_16k_pcm(tmp_path) -> None:
    from slimkit.speech.audio import load_utterance

    pcm = (np.linspace(-0.5, 0.5, 1600) * 32768).astype("<i2")
    (tmp_path / "x.raw").write_bytes(pcm.tobytes())
    utt = load_utterance(tmp_path / "x.raw", "words")
    assert utt.seconds == pytest.approx(0.1)
    np.testing.assert_allclose(utt.audio, pcm / 32768.0)


def test_wer_uses_whisper_normalisation() -> None:
    pytest.importorskip("jiwer")
    pytest.importorskip("whisper_normalizer")
    from slimkit.speech.evaluate import word_error_rate

    assert word_error_rate(["Mr. Knightley has ten apples, in colour!"], ["mister knightley has 10 apples in color"]) == 0.0
    assert word_error_rate(["he was not an ill disposed young man"], ["he was not an ill disposed old man"]) == 1 / 8
    assert word_error_rate(["one two", "three four five six"], ["one two", "three"]) == pytest.approx(3 / 6)
    # spoken digits become one number on the reference side; digits written apart count as the same digits
    assert word_error_rate(["two nine three four zero", "five five"], ["2 9 3 4 0.", "5 5"]) == 0.0
    assert word_error_rate(["go forward ten meters"], ["go forward 10 meters"]) == 0.0
    assert word_error_rate(["two nine three"], ["2 9 4"]) == 1.0
    with pytest.raises(SlimkitError):
        word_error_rate(["a"], [])


def test_synthetic_splits_hold_out_whole_sentences() -> None:
    from slimkit.speech.synth import SynthSettings, add_noise, sentence_pool

    train = sentence_pool(SynthSettings(split="train"))
    heldout = sentence_pool(SynthSettings(split="heldout"))
    assert len(heldout) >= 200 and len(train) > 5 * len(heldout)
    assert not set(train) & set(heldout)
    assert all(4 <= len(s.split()) <= 30 and "_" not in s and '"' not in s for s in train + heldout)
    real = ["he was not an ill disposed young man", "it is a truth universally acknowledged"]
    assert not any("truth universally acknowledged" in s for s in sentence_pool(SynthSettings(split="train"), real)
                   + sentence_pool(SynthSettings(split="heldout"), real))
    clean = np.sin(np.linspace(0, 300, 48_000)).astype(np.float32)
    noisy = add_noise(clean, 10.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.2)
    assert add_noise(clean, None, np.random.default_rng(0)) is clean


def test_real_set_never_feeds_synthesis() -> None:
    from slimkit.speech.audio import POCKETSPHINX, real_recordings
    from slimkit.speech.synth import SynthSettings, _normalise, sentence_pool

    if not POCKETSPHINX.is_dir():
        pytest.skip("Debian package pocketsphinx-testdata not installed")
    real = real_recordings()
    assert len(real) == 12 and all(0 < u.seconds < 30 for u in real.utterances)
    spoken = {_normalise(s) for split in ("train", "heldout") for s in sentence_pool(SynthSettings(split=split))}
    assert not any(_normalise(u.text) in spoken for u in real.utterances)


def test_cli_reports_bad_data_in_one_line_before_loading_a_model(tmp_path) -> None:
    from typer.testing import CliRunner

    from slimkit.cli.main import app

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (model / "processor_config.json").write_text("{}")  # never read: the data check fails first
    audio = tmp_path / "audio"
    audio.mkdir()
    result = CliRunner().invoke(app, ["eval", str(model), "--data", str(audio)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: no transcript file") and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nope"), "--data", str(audio)])
    assert result.exit_code == 2 and "is neither a file, a folder" in result.output
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = CliRunner().invoke(app, ["eval", str(model), "--data", "real"])
    assert result.exit_code == 2 and "--data does not apply to a hf-encoder model" in result.output


def test_built_in_converts_once_and_transcribes_a_real_recording() -> None:
    """The CTranslate2 export becomes a safetensors folder that reloads offline and hears a real card name."""
    pytest.importorskip("transformers")
    pytest.importorskip("jiwer")
    pytest.importorskip("whisper_normalizer")
    from slimkit.speech.audio import real_recordings
    from slimkit.speech.convert import load_whisper, whisper_tiny_en
    from slimkit.speech.evaluate import transcribe, word_error_rate

    require_built_in_whisper()
    model, processor = load_whisper("whisper-tiny.en")
    folder = whisper_tiny_en()
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    utt = next(u for u in real_recordings().utterances if u.id == "001")  # "ten of clubs"
    result = transcribe(model, processor, utt.audio)
    assert word_error_rate([utt.text], [result.text]) == 0.0, result.text
    utt = next(u for u in real_recordings().utterances if u.id.endswith("0930"))  # "he might even have been..."
    trimmed = transcribe(model, processor, utt.audio, trim_encoder=True)
    assert word_error_rate([utt.text], [trimmed.text]) == 0.0, trimmed.text


def test_voices_are_drawn_per_utterance_and_one_voice_sets_keep_their_keys(tmp_path) -> None:
    import hashlib
    import shutil

    import soundfile as sf

    from slimkit.speech.synth import ESPEAK_VOICES, VOICE_DIST, SynthSettings, espeak, synthesize_set

    piper_only = SynthSettings(split="train", utterances=3)
    dump = {k: v for k, v in piper_only.model_dump().items() if k != "voices"}
    old = hashlib.sha1(json.dumps({"format": 1, "voice": VOICE_DIST, **dump}, sort_keys=True).encode()).hexdigest()[:10]
    assert piper_only.key() == old  # sets cached before voices existed are still found
    assert SynthSettings(split="train", utterances=3, voices=ESPEAK_VOICES[:2]).key() != old
    with pytest.raises(ValueError, match="voices"):
        SynthSettings(voices=("festival",))
    if shutil.which("espeak-ng") is None:
        pytest.skip("Debian package espeak-ng not installed")
    with pytest.raises(SlimkitError, match="espeak-ng could not speak"):
        espeak("espeak:xx-zz", "Hello.", 1.0)
    slow, fast = espeak(ESPEAK_VOICES[0], "It was a fine day.", 1.2), espeak(ESPEAK_VOICES[0], "It was a fine day.", 0.8)
    assert len(slow) > 1.3 * len(fast)  # length_scale sets the rate, as Piper's does

    mixed = SynthSettings(split="train", utterances=6, voices=ESPEAK_VOICES[:3], snrs_db=(None,))
    a, b = synthesize_set(mixed, tmp_path / "a"), synthesize_set(mixed, tmp_path / "b")
    rows = [line.split("\t") for line in (a / "transcripts.tsv").read_text().splitlines()]
    assert rows[0] == ["file", "text", "length_scale", "snr_db", "voice"] and len(rows) == 7
    assert {r[4] for r in rows[1:]} <= set(ESPEAK_VOICES[:3]) and len({r[4] for r in rows[1:]}) > 1
    for r in rows[1:]:
        x, rate = sf.read(str(a / r[0]))
        assert rate == 16_000 and np.array_equal(x, sf.read(str(b / r[0]))[0])  # the same set twice
