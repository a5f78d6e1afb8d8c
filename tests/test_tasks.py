"""Tasks and data beyond classification: metrics against their definitions, metric direction in
early stopping and ratio choice, loaders and generators as data, time budgets, dict batches."""

import math

import pytest
import torch
import torch.nn.functional as F

from slimkit.data import Dataset, Split
from slimkit.distill import (CacheConfig, Distiller, Metric, TrainConfig, causal_lm, ce, cer, classification,
                             evaluate, kd, sequence_logits)
from slimkit.errors import SlimkitError
from slimkit.measure.sequence import character_error_rate, ctc_greedy_decode, edit_distance
from slimkit.models import SeedCNN


def _error_rate() -> Metric:
    """A user's lower-is-better metric: the fraction of wrong predictions."""
    return Metric("error", lambda v, y: (int((v.argmax(-1) != y).sum()), len(y)), higher_is_better=False)


def test_sequence_metrics_follow_their_definitions():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3 and edit_distance("ab", "ab") == 0
    frames = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0], [0, 3, 3, 3, 0, 3, 0, 0]])  # argmax per frame, blank 0
    logits = F.one_hot(frames, 4).float()
    assert ctc_greedy_decode(logits) == [[1, 1, 2], [3, 3]]  # repeats merge unless a blank separates them
    labels, lengths = torch.tensor([[1, 2, 2], [3, 0, 0]]), torch.tensor([3, 1])
    task = sequence_logits(cer())

    class Fixed(torch.nn.Module):  # "model" whose output is the logits above, whatever the input
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return logits[x] + self.p

    got = evaluate(Fixed(), (torch.arange(2), labels, lengths), task, batch_size=1)["cer"]
    assert got == pytest.approx(character_error_rate(["aab", "cc"], ["abb", "c"])) == pytest.approx(2 / 4)


def test_lower_is_better_metric_drives_early_stopping(digits):
    torch.manual_seed(0)
    model = SeedCNN(1, 8, (8, 16, 32))
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.5, warmup_steps=1, early_stop_patience=1, grad_clip=None)
    task = classification([_error_rate()])
    data = Dataset(digits.name, digits.train.subset(256), digits.val, digits.test, 10)
    history = Distiller(None, model, [ce()], cfg, task=task).fit(data, progress=False)
    errors = [h.metrics["error"] for h in history]
    assert len(history) < 6 and min(errors) < max(errors)
    assert evaluate(model, digits.val, task)["error"] == pytest.approx(min(errors))  # the lowest error restored


def test_loaders_generators_and_their_limits(digits, tmp_path):
    x, y = digits.train.x[:256], digits.train.y[:256]
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    torch.manual_seed(0)
    teacher = SeedCNN(1, 8, (8, 16, 32))
    cfg = TrainConfig(epochs=2, batch_size=64, warmup_steps=1)
    d = Distiller(teacher, SeedCNN(1, 8, (8, 8, 16)), [kd(1.0, 2.0)], cfg, cache=CacheConfig(dir=tmp_path / "c"))
    history = d.fit(batches, digits.val, progress=False)  # a list of tuple batches, validated on a Split
    assert d.steps_done == 8 and len(history) == 2 and 0 <= history[-1].val_accuracy <= 1
    assert d.teacher_outputs is None and not (tmp_path / "c").exists()  # a loader: the teacher runs live

    def epoch_batches(epoch: int):
        yield from batches[epoch % 2:]

    with pytest.raises(SlimkitError, match="max_steps"):
        Distiller(None, SeedCNN(1, 8, (8, 8, 16)), [ce()], cfg).fit(epoch_batches, progress=False)
    d = Distiller(None, SeedCNN(1, 8, (8, 8, 16)), [ce()], TrainConfig(epochs=5, max_steps=5, warmup_steps=1))
    d.fit(epoch_batches, progress=False)
    assert d.steps_done == 5 and d.ended_by == "steps"
    with pytest.raises(SlimkitError, match="read only once"):
        Distiller(None, SeedCNN(1, 8, (8, 8, 16)), [ce()], cfg).fit(iter(batches), progress=False)
    with pytest.raises(SlimkitError, match="in-memory"):
        Distiller(torch.randn(256, 10), SeedCNN(1, 8, (8, 8, 16)), [kd()], cfg).fit(batches, progress=False)


