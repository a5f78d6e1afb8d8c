"""Speech compression: decoder depth and encoder FFN width against their definitions, save/reload and
generate(), the seq2seq KD loss against a hand computation, and the CLI's one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from slimkit.errors import SlimkitError
from tests.speech_helpers import require_built_in_whisper

transformers = pytest.importorskip("transformers")

PROMPT = [10, 11]   # <|startoftranscript|><|notimestamps|> of the tiny vocabulary
EOS = 2


def tiny_whisper(decoder_layers: int = 4, seed: int = 0):
    """A random WhisperForConditionalGeneration small enough to build in a test: 8 mel bins, 16 frames."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=40, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=decoder_layers,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_source_positions=8, max_target_positions=24, pad_token_id=EOS, bos_token_id=EOS,
                           eos_token_id=EOS, decoder_start_token_id=PROMPT[0], dropout=0.0, attention_dropout=0.0,
                           activation_dropout=0.0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=PROMPT[0], no_timestamps_token_id=PROMPT[1], eos_token_id=EOS, pad_token_id=EOS,
        bos_token_id=EOS, is_multilingual=False, return_timestamps=False, max_length=12, do_sample=False, num_beams=1,
        alignment_heads=[[1, 0], [3, 1], [3, 0]])
    return model


def features(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 8, 16, generator=torch.Generator().manual_seed(seed))


def logits(model, feats, ids):
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=ids, use_cache=False).logits


def test_spaced_layers_keep_first_and_last() -> None:
    from slimkit.speech.prune import check_keep, spaced_layers

    assert spaced_layers(4, 2) == [0, 3]
    assert spaced_layers(4, 1) == [0]
    assert spaced_layers(4, 4) == [0, 1, 2, 3]
    assert spaced_layers(6, 3) == [0, 2, 5]
    for n_keep in (0, 5):
        with pytest.raises(SlimkitError, match="between 1 and 4"):
            spaced_layers(4, n_keep)
    for keep in ([], [0, 0], [4], [-1]):
        with pytest.raises(SlimkitError, match="distinct indices"):
            check_keep(keep, 4)


def test_decoder_depth_equals_a_model_built_with_those_layers_and_reloads(tmp_path) -> None:
    from transformers import WhisperForConditionalGeneration

    from slimkit.speech.evaluate import decode
    from slimkit.speech.prune import remove_decoder_layers

    model = tiny_whisper()
    full = model.state_dict()
    remove_decoder_layers(model, [0, 3])
    assert model.config.decoder_layers == 2 and len(model.model.decoder.layers) == 2
    assert [m.layer_idx for layer in model.model.decoder.layers for m in (layer.self_attn, layer.encoder_attn)] == [0, 0, 1, 1]
    assert model.generation_config.alignment_heads == [[1, 1], [1, 0]]  # layer 1 dropped, layer 3 became 1

    # definition: a 2-layer model holding the teacher's layers 0 and 3 as its layers 0 and 1
    reference = tiny_whisper(decoder_layers=2, seed=5)
    renamed = {k.replace("decoder.layers.3.", "decoder.layers.1."): v for k, v in full.items()
               if not any(f"decoder.layers.{i}." in k for i in (1, 2))}
    reference.load_state_dict(renamed)
    feats, ids = features(), torch.tensor([PROMPT + [5, 6, 7]] * 3)
    torch.testing.assert_close(logits(model, feats, ids), logits(reference, feats, ids), atol=1e-6, rtol=0)

    model.save_pretrained(tmp_path)
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.decoder_layers == 2
    assert (logits(reloaded, feats, ids) - logits(model, feats, ids)).abs().max() <= 1e-5
    with torch.inference_mode():
        before = decode(model, model.get_encoder()(feats[:1]))
        after = decode(reloaded, reloaded.get_encoder()(feats[:1]))
    assert after.shape[-1] >= 1 and torch.equal(before, after)


