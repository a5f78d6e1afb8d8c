"""CRNN text recogniser: teacher vs its distilled half-width student on held-out rendered words; prints one table.

The model (tests/crnn.py) is a user's model slimkit did not write: conv backbone, bidirectional
LSTM, linear head, CTC. The teacher is trained with CTC (`Distiller(None, ..., [ce()])` and the
sequence task with `ctc_loss`), then distilled into the half-width student with KD on its (N, T, C)
frame scores plus CTC; a student of the same size trained with CTC alone on the same budget is the
control. Every CER is on the test words, which never occur in training (validation words, also
held out, are what each epoch reports). Batch-1 latency: all three models timed in this process,
alternating (slimkit.measure.measure_latency_interleaved), median of the warm runs, with the
thread count stated.

    PYTHONPATH=. python bench/crnn.py                          # the table (about 2 min on an idle 2-core machine)
    PYTHONPATH=. python bench/crnn.py --train 2000 --teacher-epochs 6 --student-epochs 8   # quick look
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimkit.data import text_recognition_data  # noqa: E402
from slimkit.distill import Distiller, TrainConfig, ce, cer, ctc_loss, evaluate, kd, sequence_logits  # noqa: E402
from slimkit.measure import count_params, measure_latency_interleaved  # noqa: E402
from tests.crnn import teacher_and_student  # noqa: E402

# the recipe of the table's models; bench/compress_e2e.py trains its CRNN teacher by the same one
WORDS = (6000, 300, 500)  # rendered words: train, val, test
TEACHER_EPOCHS = 12
BATCH_SIZE, LR, WARMUP_STEPS = 32, 1e-2, 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=WORDS[0], help="rendered training words")
    ap.add_argument("--val", type=int, default=WORDS[1])
    ap.add_argument("--test", type=int, default=WORDS[2])
    ap.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    ap.add_argument("--student-epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5, help="KD weight; 1 - alpha on CTC")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and timing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    words = text_recognition_data(args.train, args.val, args.test, seed=args.seed)
    train, val, test = (words[k].tensors() for k in ("train", "val", "test"))
    task = sequence_logits(cer(), supervised=ctc_loss())
    torch.manual_seed(args.seed)
    teacher, student = teacher_and_student()
    _, scratch = teacher_and_student()

    def fit(teacher_model, model, terms, epochs: int, desc: str) -> float:
        cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, warmup_steps=WARMUP_STEPS, seed=args.seed)
        t0 = time.perf_counter()
        Distiller(teacher_model, model, terms, cfg, task=task).fit(train, val, desc=desc)
        return time.perf_counter() - t0

    seconds = {"teacher (CTC)": fit(None, teacher, [ce()], args.teacher_epochs, "teacher"),
               "student, KD + CTC": fit(teacher, student, [kd(args.alpha, args.temperature), ce(1 - args.alpha)],
                                        args.student_epochs, "student KD"),
               "student, CTC alone": fit(None, scratch, [ce()], args.student_epochs, "student scratch")}
    models = dict(zip(seconds, (teacher, student, scratch)))
    example = test[0][:1]
    timing = measure_latency_interleaved(list(models.values()), example, runs=100, warmup=10, threads=args.threads)
    # no MACs column: torch's flop counter does not count the LSTM, so it would understate both models
    head = "| model | params | test CER | batch-1 latency ms (median) | train s |"
    lines = [head, "|---|---|---|---|---|"]
    for (name, model), lat in zip(models.items(), timing):
        score = evaluate(model, test, task)["cer"]
        lines.append(f"| {name} | {count_params(model)[0]:,} | {score:.4f} | {lat.median_ms:.3f} | {seconds[name]:.0f} |")
    t_ms, s_ms = timing[0].median_ms, timing[1].median_ms
    print(f"\nCRNN on rendered words: {len(train[0])} training words, {len(test[0])} held-out test words "
          f"(vocabulary disjoint from training); {args.threads} torch thread(s), batch-1 latency timed interleaved "
          f"({timing[0].runs} warm runs per model)")
    print("\n".join(lines))
    print(f"student vs teacher: {t_ms / s_ms:.2f}x faster at batch 1 (timing noise: p90/median "
          f"{statistics.mean(r.p90_ms / r.median_ms for r in timing):.2f}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
