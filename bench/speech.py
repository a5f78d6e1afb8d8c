"""Benchmark of slimkit's speech recognition on Whisper tiny.en: prints one table.

    PYTHONPATH=. python bench/speech.py                 # converter check + dense rows: 12 real + 200 held-out synth
    PYTHONPATH=. python bench/speech.py --quick         # the same on 12 real + 20 synth utterances (a few minutes)
    PYTHONPATH=. python bench/speech.py --pads 1,3,5    # also: trimmed encoder with other paddings, on the real set
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python bench/speech.py   # on a machine other jobs share (see below)

Needs `pip install -e '.[speech,speech-verify]'` and `apt-get install pocketsphinx-testdata`
(scripts/install.sh does both).

1. Converter check: the original CTranslate2 model, run by faster-whisper (fp32, greedy: beam 1,
   temperature 0 only, no timestamps, no VAD, no conditioning on earlier text, 2 threads), against
   slimkit's converted model (greedy generate()). Transcripts must be equal (after stripping spaces)
   on all but at most one utterance in twenty over the real and synthesised utterances together.
2. Rows: the dense teacher with Whisper's 30 s padded encoder input and with the trimmed encoder
   input (the audio plus --trim-pad seconds), each on the real recordings and the held-out
   synthesised set; faster-whisper's own WER and time per utterance as a reference line.
3. The same comparison with the original model fed slimkit's own log-mel features (ctranslate2
   directly): it separates the converter from the two pipelines' feature extraction (faster-whisper
   pads 30 s windows with zero features; transformers computes features of zero-padded audio).
Timing is in this one process (slimkit.speech.evaluate's protocol, printed under the table); other
jobs on the machine only add time, so the load average at start and end is printed with it. On a
shared machine run it with OMP_WAIT_POLICY=PASSIVE: with 2 threads and busy cores, spinning OpenMP
workers wait for each other's time slices on every small decoder op.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from slimkit.speech.audio import SpeechSet, real_recordings
from slimkit.speech.convert import ct2_source_dir, load_whisper, offline
from slimkit.speech.evaluate import THREADS, encode, evaluate, log_mel, parameters, protocol, word_error_rate
from slimkit.speech.synth import SynthSettings, synthetic_set


def faster_whisper_transcripts(data: SpeechSet, threads: int) -> tuple[list[str], float]:
    """Transcripts of the original CTranslate2 model and its mean wall time per utterance (ms)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(ct2_source_dir()), device="cpu", compute_type="float32", cpu_threads=threads)
    options = dict(beam_size=1, best_of=1, temperature=0.0, without_timestamps=True, vad_filter=False,
                   condition_on_previous_text=False, language="en")
    "".join(s.text for s in model.transcribe(data.utterances[0].audio, **options)[0])  # warm-up
    texts, start = [], time.perf_counter()
    for utt in data.utterances:
        segments, _ = model.transcribe(utt.audio, **options)
        texts.append("".join(s.text for s in segments).strip())
    return texts, 1e3 * (time.perf_counter() - start) / len(data)


