"""The whisper family through `compress`: a tiny random-init Whisper with tiny.en's tokenizer and a
1-second feature extractor, saved with save_pretrained, and a folder of short synthetic waveforms
with transcripts.tsv. Compressed through the Python API and the CLI, reloaded with plain
from_pretrained (same logits, generate() runs); the cutter's surgery and removal order; the WER
metric against jiwer; and the bad inputs a speech user meets, one line each, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli.main import app
from slimkit.errors import SlimkitError
from tests.speech_helpers import require_built_in_whisper

pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

QUICK = ["--search-steps", "2", "--recover-steps", "2", "--keep-slower", "--target", "latency=0.99x",
         "--floor", "wer<=1000", "--max-label-wer", "inf", "--seed", "0", "--threads", "1"]
TEXTS = ["one two three", "four five six", "seven eight nine", "the cat sat", "a quiet morning", "green hills",
         "open the door", "it was late", "come here now", "rain again today"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: two threads on a shared 2-core machine wait on each other for most of a tiny model's work."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny_processor():
    """tiny.en's tokenizer (its vocabulary, prompt and special tokens) with 8 mel bins over 1 s windows."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from slimkit.speech.convert import build_processor, ct2_source_dir

    require_built_in_whisper(recordings=False)
    tokenizer = build_processor(ct2_source_dir(), 51864).tokenizer
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=8, chunk_length=1),
                            tokenizer=tokenizer)