def test_encoder_ffn_equals_the_masked_model_and_reloads(tmp_path) -> None:
    from transformers import WhisperForConditionalGeneration

    from slimkit.speech.prune import ffn_neuron_scores, prune_encoder_ffn

    model = tiny_whisper()
    masked = tiny_whisper()
    expected_keep = [ffn_neuron_scores(layer.fc1, layer.fc2).topk(24).indices.sort().values.tolist()
                     for layer in model.model.encoder.layers]
    result = prune_encoder_ffn(model, 0.25)
    assert result.model is model and result.kept == {f"model.encoder.layers.{i}.fc1": (24, 32) for i in range(2)}
    assert model.config.encoder_ffn_dim == 24
    assert all(layer.fc1.weight.shape == (24, 16) and layer.fc2.weight.shape == (16, 24)
               for layer in model.model.encoder.layers)
    with torch.no_grad():  # definition: the dense model with the removed neurons' fc2 columns zeroed
        for layer, keep in zip(masked.model.encoder.layers, expected_keep):
            drop = [i for i in range(32) if i not in keep]
            layer.fc2.weight[:, drop] = 0.0
    feats, ids = features(), torch.tensor([PROMPT + [5, 6]] * 3)
    torch.testing.assert_close(logits(model, feats, ids), logits(masked, feats, ids), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (logits(reloaded, feats, ids) - logits(model, feats, ids)).abs().max() <= 1e-5
    with pytest.raises(SlimkitError, match="must be in \\[0, 1\\)"):
        prune_encoder_ffn(model, 1.0)


def test_label_batch_shifts_the_pseudo_labels_behind_the_prompt() -> None:
    from slimkit.speech.recover import label_batch

    batch = label_batch(features(2), [[5, 6, 7], [8]], PROMPT, EOS)
    assert batch["decoder_input_ids"].tolist() == [PROMPT + [5, 6, 7], PROMPT + [8, EOS, EOS]]
    assert batch["labels"].tolist() == [[-100, 5, 6, 7, EOS], [-100, 8, EOS, -100, -100]]
    with pytest.raises(SlimkitError):
        label_batch(features(3), [[5]], PROMPT, EOS)


def test_seq2seq_kd_loss_is_kl_on_teacher_forced_logits_at_label_positions() -> None:
    """One engine step's loss against T^2 KL(teacher || student) + w * CE, by hand, over label positions only."""
    from slimkit.distill import CacheConfig, Distiller, TrainConfig, ce, kd, seq2seq
    from slimkit.speech.prune import remove_decoder_layers
    from slimkit.speech.recover import label_batch

    teacher = tiny_whisper()
    with torch.no_grad():  # peaked teacher distributions (tied embedding and output), so positions differ clearly
        teacher.model.decoder.embed_tokens.weight.mul_(20.0)
    student = remove_decoder_layers(tiny_whisper(seed=3), [0, 3])
    batch = label_batch(features(3), [[5, 6, 7, 8], [9], [12, 13]], PROMPT, EOS)
    temperature, ce_weight = 2.0, 0.8

    s = logits(student, batch["input_features"], batch["decoder_input_ids"])
    t = logits(teacher, batch["input_features"], batch["decoder_input_ids"])
    keep = batch["labels"] != -100
    log_ps, log_pt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    kl_rows = (log_pt.exp() * (log_pt - log_ps)).sum(-1)          # (N, L)
    kl = temperature ** 2 * kl_rows[keep].mean()
    nll = -F.log_softmax(s, -1).gather(-1, batch["labels"].clamp_min(0).unsqueeze(-1)).squeeze(-1)
    expected = kl + ce_weight * nll[keep].mean()
    everywhere = temperature ** 2 * kl_rows.mean() + ce_weight * nll[keep].mean()
    assert abs(float(everywhere - expected)) > 1e-3  # padding would change the value: the mask matters here

    seen = []
    distiller = Distiller(teacher, student, [kd(1.0, temperature), ce(ce_weight)],
                          TrainConfig(epochs=1, batch_size=3, lr=1e-3, warmup_steps=0, amp="off"),
                          cache=CacheConfig(mode="off"), task=seq2seq(), device="cpu")
    distiller.fit(batch, progress=False, on_step=lambda _s: seen.append(distiller.last_loss))
    assert seen[0] == pytest.approx(float(expected), abs=1e-5)

    ce_only = Distiller(None, remove_decoder_layers(tiny_whisper(seed=3), [0, 3]), [ce(1.0)],
                        TrainConfig(epochs=1, batch_size=3, lr=1e-3, warmup_steps=0, amp="off"), task=seq2seq(),
                        device="cpu")
    seen.clear()
    ce_only.fit(batch, progress=False, on_step=lambda _s: seen.append(ce_only.last_loss))
    assert seen[0] == pytest.approx(float(nll[keep].mean()), abs=1e-5)


def test_decoder_on_precomputed_encoder_states_equals_the_full_model() -> None:
    from slimkit.speech.prune import remove_decoder_layers
    from slimkit.speech.recover import _decoder_call, encoder_matches

    teacher = tiny_whisper()
    student = remove_decoder_layers(tiny_whisper(), [0, 3])
    assert encoder_matches(student, teacher, weights=True)
    feats, ids = features(), torch.tensor([PROMPT + [5, 6, 7]] * 3)
    with torch.no_grad():
        states = teacher.get_encoder()(feats).last_hidden_state
        out = _decoder_call(student, {"encoder_states": states, "decoder_input_ids": ids}).logits
    torch.testing.assert_close(out, logits(student, feats, ids), atol=1e-6, rtol=0)
    with torch.no_grad():
        student.model.encoder.layers[0].fc1.weight[0, 0] += 1.0
    assert encoder_matches(student, teacher) and not encoder_matches(student, teacher, weights=True)


def test_decode_split_times_the_projection_and_each_layer_of_a_forced_length_decode() -> None:
    from slimkit.speech.decode_split import decode_time_split, layer_free_bound
    from slimkit.speech.prune import remove_decoder_layers

    calls = {"head": 0}
    for n_layers, model in ((4, tiny_whisper()), (2, remove_decoder_layers(tiny_whisper(), [0, 3]))):
        model.get_output_embeddings().register_forward_hook(lambda *_: calls.update(head=calls["head"] + 1))
        with torch.no_grad():
            states = model.get_encoder()(features(1))
        calls["head"] = 0
        split = decode_time_split(model, states, tokens=5, repeats=2)
        assert calls["head"] == 3 * 5  # one projection per generated token, in each of 1 untimed + 2 timed decodes
        assert (split.tokens, split.layers) == (5, n_layers)
        assert split.head_ms > 0 and split.layers_ms > 0 and split.other_ms > 0
        assert layer_free_bound(split) == pytest.approx(split.total_ms / (split.head_ms + split.other_ms))
    assert not model.get_output_embeddings()._forward_pre_hooks  # the timing hooks are removed


def test_token_accuracy_counts_label_positions_only() -> None:
    from slimkit.distill.tasks import token_accuracy

    view = torch.zeros(1, 3, 4)
    view[0, 0, 1] = view[0, 1, 2] = view[0, 2, 3] = 1.0   # argmax 1, 2, 3
    metric = token_accuracy()
    assert metric.reduce([metric.batch(view, torch.tensor([[1, 0, -100]]))]) == pytest.approx(0.5)


def _fake_whisper_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper", "decoder_layers": 4}))
    (folder / "processor_config.json").write_text("{}")  # never read: every check below fails first
    return folder


@pytest.mark.parametrize("args, message", [
    ([], "nothing to prune"),
    (["--blocks", "-1"], "--blocks must be an integer >= 0"),
    (["--blocks", "4"], "would remove every one of the 4 decoder layers"),
    (["--keep", "0,9"], "distinct indices in \\[0, 4\\)"),
    (["--keep", "a,b"], "--keep must be comma-separated"),
    (["--keep", "0", "--blocks", "2"], "not both"),
    (["--ffn", "1.5"], "--ffn must be in \\[0, 1\\)"),
])
def test_cli_prune_bad_input_is_one_line(tmp_path, args, message) -> None:
    from typer.testing import CliRunner

    from slimkit.cli.main import app

    model = _fake_whisper_folder(tmp_path)
    result = CliRunner().invoke(app, ["prune", str(model), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_folder_slimkit_did_not_write(tmp_path) -> None:
    from typer.testing import CliRunner

    from slimkit.cli.main import app

    model = _fake_whisper_folder(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for cmd in (["prune", str(model), "--blocks", "2"],
                ["distill", str(model), "--teacher", str(model)]):
        result = CliRunner().invoke(app, [*cmd, "--out", str(out), "--overwrite"])
        assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
        assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("args, message", [
    (["--loss", "mse"], "--loss"),
    (["--minutes", "0"], "--minutes"),
    (["--batch-size", "0"], "--batch-size"),
    (["--freeze-encoder", "maybe"], "--freeze-encoder"),
    (["--loss", "kd", "--kd-weight", "0"], "use loss 'ce'"),
    (["--samples", "0"], "--samples (training utterances) must be >= 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--top-k", "8"], "--top-k does not apply to a whisper model"),
])
def test_cli_distill_bad_input_is_one_line(tmp_path, args, message) -> None:
    from typer.testing import CliRunner

    from slimkit.cli.main import app

    model = _fake_whisper_folder(tmp_path)
    result = CliRunner().invoke(app, ["distill", str(model), "--teacher", str(model),
                                      "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_cli_prune_of_the_built_in_reloads_and_transcribes(tmp_path) -> None:
    """The real model: 4 -> 2 decoder layers and -25% encoder FFN, saved by the CLI, reloaded, generate() runs."""
    from typer.testing import CliRunner

    from slimkit.cli.main import app
    from slimkit.speech.convert import load_whisper
    from slimkit.speech.evaluate import transcribe

    require_built_in_whisper(recordings=False)
    out = tmp_path / "pruned"
    result = CliRunner().invoke(app, ["prune", "whisper-tiny.en", "--blocks", "2", "--ffn", "0.25",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, processor = load_whisper(out)
    assert model.config.decoder_layers == 2 and model.config.encoder_ffn_dim == 1152
    assert json.loads((out / "slimkit-speech.json").read_text())["decoder_layers_kept"] == [0, 3]
    text = transcribe(model, processor, torch.zeros(16_000).numpy()).text
    assert isinstance(text, str)
    again = CliRunner().invoke(app, ["prune", "whisper-tiny.en", "--blocks", "2", "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_recover_trains_on_pseudo_labels_with_the_engine(tmp_path, monkeypatch) -> None:
    """End to end on a random Whisper with tiny.en's vocabulary and processor: pseudo-labels are made once
    and cached, a decoder-depth student trains its decoder on encoder states computed once (encoder
    untouched), an FFN-pruned student trains its encoder on the features."""
    import copy

    import numpy as np
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    from slimkit.speech.audio import SpeechSet, Utterance
    from slimkit.speech.convert import whisper_tiny_en
    from slimkit.speech.prune import prune_encoder_ffn, remove_decoder_layers
    from slimkit.speech import recover as recover_module
    from slimkit.speech.recover import SpeechDistillConfig, pseudo_labels, recover

    require_built_in_whisper(recordings=False)
    folder = whisper_tiny_en()
    processor = WhisperProcessor.from_pretrained(folder)
    real = json.loads((folder / "config.json").read_text())
    torch.manual_seed(0)
    config = WhisperConfig(**{**real, "d_model": 16, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                              "encoder_ffn_dim": 32, "decoder_ffn_dim": 32})
    teacher = WhisperForConditionalGeneration(config).eval()
    teacher.generation_config = WhisperForConditionalGeneration.from_pretrained(folder).generation_config
    teacher.generation_config.max_new_tokens = 6
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    utts = [Utterance(f"u{i}", (0.1 * rng.standard_normal(16_000)).astype(np.float32), "hello there") for i in range(3)]
    train, val = SpeechSet("train", utts), SpeechSet("val", utts[:2])

    labels = pseudo_labels(teacher, processor, train, progress=False)  # one batch of 3
    assert len(labels) == 3 and all(1 <= len(t) <= 6 for t in labels)
    assert len(list((tmp_path / "cache" / "speech").glob("labels-*.json"))) == 1
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "one-at-a-time"))
    assert pseudo_labels(teacher, processor, train, progress=False, batch_size=1) == labels
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    decode, batches = recover_module.decode, []
    counted = lambda m, enc: batches.append(len(enc.last_hidden_state)) or decode(m, enc)  # noqa: E731
    monkeypatch.setattr(recover_module, "decode", counted)
    more = Utterance("u3", (0.1 * rng.standard_normal(8_000)).astype(np.float32), "and more")
    assert pseudo_labels(teacher, processor, SpeechSet("train", utts + [more]), progress=False)[:3] == labels
    assert batches == [1]  # a grown set labels only its new utterance
    monkeypatch.setattr(recover_module, "decode", lambda *a: pytest.fail("labels were not read from the cache"))
    assert pseudo_labels(teacher, processor, train, progress=False) == labels

    with pytest.raises(SlimkitError, match="no pseudo-label of the 3 training utterances is within WER 0.1"):
        recover(copy.deepcopy(teacher), teacher, processor, train, val, SpeechDistillConfig(), progress=False)
    cfg = SpeechDistillConfig(minutes=5, epochs=1, batch_size=2, lr=1e-2, warmup_steps=0, max_label_wer=1e9)
    student = remove_decoder_layers(WhisperForConditionalGeneration(copy.deepcopy(config)).eval(), [0, 3])
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in student.state_dict()
                             and "decoder.layers" not in k}, strict=False)
    student.generation_config = teacher.generation_config
    encoder_before = {k: v.clone() for k, v in student.get_encoder().state_dict().items()}
    decoder_before = student.model.decoder.layers[0].fc1.weight.clone()
    report = recover(student, teacher, processor, train, val, cfg, progress=False)
    assert report.steps == 2 and report.labels_kept == 3 and report.frozen_encoder and report.encoder_states_once
    assert 0.0 <= report.history[-1].metrics["token_accuracy"] <= 1.0
    assert all(torch.equal(v, encoder_before[k]) for k, v in student.get_encoder().state_dict().items())
    assert not torch.equal(student.model.decoder.layers[0].fc1.weight, decoder_before)
    cache: dict = {}
    recover(copy.deepcopy(student), teacher, processor, train, val, cfg, progress=False, states_cache=cache)
    assert len(cache) == 2  # the training and the validation audio
    monkeypatch.setattr(recover_module, "encoder_states", lambda *a, **k: pytest.fail("encoder states recomputed"))
    again = recover(copy.deepcopy(student), teacher, processor, train, val, cfg, progress=False, states_cache=cache)
    assert again.steps == 2 and again.encoder_states_once

    narrow = WhisperForConditionalGeneration(copy.deepcopy(config)).eval()
    narrow.load_state_dict(teacher.state_dict())
    narrow.generation_config = teacher.generation_config
    prune_encoder_ffn(narrow, 0.5)
    fc1_before = narrow.model.encoder.layers[0].fc1.weight.clone()
    report = recover(narrow, teacher, processor, train, None, cfg.model_copy(update={"loss": "ce"}), progress=False)
    assert report.steps == 2 and not report.frozen_encoder and not report.encoder_states_once
    assert not torch.equal(narrow.model.encoder.layers[0].fc1.weight, fc1_before)
