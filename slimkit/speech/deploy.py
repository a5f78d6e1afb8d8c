"""A Whisper folder deployed where CPU users run Whisper: CTranslate2, transcribed through faster-whisper.

Nobody who runs Whisper on a CPU runs it in eager PyTorch; faster-whisper (CTranslate2, int8) is
what a compressed model is compared with, so a compressed model is deployed the same way:

1. ctranslate2's own Transformers converter reads the local folder (any Whisper that
   `from_pretrained` loads: fewer decoder layers or narrower encoder FFNs are read from the config
   and the weight shapes) and writes `model.bin` in float32 or int8; the tokenizer is copied and
   the feature extractor's settings are written as `preprocessor_config.json`, where faster-whisper
   reads the mel settings;
2. the check: the PyTorch model (slimkit's greedy loop) and the converted model (ctranslate2, fed
   the same log-mel features, decoded alike: `ct2_transcripts`) transcribe the same utterances; at
   most one in twenty may differ, else nothing is written;
3. faster-whisper (beam 1, temperature 0, no timestamps, no VAD, no conditioning on earlier text)
   transcribes them again, timed: that is how the model is deployed. Its pipeline pads 30 s of
   zero features (transformers pads the audio) and writes numbers as digits, so its transcripts may
   differ from the check's; its WER is reported as measured;
4. the folder is staged and moved into place whole (slimkit.io.outputs.output_folder).

The trimmed encoder input does not travel: faster-whisper pads every window to 30 s, as Whisper
was trained; what the CTranslate2 model gains comes from the cut and the runtime.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from slimkit.errors import SlimkitError

QUANTIZATIONS = ("float32", "int8")
DECODE = dict(beam_size=1, best_of=1, temperature=0.0, without_timestamps=True, vad_filter=False,
              condition_on_previous_text=False, language="en")


def require_ct2() -> None:
    """One line naming the install when ctranslate2 or faster-whisper is missing."""
    import importlib.util

    if importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("faster_whisper") is None:
        raise SlimkitError("the CTranslate2 export needs ctranslate2 and faster-whisper: pip install "
                           "'slimkit[speech-verify]' (scripts/install.sh installs it)")


def convert(folder: Path, dest: Path, quantization: str) -> Path:
    """ctranslate2's converter from the local `folder` into the new folder `dest`, plus the files
    faster-whisper reads beside model.bin."""
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperProcessor

    if quantization not in QUANTIZATIONS:
        raise SlimkitError(f"CTranslate2 quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    copy = [name for name in ("tokenizer.json",) if (folder / name).is_file()]
    if not copy:
        raise SlimkitError(f"{folder} has no tokenizer.json; save the model's processor into it (processor."
                           f"save_pretrained(folder)) so faster-whisper can decode")
    TransformersConverter(str(folder), copy_files=copy).convert(str(dest), quantization=quantization, force=True)
    extractor = WhisperProcessor.from_pretrained(folder, local_files_only=True).feature_extractor
    (dest / "preprocessor_config.json").write_text(json.dumps(extractor.to_dict(), default=str), encoding="utf-8")
    return dest


def faster_whisper_transcripts(model_dir: Path, audios: list, threads: int, compute_type: str = "default",
                               max_new_tokens: int | None = None) -> tuple[list[str], float]:
    """faster-whisper's transcripts of `audios` with the CTranslate2 model in `model_dir`, and its mean
    wall time per utterance in ms (after one warm-up), `threads` CPU threads, batch 1. `max_new_tokens`
    bounds each decode as the PyTorch model's generation config does (None: faster-whisper's own bound)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads)
    options = {**DECODE, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}
    "".join(s.text for s in model.transcribe(audios[0], **options)[0])  # warm-up
    texts, start = [], time.perf_counter()
    for audio in audios:
        segments, _ = model.transcribe(audio, **options)
        texts.append("".join(s.text for s in segments).strip())
    return texts, 1e3 * (time.perf_counter() - start) / len(audios)


