"""`slimkit export WHISPER --ct2 DIR`: ctranslate2's converter, faster-whisper's transcripts checked against
PyTorch's (at most one in twenty may differ), the folder written whole or not at all."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli.main import app
from slimkit.errors import SlimkitError
from tests.speech_helpers import require_built_in_whisper

pytest.importorskip("ctranslate2")
pytest.importorskip("faster_whisper")


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_one_transcript_in_twenty_may_differ_and_no_more():
    from slimkit.speech.deploy import check_same, differing

    ref = [f"sentence {i}" for i in range(20)]
    assert differing(ref, [" Sentence 0 "] + ref[1:]) == []  # ends and case aside
    check_same(ref, ["other"] + ref[1:], "x")
    with pytest.raises(SlimkitError, match="2 of 20 utterances differently"):
        check_same(ref, ["other", "other"] + ref[2:], "x")


@pytest.fixture(scope="module")
def whisper_30s(tmp_path_factory):
    """A random-init Whisper over tiny.en's vocabulary with Whisper's 30 s input (faster-whisper pads to it)."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor)

    from slimkit.speech.convert import build_processor, ct2_source_dir

    require_built_in_whisper(recordings=False)
    torch.manual_seed(0)
    eos, start, no_ts = 50256, 50257, 50362
    config = WhisperConfig(vocab_size=51864, num_mel_bins=8, d_model=16, encoder_layers=1, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_source_positions=1500, max_target_positions=64, pad_token_id=eos, bos_token_id=eos,
                           eos_token_id=eos, decoder_start_token_id=start)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=start, no_timestamps_token_id=no_ts,
                                               eos_token_id=eos, pad_token_id=eos, bos_token_id=eos,
                                               is_multilingual=False, return_timestamps=False, max_length=6)
    folder = tmp_path_factory.mktemp("whisper30") / "tiny"
    model.save_pretrained(folder)
    tokenizer = build_processor(ct2_source_dir(), 51864).tokenizer
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=8), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _tones(n: int = 3) -> list[np.ndarray]:
    t = np.arange(8000) / 16000
    return [(0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32) for i in range(n)]


def test_a_converted_folder_runs_in_faster_whisper_with_the_folders_mel_settings(whisper_30s, tmp_path):
    from slimkit.speech.deploy import convert, faster_whisper_transcripts, new_tokens

    out = convert(whisper_30s, tmp_path / "ct2", "int8")
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 8
    assert new_tokens(whisper_30s) == 4
    texts, ms = faster_whisper_transcripts(out, _tones(), 2, "int8", new_tokens(whisper_30s))
    assert len(texts) == 3 and ms > 0


def test_transcripts_unlike_pytorchs_are_refused_and_nothing_is_written(whisper_30s, tmp_path):
    from slimkit.speech.deploy import export_ct2

    with pytest.raises(SlimkitError, match="3 of 3 utterances differently.*nothing was written"):
        export_ct2(whisper_30s, tmp_path / "out", "float32", _tones(), ["not what it says"] * 3)
    assert list(tmp_path.iterdir()) == []  # no folder, no stage left behind


@pytest.mark.parametrize("args,message", [
    (["smollm2", "--ct2", "d"], "export it with --onnx"),
    (["whisper-tiny.en", "--ct2", "d", "--int8", "static"], "use --int8 dynamic"),
    (["whisper-tiny.en", "--ct2", "d", "--onnx", "m.onnx"], "give one of --ct2 and --onnx"),
])
def test_bad_ct2_exports_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cli("export", *args)
    assert res.exit_code == 2 and message in res.output and list(tmp_path.iterdir()) == []


def test_the_built_in_tiny_en_exports_to_int8_and_transcribes_the_real_recordings_alike(tmp_path):
    require_built_in_whisper()
    from slimkit.io.outputs import read_manifest
    from slimkit.speech.audio import real_recordings
    from slimkit.speech.deploy import faster_whisper_transcripts

    out = tmp_path / "tiny-int8"
    res = run_cli("export", "whisper-tiny.en", "--ct2", out, "--int8", "dynamic", "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    assert read_manifest(out) is not None  # slimkit's own folder: a later --overwrite may replace it
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    torch_row, ct2_row = report["deployment"]
    assert ct2_row["runtime"] == "faster-whisper" and ct2_row["precision"] == "int8"
    assert report["check"]["same"] * 20 >= report["check"]["of"] * 19
    texts, _ = faster_whisper_transcripts(Path(out), [u.audio for u in real_recordings().utterances], 2, "int8")
    from slimkit.speech.evaluate import word_error_rate

    assert word_error_rate([u.text for u in real_recordings().utterances], texts) == pytest.approx(ct2_row["value"])
    assert abs(ct2_row["value"] - torch_row["value"]) < 0.05
