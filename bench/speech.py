"""Benchmark of slimkit's speech recognition on Whisper tiny.en: prints one table.

    PYTHONPATH=. python bench/speech.py                 # converter check + dense rows: 12 real + 200 held-out synth
    PYTHONPATH=. python bench/speech.py --quick         # smoke: 12 real + 20 synth, 24 training utts, 1 min KD runs
    PYTHONPATH=. python bench/speech.py --pads 1,3,5    # also: trimmed encoder with other paddings, on the real set
    PYTHONPATH=. python bench/speech.py --quick --skip-check   # the smoke without the converter check
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python bench/speech.py   # on a machine other jobs share (see below)

Needs `pip install -e '.[speech,speech-verify]'` and `apt-get install pocketsphinx-testdata`
(scripts/install.sh does both).

1. Converter check: the original CTranslate2 model, run by faster-whisper (fp32, greedy: beam 1,
   temperature 0 only, no timestamps, no VAD, no conditioning on earlier text, 2 threads), against
   slimkit's converted model (greedy decode). Transcripts must be equal (after stripping spaces)
   on all but at most one utterance in twenty over the real and synthesised utterances together.
2. Rows: the dense teacher with Whisper's 30 s padded encoder input and with the trimmed encoder
   input (the audio plus --trim-pad seconds), each on the real recordings and the held-out
   synthesised set; faster-whisper's own WER and time per utterance as a reference line.
3. The same comparison with the original model fed slimkit's own log-mel features (ctranslate2
   directly): it separates the converter from the two pipelines' feature extraction (faster-whisper
   pads 30 s windows with zero features; transformers computes features of zero-padded audio).
4. Compression rows (skip with --no-compress): the decoder cut 4 -> 2 layers (the first and the
   last, as distil-whisper), before recovery, after KD and after plain fine-tuning (CE only) on the
   same budget; the encoder with --ffn fractions of its FFN neurons removed, after KD; and the
   combination (--combo-ffn with 2 decoder layers) after KD, also with the trimmed encoder input.
   Recovery is slimkit.speech.recover: the teacher's greedy pseudo-labels of --train-utterances
   synthesised training utterances (never held-out sentences, never the real recordings), each run
   bounded by --kd-minutes (the teacher cache inside it; pseudo-labels, computed once and shared,
   and encoder states outside it, their times printed). Ratios (x dense) compare decode time and
   end-to-end time (features + encoder + decode) per utterance with the dense 30 s padded row of
   the same set, measured in this same process.
5. Decode time split (--split-tokens; slimkit.speech.decode_split): per generated token, the time of the
   output projection, of the decoder layers and of the rest, for the dense model and its 2-layer cut,
   on decodes forced to the same length; it bounds what any decoder depth cut can gain. The dense
   model is split again under transformers' generate(), whose per-token bookkeeping the rows avoid.
Every row decodes with slimkit's greedy loop (slimkit.speech.greedy: generate()'s tokens, checked by
tests/test_speech_greedy.py) except the row marked generate(), which is there to show what that loop
costs; the ratios of all rows are against the dense row decoded with slimkit's loop.
Timing is in this one process (slimkit.speech.evaluate's protocol, printed under the table); other
jobs on the machine only add time, so the load average at start and end is printed with it. On a
shared machine run it with OMP_WAIT_POLICY=PASSIVE: with 2 threads and busy cores, spinning OpenMP
workers wait for each other's time slices on every small decoder op.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

from slimkit.speech.audio import SpeechSet, real_recordings
from slimkit.speech.convert import ct2_source_dir, load_whisper, offline, whisper_tiny_en
from slimkit.speech.decode_split import decode_time_split, layer_free_bound
from slimkit.speech.deploy import ct2_transcripts, faster_whisper_transcripts
from slimkit.speech.evaluate import THREADS, encode, evaluate, log_mel, parameters, protocol, word_error_rate
from slimkit.speech.prune import prune_encoder_ffn, remove_decoder_layers, spaced_layers
from slimkit.speech.recover import SpeechDistillConfig, recover
from slimkit.speech.synth import ESPEAK_VOICES, PIPER, SynthSettings, synthetic_set


def ct2_same_features(model, processor, data: SpeechSet, threads: int, encoder_checks: int = 4):
    """Transcripts of the original CTranslate2 model fed slimkit's own log-mel features and decoded as
    slimkit decodes (slimkit.speech.deploy.ct2_transcripts, the check `slimkit export --ct2` runs), and the
    largest |encoder output difference| over the first `encoder_checks` utterances."""
    import ctranslate2
    import numpy as np

    audios = [u.audio for u in data.utterances]
    texts = ct2_transcripts(ct2_source_dir(), whisper_tiny_en(), audios, threads, "float32")
    ct2 = ctranslate2.models.Whisper(str(ct2_source_dir()), device="cpu", compute_type="float32", intra_threads=threads)
    worst = 0.0
    for audio in audios[:encoder_checks]:
        features = log_mel(processor, audio)
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()))
        with torch.inference_mode():
            ours = encode(model, features).last_hidden_state.numpy()
        worst = max(worst, float(np.abs(np.array(ct2.encode(view, to_cpu=True)) - ours).max()))
    return texts, worst


def total_ms(r) -> float:
    """Features + encoder + decode time per utterance of a SetResult."""
    return r.features_ms + r.encoder_ms + r.decode_ms


def decode_splits(teacher, processor, data: SpeechSet, tokens: int, threads: int) -> list[str]:
    """Per-token decode time of the dense model and of its 2-layer decoder cut, split into output projection,
    decoder layers and the rest (slimkit.speech.decode_split), on the first utterance of `data`."""
    torch.set_num_threads(threads)
    with torch.inference_mode():
        states = encode(teacher, log_mel(processor, data.utterances[0].audio))
    cut = remove_decoder_layers(copy.deepcopy(teacher), spaced_layers(teacher.config.decoder_layers, 2))
    splits = [("dense", decode_time_split(teacher, states, tokens)),
              ("decoder 4->2", decode_time_split(cut, states, tokens)),
              ("dense, generate()", decode_time_split(teacher, states, tokens, use_generate=True))]
    lines = [f"  {name:<17} {s.line()}; with no layer time at all the decode would be at most "
             f"{layer_free_bound(s):.2f}x faster" for name, s in splits]
    return lines + [f"  decoder 4->2 / dense, same forced tokens: {splits[0][1].total_ms / splits[1][1].total_ms:.2f}x "
                    f"faster decode"]


def compression_rows(args, teacher, processor, sets):
    """(label, model, trimmed) to evaluate, and one recovery line per training run (see the docstring, part 4)."""
    n_train = args.train_utterances or (24 if args.quick else 1000)
    voices = (PIPER,) + (ESPEAK_VOICES if args.voices == "mixed" else ())
    train = synthetic_set(SynthSettings(split="train", utterances=n_train, seed=0, voices=voices))
    n_val = min(args.val_utterances, len(sets[1]))
    val = copy.copy(sets[1])
    val.utterances = val.utterances[:n_val]  # per-epoch token accuracy only; nothing is selected on it

    def student(decoder: int | None, ffn: float):
        model = copy.deepcopy(teacher)
        if decoder is not None:
            remove_decoder_layers(model, spaced_layers(model.config.decoder_layers, decoder))
        if ffn:
            prune_encoder_ffn(model, ffn)
        return model

    def trained(label: str, decoder: int | None, ffn: float, loss: str):
        model = student(decoder, ffn)
        cfg = SpeechDistillConfig(loss=loss, minutes=args.kd_minutes, batch_size=args.batch_size, lr=args.lr)
        report = recover(model, teacher, processor, train, val, cfg, args.threads, states_cache=states)
        last = report.history[-1].metrics.get("token_accuracy", float("nan")) if report.history else float("nan")
        recoveries.append((label, report, last))
        return model

    recoveries: list = []
    states: dict = {}  # encoder outputs of the training audio, computed once for every frozen-encoder student
    rows = [("decoder 4->2 (layers 0, 3), no recovery", student(2, 0.0), False)]
    rows.append(("decoder 4->2, KD", trained("decoder 4->2, KD", 2, 0.0, "kd"), False))
    rows.append(("decoder 4->2, CE only (same budget)", trained("decoder 4->2, CE only", 2, 0.0, "ce"), False))
    for frac in [float(f) for f in args.ffn.split(",") if f.strip()]:
        label = f"encoder FFN -{100 * frac:g}%, KD"
        rows.append((label, trained(label, None, frac, "kd"), False))
    if args.combo_ffn:
        label = f"decoder 4->2 + encoder FFN -{100 * args.combo_ffn:g}%, KD"
        combo = trained(label, 2, args.combo_ffn, "kd")
        rows += [(label, combo, False), (label + ", trimmed input", combo, True)]
    return rows, recoveries, len(train)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke: 20 held-out synthesised utterances instead of 200, "
                    "24 training utterances, 1 min per recovery run")
    ap.add_argument("--synth", type=int, default=None, help="held-out synthesised utterances (default 200, quick 20)")
    ap.add_argument("--trim-pad", type=float, default=10.0, help="seconds of padding after the audio when trimmed")
    ap.add_argument("--pads", default="", help="comma-separated extra paddings to try on the real set, e.g. 1,3,5")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--macs-utterances", type=int, default=8)
    ap.add_argument("--skip-check", action="store_true", help="skip the converter check against CTranslate2 (parts 1, 3)")
    ap.add_argument("--no-compress", action="store_true", help="skip the compression rows (part 4)")
    ap.add_argument("--kd-minutes", type=float, default=None, help="time budget of each recovery run (default 30, "
                    "quick 1)")
    ap.add_argument("--train-utterances", type=int, default=None, help="synthesised training utterances "
                    "(default 1000, quick 24)")
    ap.add_argument("--voices", choices=("piper", "mixed"), default="piper",
                    help="training speech: Piper's voice alone, or mixed with slimkit.speech.synth.ESPEAK_VOICES "
                         "(held-out sets stay Piper)")
    ap.add_argument("--val-utterances", type=int, default=50, help="held-out utterances for per-epoch token accuracy")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ffn", default="0.25,0.5", help="encoder FFN fractions to remove, each recovered by KD")
    ap.add_argument("--split-tokens", type=int, default=16, help="forced length of the decodes that split decode "
                    "time into output projection, layers and the rest (0: skip)")
    ap.add_argument("--combo-ffn", type=float, default=0.25, help="encoder FFN fraction of the combined row (0: none)")
    args = ap.parse_args()
    args.kd_minutes = args.kd_minutes or (1.0 if args.quick else 30.0)
    offline()
    load_start = os.getloadavg()
    n_synth = args.synth or (20 if args.quick else 200)
    sets = [real_recordings(), synthetic_set(SynthSettings(split="heldout", utterances=n_synth, seed=0))]
    model, processor = load_whisper("whisper-tiny.en")
    params = parameters(model)

    def measure(label: str, m, trim: bool, data_sets=sets, pad: float = args.trim_pad, use_generate=False) -> None:
        for data in data_sets:
            r = evaluate(m, processor, data, trim, args.threads, args.macs_utterances, pad, use_generate=use_generate)
            rows.append((label, r, parameters(m)))
            # Each row as soon as it is measured: a run of hours keeps what it measured if it is stopped.
            print(f"measured: {label} | {r.name} | WER {100 * r.wer:.2f} % | enc {r.encoder_ms:.0f} ms | "
                  f"dec {r.decode_ms:.0f} ms | RTF {r.rtf:.3f}", flush=True)

    rows: list = []
    measure("dense, 30 s padded encoder input", model, False)
    dense = {r.name: r for _, r, _ in rows}
    measure("dense, 30 s padded, transformers' generate()", model, False, use_generate=True)
    measure(f"dense, audio + {args.trim_pad:g} s encoder input", model, True)
    for pad in [float(p) for p in args.pads.split(",") if p.strip()]:
        measure(f"dense, audio + {pad:g} s encoder input", model, True, sets[:1], pad)
    split = decode_splits(model, processor, sets[0], args.split_tokens, args.threads) if args.split_tokens else []
    recoveries, n_train = [], 0
    if not args.no_compress:
        students, recoveries, n_train = compression_rows(args, model, processor, sets)
        for label, student, trim in students:
            measure(label, student, trim)

    torch.set_num_threads(args.threads)
    check, same_features, reference = [], [], []
    for data in sets if not args.skip_check else []:
        ours = [h.strip() for h in dense[data.name].hypotheses]
        texts, ms = faster_whisper_transcripts(ct2_source_dir(), [u.audio for u in data.utterances], args.threads,
                                               "float32")
        check.append((data.name, len(data), [(u.id, t, o) for u, t, o in zip(data.utterances, texts, ours) if t != o]))
        reference.append((data.name, word_error_rate([u.text for u in data.utterances], texts), ms))
        texts, worst = ct2_same_features(model, processor, data, args.threads)
        same_features.append((data.name, len(data), [(u.id, t, o) for u, t, o in zip(data.utterances, texts, ours)
                                                     if t != o], worst))

    print(f"\nWhisper tiny.en ({params / 1e6:.1f} M parameters), {args.threads} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset (OpenMP default)')}; load average at start "
          f"{load_start[0]:.1f}, at end {os.getloadavg()[0]:.1f} (other jobs on the machine add time)\n")
    width = max(36, *(len(label) for label, _, _ in rows))
    head = f"{'row':<{width}} {'set':<14} {'utts':>5} {'audio s':>7} {'WER %':>6} {'enc ms':>7} {'dec ms':>7} " \
           f"{'RTF':>6} {'params':>8} {'GMACs/audio s':>13} {'dec x':>6} {'total x':>7}"
    print(head + "\n" + "-" * len(head))
    for label, r, n_params in rows:
        base = dense[r.name]
        print(f"{label:<{width}} {r.name:<14} {r.utterances:>5} {r.audio_s:>7.2f} {100 * r.wer:>6.2f} "
              f"{r.encoder_ms:>7.0f} {r.decode_ms:>7.0f} {r.rtf:>6.3f} {n_params / 1e6:>7.1f}M "
              f"{r.macs_per_audio_s / 1e9:>13.2f} {base.decode_ms / r.decode_ms:>6.2f} {total_ms(base) / total_ms(r):>7.2f}")
    for name, wer, ms in reference:
        print(f"{'faster-whisper (CT2 fp32), reference':<{width}} {name:<14} {'':>5} {'':>7} {100 * wer:>6.2f} "
              f"{'total ' + format(ms, '.0f') + ' ms/utt':>23}")
    print(f"\nmethod: {protocol(args.threads, args.trim_pad)}; dec x / total x = the dense 30 s padded row's decode / "
          "(features + encoder + decode) time per utterance over this row's, same set, same process")
    if split:
        print(f"\ndecode time per token, greedy decodes forced to {args.split_tokens} new tokens on {sets[0].name} "
              f"utterance 1, {args.threads} threads, fastest of 3; output projection and decoder layers timed by forward "
              f"hooks (the layers include the one-off cross-attention keys/values of the encoder output):")
        print("\n".join(split))
    if recoveries:
        print(f"\nrecovery on {n_train} synthesised training utterances (teacher pseudo-labels), budget "
              f"{args.kd_minutes:g} min per run, batch {args.batch_size}, lr {args.lr:g}, AdamW, cosine to 0 over the "
              f"budget; labels with WER > 0.1 against their sentence left out; KD = 1.0 * T^2 KL (T 2, teacher "
              f"top-64) + 0.8 * CE; val = teacher-forced token accuracy on "
              f"{min(args.val_utterances, len(sets[1]))} held-out synthesised utterances (reported, never selected on)")
        for label, rep, acc in recoveries:
            print(f"  {label:<{width}} steps {rep.steps:>5}  train {rep.train_seconds / 60:5.1f} min (ended by "
                  f"{rep.ended_by or 'epochs'}, teacher cache {'reused' if rep.teacher_cache_reused else 'built'})  "
                  f"labels kept {rep.labels_kept}  pseudo-labels {rep.label_seconds:6.0f} s  "
                  f"inputs {rep.input_seconds:5.0f} s  encoder "
                  f"{'frozen, states once' if rep.encoder_states_once else 'frozen' if rep.frozen_encoder else 'trained'}"
                  f"  val token acc {acc:.3f}")
    if not check:
        return
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