def ct2_transcripts(model_dir: Path, folder: Path, audios: list, threads: int, compute_type: str) -> list[str]:
    """The CTranslate2 model's transcripts decoded as slimkit's greedy loop decodes the PyTorch model: the
    same log-mel features (transformers' extractor of `folder`), the prompt <|startoftranscript|>
    <|notimestamps|>, beam 1, the generation config's suppressed tokens and max_length. What differs
    from the PyTorch model's transcripts is then the converted weights' doing, not a pipeline's."""
    import ctranslate2
    import numpy as np
    from transformers import GenerationConfig, WhisperProcessor

    from slimkit.speech.evaluate import log_mel

    processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    gen = GenerationConfig.from_pretrained(folder, local_files_only=True)
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type=compute_type, intra_threads=threads)
    prompt = [gen.decoder_start_token_id, gen.no_timestamps_token_id]
    texts = []
    for audio in audios:
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(log_mel(processor, audio).numpy()))
        ids = model.generate(view, [prompt], beam_size=1, suppress_blank=True, suppress_tokens=[-1],
                             max_length=gen.max_length)[0].sequences_ids[0]
        texts.append(processor.tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


def new_tokens(folder: Path) -> int | None:
    """The PyTorch model's bound on generated tokens, in faster-whisper's terms: its generation config's
    max_length less the two prompt tokens (start of transcript, no timestamps); None when it has none."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    max_length = json.loads(path.read_text(encoding="utf-8")).get("max_length")
    return max(1, min(int(max_length), 448) - 2) if max_length else None


def differing(reference: list[str], got: list[str]) -> list[int]:
    """Indices whose transcripts differ, spaces at the ends and case aside."""
    return [i for i, (a, b) in enumerate(zip(reference, got)) if a.strip().lower() != b.strip().lower()]


def check_same(reference: list[str], got: list[str], what: str) -> None:
    """Refuse when more than one transcript in twenty differs from the PyTorch model's."""
    bad = differing(reference, got)
    if len(bad) * 20 > len(reference):
        i = bad[0]
        raise SlimkitError(f"{what} transcribes {len(bad)} of {len(reference)} utterances differently from the "
                           f"PyTorch model (at most 1 in 20 may differ), e.g. {got[i]!r} for {reference[i]!r}; "
                           f"nothing was written")


def export_ct2(folder: Path, out: Path, quantization: str, audios: list, reference: list[str], threads: int = 2,
               overwrite: bool = False) -> dict:
    """Convert the Whisper in `folder`, check it against `reference` (the PyTorch model's transcripts of
    `audios`), and write it to `out`; what was measured: its transcripts, ms per utterance, size."""
    from slimkit.io.outputs import output_folder

    with output_folder(out, overwrite, [folder], command="slimkit export --ct2") as stage:
        t0 = time.perf_counter()
        convert(folder, stage / "ct2", quantization)
        seconds = time.perf_counter() - t0
        same_pipeline = ct2_transcripts(stage / "ct2", folder, audios, threads, quantization)
        check_same(reference, same_pipeline, f"the CTranslate2 {quantization} model")
        texts, ms = faster_whisper_transcripts(stage / "ct2", audios, threads, quantization, new_tokens(folder))
        for item in (stage / "ct2").iterdir():
            item.rename(stage / item.name)
        (stage / "ct2").rmdir()
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    return {"texts": texts, "ms_per_utt": ms, "bytes": size, "convert_s": seconds,
            "same": len(reference) - len(differing(reference, same_pipeline)), "of": len(reference),
            "same_in_faster_whisper": len(reference) - len(differing(reference, texts))}


__all__ = ["DECODE", "QUANTIZATIONS", "check_same", "convert", "ct2_transcripts", "differing", "export_ct2",
           "faster_whisper_transcripts", "new_tokens", "require_ct2"]
