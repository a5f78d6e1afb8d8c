"""WER after recovery against training-set size, for Whisper tiny.en's decoder cut 4 -> 2: prints one table.

    PYTHONPATH=. python bench/speech_data_size.py                         # 1000, 2000, 4000 mixed-voice utts
    PYTHONPATH=. python bench/speech_data_size.py --sizes 500,1000 --voices piper --kd-minutes 5
    PYTHONPATH=. python bench/speech_data_size.py --quick                 # smoke: 16 and 32 utts, 0.3 min each

Why: a decoder cut recovered on ~1k synthesised utterances fits its pseudo-labels within a few epochs
and stays far from the teacher on held-out speech. Whether more (and more varied) audio is the next
step is a measurement, not a guess: the same student is recovered on the first N utterances of one
synthesised training set for each N, with the same time budget, and measured on the same held-out sets.

- Student: the dense model with its decoder cut to layers 0 and 3 (as distil-whisper), encoder kept
  and frozen (so its outputs are computed once per run).
- Training set: one set of max(--sizes) utterances (slimkit.speech.synth, --voices: Piper alone, or
  Piper and the espeak-ng voices of ESPEAK_VOICES, drawn per utterance with the seed); each size takes
  its first N utterances, so the sets nest. Held-out sentences and the real recordings are never in it.
- Recovery: slimkit.speech.recover (teacher greedy pseudo-labels, those with WER > 0.1 against their
  sentence left out; KD = T^2 KL on the teacher's top-64 + 0.8 CE), --kd-minutes per size, the
  teacher cache inside the budget; pseudo-labels and encoder states outside it (their times printed).
- Measured: WER of greedy transcripts with the 30 s padded encoder input on the 12 real recordings and
  --synth held-out synthesised utterances (Piper, sentences no training split holds), beside the teacher's.
"""

from __future__ import annotations

import argparse
import copy
import gc
import time

from slimkit.speech.audio import SpeechSet, real_recordings
from slimkit.speech.convert import load_whisper, offline
from slimkit.speech.evaluate import THREADS, evaluate
from slimkit.speech.prune import remove_decoder_layers, spaced_layers
from slimkit.speech.recover import SpeechDistillConfig, recover
from slimkit.speech.synth import ESPEAK_VOICES, PIPER, SynthSettings, synthetic_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="comma-separated training-set sizes (default 1000,2000,4000; "
                                                  "quick 16,32)")
    ap.add_argument("--pool", type=int, default=None, help="utterances of the one training set the sizes are taken "
                                                           "from (default: the largest size)")
    ap.add_argument("--voices", choices=("piper", "mixed"), default="mixed")
    ap.add_argument("--kd-minutes", type=float, default=None, help="budget of each recovery (default 10, quick 0.3)")
    ap.add_argument("--synth", type=int, default=None, help="held-out synthesised utterances (default 200, quick 20)")
    ap.add_argument("--val-utterances", type=int, default=50, help="held-out utterances for per-epoch token accuracy")
    ap.add_argument("--decoder-layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("16,32" if args.quick else "1000,2000,4000")).split(",")]
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--sizes must be positive whole numbers, got {args.sizes}")
    minutes = args.kd_minutes or (0.3 if args.quick else 10.0)
    offline()

    t0 = time.perf_counter()
    voices = (PIPER,) + (ESPEAK_VOICES if args.voices == "mixed" else ())
    if args.pool is not None and args.pool < max(sizes):
        raise SystemExit(f"--pool {args.pool} is smaller than the largest size {max(sizes)}; raise --pool")
    pool = synthetic_set(SynthSettings(split="train", utterances=args.pool or max(sizes), seed=0, voices=voices))
    held = [real_recordings(), synthetic_set(SynthSettings(split="heldout", utterances=args.synth or
                                                           (20 if args.quick else 200), seed=0))]
    print(f"speech sets ready in {time.perf_counter() - t0:.0f} s (synthesised once, then read from slimkit's cache)",
          flush=True)
    val = SpeechSet(held[1].name, held[1].utterances[:args.val_utterances])
    teacher, processor = load_whisper("whisper-tiny.en")
    dense = {d.name: evaluate(teacher, processor, d, threads=args.threads, macs_utterances=1).wer for d in held}
    keep = spaced_layers(teacher.config.decoder_layers, args.decoder_layers)

    rows = []
    for n in sizes:
        train = SpeechSet(pool.name, pool.utterances[:n])
        student = remove_decoder_layers(copy.deepcopy(teacher), keep)
        cfg = SpeechDistillConfig(loss="kd", minutes=minutes, batch_size=args.batch_size, lr=args.lr)
        rep = recover(student, teacher, processor, train, val, cfg, args.threads)
        wers = {d.name: evaluate(student, processor, d, threads=args.threads, macs_utterances=1).wer for d in held}
        acc = rep.history[-1].metrics.get("token_accuracy", float("nan")) if rep.history else float("nan")
        rows.append((n, rep, acc, wers))
        print(f"measured: {n} utts | steps {rep.steps} | " +
              " | ".join(f"{k} WER {100 * v:.2f} %" for k, v in wers.items()), flush=True)
        del student
        gc.collect()

    names = [d.name for d in held]
    head = (f"{'train utts':>10} {'labels kept':>11} {'steps':>6} {'epochs':>6} {'train min':>9} {'labels s':>8} "
            f"{'states s':>8} {'val tok acc':>11} " + " ".join(f"{'WER ' + k + ' %':>18}" for k in names))
    print(f"\nWhisper tiny.en, decoder 4 -> {args.decoder_layers} (layers {', '.join(map(str, keep))}), recovered by KD on "
          f"the first N of {len(pool)} synthesised training utterances ({args.voices} voices), {minutes:g} min each, "
          f"batch {args.batch_size}, lr {args.lr:g}, {args.threads} threads\n")
    print(head + "\n" + "-" * len(head))
    print(f"{'teacher':>10} {'':>11} {'':>6} {'':>6} {'':>9} {'':>8} {'':>8} {'':>11} "
          + " ".join(f"{100 * dense[k]:>18.2f}" for k in names))
    for n, rep, acc, wers in rows:
        epochs = rep.steps * args.batch_size / max(rep.labels_kept, 1)
        print(f"{n:>10} {rep.labels_kept:>11} {rep.steps:>6} {epochs:>6.1f} {rep.train_seconds / 60:>9.1f} "
              f"{rep.label_seconds:>8.0f} {rep.input_seconds:>8.0f} {acc:>11.3f} "
              + " ".join(f"{100 * wers[k]:>18.2f}" for k in names))
    print(f"\nWER: greedy transcripts, 30 s padded encoder input (slimkit.speech.evaluate); held-out synthesised = "
          f"{len(held[1])} Piper utterances of sentences no training split holds; val tok acc = teacher-forced token "
          f"accuracy on {len(val)} of them after the last epoch (reported, never selected on)")


if __name__ == "__main__":
    main()