def tiny_whisper(decoder_layers: int = 4):
    """A random-init WhisperForConditionalGeneration over tiny.en's vocabulary: d_model 16, 2 encoder
    layers, 50 encoder positions (1 s of frames), greedy English decoding of at most 6 tokens."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    eos, start, no_ts = 50256, 50257, 50362
    config = WhisperConfig(vocab_size=51864, num_mel_bins=8, d_model=16, encoder_layers=2,
                           decoder_layers=decoder_layers, encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_ffn_dim=32, max_source_positions=50, max_target_positions=24,
                           pad_token_id=eos, bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=start)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, no_timestamps_token_id=no_ts, eos_token_id=eos, pad_token_id=eos,
        bos_token_id=eos, is_multilingual=False, return_timestamps=False, max_length=6, do_sample=False,
        num_beams=1, suppress_tokens=[], begin_suppress_tokens=[220, eos])
    return model


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whisper") / "tiny-whisper"
    tiny_whisper().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Ten 0.4-0.8 s waveforms (two tones and noise, seeded) and their transcripts."""
    folder = tmp_path_factory.mktemp("audio") / "clips"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file\ttext"]
    for i, text in enumerate(TEXTS):
        t = np.arange(int(16000 * (0.4 + 0.04 * i))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.1 * np.sin(2 * np.pi * 900 * t)
        sf.write(str(folder / f"clip{i}.wav"), (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32), 16000)
        rows.append(f"clip{i}.wav\t{text}")
    (folder / "transcripts.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_compress_a_whisper_folder_from_the_cli_reloads_and_transcribes(whisper_folder, audio_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    out = tmp_path / "run"
    res = run_cli("compress", whisper_folder, "--data", audio_dir, "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "speech" and report["metric"] == "wer" and report["cutter"] == "whisper"
    assert report["higher_is_better"] is False and report["floor"] == "wer<=1000"
    assert "end-to-end transcription" in report["timing"] and "features excluded" in report["timing"]
    assert "clips" in report["data"] and "seed 0" in report["data"] and "teacher's greedy transcripts" in report["data"]
    assert report["settings"]["batch_size"] == 8 and report["settings"]["alpha"] == 0.55
    assert "model.decoder.layers.0" in report["kept_intact"]["modules"]
    assert any("trimmed encoder" in n for n in report["notes"])
    # plain from_pretrained, with the processor beside it; its config describes the cut
    plain = WhisperForConditionalGeneration.from_pretrained(out / "model", local_files_only=True).eval()
    processor = WhisperProcessor.from_pretrained(out / "model", local_files_only=True)
    chosen = report["candidates"][report["chosen"]]
    assert plain.config.decoder_layers == 4 - chosen["blocks"]
    assert plain.config.encoder_ffn_dim == 64 - round(chosen["ratio"] * 64)
    audio, _ = sf.read(str(audio_dir / "clip0.wav"), dtype="float32")
    feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = plain.generate(feats, max_new_tokens=5)
    assert ids.shape[0] == 1 and 1 < ids.shape[1] <= 2 + 5
    assert isinstance(processor.batch_decode(ids, skip_special_tokens=True)[0], str)


def test_python_api_compress_saves_a_model_whose_reload_gives_the_same_logits(whisper_folder, audio_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from slimkit.compression.run import compress
    from slimkit.families import whisper

    source = whisper.load(whisper_folder, None)
    prepared = whisper.prepare(source, str(audio_dir), seed=0, max_label_wer=None, progress=False)
    assert set(prepared.splits["train"]) == {"input_features", "decoder_input_ids", "labels"}
    assert len(prepared.splits["train"]["labels"]) == 8 and len(prepared.splits["val"]["labels"]) == 1
    settings = {**whisper.WHISPER_SETTINGS, "batch_size": 4, "max_blocks": 1, "ratios": (0.5,), "threads": 1}
    with pytest.raises(SlimkitError, match="example=prepared.example"):  # MACs need the prompt as well
        compress(source.model, prepared.splits["train"], prepared.splits["val"], task=source.task, target="macs=1.05x",
                 floor="wer<=1000", out=tmp_path / "no-example", progress=False, **settings)
    assert not (tmp_path / "no-example").exists()
    res = compress(source.model, prepared.splits["train"], prepared.splits["val"], prepared.splits["test"],
                   source.task, "macs=1.05x", "wer<=1000", example=prepared.example, out=tmp_path / "run",
                   processor=source.processor, data_how=prepared.how,
                   search_steps=1, recover_steps=1, keep_slower=True, progress=False, **settings)
    assert res.report.dense.val["wer"] >= 0 and res.report.result.test["wer"] >= 0
    assert res.report.dense.ms > 0 and res.report.result.ms > 0  # measured, whatever the verdict
    assert "1 threads" in res.report.timing and res.report.result.macs_reduction >= 1.05
    plain = WhisperForConditionalGeneration.from_pretrained(tmp_path / "run" / "model", local_files_only=True).eval()
    batch = {k: v[:2] for k, v in prepared.splits["train"].items() if k != "labels"}
    with torch.no_grad():
        mine = res.model(**batch, use_cache=False).logits
        theirs = plain(**batch, use_cache=False).logits
    assert torch.allclose(mine, theirs, atol=1e-5)
    with torch.no_grad():
        assert plain.generate(batch["input_features"][:1], max_new_tokens=4).shape[1] >= 2


def test_audio_folder_splits_given_are_kept_and_the_rest_carved_with_the_seed(audio_dir, tmp_path):
    import shutil

    from slimkit.families.whisper.data import speech_sets

    root = tmp_path / "split"
    for split, names in (("train", range(8)), ("test", range(8, 10))):
        (root / split).mkdir(parents=True)
        for i in names:
            shutil.copy(audio_dir / f"clip{i}.wav", root / split)
        (root / split / "transcripts.tsv").write_text("".join(f"clip{i}.wav\t{TEXTS[i]}\n" for i in names))
    sets, how = speech_sets(str(root), seed=3)
    assert [u.text for u in sets["test"].utterances] == TEXTS[8:]  # given: kept as it is
    assert len(sets["val"]) == 1 and len(sets["train"]) == 7 and "seed 3" in how
    assert not {u.id for u in sets["val"].utterances} & {u.id for u in sets["train"].utterances}
    again, _ = speech_sets(str(root), seed=3)
    assert [u.id for u in again["val"].utterances] == [u.id for u in sets["val"].utterances]


def test_cutter_keeps_spaced_layers_and_shares_untouched_weights():
    from slimkit.families.whisper import WhisperCutter, removal_order
    from slimkit.speech.prune import spaced_layers

    assert removal_order(4) == [1, 2, 3]
    for n in (2, 3, 4, 5, 6, 8):
        order = removal_order(n)
        assert sorted(order) == list(range(1, n)) and order[-1] == n - 1  # the last goes last, the first never
        before = list(range(n))
        for k in range(1, n):  # nested sets: spaced_layers' whenever it is one layer short of the last set
            kept = sorted(set(range(n)) - set(order[:k]))
            assert 0 in kept and len(kept) == n - k
            if set(spaced_layers(n, n - k)) <= set(before):
                assert kept == spaced_layers(n, n - k)
            before = kept
    assert removal_order(5) == [2, 1, 3, 4]  # [0, 1, 3, 4] then [0, 3, 4]... spaced(5, 3) = [0, 2, 4] is not nested
    model = tiny_whisper()
    cutter = WhisperCutter()
    assert cutter.blocks(model) == ["model.decoder.layers.1", "model.decoder.layers.2", "model.decoder.layers.3"]
    infl = cutter.influences(model, [])
    assert sorted(infl, key=infl.get) == ["model.decoder.layers.1", "model.decoder.layers.2", "model.decoder.layers.3"]
    short = cutter.remove(model, ["model.decoder.layers.1", "model.decoder.layers.2"])
    assert short.config.decoder_layers == 2 and len(model.model.decoder.layers) == 4
    assert short.model.decoder.layers[1].fc1.weight is model.model.decoder.layers[3].fc1.weight
    assert [lay.self_attn.layer_idx for lay in short.model.decoder.layers] == [0, 1]
    cut, kept = cutter.cut(short, 0.5, [])
    assert cut.config.encoder_ffn_dim == 32 and kept["model.encoder.layers.0.fc1"] == [32, 64]
    assert short.config.encoder_ffn_dim == 64 and model.model.encoder.layers[0].fc1.out_features == 64


def test_wer_metric_counts_edits_over_reference_words():
    from slimkit.families.whisper import word_edits
    from slimkit.speech.evaluate import word_error_rate

    refs, hyps = ["the cat sat on the mat", "good morning"], ["the cat sat on mat", "good morning all"]
    assert word_edits(refs, hyps) == (2, 8)  # one deletion, one insertion, over 6 + 2 reference words
    refs, hyps = ["Two nine three four, zero!", "Colour me surprised"], ["2 9 3 4 0", "color me surprised too"]
    edits, words = word_edits(refs, hyps)  # normalised as the speech evaluation counts: digits joined, spelling
    assert (edits, words) == (1, 4) and edits / words == pytest.approx(word_error_rate(refs, hyps))
    with pytest.raises(SlimkitError, match="empty after normalisation"):
        word_edits(["?!"], ["x"])


def test_a_floor_on_a_metric_speech_lacks_is_one_line(whisper_folder, audio_dir, tmp_path):
    res = run_cli("compress", whisper_folder, "--data", audio_dir, "--out", tmp_path / "run", "--floor", "ppl<=1.25x")
    assert res.exit_code != 0 and "measures wer" in res.output and "wer+1pt" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_an_audio_folder_without_transcripts_is_one_line(whisper_folder, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    sf.write(str(bare / "a.wav"), np.zeros(1600, np.float32), 16000)
    res = run_cli("compress", whisper_folder, "--data", bare, "--out", tmp_path / "run")
    assert res.exit_code != 0 and "transcripts.tsv" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_task_contradicting_a_whisper_config_is_one_line(whisper_folder, audio_dir, tmp_path):
    res = run_cli("compress", whisper_folder, "--data", audio_dir, "--task", "classification", "--out",
                  tmp_path / "run")
    assert res.exit_code != 0 and "contradicts" in res.output and "WhisperForConditionalGeneration" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
