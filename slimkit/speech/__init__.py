"""Speech recognition with Whisper: the built-in tiny.en converted from its CTranslate2 export, real and
synthesised speech sets, and WER with measured speed.

    from slimkit.speech import load_whisper, real_recordings, synthetic_set, evaluate
    model, processor = load_whisper("whisper-tiny.en")
    result = evaluate(model, processor, real_recordings())
"""

from slimkit.speech.audio import SpeechSet, Utterance, load_folder, real_recordings
from slimkit.speech.convert import BUILTINS, convert_ct2_whisper, load_whisper, resolve_model
from slimkit.speech.ct2 import Ct2Model, read_ct2
from slimkit.speech.evaluate import SetResult, evaluate, parameters, protocol, transcribe, word_error_rate
from slimkit.speech.greedy import fits_greedy_loop, greedy_tokens
from slimkit.speech.prune import prune_encoder_ffn, remove_decoder_layers, spaced_layers
from slimkit.speech.synth import SynthSettings, synthetic_set

__all__ = [
    "BUILTINS", "Ct2Model", "SetResult", "SpeechSet", "SynthSettings", "Utterance", "convert_ct2_whisper", "evaluate",
    "fits_greedy_loop", "greedy_tokens", "load_folder", "load_whisper", "parameters", "protocol", "prune_encoder_ffn", "read_ct2", "real_recordings",
    "remove_decoder_layers", "resolve_model", "spaced_layers", "synthetic_set", "transcribe", "word_error_rate",
]
