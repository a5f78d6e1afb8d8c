"""slimkit's written-out greedy Whisper decode against its definition: generate()'s greedy tokens."""

from __future__ import annotations

import pytest
import torch

from slimkit.errors import SlimkitError

pytest.importorskip("transformers")

from tests.speech_helpers import require_built_in_whisper  # noqa: E402
from tests.test_speech_compress import EOS, PROMPT, features, tiny_whisper  # noqa: E402

NO_TIMESTAMPS = 39  # the tiny vocabulary's last id


def generated(model, states, **kw) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(encoder_outputs=states, do_sample=False, num_beams=1, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_loop_gives_generates_tokens_with_suppressed_tokens(seed) -> None:
    from slimkit.speech.greedy import greedy_tokens

    model = tiny_whisper(seed=seed)
    # generate() takes every id above <|notimestamps|> for a timestamp; the last id leaves none, as in Whisper
    model.generation_config.no_timestamps_token_id = NO_TIMESTAMPS
    # suppressing the tokens generate() would pick proves the masks are applied like its logits processors
    with torch.inference_mode():
        states = model.get_encoder()(features(3, seed=seed))
    free = generated(model, states)
    picked = sorted({int(t) for t in free.flatten()} - {EOS, PROMPT[0], NO_TIMESTAMPS})
    model.generation_config.suppress_tokens = [PROMPT[0], NO_TIMESTAMPS] + picked[1:3]  # a random model emits them too
    model.generation_config.begin_suppress_tokens = picked[:1] + [EOS]
    want = generated(model, states)
    assert want.shape != free.shape or not torch.equal(want, free)
    got = greedy_tokens(model, states)
    assert torch.equal(got, want)
    for row in range(3):  # one utterance at a time: rows that end early are not padded
        one = model.get_encoder()(features(3, seed=seed)[row:row + 1])
        assert torch.equal(greedy_tokens(model, one), generated(model, one))


def test_forced_length_runs_exactly_the_given_steps() -> None:
    from slimkit.speech.greedy import greedy_tokens

    model = tiny_whisper()
    with torch.inference_mode():
        states = model.get_encoder()(features(2))
    free = greedy_tokens(model, states)
    forced = greedy_tokens(model, states, max_new_tokens=7, stop_at_end=False)
    assert forced.shape == (2, 7)
    n = min(free.shape[1], 7)
    assert torch.equal(forced[:, :n], free[:, :n])
    model.generation_config.max_new_tokens = 3  # the config's own limit, as generate() reads it
    assert torch.equal(greedy_tokens(model, states), generated(model, states))
    assert greedy_tokens(model, states).shape[1] <= 3
    with pytest.raises(SlimkitError, match="at least 1 new token"):
        greedy_tokens(model, states, max_new_tokens=0)


def test_configs_the_loop_does_not_reproduce_go_to_generate() -> None:
    from slimkit.speech.evaluate import decode, decode_loop
    from slimkit.speech.greedy import fits_greedy_loop, greedy_tokens

    model = tiny_whisper()
    with torch.inference_mode():
        states = model.get_encoder()(features(1))
    assert fits_greedy_loop(model) and decode_loop(model) == "slimkit greedy loop"
    assert decode_loop(model, use_generate=True) == "generate()"
    model.generation_config.return_timestamps = True
    assert not fits_greedy_loop(model) and decode_loop(model) == "generate()"
    with pytest.raises(SlimkitError, match="decode it with model.generate"):
        greedy_tokens(model, states)
    model.generation_config.return_timestamps = False
    model.generation_config.is_multilingual = True
    assert not fits_greedy_loop(model)
    model.generation_config.is_multilingual = False
    assert torch.equal(decode(model, states), decode(model, states, use_generate=True))


def test_built_in_greedy_loop_equals_generate_on_every_real_recording() -> None:
    pytest.importorskip("jiwer")
    from slimkit.speech.audio import real_recordings
    from slimkit.speech.convert import load_whisper
    from slimkit.speech.evaluate import encode, log_mel
    from slimkit.speech.greedy import greedy_tokens

    require_built_in_whisper()
    model, processor = load_whisper("whisper-tiny.en")
    utterances = real_recordings().utterances
    with torch.inference_mode():
        batch = encode(model, torch.cat([log_mel(processor, u.audio) for u in utterances]))
        assert torch.equal(greedy_tokens(model, batch), generated(model, batch))
        for utt in utterances[:4]:
            states = encode(model, log_mel(processor, utt.audio))
            assert torch.equal(greedy_tokens(model, states), generated(model, states))


def test_cli_eval_says_which_loop_decoded_and_both_give_the_same_wer() -> None:
    pytest.importorskip("jiwer")
    from typer.testing import CliRunner

    from slimkit.cli.main import app

    require_built_in_whisper()
    method, wer = {}, {}
    for flags in ([], ["--generate"]):
        result = CliRunner().invoke(app, ["eval", "whisper-tiny.en", "--data", "real", "--samples", "3", *flags])
        assert result.exit_code == 0, result.output
        method[bool(flags)] = " ".join(result.output.split())
        row = next(line for line in result.output.splitlines() if line.strip().startswith("│ real"))
        wer[bool(flags)] = [cell.strip() for cell in row.split("│")][5]  # set, utts, audio s, encoder input, WER %
    assert "slimkit's greedy loop, generate()'s tokens" in method[False]
    assert "transformers' generate()" in method[True] and "slimkit's greedy loop" not in method[True]
    assert float(wer[False]) == float(wer[True])