def test_time_budget_ends_the_run_and_is_logged(digits):
    cfg = TrainConfig(epochs=50, batch_size=32, warmup_steps=1, max_minutes=0.02)
    d = Distiller(None, SeedCNN(1, 8, (8, 16, 32)), [ce()], cfg)
    history = d.fit(Dataset(digits.name, digits.train, Split(digits.val.x[:64], digits.val.y[:64]), digits.test, 10),
                    progress=False)
    assert d.ended_by == "time" and 0 < d.steps_done < 50 * 41 and len(history) < 50
    assert 0 <= history[-1].metrics["accuracy"] <= 1  # the last, partial epoch is validated too


def test_dict_batches_with_a_tiny_hugging_face_lm(tmp_path):
    """Hugging Face style dict batches from a DataLoader, with padding, on a config-built Llama."""
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=64, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=32, intermediate_size=64,
                                                                     num_hidden_layers=2, **common))
    student = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=16, intermediate_size=32,
                                                                     num_hidden_layers=1, **common))
    with torch.no_grad():
        teacher.lm_head.weight.mul_(8)  # a confident teacher, so there is a gap to close
    ids = torch.randint(1, 64, (48, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[::2, -3:] = 0  # right padding on every other row
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask)]
    loader = torch.utils.data.DataLoader(rows[:40], batch_size=8, shuffle=True)
    val = torch.utils.data.DataLoader(rows[40:], batch_size=4)
    task = causal_lm()

    def gap() -> float:
        with torch.no_grad():
            keep = mask[:8].bool()
            return F.kl_div(F.log_softmax(student(ids[:8], attention_mask=mask[:8]).logits[keep], -1),
                            F.log_softmax(teacher(ids[:8], attention_mask=mask[:8]).logits[keep], -1),
                            reduction="batchmean", log_target=True).item()

    before = gap()
    history = Distiller(teacher, student, [kd(1.0, 1.0), ce(0.1)], TrainConfig(epochs=4, lr=1e-2, warmup_steps=2),
                        task=task).fit(loader, val, progress=False)
    assert gap() < 0.8 * before
    nll, count = 0.0, 0  # perplexity by its definition: real next tokens only
    with torch.no_grad():
        for row in rows[40:]:
            n = int(row["attention_mask"].sum())
            logits = student(row["input_ids"][None, :n]).logits[0]
            nll += F.cross_entropy(logits[:-1], row["input_ids"][1:n], reduction="sum").item()
            count += n - 1
    assert history[-1].metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_time_budget_schedule_starts_after_the_teacher_cache(digits):
    """The LR cosine spans the time left after the teacher cache: a slow cache build must not make
    training start below the peak learning rate."""
    import time as _time

    class SlowTeacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = SeedCNN(1, 8, (8, 16, 32))

        def forward(self, x):
            _time.sleep(0.05)  # the cache build takes about 1 s of the 3 s budget
            return self.net(x)

    cfg = TrainConfig(epochs=50, batch_size=32, warmup_steps=0, lr=1e-3, max_minutes=0.05)
    d = Distiller(SlowTeacher(), SeedCNN(1, 8, (8, 16, 32)), [kd()], cfg, cache=CacheConfig(batch_size=64))
    lrs = []
    d.fit(Dataset(digits.name, digits.train, Split(digits.val.x[:64], digits.val.y[:64]), digits.test, 10),
          progress=False, on_step=lambda s: lrs.append(d.last_lr) if s == 2 else None)
    assert d.teacher_outputs is not None and d.cache_seconds > 0.5
    assert lrs and lrs[0] > 0.95e-3  # counting the cache build would give about 0.75e-3
