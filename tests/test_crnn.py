"""A model slimkit did not write: a CRNN text recogniser (tests/crnn.py) trained with CTC on
rendered words, distilled into a half-width student on its (N, T, C) outputs, validated by
character error rate; kill -9 resume with a DataLoader."""

import pytest
import torch

from slimkit.data import text_recognition_data
from slimkit.distill import Distiller, TrainConfig, ce, cer, ctc_loss, evaluate, kd, sequence_logits
from tests._distill_proc import run_worker
from tests.crnn import teacher_and_student


@pytest.fixture(scope="module")
def one_thread():
    """These models are too small to gain from a second thread, and on a busy machine its spinning
    costs more than it brings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_student_cer_tracks_the_teacher(one_thread):
    words = text_recognition_data(n_train=2000, n_val=300, n_test=0, seed=0)
    task = sequence_logits(cer(), supervised=ctc_loss())
    torch.manual_seed(0)
    teacher, student = teacher_and_student()
    train, val = words["train"].tensors(), words["val"].tensors()
    cfg = TrainConfig(epochs=6, batch_size=32, lr=1e-2, warmup_steps=10)
    history = Distiller(None, teacher, [ce()], cfg, task=task).fit(train, val, progress=False)  # CTC alone
    teacher_cer = history[-1].metrics["cer"]
    assert history[0].metrics["cer"] > teacher_cer  # validated every epoch on held-out words
    untrained = evaluate(student, val, task)["cer"]
    history = Distiller(teacher, student, [kd(0.5, 2.0), ce(0.5)], TrainConfig(epochs=8, batch_size=32, lr=1e-2,
                        warmup_steps=10), task=task).fit(train, val, progress=False)
    student_cer = history[-1].metrics["cer"]
    print(f"held-out CER: teacher {teacher_cer:.3f}, student {student_cer:.3f} (untrained {untrained:.3f})")
    assert teacher_cer < 0.25 and untrained > 0.5
    assert student_cer < teacher_cer + 0.08  # a quarter of the teacher's parameters, within 8 points of CER


def test_kill9_resume_with_a_dataloader_is_bit_identical(tmp_path):
    """KD without labels from a shuffled DataLoader whose dataset adds random noise and a student
    with dropout: every random draw must replay for the resumed weights to match bit for bit."""
    args = ["--epochs", "2", "--every", "3"]  # 16 batches per epoch; killed at step 21, in epoch 2
    unbroken = run_worker(args, tmp_path / "unbroken.json", worker="crnn")
    ckpt = ["--ckpt-dir", str(tmp_path / "ckpt")]
    killed_at = run_worker(args + ckpt, tmp_path / "never.json", kill_at_step=21, worker="crnn")
    resumed = run_worker(args + ckpt, tmp_path / "resumed.json", worker="crnn")
    assert 0 < killed_at - resumed["resumed_from_step"] <= 3 and resumed["resumed_from_step"] > 16
    assert resumed["steps"] == unbroken["steps"] == 32
    assert resumed["weights"] == unbroken["weights"]
    assert resumed["losses"] == unbroken["losses"]