def ct2_same_features(model, processor, data: SpeechSet, threads: int, encoder_checks: int = 4):
    """Transcripts of the original CTranslate2 model fed slimkit's own log-mel features (ctranslate2 directly:
    prompt <|startoftranscript|><|notimestamps|>, beam 1, blank and config tokens suppressed), and the
    largest |encoder output difference| over the first `encoder_checks` utterances."""
    import ctranslate2
    import numpy as np

    ct2 = ctranslate2.models.Whisper(str(ct2_source_dir()), device="cpu", compute_type="float32", intra_threads=threads)
    prompt = [model.generation_config.decoder_start_token_id, model.generation_config.no_timestamps_token_id]
    texts, worst = [], 0.0
    for i, utt in enumerate(data.utterances):
        features = log_mel(processor, utt.audio)
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()))
        ids = ct2.generate(view, [prompt], beam_size=1, suppress_blank=True, suppress_tokens=[-1],
                           max_length=model.generation_config.max_length)[0].sequences_ids[0]
        texts.append(processor.tokenizer.decode(ids, skip_special_tokens=True).strip())
        if i < encoder_checks:
            with torch.inference_mode():
                ours = encode(model, features).last_hidden_state.numpy()
            worst = max(worst, float(np.abs(np.array(ct2.encode(view, to_cpu=True)) - ours).max()))
    return texts, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 synthesised utterances instead of 200")
    ap.add_argument("--synth", type=int, default=None, help="held-out synthesised utterances (default 200, quick 20)")
    ap.add_argument("--trim-pad", type=float, default=10.0, help="seconds of padding after the audio when trimmed")
    ap.add_argument("--pads", default="", help="comma-separated extra paddings to try on the real set, e.g. 1,3,5")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--macs-utterances", type=int, default=8)
    args = ap.parse_args()
    offline()
    load_start = os.getloadavg()
    n_synth = args.synth or (20 if args.quick else 200)
    sets = [real_recordings(), synthetic_set(SynthSettings(split="heldout", utterances=n_synth, seed=0))]
    model, processor = load_whisper("whisper-tiny.en")
    params = parameters(model)

    rows, dense = [], {}
    for trim in (False, True):
        for data in sets:
            r = evaluate(model, processor, data, trim, args.threads, args.macs_utterances, args.trim_pad)
            rows.append((f"dense, {'audio + %g s' % args.trim_pad if trim else '30 s padded'} encoder input", r))
            if not trim:
                dense[data.name] = r
    for pad in [float(p) for p in args.pads.split(",") if p.strip()]:
        r = evaluate(model, processor, sets[0], True, args.threads, args.macs_utterances, pad)
        rows.append((f"dense, audio + {pad:g} s encoder input", r))

    torch.set_num_threads(args.threads)
    check, same_features, reference = [], [], []
    for data in sets:
        ours = [h.strip() for h in dense[data.name].hypotheses]
        texts, ms = faster_whisper_transcripts(data, args.threads)
        check.append((data.name, len(data), [(u.id, t, o) for u, t, o in zip(data.utterances, texts, ours) if t != o]))
        reference.append((data.name, word_error_rate([u.text for u in data.utterances], texts), ms))
        texts, worst = ct2_same_features(model, processor, data, args.threads)
        same_features.append((data.name, len(data), [(u.id, t, o) for u, t, o in zip(data.utterances, texts, ours)
                                                     if t != o], worst))

    print(f"\nWhisper tiny.en ({params / 1e6:.1f} M parameters), {args.threads} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset (OpenMP default)')}; load average at start "
          f"{load_start[0]:.1f}, at end {os.getloadavg()[0]:.1f} (other jobs on the machine add time)\n")
    head = f"{'row':<36} {'set':<14} {'utts':>5} {'audio s':>7} {'WER %':>6} {'enc ms':>7} {'dec ms':>7} " \
           f"{'RTF':>6} {'params':>8} {'GMACs/audio s':>13}"
    print(head + "\n" + "-" * len(head))
    for label, r in rows:
        print(f"{label:<36} {r.name:<14} {r.utterances:>5} {r.audio_s:>7.2f} {100 * r.wer:>6.2f} {r.encoder_ms:>7.0f} "
              f"{r.decode_ms:>7.0f} {r.rtf:>6.3f} {params / 1e6:>7.1f}M {r.macs_per_audio_s / 1e9:>13.2f}")
    for name, wer, ms in reference:
        print(f"{'faster-whisper (CT2 fp32), reference':<36} {name:<14} {'':>5} {'':>7} {100 * wer:>6.2f} "
              f"{'total ' + format(ms, '.0f') + ' ms/utt':>23}")
    print(f"\nmethod: {protocol(args.threads, args.trim_pad)}")
    total = sum(n for _, n, _ in check)
    differing = sum(len(d) for _, _, d in check)
    verdict = "PASS" if differing * 20 <= total else "FAIL"
    print(f"\nconverter check vs faster-whisper (greedy, fp32): {total - differing}/{total} transcripts equal "
          f"({', '.join(f'{name} {n - len(d)}/{n}' for name, n, d in check)}); at most 1 in 20 may differ: {verdict}")
    for name, _, differ in check:
        for uid, theirs, ours in differ:
            print(f"  {name} {uid}:\n    faster-whisper: {theirs}\n    slimkit:        {ours}")
    total_same = sum(n - len(d) for _, n, d, _ in same_features)
    print(f"\nsame log-mel features into the original CTranslate2 model (ctranslate2, greedy, fp32): {total_same}/{total} "
          f"transcripts equal ({', '.join(f'{name} {n - len(d)}/{n}' for name, n, d, _ in same_features)}); "
          f"largest |encoder output difference| {max(w for *_, w in same_features):.1e}")
    for name, _, differ, _ in same_features:
        for uid, theirs, ours in differ:
            print(f"  {name} {uid}:\n    ctranslate2: {theirs}\n    slimkit:     {ours}")


if __name__ == "__main__":
    main()
